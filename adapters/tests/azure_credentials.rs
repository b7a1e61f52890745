//! Every way the Azure adapter can sign in, against the stand-in's Entra ID and metadata
//! endpoints. No test touches the process environment or a real metadata service.
#![cfg(feature = "azure")]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use arm_standin::{
    ArmStandin, CLIENT_ID, CLIENT_SECRET, FEDERATED_TOKEN, MANAGED_IDENTITY_CLIENT_ID,
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

#[tokio::test]
async fn a_certificate_in_the_environment_is_refused_with_a_reason() {
    let standin = ArmStandin::start(1).await;
    let config = config_with(&standin, CredentialConfig::Default);
    let env = AzureEnvironment::empty()
        .with_var("AZURE_TENANT_ID", TENANT_ID)
        .with_var("AZURE_CLIENT_ID", CLIENT_ID)
        .with_var("AZURE_CLIENT_CERTIFICATE_PATH", "/etc/fleetscale/cert.pem")
        .with_managed_identity_endpoint(closed_endpoint());
    let error = ScaleSetFleet::with_environment(config, env)
        .unwrap()
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(error.to_string().contains("certificate"), "{error}");
}
