//! Every way the Azure adapter can sign in, against the stand-in's Entra ID and metadata
//! endpoints. No test touches the process environment or a real metadata service.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use std::time::Duration;

use arm_standin::{
    ArmStandin, CLIENT_ID, CLIENT_SECRET, FEDERATED_TOKEN, Fault, MANAGED_IDENTITY_CLIENT_ID,
    MANAGED_IDENTITY_OBJECT_ID, Route, TENANT_ID,
};
use fleetscale_adapters::azure::{AzureConfig, AzureEnvironment, CredentialConfig, ScaleSetFleet};
use fleetscale_adapters::{CloudAdapter, ErrorKind};

fn config_with(standin: &ArmStandin, credential: CredentialConfig) -> AzureConfig {
    let mut config = standin.azure_config("UNUSED");
    config.credential = credential;
    config
}

/// A loopback address nothing listens on, so probing it fails at once.
fn closed_endpoint() -> String {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!("http://{addr}/metadata/identity/oauth2/token")
}

fn scratch_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetscale-azure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn a_secret_file_signs_in() {
    let standin = ArmStandin::start(1).await;
    let path = scratch_file("secret", &format!("{CLIENT_SECRET}\n"));
    let config = config_with(
        &standin,
        CredentialConfig::ClientSecret {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            secret_env: None,
            secret_file: Some(path.clone()),
        },
    );
    let fleet = ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap();
    let report = fleet.verify_access().await.unwrap();
    assert!(
        report
            .identity
            .contains(&format!("file {}", path.display())),
        "{}",
        report.identity
    );
}

#[tokio::test]
async fn a_user_assigned_managed_identity_signs_in_with_its_client_id() {
    let standin = ArmStandin::start(2).await;
    let config = config_with(
        &standin,
        CredentialConfig::ManagedIdentity {
            client_id: Some(MANAGED_IDENTITY_CLIENT_ID.into()),
        },
    );
    let env = AzureEnvironment::empty()
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    let fleet = ScaleSetFleet::with_environment(config, env).unwrap();
    assert_eq!(fleet.read_fleet().await.unwrap().instances.len(), 2);
    let report = fleet.verify_access().await.unwrap();
    assert!(
        report.identity.starts_with("managed identity fleet-agent"),
        "{}",
        report.identity
    );
    assert!(
        report.identity.contains(MANAGED_IDENTITY_OBJECT_ID),
        "{}",
        report.identity
    );
    assert_eq!(
        standin.count(Route::ManagedIdentity),
        1,
        "the token is cached"
    );
}

#[tokio::test]
async fn an_unknown_managed_identity_is_an_authentication_error() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(
        &standin,
        CredentialConfig::ManagedIdentity {
            client_id: Some("00000000-0000-4000-8000-000000000001".into()),
        },
    );
    let env = AzureEnvironment::empty()
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    let error = ScaleSetFleet::with_environment(config, env)
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(
        error.to_string().contains("no such identity is assigned"),
        "{error}"
    );
}

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token_file_and_rereads_it() {
    let standin = ArmStandin::start(1).await;
    let file = scratch_file("federated-token", FEDERATED_TOKEN);
    let config = config_with(
        &standin,
        CredentialConfig::WorkloadIdentity {
            tenant_id: Some(TENANT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            token_file: Some(file.clone()),
        },
    );
    let fleet = ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap();
    assert_eq!(fleet.read_fleet().await.unwrap().target_size, Some(1));

    // A file holding a token the tenant does not trust is refused.
    let stale = scratch_file("stale-token", "eyJ.stale.token");
    let config = config_with(
        &standin,
        CredentialConfig::WorkloadIdentity {
            tenant_id: Some(TENANT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            token_file: Some(stale),
        },
    );
    let error = ScaleSetFleet::with_environment(config, AzureEnvironment::empty())
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    assert!(error.to_string().contains("workload identity"), "{error}");
}

#[tokio::test]
async fn workload_identity_takes_its_settings_from_the_variables_aks_sets() {
    let standin = ArmStandin::start(1).await;
    let file = scratch_file("aks-token", FEDERATED_TOKEN);
    let config = config_with(
        &standin,
        CredentialConfig::WorkloadIdentity {
            tenant_id: None,
            client_id: None,
            token_file: None,
        },
    );
    let env = AzureEnvironment::empty()
        .with_var("AZURE_TENANT_ID", TENANT_ID)
        .with_var("AZURE_CLIENT_ID", CLIENT_ID)
        .with_var("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string());
    let fleet = ScaleSetFleet::with_environment(config, env).unwrap();
    assert!(
        fleet
            .verify_access()
            .await
            .unwrap()
            .identity
            .contains("workload identity")
    );
}

#[tokio::test]
async fn the_default_chain_takes_a_client_secret_from_the_environment_first() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty()
        .with_var("AZURE_TENANT_ID", TENANT_ID)
        .with_var("AZURE_CLIENT_ID", CLIENT_ID)
        .with_var("AZURE_CLIENT_SECRET", CLIENT_SECRET)
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    let fleet = ScaleSetFleet::with_environment(config, env).unwrap();
    let report = fleet.verify_access().await.unwrap();
    assert!(
        report.identity.contains("from the environment"),
        "{}",
        report.identity
    );
    assert_eq!(standin.count(Route::ManagedIdentity), 0);
}

#[tokio::test]
async fn the_default_chain_does_not_fall_through_past_a_refused_environment_secret() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty()
        .with_var("AZURE_TENANT_ID", TENANT_ID)
        .with_var("AZURE_CLIENT_ID", CLIENT_ID)
        .with_var("AZURE_CLIENT_SECRET", "wrong")
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    let error = ScaleSetFleet::with_environment(config, env)
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(error.to_string().contains("AADSTS7000215"), "{error}");
    assert_eq!(
        standin.count(Route::ManagedIdentity),
        0,
        "another identity was tried"
    );
}

#[tokio::test]
async fn the_default_chain_finds_a_managed_identity_when_the_environment_has_none() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty()
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    let fleet = ScaleSetFleet::with_environment(config, env).unwrap();
    let report = fleet.verify_access().await.unwrap();
    assert!(
        report
            .identity
            .contains("managed identity credential (system-assigned)"),
        "{}",
        report.identity
    );
}

#[tokio::test]
async fn the_default_chain_lists_what_it_tried_when_nothing_is_available() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty().with_managed_identity_endpoint(closed_endpoint());
    let error = ScaleSetFleet::with_environment(config, env)
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    let message = error.to_string();
    for tried in [
        "no Azure credential is available",
        "environment",
        "AZURE_FEDERATED_TOKEN_FILE",
        "managed identity",
        "Azure CLI",
    ] {
        assert!(message.contains(tried), "missing `{tried}` in: {message}");
    }
}

/// A test-only certificate and its RSA key (made with `openssl req -x509 -newkey rsa:2048
/// -nodes`), its SHA-256 thumbprint as Entra ID's `x5t#S256` (and its SHA-1 one, the old
/// `x5t`), and its public key (PKCS #1 DER, base64) to check assertion signatures.
const TEST_CERTIFICATE_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIDFzCCAf+gAwIBAgIUPHMLUFIDk489zoMGbvGN1ctWYX4wDQYJKoZIhvcNAQEL\nBQAwGjEYMBYGA1UEAwwPZmxlZXRzY2FsZS10ZXN0MCAXDTI2MTEyMzA2NTcwOVoY\nDzIxMjYxMDMwMDY1NzA5WjAaMRgwFgYDVQQDDA9mbGVldHNjYWxlLXRlc3QwggEi\nMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQClB8EafgxwtaiZPTYdG2gJp6wY\nUn/mww1eCZ1JfZBCaaPk6b85lM8KJsSbr5GwBWnD5lAGASjiN4cZRl7FCVLwmDdD\nposiFluA9YFyl4w8jtm+vulE3mvYki1JPPdSGBfsTrbSCcFqhlG5lzyw6bGuBNQM\n1gMi3/aPPEVFTfvfXsWXQBsL9KcALhxoF+kkWhJ7wCWLqCl8IDnYmvLq8uofStdv\nwp7s/yGo8pxBR86iWmdgJlkyShvLTCWUnMpv36ja0ku+iVaNPSxzh0m0ENN82AiZ\nP4sTujZWPw2T/1QYd2Ib1QtZ0lbDMK71F6EjJOolJhz1GkxQLJifd6qlBiYrAgMB\nAAGjUzBRMB0GA1UdDgQWBBSKxrDcqjSItWipuxhI4Zi/IAu+EDAfBgNVHSMEGDAW\ngBSKxrDcqjSItWipuxhI4Zi/IAu+EDAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3\nDQEBCwUAA4IBAQBSAdG6rLEI/eYP0nrZK2uOo0zoV8qvasJYroc2pjeoRTs9wKK/\nW8GFkE7CRpkaDuwMg17keufULiQsw8J7ddNVidhsOcqwRNq20uS4JnMoEd/21bPU\n/tHt/Aj856idS7tJOgqHZdcWaA5NANJF2IKo68URrH5rdzWNawZn0z+8RQzvea2r\n1oQY24aNxW4G3c3xv3qpv+GfCcoL4gb1ExPV7wUr0208YibJQXZEWG5OgGuRhvIv\nNcyzbwgddcLhJgU5is+J4Vfz9FNkbb9E+u+Qv9D/oH0MVmMElHboNW4YPEJgMEQd\nZMPr3mtZPqSmBZHA0+KJUtXD6JIQAbNy2e5g\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQClB8EafgxwtaiZ\nPTYdG2gJp6wYUn/mww1eCZ1JfZBCaaPk6b85lM8KJsSbr5GwBWnD5lAGASjiN4cZ\nRl7FCVLwmDdDposiFluA9YFyl4w8jtm+vulE3mvYki1JPPdSGBfsTrbSCcFqhlG5\nlzyw6bGuBNQM1gMi3/aPPEVFTfvfXsWXQBsL9KcALhxoF+kkWhJ7wCWLqCl8IDnY\nmvLq8uofStdvwp7s/yGo8pxBR86iWmdgJlkyShvLTCWUnMpv36ja0ku+iVaNPSxz\nh0m0ENN82AiZP4sTujZWPw2T/1QYd2Ib1QtZ0lbDMK71F6EjJOolJhz1GkxQLJif\nd6qlBiYrAgMBAAECggEABtghfBXKMkp2aZSOT/q4/92CV6fkQg/I2COR8GBSwU5c\nS7weACdZxtQAx2wqoKA42LUOkJEvvuIKqlOuzoEqfWvyrs2Ta6B9vwVvju8WE9Tg\n1vZX+lE3K840LptmrnLtWxGQp3lcGizj6syI6dVnVw5ANSATFTkwopQfU1Z+oa7d\nei5FTWSJDjw49vhUcnRa9fWsyFE7KLy/ufu+psCKhCBqD1vqev3vw0M6qrX+Z7jW\nWHkAkyoWp2wO9+EU3993T+BrLWgZ6ixVwTHPcXPOJ9DwWORxdStqTPzKqUOzDKjZ\ntDZ2ez7M8LOB3Kb/WMeTRjWifYty2Efmf7N7tEDvUQKBgQDPuuoNjYdgEKMgCK4L\nssajIcBdjybz4x/sR8p0MQvYeBirE1cI/azdEcOdqR2ORPjUsPrLM+eX3RxXTPEg\nr+eKomDdqzApYKqQyIR5oQ1EqWVpsV4xm5pN/y/eXSGeCgR2bqOzP9mmoeBgrzDr\nzcqZjHqBdfwMNDeUFW0Jryn8vwKBgQDLYMli2+AklD/maLXVpX3TuaIW6mtoRe/e\n69lJ70nYg1E8xVjDb5CMb7hTXkWmHQdV544p85XFJ2KhQ7XDp9NGB33DbOTTS0EM\njFjW7NhE1KnMghV+/fnn7Obn0LvGOQfj2mMCazppuap72C/MJcu19jTdsWtybjTN\nklTnb921lQKBgQCC+t1XfFTOqs7ghPiRIcGD3OU5WOj7wMtBJacvCjno3RjYzdIE\nNkeIAQpx389mBHFNUuZfuDOgGugi1732mVOKo4YmXyl3/Z6uufBl7Lm8AH+UXCUD\nbJSn927Ma7alurVDo9GOVYU8PzeGXxCerly/4sbf2G/7lfUxZy0gfRUhawKBgQCQ\nNumW+GNQjO9i6w1FmjxHTnLp3QCcyDr30DYcf1nV9gg9F5OBwjK14uLJ+ydYS21Q\nNQpSJTAmxW7i+6iAPRlLpzQ+x5DbY5mU1FCK1xfkdwiQxA2KJ352Pz7dUt5UCUzW\n/Z0HshGRtt51Qy9hi8uQFC4Yph6S3iMDQqiCFIkaoQKBgAMHle0i8TW6P1eBtcCR\n03IZSjiZ+UnyOXleuGDG0Nl+6CvACn0loJTov2gnlgqrJZcvC9QMV3dcCOmAt1AJ\nZ2eZQuBXvqsIULyK6uZrxoUhMShnfAb/Yvto5aEn5ThdUllpKUZewuANGaIfAuJV\n18Oh0+4IVQLc289OnI3iVbOp\n-----END PRIVATE KEY-----\n";
const TEST_CERTIFICATE_X5T_S256: &str = "6I8YXrJ72OiYKX5B_r7UxgIOzbStijmq8CRsjNGeuuw";
const TEST_CERTIFICATE_X5T_SHA1: &str = "FmQQsnHsK0S_s5HIEhkosB7dWvs";
const TEST_PUBLIC_KEY_DER: &str = "MIIBCgKCAQEApQfBGn4McLWomT02HRtoCaesGFJ/5sMNXgmdSX2QQmmj5Om/OZTPCibEm6+RsAVpw+ZQBgEo4jeHGUZexQlS8Jg3Q6aLIhZbgPWBcpeMPI7Zvr7pRN5r2JItSTz3UhgX7E620gnBaoZRuZc8sOmxrgTUDNYDIt/2jzxFRU37317Fl0AbC/SnAC4caBfpJFoSe8Ali6gpfCA52Jry6vLqH0rXb8Ke7P8hqPKcQUfOolpnYCZZMkoby0wllJzKb9+o2tJLvolWjT0sc4dJtBDTfNgImT+LE7o2Vj8Nk/9UGHdiG9ULWdJWwzCu9RehIyTqJSYc9RpMUCyYn3eqpQYmKwIDAQAB";

#[tokio::test]
async fn a_client_certificate_signs_an_assertion_entra_id_accepts() {
    let standin = ArmStandin::start(1).await;
    standin.trust_certificate(TEST_CERTIFICATE_X5T_S256);
    let path = scratch_file("certificate.pem", TEST_CERTIFICATE_PEM);
    let config = config_with(
        &standin,
        CredentialConfig::ClientCertificate {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            certificate_file: path,
        },
    );
    let fleet = ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap();
    assert_eq!(fleet.read_fleet().await.unwrap().target_size, Some(1));
    assert!(
        fleet
            .verify_access()
            .await
            .unwrap()
            .identity
            .contains("client certificate credential")
    );

    // The assertion names the certificate by its SHA-256 thumbprint and is signed with its
    // key, PS256 (RSASSA-PSS with SHA-256), as "Microsoft identity platform application
    // authentication certificate credentials" asks.
    let assertions = standin.assertions();
    assert_eq!(assertions.len(), 1, "the token is cached");
    let header: serde_json::Value = serde_json::from_slice(&azure_core_base64_url(
        assertions[0].split('.').next().unwrap(),
    ))
    .unwrap();
    assert_eq!(header["alg"], "PS256", "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
    assert_eq!(header["x5t#S256"], TEST_CERTIFICATE_X5T_S256, "{header}");
    assert!(header.get("x5t").is_none(), "no SHA-1 thumbprint: {header}");
    let (signing_input, signature) = assertions[0].rsplit_once('.').unwrap();
    let public_key = azure_core_base64(TEST_PUBLIC_KEY_DER);
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PSS_2048_8192_SHA256, public_key)
        .verify(signing_input.as_bytes(), &azure_core_base64_url(signature))
        .expect("the assertion's PSS signature verifies with the certificate's public key");
}

/// A client assertion for [`CLIENT_ID`] with this header, signed with the test key
/// (`pss`: PS256, else RS256), as the stand-in's token endpoint expects its claims.
fn signed_assertion(standin: &ArmStandin, header: serde_json::Value, pss: bool) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "aud": format!("{}/{TENANT_ID}/oauth2/v2.0/token", standin.url()),
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "jti": "6f1d0c3e-5b2a-4e8f-9d7c-1a2b3c4d5e6f",
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let signing_input = format!(
        "{}.{}",
        azure_core::base64::encode_url_safe(header.to_string()),
        azure_core::base64::encode_url_safe(claims.to_string())
    );
    let key_pem = TEST_CERTIFICATE_PEM
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .unwrap()
        .split("-----END PRIVATE KEY-----")
        .next()
        .unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&azure_core_base64(
        &key_pem.split_whitespace().collect::<String>(),
    ))
    .unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    let encoding: &'static dyn ring::signature::RsaEncoding = if pss {
        &ring::signature::RSA_PSS_SHA256
    } else {
        &ring::signature::RSA_PKCS1_SHA256
    };
    key.sign(
        encoding,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!(
        "{signing_input}.{}",
        azure_core::base64::encode_url_safe(signature)
    )
}

/// Presents a client assertion to the stand-in's token endpoint: its status and body.
async fn present_assertion(standin: &ArmStandin, assertion: &str) -> (u16, serde_json::Value) {
    let form = format!(
        "client_id={CLIENT_ID}&scope={}/.default&grant_type=client_credentials\
         &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
         &client_assertion={assertion}",
        standin.url()
    );
    let response = reqwest::Client::new()
        .post(format!("{}/{TENANT_ID}/oauth2/v2.0/token", standin.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, body)
}

#[tokio::test]
async fn the_stand_in_refuses_rs256_and_sha1_thumbprint_assertions_as_entra_id_would() {
    let standin = ArmStandin::start(1).await;
    standin.trust_certificate(TEST_CERTIFICATE_X5T_S256);

    // What the certificate credentials page asks for is accepted...
    let good = signed_assertion(
        &standin,
        serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": TEST_CERTIFICATE_X5T_S256}),
        true,
    );
    let (status, body) = present_assertion(&standin, &good).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string(), "{body}");

    // ...an RS256 signature is not, even from the trusted certificate...
    let rs256 = signed_assertion(
        &standin,
        serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t#S256": TEST_CERTIFICATE_X5T_S256}),
        false,
    );
    let (status, body) = present_assertion(&standin, &rs256).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(body["error_codes"][0], 5002738, "{body}");

    // ...nor a certificate named only by its SHA-1 thumbprint (`x5t`).
    let sha1 = signed_assertion(
        &standin,
        serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t": TEST_CERTIFICATE_X5T_SHA1}),
        true,
    );
    let (status, body) = present_assertion(&standin, &sha1).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_codes"][0], 700027, "{body}");
}

#[tokio::test]
async fn a_certificate_the_application_does_not_know_is_refused() {
    let standin = ArmStandin::start(1).await;
    let path = scratch_file("unregistered.pem", TEST_CERTIFICATE_PEM);
    let config = config_with(
        &standin,
        CredentialConfig::ClientCertificate {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            certificate_file: path,
        },
    );
    let error = ScaleSetFleet::with_environment(config, AzureEnvironment::empty())
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    assert!(
        error.to_string().contains("client certificate credential"),
        "{error}"
    );
    assert!(error.to_string().contains("401"), "{error}");
    // Entra ID's own reason, not only its status.
    assert!(error.to_string().contains("AADSTS700027"), "{error}");
}

#[tokio::test]
async fn a_certificate_from_the_environment_is_used_by_the_default_chain() {
    let standin = ArmStandin::start(1).await;
    standin.trust_certificate(TEST_CERTIFICATE_X5T_S256);
    let path = scratch_file("env-certificate.pem", TEST_CERTIFICATE_PEM);
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty()
        .with_var("AZURE_TENANT_ID", TENANT_ID)
        .with_var("AZURE_CLIENT_ID", CLIENT_ID)
        .with_var("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string())
        .with_managed_identity_endpoint(closed_endpoint());
    let fleet = ScaleSetFleet::with_environment(config, env).unwrap();
    let report = fleet.verify_access().await.unwrap();
    assert!(
        report
            .identity
            .contains("client certificate credential from the environment"),
        "{}",
        report.identity
    );
}

#[tokio::test]
async fn a_file_without_a_key_is_named_in_the_error() {
    let standin = ArmStandin::start(1).await;
    let certificate_only = TEST_CERTIFICATE_PEM
        .split("-----BEGIN PRIVATE KEY-----")
        .next()
        .unwrap();
    let path = scratch_file("no-key.pem", certificate_only);
    let config = config_with(
        &standin,
        CredentialConfig::ClientCertificate {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            certificate_file: path.clone(),
        },
    );
    let error = ScaleSetFleet::with_environment(config, AzureEnvironment::empty())
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(
        error.to_string().contains("no unencrypted PRIVATE KEY"),
        "{error}"
    );
    assert_eq!(standin.count(Route::Token), 0);
}

const SECRET_VAR: &str = "STANDIN_SECRET";

fn secret_fleet(standin: &ArmStandin) -> ScaleSetFleet {
    let env = AzureEnvironment::empty().with_var(SECRET_VAR, CLIENT_SECRET);
    ScaleSetFleet::with_environment(standin.azure_config(SECRET_VAR), env).unwrap()
}

fn certificate_fleet(standin: &ArmStandin) -> ScaleSetFleet {
    standin.trust_certificate(TEST_CERTIFICATE_X5T_S256);
    let config = config_with(
        standin,
        CredentialConfig::ClientCertificate {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            certificate_file: scratch_file("retry-certificate.pem", TEST_CERTIFICATE_PEM),
        },
    );
    ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap()
}

fn workload_identity_fleet(standin: &ArmStandin) -> ScaleSetFleet {
    let config = config_with(
        standin,
        CredentialConfig::WorkloadIdentity {
            tenant_id: Some(TENANT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            token_file: Some(scratch_file("retry-federated-token", FEDERATED_TOKEN)),
        },
    );
    ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap()
}

fn managed_identity_fleet(standin: &ArmStandin) -> ScaleSetFleet {
    let config = config_with(
        standin,
        CredentialConfig::ManagedIdentity {
            client_id: Some(MANAGED_IDENTITY_CLIENT_ID.into()),
        },
    );
    let env = AzureEnvironment::empty()
        .with_managed_identity_endpoint(standin.managed_identity_endpoint());
    ScaleSetFleet::with_environment(config, env).unwrap()
}

/// The next call fails with `kind` (and `retry_after`), and the one after it, made at
/// once, succeeds: the failure was not held as a refusal.
async fn fails_once_then_succeeds(
    fleet: &ScaleSetFleet,
    kind: ErrorKind,
    retry_after: Option<Duration>,
) {
    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), kind, "{error}");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.retry_after(), retry_after, "{error}");
    let started = std::time::Instant::now();
    assert_eq!(fleet.read_fleet().await.unwrap().target_size, Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the next call waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn entra_throttling_of_a_client_secret_is_retryable_with_its_retry_after() {
    let standin = ArmStandin::start(1).await;
    let fleet = secret_fleet(&standin);
    standin.fail_next(
        Route::Token,
        Fault::Throttle {
            retry_after_secs: 7,
        },
        1,
    );
    fails_once_then_succeeds(&fleet, ErrorKind::Throttled, Some(Duration::from_secs(7))).await;
    assert_eq!(standin.count(Route::Token), 2);
}

#[tokio::test]
async fn entra_5xx_and_temporarily_unavailable_are_transient_for_a_client_secret() {
    for fault in [Fault::ServerError, Fault::Unavailable] {
        let standin = ArmStandin::start(1).await;
        let fleet = secret_fleet(&standin);
        standin.fail_next(Route::Token, fault.clone(), 1);
        let error = fleet.read_fleet().await.unwrap_err();
        assert!(
            error.to_string().contains("temporarily_unavailable"),
            "{fault:?}: {error}"
        );
        assert_eq!(error.kind(), ErrorKind::Transient, "{fault:?}: {error}");
        assert_eq!(fleet.read_fleet().await.unwrap().target_size, Some(1));
        assert_eq!(standin.count(Route::Token), 2, "{fault:?}");
    }
}

#[tokio::test]
async fn entra_throttling_and_5xx_are_retryable_for_certificates_and_workload_identity() {
    for (name, build) in [
        (
            "certificate",
            certificate_fleet as fn(&ArmStandin) -> ScaleSetFleet,
        ),
        ("workload identity", workload_identity_fleet),
    ] {
        let standin = ArmStandin::start(1).await;
        let fleet = build(&standin);
        standin.fail_next(
            Route::Token,
            Fault::Throttle {
                retry_after_secs: 5,
            },
            1,
        );
        let error = fleet.read_fleet().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Throttled, "{name}: {error}");
        assert_eq!(
            error.retry_after(),
            Some(Duration::from_secs(5)),
            "{name}: {error}"
        );
        standin.fail_next(Route::Token, Fault::Unavailable, 1);
        fails_once_then_succeeds(&fleet, ErrorKind::Transient, None).await;
        assert_eq!(standin.count(Route::Token), 3, "{name}");
    }
}

#[tokio::test]
async fn imds_updating_and_upgrading_are_transient_not_refusals() {
    for fault in [
        Fault::ImdsUpdating,
        Fault::ImdsUpgrading,
        Fault::ServerError,
    ] {
        let standin = ArmStandin::start(1).await;
        let fleet = managed_identity_fleet(&standin);
        standin.fail_next(Route::ManagedIdentity, fault.clone(), 1);
        fails_once_then_succeeds(&fleet, ErrorKind::Transient, None).await;
        assert_eq!(standin.count(Route::ManagedIdentity), 2, "{fault:?}");
    }
    // IMDS's 410 says when it is back.
    let standin = ArmStandin::start(1).await;
    standin.fail_next(Route::ManagedIdentity, Fault::ImdsUpgrading, 1);
    let error = managed_identity_fleet(&standin)
        .read_fleet()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("70 s"), "{error}");
}

#[tokio::test]
async fn imds_throttling_carries_its_retry_after() {
    let standin = ArmStandin::start(1).await;
    let fleet = managed_identity_fleet(&standin);
    standin.fail_next(
        Route::ManagedIdentity,
        Fault::Throttle {
            retry_after_secs: 9,
        },
        1,
    );
    fails_once_then_succeeds(&fleet, ErrorKind::Throttled, Some(Duration::from_secs(9))).await;
    assert_eq!(standin.count(Route::ManagedIdentity), 2);
}

#[tokio::test]
async fn after_resource_manager_rejects_a_token_the_next_call_fetches_a_fresh_one() {
    for (name, build, route) in [
        (
            "client secret",
            secret_fleet as fn(&ArmStandin) -> ScaleSetFleet,
            Route::Token,
        ),
        (
            "managed identity",
            managed_identity_fleet,
            Route::ManagedIdentity,
        ),
        ("certificate", certificate_fleet, Route::Token),
    ] {
        let standin = ArmStandin::start(1).await;
        let fleet = build(&standin);
        fleet.read_fleet().await.unwrap();
        assert_eq!(standin.count(route), 1, "{name}");

        standin.revoke_tokens();
        let error = fleet.read_fleet().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Authentication, "{name}: {error}");
        assert!(
            error.to_string().contains("InvalidAuthenticationToken"),
            "{name}: {error}"
        );

        assert_eq!(
            fleet.read_fleet().await.unwrap().target_size,
            Some(1),
            "{name}"
        );
        assert_eq!(standin.count(route), 2, "{name}: one fresh token");
        fleet.read_fleet().await.unwrap();
        assert_eq!(standin.count(route), 2, "{name}: the fresh token is cached");
    }
}

#[tokio::test]
async fn an_expired_token_seen_while_following_an_operation_is_replaced() {
    // Operation polls go through the same pipeline as the SDK's calls.
    let standin = ArmStandin::start(1).await;
    let fleet = secret_fleet(&standin);
    fleet.read_fleet().await.unwrap();
    standin.fail_next(Route::OperationStatus, Fault::Unauthorized, 1);
    let error = fleet
        .grow(1, &fleetscale_adapters::IdempotencyToken::new("t"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    fleet.read_fleet().await.unwrap();
    assert_eq!(standin.count(Route::Token), 2);
}

fn azure_core_base64(text: &str) -> Vec<u8> {
    decode(text, false)
}

fn azure_core_base64_url(text: &str) -> Vec<u8> {
    decode(text, true)
}

/// Standard or URL-safe base64, padded or not.
fn decode(text: &str, url_safe: bool) -> Vec<u8> {
    let alphabet: &[u8] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let digits: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| {
            alphabet
                .iter()
                .position(|a| *a == b)
                .expect("a base64 digit") as u32
        })
        .collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
