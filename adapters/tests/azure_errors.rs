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

/// Joining the scale set's subnet, as a grow of a set in another resource group's virtual
/// network needs.
const SUBNET_JOIN: &str = "Microsoft.Network/virtualNetworks/subnets/join/action";
const SUBNET: &str = "/subscriptions/2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a/resourceGroups/network-rg/providers/Microsoft.Network/virtualNetworks/hub-vnet/subnets/web";

#[tokio::test]
async fn a_linked_authorization_failure_names_the_action_the_identity_lacks() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        Route::UpdateScaleSet,
        Fault::LinkedAuthorizationFailed {
            linked_action: SUBNET_JOIN.into(),
            linked_scope: SUBNET.into(),
        },
        1,
    );
    let error = fleet(&standin)
        .grow(1, &IdempotencyToken::new("t"))
        .await
        .unwrap_err();
    match &error {
        AdapterError::Permission { action, message } => {
            // Not the write it holds on the scale set, which the message names first.
            assert_eq!(action, SUBNET_JOIN);
            assert!(message.contains("LinkedAuthorizationFailed"), "{message}");
            assert!(
                message.contains(&format!("on linked scope {SUBNET}")),
                "the linked scope is not named: {message}"
            );
        }
        other => panic!("expected a permission error, got {other}"),
    }
    assert!(
        error
            .to_string()
            .starts_with(&format!("permission denied for {SUBNET_JOIN}")),
        "{error}"
    );
    assert_eq!(standin.capacity(), 1);
}

#[tokio::test]
async fn a_policy_denial_is_reported_as_the_policy_s_not_as_a_missing_role() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        Route::UpdateScaleSet,
        Fault::RequestDisallowedByPolicy {
            assignment: "Allowed VM sizes in production".into(),
            definition: "Allowed virtual machine size SKUs".into(),
        },
        1,
    );
    let error = fleet(&standin)
        .grow(1, &IdempotencyToken::new("t"))
        .await
        .unwrap_err();
    assert!(
        !matches!(error, AdapterError::Permission { .. }),
        "a policy is not a role: {error}"
    );
    assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    for expected in [
        "Azure Policy denied the request, not a missing role",
        "policy assignment 'Allowed VM sizes in production'",
        "/providers/Microsoft.Authorization/policyAssignments/allowed-vm-sizes-in-production",
        "policy 'Allowed virtual machine size SKUs'",
        "RequestDisallowedByPolicy",
        "PATCH virtualMachineScaleSets/web-vmss",
    ] {
        assert!(
            message.contains(expected),
            "missing `{expected}` in: {message}"
        );
    }
    assert_eq!(standin.capacity(), 1);
}

#[tokio::test]
async fn compute_s_throttled_answer_is_throttling_with_its_retry_after_and_policy() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        Route::ListVms,
        Fault::Throttle {
            retry_after_secs: 1200,
        },
        1,
    );
    let error = fleet(&standin).read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled, "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1200)));
    let message = error.to_string();
    assert!(
        message.contains("OperationNotAllowed")
            && message.contains("TooManyRequests: policy HighCostGetVMScaleSet3Min"),
        "the spent policy is not named: {message}"
    );
}

#[tokio::test]
async fn a_budget_reported_spent_holds_the_next_write_without_sending_it() {
    let standin = ArmStandin::start(1).await;
    // One write left in the scale set's update budget: the first grow takes it, and the
    // answer reports 0 left.
    standin.set_update_budget(1);
    let fleet = fleet(&standin);
    fleet.grow(1, &IdempotencyToken::new("a")).await.unwrap();
    assert_eq!(standin.count(Route::UpdateScaleSet), 1);

    let error = fleet
        .grow(1, &IdempotencyToken::new("b"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled, "{error}");
    let wait = error.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "held for the policy's 3-minute window, at most a minute: {wait:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("was not sent") && message.contains("VMScaleSetActions3Min"),
        "{message}"
    );
    assert_eq!(
        standin.count(Route::UpdateScaleSet),
        1,
        "the write was held back, not sent"
    );
    assert_eq!(standin.capacity(), 2);
    // Reads count against other budgets and go on.
    assert_eq!(fleet.read_fleet().await.unwrap().target_size, Some(2));

    // Once the window has passed (the bucket refilled at 4 a minute), the write goes.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(180)).await;
    tokio::time::resume();
    fleet.grow(1, &IdempotencyToken::new("b")).await.unwrap();
    assert_eq!(standin.count(Route::UpdateScaleSet), 2);
    assert_eq!(standin.capacity(), 3);
}

/// A grow (or a shrink) under way when another writer changes the scale set's capacity:
/// Compute ends its operation `OperationPreempted`, and the call ends without an error.
async fn preempted<T>(
    standin: &ArmStandin,
    older: impl std::future::Future<Output = fleetscale_adapters::Result<T>>,
) -> fleetscale_adapters::Result<T> {
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_millis(200);
    let newer = fleet_with(config, CLIENT_SECRET);
    let started = std::time::Instant::now();
    let (result, ()) = tokio::join!(older, async {
        while standin.running_operations() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        newer
            .grow(1, &IdempotencyToken::new("newer"))
            .await
            .unwrap();
    });
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the older call waited for its timeout instead of ending with its operation"
    );
    result
}

fn patient(standin: &ArmStandin) -> ScaleSetFleet {
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_secs(20);
    fleet_with(config, CLIENT_SECRET)
}

#[tokio::test]
async fn a_grow_preempted_by_a_newer_write_ends_without_an_error() {
    let standin = ArmStandin::start(2).await;
    standin.set_polls_before_done(u32::MAX);
    let older = patient(&standin);
    let token = IdempotencyToken::new("older");
    let outcome = preempted(&standin, older.grow(2, &token))
        .await
        .unwrap_or_else(|e| panic!("a superseded grow is not a failed one: {e}"));
    assert_eq!(outcome.requested, 2);
    assert_eq!(standin.capacity(), 5, "the newer write set the size");
}

#[tokio::test]
async fn a_shrink_preempted_by_a_newer_write_ends_without_an_error() {
    let standin = ArmStandin::start(3).await;
    standin.set_polls_before_done(u32::MAX);
    let older = patient(&standin);
    let ids = ["0".to_owned()];
    let outcome = preempted(&standin, older.shrink(&ids))
        .await
        .unwrap_or_else(|e| panic!("a superseded shrink is not a failed one: {e}"));
    assert_eq!(outcome.removed, ["0"]);
    assert!(standin.vms().iter().all(|vm| vm.instance_id != "0"));
}
