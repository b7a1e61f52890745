//! The Azure adapter's config: defaults, strict parsing, and every problem reported with
//! its field.
#![cfg(feature = "azure")]

use std::time::Duration;

use fleetscale_adapters::azure::{
    AzureConfig, CredentialConfig, PUBLIC_ARM_ENDPOINT, PUBLIC_AUTHORITY_HOST,
};

const MINIMAL: &str = r#"
subscription_id = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"
resource_group = "fleet-rg"
scale_set = "web-vmss"
"#;

#[test]
fn a_minimal_config_takes_the_public_cloud_and_the_default_chain() {
    let config: AzureConfig = toml::from_str(MINIMAL).unwrap();
    assert_eq!(config.arm_endpoint, PUBLIC_ARM_ENDPOINT);
    assert_eq!(config.authority_host, PUBLIC_AUTHORITY_HOST);
    assert_eq!(config.credential, CredentialConfig::Default);
    assert_eq!(config.operation_timeout, Duration::from_secs(90));
    assert_eq!(config.poll_interval, Duration::from_secs(5));
    assert_eq!(config.request_timeout, Duration::from_secs(30));
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(
        config.resource_id(),
        "/subscriptions/2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a/resourceGroups/fleet-rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-vmss"
    );
}

#[test]
fn every_credential_kind_parses() {
    let cases = [
        (
            r#"kind = "client-secret"
               tenant_id = "8f2b7a3c-1d4e-4f5a-9b6c-7d8e9f0a1b2c"
               client_id = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
               secret_file = "/run/secrets/azure""#,
            "client-secret",
        ),
        (
            r#"kind = "client-certificate"
               tenant_id = "8f2b7a3c-1d4e-4f5a-9b6c-7d8e9f0a1b2c"
               client_id = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
               certificate_file = "/etc/fleetscale/azure.pem""#,
            "client-certificate",
        ),
        (r#"kind = "managed-identity""#, "managed-identity"),
        (
            r#"kind = "managed-identity"
               client_id = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9""#,
            "managed-identity",
        ),
        (r#"kind = "workload-identity""#, "workload-identity"),
        (r#"kind = "azure-cli""#, "azure-cli"),
        (r#"kind = "default""#, "default"),
    ];
    for (credential, kind) in cases {
        let text = format!("{MINIMAL}\noperation_timeout = \"90s\"\n[credential]\n{credential}\n");
        let config: AzureConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(config.credential.kind(), kind);
        assert_eq!(config.operation_timeout, Duration::from_secs(90));
        assert_eq!(config.validate(), Ok(()), "{kind}");
    }
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let top = format!("{MINIMAL}\nscaleset = \"typo\"\n");
    let error = toml::from_str::<AzureConfig>(&top).unwrap_err().to_string();
    assert!(error.contains("scaleset"), "{error}");

    let nested =
        format!("{MINIMAL}\n[credential]\nkind = \"managed-identity\"\nclientid = \"x\"\n");
    let error = toml::from_str::<AzureConfig>(&nested)
        .unwrap_err()
        .to_string();
    assert!(error.contains("clientid"), "{error}");

    let kind = format!("{MINIMAL}\n[credential]\nkind = \"certificate\"\n");
    let error = toml::from_str::<AzureConfig>(&kind)
        .unwrap_err()
        .to_string();
    assert!(error.contains("certificate"), "{error}");
}

#[test]
fn validation_reports_every_problem_with_its_field() {
    let text = r#"
        subscription_id = "my-subscription"
        resource_group = "rg with spaces/and slash"
        scale_set = "-bad"
        arm_endpoint = "http://management.azure.com"
        authority_host = "not a url"
        operation_timeout = "0s"
        [credential]
        kind = "client-secret"
        tenant_id = "8f2b7a3c-1d4e-4f5a-9b6c-7d8e9f0a1b2c"
        client_id = "app"
        secret_env = "AZURE_SECRET"
        secret_file = "/run/secret"
    "#;
    let config: AzureConfig = toml::from_str(text).unwrap();
    let problems = config.validate().unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "subscription_id",
            "resource_group",
            "scale_set",
            "arm_endpoint",
            "authority_host",
            "operation_timeout",
            "credential.client_id",
            "credential.secret_env",
        ]
    );
    let arm = problems.iter().find(|p| p.field == "arm_endpoint").unwrap();
    assert!(arm.message.contains("clear text"), "{arm}");
}

#[test]
fn a_client_secret_must_say_where_the_secret_is() {
    let text = format!(
        "{MINIMAL}\n[credential]\nkind = \"client-secret\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f\"\n"
    );
    let config: AzureConfig = toml::from_str(&text).unwrap();
    let problems = config.validate().unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "credential.secret_env");
}

#[test]
fn sovereign_clouds_and_loopback_endpoints_are_accepted() {
    let mut config: AzureConfig = toml::from_str(MINIMAL).unwrap();
    config.arm_endpoint = "https://management.usgovcloudapi.net".into();
    config.authority_host = "https://login.microsoftonline.us".into();
    assert_eq!(config.validate(), Ok(()));
    config.arm_endpoint = "http://127.0.0.1:8080".into();
    config.authority_host = "http://localhost:8080".into();
    assert_eq!(config.validate(), Ok(()));
}

/// The agent's config embeds this table in an adapter enum tagged by `kind`.
#[test]
fn the_config_flattens_into_an_adapter_table_tagged_by_kind() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
    enum Adapter {
        Azure(AzureConfig),
    }
    let text = format!("kind = \"azure\"\n{MINIMAL}");
    let Adapter::Azure(config) = toml::from_str::<Adapter>(&text).unwrap();
    assert_eq!(config.scale_set, "web-vmss");
    let typo = format!("kind = \"azure\"\n{MINIMAL}\nscale_sets = 2\n");
    assert!(toml::from_str::<Adapter>(&typo).is_err());
}
