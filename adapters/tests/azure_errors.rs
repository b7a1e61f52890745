//! Azure's failures as the controller sees them: each mapped to its kind, with a message
//! an operator can act on and no secret in it.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use std::time::Duration;

use arm_standin::{ArmStandin, CLIENT_SECRET, Fault, Route};
use fleetscale_adapters::azure::{AzureConfig, AzureEnvironment, ScaleSetFleet};
use fleetscale_adapters::{AdapterError, CloudAdapter, ErrorKind, IdempotencyToken};

const SECRET_VAR: &str = "STANDIN_AZURE_SECRET";

fn fleet_with(config: AzureConfig, secret: &str) -> ScaleSetFleet {
    let env = AzureEnvironment::empty().with_var(SECRET_VAR, secret);
    ScaleSetFleet::with_environment(config, env).expect("valid config")
}

fn fleet(standin: &ArmStandin) -> ScaleSetFleet {
    fleet_with(standin.azure_config(SECRET_VAR), CLIENT_SECRET)
}

#[tokio::test]
async fn a_wrong_secret_is_an_authentication_error_an_operator_understands() {
    let standin = ArmStandin::start(1).await;
    let wrong = "not-the-secret-value-123";
    let fleet = fleet_with(standin.azure_config(SECRET_VAR), wrong);

    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    let message = error.to_string();
    for expected in [
        "refused the client secret credential",
        "client id 3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
        "secret from environment variable STANDIN_AZURE_SECRET",
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided",
    ] {
        assert!(
            message.contains(expected),
            "missing `{expected}` in: {message}"
        );
    }
    assert!(!message.contains(wrong), "the secret leaked: {message}");
    assert!(
        !format!("{fleet:?}").contains(wrong),
        "the secret leaked into Debug"
    );
    assert!(!message.contains('\n'), "one line: {message}");
}

#[tokio::test]
async fn a_refused_secret_is_not_asked_for_again_and_again() {
    let standin = ArmStandin::start(1).await;
    let fleet = fleet_with(standin.azure_config(SECRET_VAR), "wrong");
    for _ in 0..5 {
        assert_eq!(
            fleet.read_fleet().await.unwrap_err().kind(),
            ErrorKind::Authentication
        );
        assert_eq!(
            fleet.verify_access().await.unwrap_err().kind(),
            ErrorKind::Authentication
        );
    }
    assert_eq!(standin.count(Route::Token), 1);
    assert_eq!(
        standin.count(Route::GetScaleSet),
        0,
        "no ARM call without a token"
    );
}

#[tokio::test]
async fn a_good_secret_fetches_one_token_for_many_calls() {
    let standin = ArmStandin::start(1).await;
    let fleet = fleet(&standin);
    for _ in 0..3 {
        fleet.read_fleet().await.unwrap();
    }
    fleet.grow(1, &IdempotencyToken::new("t")).await.unwrap();
    assert_eq!(standin.count(Route::Token), 1);
}

#[tokio::test]
async fn a_missing_secret_variable_is_named() {
    let standin = ArmStandin::start(1).await;
    let env = AzureEnvironment::empty();
    let fleet = ScaleSetFleet::with_environment(standin.azure_config("FLEET_SECRET"), env).unwrap();
    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(
        error
            .to_string()
            .contains("environment variable FLEET_SECRET"),
        "{error}"
    );
    assert_eq!(standin.count(Route::Token), 0);
}

#[tokio::test]
async fn an_unknown_client_and_an_unknown_tenant_are_authentication_errors() {
    let standin = ArmStandin::start(1).await;
    let mut config = standin.azure_config(SECRET_VAR);
    config.credential = fleetscale_adapters::azure::CredentialConfig::ClientSecret {
        tenant_id: arm_standin::TENANT_ID.into(),
        client_id: "00000000-0000-4000-8000-000000000000".into(),
        secret_env: Some(SECRET_VAR.into()),
        secret_file: None,
    };
    let error = fleet_with(config, CLIENT_SECRET)
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(error.to_string().contains("AADSTS700016"), "{error}");

    let mut config = standin.azure_config(SECRET_VAR);
    config.credential = fleetscale_adapters::azure::CredentialConfig::ClientSecret {
        tenant_id: "contoso.onmicrosoft.com".into(),
        client_id: arm_standin::CLIENT_ID.into(),
        secret_env: Some(SECRET_VAR.into()),
        secret_file: None,
    };
    let error = fleet_with(config, CLIENT_SECRET)
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(error.to_string().contains("AADSTS90002"), "{error}");
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_transient() {
    let standin = ArmStandin::start(1).await;
    let mut config = standin.azure_config(SECRET_VAR);
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    config.authority_host = format!("http://{closed}");
    let error = fleet_with(config, CLIENT_SECRET)
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    assert!(
        error.to_string().contains("could not reach Entra ID"),
        "{error}"
    );
}

#[tokio::test]
async fn a_token_resource_manager_rejects_is_an_authentication_error() {
    let standin = ArmStandin::start(1).await;
    let fleet = fleet(&standin);
    fleet.read_fleet().await.unwrap();
    standin.revoke_tokens();
    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    assert!(
        error.to_string().contains("InvalidAuthenticationToken"),
        "{error}"
    );
}

#[tokio::test]
async fn a_forbidden_write_is_a_permission_error_naming_the_action() {
    let standin = ArmStandin::start(1).await;
    standin.set_permissions(&["*/read"], &[]);
    let error = fleet(&standin)
        .grow(1, &IdempotencyToken::new("t"))
        .await
        .unwrap_err();
    match &error {
        AdapterError::Permission { action, message } => {
            assert_eq!(action, "Microsoft.Compute/virtualMachineScaleSets/write");
            assert!(message.contains("AuthorizationFailed"), "{message}");
        }
        other => panic!("expected a permission error, got {other}"),
    }
    assert!(
        error
            .to_string()
            .contains("permission denied for Microsoft.Compute/virtualMachineScaleSets/write")
    );
    assert_eq!(standin.capacity(), 1);
}

#[tokio::test]
async fn a_forbidden_delete_names_the_delete_action() {
    let standin = ArmStandin::start(2).await;
    standin.set_permissions(
        &["*"],
        &["Microsoft.Compute/virtualMachineScaleSets/delete/action"],
    );
    let error = fleet(&standin).shrink(&["1".into()]).await.unwrap_err();
    assert!(
        matches!(&error, AdapterError::Permission { action, .. } if action == "Microsoft.Compute/virtualMachineScaleSets/delete/action"),
        "{error}"
    );
}

#[tokio::test]
async fn throttling_carries_retry_after() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        Route::GetScaleSet,
        Fault::Throttle {
            retry_after_secs: 7,
        },
        1,
    );
    let error = fleet(&standin).read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(error.to_string().contains("TooManyRequests"), "{error}");
    // Sent once: retrying is the Retry decorator's decision.
    assert_eq!(standin.count(Route::GetScaleSet), 1);
}

#[tokio::test]
async fn quota_and_allocation_failures_are_capacity_errors() {
    let standin = ArmStandin::start(3).await;
    standin.set_quota(Some(4));
    let fleet = fleet(&standin);
    let error = fleet
        .grow(2, &IdempotencyToken::new("q"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Capacity, "{error}");
    assert!(error.to_string().contains("quota"), "{error}");
    assert_eq!(standin.capacity(), 3);

    standin.set_quota(None);
    standin.fail_allocations(1);
    let error = fleet
        .grow(1, &IdempotencyToken::new("a"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Capacity, "{error}");
    assert!(error.to_string().contains("AllocationFailed"), "{error}");

    standin.fail_next(Route::UpdateScaleSet, Fault::SkuNotAvailable, 1);
    let error = fleet
        .grow(1, &IdempotencyToken::new("s"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Capacity, "{error}");
}

#[tokio::test]
async fn conflicts_and_server_errors_are_transient() {
    let standin = ArmStandin::start(1).await;
    let fleet = fleet(&standin);
    standin.fail_next(Route::UpdateScaleSet, Fault::Conflict, 1);
    let error = fleet
        .grow(1, &IdempotencyToken::new("c"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    standin.fail_next(Route::ListVms, Fault::ServerError, 1);
    assert_eq!(
        fleet.read_fleet().await.unwrap_err().kind(),
        ErrorKind::Transient
    );
    // The conflict wrote nothing; the same token grows now.
    assert_eq!(
        fleet
            .grow(1, &IdempotencyToken::new("c"))
            .await
            .unwrap()
            .launched
            .len(),
        1
    );
}

#[tokio::test]
async fn a_missing_scale_set_is_not_found() {
    let standin = ArmStandin::start(1).await;
    let mut config = standin.azure_config(SECRET_VAR);
    config.scale_set = "no-such-vmss".into();
    let error = fleet_with(config, CLIENT_SECRET)
        .read_fleet()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert!(error.to_string().contains("no-such-vmss"), "{error}");
}

#[tokio::test]
async fn an_api_version_resource_manager_does_not_serve_is_invalid() {
    let standin = ArmStandin::start(1).await;
    standin.set_api_version("2099-01-01");
    let error = fleet(&standin).read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(
        error.to_string().contains("NoRegisteredProviderFound"),
        "{error}"
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_any_call() {
    let mut config = AzureConfig::new("not-a-guid", "rg", "vmss");
    config.arm_endpoint = "http://example.com".into();
    let error = ScaleSetFleet::with_environment(config, AzureEnvironment::empty()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    let message = error.to_string();
    assert!(
        message.contains("subscription_id") && message.contains("arm_endpoint"),
        "{message}"
    );
}
