//! A stand-in for Azure Resource Manager's VM Scale Set endpoints and Entra ID's token
//! endpoint: an HTTP server on a free 127.0.0.1 port that behaves like Azure where the
//! fleetscale adapter depends on it.
//!
//! - `POST /{tenant}/oauth2/v2.0/token` issues tokens only to [`CLIENT_ID`] with
//!   [`CLIENT_SECRET`] (or a federated [`FEDERATED_TOKEN`]), answering as Entra ID does
//!   otherwise (`invalid_client`, `AADSTS7000215`…); `GET /metadata/identity/oauth2/token`
//!   plays the instance metadata service for managed identities.
//! - Resource Manager routes reject a missing or unknown bearer token (401) and a wrong
//!   `api-version` (400), enforce the role assignments set by
//!   [`ArmStandin::set_assignments`] on every route, each at its scope (403
//!   `AuthorizationFailed` naming the action; the operation-status read only from an
//!   assignment on the resource group), and answer the permissions check.
//! - [`ArmStandin::behave_as_arm`] switches on the least-privilege roles, operations of
//!   several polls, a VM list that lags the capacity and overprovisioning at once.
//! - Capacity updates and `deleteInstances` are answered 202 with an
//!   `Azure-AsyncOperation` URL that reports `InProgress` a set number of times, then
//!   `Succeeded` (or `Failed` with `AllocationFailed` when asked); VMs are created in
//!   state `Creating` and run when their operation ends; deleted ones go through
//!   `Deleting`. State persists, so later reads see earlier writes.
//! - Faults on request: 429 with `Retry-After`, 409 quota and conflict errors, 403, 401,
//!   500 ([`ArmStandin::fail_next`]); a quota on capacity ([`ArmStandin::set_quota`]).
//!
//! It needs only axum's base features (`http1`, `tokio`), tokio, serde_json and
//! humantime, so any test of the workspace can include it with `#[path]`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

pub const TENANT_ID: &str = "8f2b7a3c-1d4e-4f5a-9b6c-7d8e9f0a1b2c";
pub const CLIENT_ID: &str = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
pub const CLIENT_SECRET: &str = "standin-client-secret-Q~v3ry.s3cret";
/// The service principal's object id, as tokens carry it.
pub const PRINCIPAL_OBJECT_ID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
/// The federated (workload identity) token the tenant trusts for [`CLIENT_ID`].
pub const FEDERATED_TOKEN: &str =
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZmxlZXQifQ.";
/// The user-assigned managed identity the metadata endpoint knows.
pub const MANAGED_IDENTITY_CLIENT_ID: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
pub const MANAGED_IDENTITY_OBJECT_ID: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";
pub const SUBSCRIPTION_ID: &str = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a";
pub const RESOURCE_GROUP: &str = "fleet-rg";
pub const SCALE_SET: &str = "web-vmss";
pub const LOCATION: &str = "westeurope";
pub const API_VERSION: &str = "2024-07-01";
pub const PERMISSIONS_API_VERSION: &str = "2022-04-01";

/// What a request was for, to count requests and aim faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Token,
    ManagedIdentity,
    GetScaleSet,
    UpdateScaleSet,
    ListVms,
    UpdateVm,
    DeleteInstances,
    OperationStatus,
    Permissions,
}

impl Route {
    /// The ARM action a request of this route needs.
    pub fn action(self) -> &'static str {
        match self {
            Route::GetScaleSet => "Microsoft.Compute/virtualMachineScaleSets/read",
            Route::UpdateScaleSet => "Microsoft.Compute/virtualMachineScaleSets/write",
            Route::DeleteInstances => "Microsoft.Compute/virtualMachineScaleSets/delete/action",
            Route::ListVms => "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
            Route::UpdateVm => "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
            Route::Permissions => "Microsoft.Authorization/permissions/read",
            Route::OperationStatus => "Microsoft.Compute/locations/operations/read",
            Route::Token | Route::ManagedIdentity => "",
        }
    }
}

/// A failure a test asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After`, as Compute throttles: `OperationNotAllowed` with a
    /// `TooManyRequests` detail whose target is the route's throttling policy, and that
    /// policy at 0 in `x-ms-ratelimit-remaining-resource` ("Troubleshooting API throttling
    /// errors", Throttling error details; learn.microsoft.com/troubleshoot/azure/
    /// virtual-machines/troubleshooting-throttling-errors). The permissions check, served
    /// by Resource Manager itself, answers as Resource Manager throttles:
    /// `SubscriptionRequestsThrottled`.
    Throttle { retry_after_secs: u64 },
    /// 403 LinkedAuthorizationFailed: the identity may perform the route's action on the
    /// scale set, but not `linked_action` on `linked_scope`, a resource the request refers
    /// to (a subnet to join, a user-assigned identity to assign). Azure's message: "The
    /// client '…' with object id '…' has permission to perform action 'A' on scope 'S';
    /// however, it does not have permission to perform action(s) 'B' on the linked
    /// scope(s) 'L' or the linked scope(s) are invalid."
    LinkedAuthorizationFailed {
        linked_action: String,
        linked_scope: String,
    },
    /// 403 RequestDisallowedByPolicy: an Azure Policy assignment (effect deny) refuses the
    /// request, in Resource Manager's format: "Resource '…' was disallowed by policy.
    /// Policy identifiers: '[{"policyAssignment":{"name","id"},"policyDefinition":{"name",
    /// "id"}}]'." with an `additionalInfo` entry of type `PolicyViolation` ("Resolve errors
    /// for request disallowed by policy", learn.microsoft.com/azure/azure-resource-manager/
    /// troubleshooting/error-policy-requestdisallowedbypolicy).
    RequestDisallowedByPolicy {
        /// The assignment's display name.
        assignment: String,
        /// The policy definition's display name.
        definition: String,
    },
    /// 403 AuthorizationFailed naming the route's action.
    Forbidden,
    /// 401 InvalidAuthenticationToken.
    Unauthorized,
    /// 500 InternalServerError.
    ServerError,
    /// 409 OperationNotAllowed: another operation is in progress.
    Conflict,
    /// 409 OperationNotAllowed: the cores quota would be exceeded.
    QuotaExceeded,
    /// 409 SkuNotAvailable.
    SkuNotAvailable,
    /// The request is carried out, then its answer is lost (502 from a gateway).
    LoseAnswer,
    /// 503: Entra ID's token endpoint answers `temporarily_unavailable`, the managed
    /// identity endpoint a transient error, Resource Manager ServiceUnavailable.
    Unavailable,
    /// The managed identity endpoint's 404, "IMDS endpoint is updating" (Resource Manager
    /// answers it as [`Fault::Unavailable`]).
    ImdsUpdating,
    /// The managed identity endpoint's 410, "IMDS is going through updates" (Resource
    /// Manager answers it as [`Fault::Unavailable`]).
    ImdsUpgrading,
}

/// A request budget the stand-in keeps as a token bucket, as Compute and Resource Manager
/// do. Compute: "Each API request initiated by the user consumes one token. When the token
/// count depletes to zero, subsequent API requests are throttled. Bucket is replenished
/// with new tokens every minute at a consistent rate", with per-resource rates and
/// bucket sizes by policy ("Compute throttling limits", learn.microsoft.com/azure/
/// virtual-machines/compute-throttling-limits); what is left is reported on every answer
/// in `x-ms-ratelimit-remaining-resource` as `<source RP>/<policy>;<count>` ("Troubleshooting
/// API throttling errors", Call rate informational response headers). Resource Manager:
/// per subscription, reads 250 refilled at 25 a second, writes 200 at 10 a second,
/// reported in `x-ms-ratelimit-remaining-subscription-reads` / `-writes` ("Understand how
/// Azure Resource Manager throttles requests", learn.microsoft.com/azure/
/// azure-resource-manager/management/request-limits-and-throttling). Until a test sets one
/// ([`ArmStandin::set_budget`]), each bucket is large enough that no test meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Scale set updates and instance deletions (`PATCH`, `deleteInstances`): Compute's
    /// scale set Update and Delete policies, 4 tokens a minute, 12 at most.
    ScaleSetUpdate,
    /// Reading the scale set: Compute's Low Cost Get, 12 a minute, 36 at most.
    ScaleSetRead,
    /// Listing the scale set's VMs: Compute's High Cost Get, 10 a minute, 30 at most.
    VmList,
    /// Reading an operation's status: Compute's Get Operation, 15 a minute, 45 at most.
    OperationStatus,
    /// Resource Manager's subscription reads.
    SubscriptionReads,
    /// Resource Manager's subscription writes.
    SubscriptionWrites,
}

impl Budget {
    /// The policy as Compute names it in `x-ms-ratelimit-remaining-resource` (the names
    /// of the scale set read, VM list and operation policies as Compute answers them; the
    /// update policy's as the brief names it), or Resource Manager's header.
    pub fn name(self) -> &'static str {
        match self {
            Budget::ScaleSetUpdate => "Microsoft.Compute/VMScaleSetActions3Min",
            Budget::ScaleSetRead => "Microsoft.Compute/GetVMScaleSet3Min",
            Budget::VmList => "Microsoft.Compute/HighCostGetVMScaleSet3Min",
            Budget::OperationStatus => "Microsoft.Compute/GetOperation3Min",
            Budget::SubscriptionReads => "x-ms-ratelimit-remaining-subscription-reads",
            Budget::SubscriptionWrites => "x-ms-ratelimit-remaining-subscription-writes",
        }
    }

    /// The documented bucket size and refill, in tokens a second.
    fn documented(self) -> (f64, f64) {
        match self {
            Budget::ScaleSetUpdate => (12.0, 4.0 / 60.0),
            Budget::ScaleSetRead => (36.0, 12.0 / 60.0),
            Budget::VmList => (30.0, 10.0 / 60.0),
            Budget::OperationStatus => (45.0, 15.0 / 60.0),
            Budget::SubscriptionReads => (250.0, 25.0),
            Budget::SubscriptionWrites => (200.0, 10.0),
        }
    }

    fn is_compute(self) -> bool {
        !matches!(self, Budget::SubscriptionReads | Budget::SubscriptionWrites)
    }

    /// The Compute policy and Resource Manager budget a request of `route` spends.
    fn of_route(route: Route) -> Vec<Budget> {
        match route {
            Route::GetScaleSet => vec![Budget::ScaleSetRead, Budget::SubscriptionReads],
            Route::ListVms => vec![Budget::VmList, Budget::SubscriptionReads],
            Route::UpdateScaleSet | Route::DeleteInstances => {
                vec![Budget::ScaleSetUpdate, Budget::SubscriptionWrites]
            }
            // Updates of single VMs are not the scale set's actions; Compute's own policy
            // for them is not modelled, only Resource Manager's write budget.
            Route::UpdateVm => vec![Budget::SubscriptionWrites],
            Route::OperationStatus => vec![Budget::OperationStatus, Budget::SubscriptionReads],
            Route::Permissions => vec![Budget::SubscriptionReads],
            Route::Token | Route::ManagedIdentity => Vec::new(),
        }
    }
}

/// A token bucket on tokio's clock (so a test on a paused clock refills it by advancing).
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    size: f64,
    per_second: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn unlimited() -> Bucket {
        Bucket {
            tokens: 1e9,
            size: 1e9,
            per_second: 1e9,
            at: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.size);
        self.at = now;
    }

    fn left(&mut self) -> u64 {
        self.refill();
        self.tokens.max(0.0).floor() as u64
    }

    /// Whole seconds until a token is back (at least 1), for `Retry-After`.
    fn wait_secs(&self) -> u64 {
        (((1.0 - self.tokens) / self.per_second).ceil() as u64).max(1)
    }
}

/// Where a role assignment applies. Azure RBAC: an assignment at a scope covers every
/// resource below it ("Understand scope for Azure RBAC", learn.microsoft.com/azure/
/// role-based-access-control/scope-overview).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The scale set's resource group (and so the scale set).
    ResourceGroup,
    /// The scale set alone.
    ScaleSet,
}

/// A role assignment of the identity: a role's actions and not-actions at a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub scope: Scope,
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
}

impl Assignment {
    pub fn new(scope: Scope, actions: &[&str]) -> Assignment {
        Assignment {
            scope,
            actions: actions.iter().map(|a| a.to_string()).collect(),
            not_actions: Vec::new(),
        }
    }

    fn grants(&self, action: &str) -> bool {
        let matches =
            |pattern: &String| glob(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase());
        self.actions.iter().any(matches) && !self.not_actions.iter().any(matches)
    }
}

/// The scale set operator role of the README and terraform/azure, assigned on the scale
/// set, and the operation-status read assigned on its resource group: the least
/// privilege with which the adapter works.
pub fn least_privilege() -> Vec<Assignment> {
    vec![
        Assignment::new(
            Scope::ScaleSet,
            &[
                "Microsoft.Compute/virtualMachineScaleSets/read",
                "Microsoft.Compute/virtualMachineScaleSets/write",
                "Microsoft.Compute/virtualMachineScaleSets/delete/action",
                "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
                "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
                "Microsoft.Authorization/permissions/read",
            ],
        ),
        Assignment::new(
            Scope::ResourceGroup,
            &["Microsoft.Compute/locations/operations/read"],
        ),
    ]
}

/// One VM of the scale set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinVm {
    pub instance_id: String,
    /// `Creating`, `Succeeded`, `Deleting`, `Failed`.
    pub provisioning: String,
    /// `running`, `starting`, `deallocated`… (`None` before the VM has booted).
    pub power: Option<String>,
    pub zone: Option<String>,
    pub protected: bool,
    pub created: SystemTime,
    /// The VM's own tags (a drain's mark).
    pub tags: BTreeMap<String, String>,
    /// The load balancer backend pools its IP configuration is in.
    pub pools: Vec<String>,
}

#[derive(Debug, Clone)]
enum Effect {
    Create(Vec<String>),
    Delete(Vec<String>),
    /// A VM's model was updated: applied when the operation ends.
    Update(String),
}

#[derive(Debug, Clone)]
struct Operation {
    polls_left: u32,
    effect: Effect,
    /// Overprovisioned VMs, deleted when the operation ends.
    extras: Vec<String>,
    failure: Option<(String, String)>,
    done: bool,
}

#[derive(Debug, Clone)]
struct Principal {
    object_id: String,
    client_id: String,
    managed: bool,
}

struct Inner {
    base_url: String,
    capacity: u32,
    tags: serde_json::Map<String, Value>,
    etag: u64,
    next_instance: u64,
    /// The backend pool new VMs join ([`ArmStandin::set_backend_pool`]).
    backend_pool: Option<String>,
    vms: BTreeMap<u64, StandinVm>,
    zones: Vec<String>,
    operations: HashMap<String, Operation>,
    next_operation: u64,
    polls_before_done: u32,
    poll_retry_after: Option<u64>,
    faults: HashMap<Route, VecDeque<Fault>>,
    allocation_failures: u32,
    quota: Option<u32>,
    assignments: Vec<Assignment>,
    /// List reads a new VM stays out of the VM list for (the list lags the capacity).
    list_lag_reads: u32,
    /// VMs created before their list lag ends, by id: list reads left.
    unlisted: HashMap<String, u32>,
    overprovision: bool,
    orchestration_mode: &'static str,
    tokens: HashMap<String, (SystemTime, Principal)>,
    token_lifetime: Duration,
    counts: HashMap<Route, u32>,
    api_version: String,
    page_size: usize,
    last_update_body: Option<Value>,
    bump_etag_after_read: bool,
    trusted_thumbprints: Vec<String>,
    assertions: Vec<String>,
    /// Compute's and Resource Manager's request budgets ([`Budget`]), made when first used.
    budgets: HashMap<Budget, Bucket>,
}

/// The running stand-in. Dropping it stops the server.
pub struct ArmStandin {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ArmStandin {
    /// A scale set of `capacity` running VMs, spread over zones 1, 2 and 3.
    pub async fn start(capacity: u32) -> ArmStandin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let base_url = format!("http://{addr}");
        let inner = Arc::new(Mutex::new(Inner {
            base_url,
            capacity: 0,
            tags: serde_json::Map::new(),
            etag: 1,
            next_instance: 0,
            backend_pool: None,
            vms: BTreeMap::new(),
            zones: vec!["1".into(), "2".into(), "3".into()],
            operations: HashMap::new(),
            next_operation: 1,
            polls_before_done: 2,
            poll_retry_after: None,
            faults: HashMap::new(),
            allocation_failures: 0,
            quota: None,
            assignments: vec![Assignment::new(Scope::ResourceGroup, &["*"])],
            list_lag_reads: 0,
            unlisted: HashMap::new(),
            overprovision: false,
            orchestration_mode: "Uniform",
            tokens: HashMap::new(),
            token_lifetime: Duration::from_secs(3600),
            counts: HashMap::new(),
            api_version: API_VERSION.into(),
            page_size: 50,
            last_update_body: None,
            bump_etag_after_read: false,
            trusted_thumbprints: Vec::new(),
            assertions: Vec::new(),
            budgets: HashMap::new(),
        }));
        {
            let mut state = inner.lock().unwrap();
            for _ in 0..capacity {
                let id = state.create_vm();
                let vm = state.vms.get_mut(&id).unwrap();
                vm.provisioning = "Succeeded".into();
                vm.power = Some("running".into());
            }
            state.capacity = capacity;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .expect("stand-in server");
        });
        ArmStandin {
            addr,
            inner,
            shutdown: Some(tx),
        }
    }

    /// `http://127.0.0.1:PORT`: both the ARM endpoint and the authority host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The managed identity (IMDS) token endpoint.
    pub fn managed_identity_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.url())
    }

    /// An adapter config for the stand-in's scale set, signing in with the client secret
    /// from environment variable `secret_env`, polling every 20 ms.
    pub fn azure_config(&self, secret_env: &str) -> fleetscale_adapters::azure::AzureConfig {
        let mut config = fleetscale_adapters::azure::AzureConfig::new(
            SUBSCRIPTION_ID,
            RESOURCE_GROUP,
            SCALE_SET,
        );
        config.arm_endpoint = self.url();
        config.authority_host = self.url();
        config.credential = fleetscale_adapters::azure::CredentialConfig::ClientSecret {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            secret_env: Some(secret_env.into()),
            secret_file: None,
        };
        config.poll_interval = Duration::from_millis(20);
        config.operation_timeout = Duration::from_secs(10);
        config.request_timeout = Duration::from_secs(5);
        config
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// The next `times` requests of `route` fail with `fault`.
    pub fn fail_next(&self, route: Route, fault: Fault, times: u32) {
        self.with(|s| {
            let queue = s.faults.entry(route).or_default();
            queue.extend(std::iter::repeat_n(fault, times as usize));
        })
    }

    /// Sets `budget` to `remaining` tokens; from then on it refills at its documented rate
    /// up to its documented size ([`Budget`]), and a request it has no token for is
    /// answered 429 with `Retry-After` until one is back.
    pub fn set_budget(&self, budget: Budget, remaining: u32) {
        let (size, per_second) = budget.documented();
        self.with(|s| {
            s.budgets.insert(
                budget,
                Bucket {
                    tokens: f64::from(remaining),
                    size,
                    per_second,
                    at: tokio::time::Instant::now(),
                },
            );
        })
    }

    /// [`Budget::ScaleSetUpdate`]: what is left of the scale set's update and delete
    /// budget (Compute's: 4 a minute, 12 at most).
    pub fn set_update_budget(&self, remaining: u32) {
        self.set_budget(Budget::ScaleSetUpdate, remaining)
    }

    /// Tokens left in `budget`.
    pub fn budget_left(&self, budget: Budget) -> u64 {
        self.with(|s| s.bucket(budget).left())
    }

    /// How many `InProgress` answers an operation gives before it ends (`u32::MAX`: it
    /// never ends by polling; see [`ArmStandin::complete_operations`]).
    pub fn set_polls_before_done(&self, polls: u32) {
        self.with(|s| s.polls_before_done = polls)
    }

    /// `Retry-After` (seconds) on operation status answers.
    pub fn set_poll_retry_after(&self, secs: Option<u64>) {
        self.with(|s| s.poll_retry_after = secs)
    }

    /// Ends every running operation now, as if it had been polled to its end.
    pub fn complete_operations(&self) {
        self.with(|s| {
            let ids: Vec<String> = s.operations.keys().cloned().collect();
            for id in ids {
                s.finish_operation(&id);
            }
        })
    }

    /// The next `times` capacity increases fail their operation with AllocationFailed.
    pub fn fail_allocations(&self, times: u32) {
        self.with(|s| s.allocation_failures = times)
    }

    /// Capacity beyond `max` is refused with a quota error (409 OperationNotAllowed).
    pub fn set_quota(&self, max: Option<u32>) {
        self.with(|s| s.quota = max)
    }

    /// The identity's permissions: one role assigned on the resource group, reported by
    /// the permissions check and enforced on every request.
    pub fn set_permissions(&self, actions: &[&str], not_actions: &[&str]) {
        let mut assignment = Assignment::new(Scope::ResourceGroup, actions);
        assignment.not_actions = not_actions.iter().map(|a| a.to_string()).collect();
        self.set_assignments(vec![assignment]);
    }

    /// The identity's role assignments, each at its scope.
    pub fn set_assignments(&self, assignments: Vec<Assignment>) {
        self.with(|s| s.assignments = assignments)
    }

    /// New VMs stay out of the VM list for this many list reads after the capacity that
    /// created them was accepted, or until their operation ends. Compute's VM list is served from a cache that lags the
    /// scale set's model ("Azure Resource Manager ... eventual consistency": reads after a
    /// write may return earlier data; learn.microsoft.com/azure/azure-resource-manager/
    /// management/resource-providers-and-types).
    pub fn set_list_lag(&self, reads: u32) {
        self.with(|s| s.list_lag_reads = reads)
    }

    /// Overprovisioning (`properties.overprovision`, the default for Uniform scale sets):
    /// a capacity increase creates more VMs than asked and deletes the extra ones once the
    /// asked-for ones are provisioned; the extras are neither billed nor counted in
    /// capacity ("Design considerations for scale sets: Overprovisioning",
    /// learn.microsoft.com/azure/virtual-machine-scale-sets/
    /// virtual-machine-scale-sets-design-overview#overprovisioning).
    pub fn set_overprovision(&self, on: bool) {
        self.with(|s| s.overprovision = on)
    }

    /// The scale set's `properties.orchestrationMode`: `Uniform` or `Flexible`.
    pub fn set_orchestration_mode(&self, mode: &'static str) {
        self.with(|s| s.orchestration_mode = mode)
    }

    /// Resource Manager as it behaves on a real subscription, everything at once: the
    /// least-privilege role at its scopes, Compute's update budget (with its rate-limit
    /// headers), operations that take several polls, a VM list that lags the capacity, and
    /// overprovisioning.
    pub fn behave_as_arm(&self) {
        self.set_assignments(least_privilege());
        // Compute's documented budget for scale set updates and deletions, full. The read
        // budgets stay unlimited: tests run minutes of agent time in a second.
        self.set_update_budget(Budget::ScaleSetUpdate.documented().0 as u32);
        self.set_polls_before_done(3);
        self.set_list_lag(2);
        self.set_overprovision(true);
    }

    /// The `api-version` Resource Manager accepts (to see a client's wrong version refused).
    pub fn set_api_version(&self, version: &str) {
        self.with(|s| s.api_version = version.to_owned())
    }

    /// VMs per page of the VM list (a `nextLink` leads to the rest).
    pub fn set_page_size(&self, size: usize) {
        self.with(|s| s.page_size = size.max(1))
    }

    /// Forgets every issued token: Resource Manager answers 401 to them.
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear())
    }

    /// Trusts client assertions signed by the certificate with this SHA-256 thumbprint
    /// (base64url, the JWT's `x5t#S256`) for [`CLIENT_ID`]. The stand-in checks the
    /// assertion's header (PS256) and claims; the test can check its signature
    /// ([`ArmStandin::assertions`]).
    pub fn trust_certificate(&self, x5t_s256: &str) {
        self.with(|s| s.trusted_thumbprints.push(x5t_s256.to_owned()))
    }

    /// Every client assertion presented to the token endpoint.
    pub fn assertions(&self) -> Vec<String> {
        self.with(|s| s.assertions.clone())
    }

    /// Sets a tag on the scale set.
    pub fn set_tag(&self, name: &str, value: &str) {
        self.with(|s| {
            s.tags
                .insert(name.to_owned(), Value::String(value.to_owned()));
        })
    }

    /// The next read of the scale set is followed by another writer's change (a new etag).
    pub fn change_etag_after_next_read(&self) {
        self.with(|s| s.bump_etag_after_read = true)
    }

    /// Sets a VM's scale-in protection.
    /// The scale set's model puts its VMs in the load balancer backend pool `pool`: the
    /// VMs there now and every VM created later.
    pub fn set_backend_pool(&self, pool: &str) {
        self.with(|s| {
            s.backend_pool = Some(pool.to_owned());
            for vm in s.vms.values_mut() {
                vm.pools = vec![pool.to_owned()];
            }
        });
    }

    pub fn protect(&self, instance_id: &str, protected: bool) {
        self.with(|s| {
            if let Some(vm) = s.vms.values_mut().find(|vm| vm.instance_id == instance_id) {
                vm.protected = protected;
            }
        })
    }

    /// Sets a VM's power state (`running`, `deallocated`…).
    pub fn set_power(&self, instance_id: &str, power: Option<&str>) {
        self.with(|s| {
            if let Some(vm) = s.vms.values_mut().find(|vm| vm.instance_id == instance_id) {
                vm.power = power.map(str::to_owned);
            }
        })
    }

    /// Requests seen on `route`.
    pub fn count(&self, route: Route) -> u32 {
        self.with(|s| s.counts.get(&route).copied().unwrap_or(0))
    }

    pub fn capacity(&self) -> u32 {
        self.with(|s| s.capacity)
    }

    pub fn vms(&self) -> Vec<StandinVm> {
        self.with(|s| s.vms.values().cloned().collect())
    }

    pub fn tags(&self) -> serde_json::Map<String, Value> {
        self.with(|s| s.tags.clone())
    }

    /// The body of the last capacity update.
    pub fn last_update_body(&self) -> Option<Value> {
        self.with(|s| s.last_update_body.clone())
    }

    /// Operations not yet ended.
    pub fn running_operations(&self) -> usize {
        self.with(|s| s.operations.values().filter(|o| !o.done).count())
    }
}

impl Drop for ArmStandin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Inner {
    fn create_vm(&mut self) -> u64 {
        let n = self.next_instance;
        self.next_instance += 1;
        let zone =
            (!self.zones.is_empty()).then(|| self.zones[n as usize % self.zones.len()].clone());
        self.vms.insert(
            n,
            StandinVm {
                instance_id: n.to_string(),
                provisioning: "Creating".into(),
                power: None,
                zone,
                protected: false,
                created: SystemTime::now(),
                tags: BTreeMap::new(),
                pools: self.backend_pool.iter().cloned().collect(),
            },
        );
        n
    }

    fn scale_set_id(&self) -> String {
        format!(
            "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{SCALE_SET}"
        )
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    fn scale_set_json(&self) -> Value {
        let updating = self.operations.values().any(|o| !o.done);
        json!({
            "id": self.scale_set_id(),
            "name": SCALE_SET,
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": LOCATION,
            "tags": self.tags,
            "etag": self.etag(),
            "sku": {"name": "Standard_D2s_v5", "tier": "Standard", "capacity": self.capacity},
            "zones": self.zones,
            "properties": {
                "provisioningState": if updating { "Updating" } else { "Succeeded" },
                "orchestrationMode": self.orchestration_mode,
                "overprovision": self.overprovision,
                "uniqueId": "6b1e4d2a-0c3f-4b5e-8a7d-9f0e1d2c3b4a",
            },
        })
    }

    fn vm_json(&self, vm: &StandinVm, instance_view: bool) -> Value {
        let mut properties = json!({
            "provisioningState": vm.provisioning,
            "timeCreated": humantime::format_rfc3339_millis(vm.created).to_string(),
            "latestModelApplied": true,
            "protectionPolicy": {"protectFromScaleIn": vm.protected, "protectFromScaleSetActions": false},
        });
        if instance_view {
            let mut statuses = vec![json!({
                "code": format!("ProvisioningState/{}", vm.provisioning.to_ascii_lowercase()),
                "level": if vm.provisioning == "Failed" { "Error" } else { "Info" },
                "displayStatus": vm.provisioning,
            })];
            if let Some(power) = &vm.power {
                statuses.push(json!({"code": format!("PowerState/{power}"), "level": "Info", "displayStatus": format!("VM {power}")}));
            }
            properties["instanceView"] = json!({"statuses": statuses});
        }
        let pools: Vec<Value> = vm.pools.iter().map(|id| json!({"id": id})).collect();
        properties["networkProfileConfiguration"] = json!({"networkInterfaceConfigurations": [{
            "name": "nic",
            "properties": {"primary": true, "ipConfigurations": [{
                "name": "ipconfig",
                "properties": {"primary": true, "loadBalancerBackendAddressPools": pools},
            }]},
        }]});
        json!({
            "id": format!("{}/virtualMachines/{}", self.scale_set_id(), vm.instance_id),
            "tags": vm.tags,
            "name": format!("{SCALE_SET}_{}", vm.instance_id),
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": LOCATION,
            "instanceId": vm.instance_id,
            "zones": vm.zone.iter().collect::<Vec<_>>(),
            "sku": {"name": "Standard_D2s_v5", "tier": "Standard"},
            "properties": properties,
        })
    }

    fn start_operation(&mut self, effect: Effect, failure: Option<(String, String)>) -> String {
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.next_operation, self.next_operation
        );
        self.next_operation += 1;
        self.operations.insert(
            id.clone(),
            Operation {
                polls_left: self.polls_before_done,
                effect,
                extras: Vec::new(),
                failure,
                done: false,
            },
        );
        id
    }

    fn operation_url(&self, id: &str) -> String {
        format!(
            "{}/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Compute/locations/{LOCATION}/operations/{id}?api-version={API_VERSION}",
            self.base_url
        )
    }

    /// One step of a running operation's progress: a read of its status, or of the scale
    /// set it changes (operations run on in Azure whoever watches them).
    fn advance_operation(&mut self, id: &str) {
        let Some(operation) = self.operations.get_mut(id) else {
            return;
        };
        if operation.done {
            return;
        }
        if operation.polls_left > 0 {
            if operation.polls_left != u32::MAX {
                operation.polls_left -= 1;
            }
        } else {
            self.finish_operation(id);
        }
    }

    fn finish_operation(&mut self, id: &str) {
        let Some(operation) = self.operations.get_mut(id) else {
            return;
        };
        if operation.done {
            return;
        }
        operation.done = true;
        let failed = operation.failure.is_some();
        let extras = std::mem::take(&mut operation.extras);
        let effect = operation.effect.clone();
        self.vms.retain(|_, vm| !extras.contains(&vm.instance_id));
        self.unlisted.retain(|id, _| !extras.contains(id));
        match effect {
            Effect::Create(ids) => {
                // Once the operation has ended, its VMs are listed.
                self.unlisted.retain(|id, _| !ids.contains(id));
                for vm in self
                    .vms
                    .values_mut()
                    .filter(|vm| ids.contains(&vm.instance_id))
                {
                    if vm.provisioning == "Creating" {
                        if failed {
                            vm.provisioning = "Failed".into();
                        } else {
                            vm.provisioning = "Succeeded".into();
                            vm.power = Some("running".into());
                        }
                    }
                }
            }
            Effect::Delete(ids) => {
                self.vms.retain(|_, vm| !ids.contains(&vm.instance_id));
            }
            Effect::Update(id) => {
                if let Some(vm) = self
                    .vms
                    .values_mut()
                    .find(|vm| vm.instance_id == id && vm.provisioning == "Updating")
                {
                    vm.provisioning = if failed { "Failed" } else { "Succeeded" }.into();
                }
            }
        }
    }

    /// Whether an assignment covering the scale set grants `action` there.
    fn allowed(&self, action: &str) -> bool {
        self.assignments.iter().any(|a| a.grants(action))
    }

    /// Whether the identity may read an operation's status. The status URL is at
    /// subscription scope, not under the scale set: "To track the status of an
    /// asynchronous operation, you need sufficient permission at the resource group
    /// level. If you only have permission at the resource level, you can start the
    /// operation but you can't track its status." ("Track asynchronous Azure operations",
    /// Permissions for tracking async status; learn.microsoft.com/azure/
    /// azure-resource-manager/management/async-operations)
    fn may_track_operations(&self) -> bool {
        self.assignments
            .iter()
            .filter(|a| a.scope == Scope::ResourceGroup)
            .any(|a| a.grants(Route::OperationStatus.action()))
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|skip| {
                    text.is_char_boundary(head.len() + skip)
                        && glob(tail, &text[head.len() + skip..])
                })
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-ms-request-id", "5d3c2b1a-0f9e-4d8c-b7a6-958473625140")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}

fn entra_error(status: StatusCode, error: &str, description: &str, code: u32) -> Response {
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("{description}\r\nTrace ID: 1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b\r\nCorrelation ID: 6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d\r\nTimestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
            "correlation_id": "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d",
        }),
    )
}

impl Inner {
    fn bucket(&mut self, budget: Budget) -> &mut Bucket {
        self.budgets.entry(budget).or_insert_with(Bucket::unlimited)
    }

    /// Spends a token of each budget of `route`, or answers 429 as Compute (or Resource
    /// Manager) does when one has none left; nothing is spent then. Compute throttles after
    /// Resource Manager has authorized the request and passed it on.
    fn spend_budgets(&mut self, route: Route) -> Option<Response> {
        let budgets = Budget::of_route(route);
        for budget in &budgets {
            let bucket = self.bucket(*budget);
            if bucket.left() == 0 {
                let wait = bucket.wait_secs();
                let allowed = bucket.size as u64;
                return Some(if budget.is_compute() {
                    compute_throttled(budget.name(), allowed, wait)
                } else {
                    arm_throttled(*budget, wait)
                });
            }
        }
        for budget in budgets {
            self.bucket(budget).tokens -= 1.0;
        }
        None
    }

    /// Adds what is left of `route`'s budgets to an answer: Compute's
    /// `x-ms-ratelimit-remaining-resource` and Resource Manager's
    /// `x-ms-ratelimit-remaining-subscription-reads` / `-writes`.
    fn with_budget_headers(&mut self, route: Route, mut response: Response) -> Response {
        for budget in Budget::of_route(route) {
            let left = self.bucket(budget).left();
            let (name, value) = if budget.is_compute() {
                (
                    "x-ms-ratelimit-remaining-resource",
                    format!("{};{left}", budget.name()),
                )
            } else {
                (budget.name(), left.to_string())
            };
            response
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        response
    }
}

/// Compute's throttled answer ("Troubleshooting API throttling errors", Throttling error
/// details): 429, the spent policy at 0 in `x-ms-ratelimit-remaining-resource`,
/// `Retry-After`, and the body `OperationNotAllowed` with a `TooManyRequests` detail whose
/// target is the policy (without the provider, as the page shows it) and whose message is
/// the serialized `{"operationGroup", "startTime", "endTime", "allowedRequestCount",
/// "measuredRequestCount"}`.
fn compute_throttled(policy: &str, allowed: u64, retry_after_secs: u64) -> Response {
    let group = policy.rsplit('/').next().unwrap_or(policy);
    let counts = json!({
        "operationGroup": group,
        "startTime": "2026-01-01T00:00:00.0000000+00:00",
        "endTime": "2026-01-01T00:03:00.0000000+00:00",
        "allowedRequestCount": allowed,
        "measuredRequestCount": allowed + 1,
    });
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {
            "code": "OperationNotAllowed",
            "message": "The server rejected the request because too many requests have been received for this subscription.",
            "details": [{"code": "TooManyRequests", "target": group, "message": counts.to_string()}],
        }}),
    );
    let headers = response.headers_mut();
    headers.insert(
        "x-ms-ratelimit-remaining-resource",
        format!("{policy};0").parse().expect("header value"),
    );
    headers.insert(
        "retry-after",
        retry_after_secs.to_string().parse().expect("header value"),
    );
    response
}

/// Resource Manager's own throttled answer: 429 `SubscriptionRequestsThrottled`, "Number of
/// 'read' requests for subscription '…' actor '…' exceeded. Please try again after '…'
/// seconds after additional tokens are available.", with `Retry-After` ("Understand how
/// Azure Resource Manager throttles requests", Error code).
fn arm_throttled(budget: Budget, retry_after_secs: u64) -> Response {
    let kind = if budget == Budget::SubscriptionWrites {
        "write"
    } else {
        "read"
    };
    let mut response = arm_error(
        StatusCode::TOO_MANY_REQUESTS,
        "SubscriptionRequestsThrottled",
        &format!(
            "Number of '{kind}' requests for subscription '{SUBSCRIPTION_ID}' actor '{PRINCIPAL_OBJECT_ID}' exceeded. Please try again after '{retry_after_secs}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling"
        ),
    );
    let headers = response.headers_mut();
    headers.insert(budget.name(), "0".parse().expect("header value"));
    headers.insert(
        "retry-after",
        retry_after_secs.to_string().parse().expect("header value"),
    );
    response
}

fn fault_response(
    fault: &Fault,
    route: Route,
    principal: Option<&Principal>,
    scope: &str,
) -> Response {
    match fault {
        Fault::Throttle { retry_after_secs } => {
            match Budget::of_route(route).into_iter().find(|b| b.is_compute()) {
                Some(budget) => compute_throttled(
                    budget.name(),
                    budget.documented().0 as u64,
                    *retry_after_secs,
                ),
                None => arm_throttled(Budget::SubscriptionReads, *retry_after_secs),
            }
        }
        Fault::LinkedAuthorizationFailed {
            linked_action,
            linked_scope,
        } => {
            let (client, object) = principal
                .map(|p| (p.client_id.as_str(), p.object_id.as_str()))
                .unwrap_or((CLIENT_ID, PRINCIPAL_OBJECT_ID));
            arm_error(
                StatusCode::FORBIDDEN,
                "LinkedAuthorizationFailed",
                &format!(
                    "The client '{client}' with object id '{object}' has permission to perform action '{}' on scope '{scope}'; however, it does not have permission to perform action(s) '{linked_action}' on the linked scope(s) '{linked_scope}' or the linked scope(s) are invalid.",
                    route.action()
                ),
            )
        }
        Fault::RequestDisallowedByPolicy {
            assignment,
            definition,
        } => policy_denied(assignment, definition),
        Fault::Forbidden => forbidden(route.action(), principal, scope),
        Fault::Unauthorized => arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        ),
        Fault::ServerError => arm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalExecutionError",
            "An internal execution error occurred. Please retry later.",
        ),
        Fault::Conflict => arm_error(
            StatusCode::CONFLICT,
            "OperationNotAllowed",
            "Operation 'write' is not allowed on VM scale set 'web-vmss' since another operation is in progress on it.",
        ),
        Fault::QuotaExceeded => quota_error(),
        Fault::LoseAnswer => arm_error(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            "The answer was lost.",
        ),
        Fault::SkuNotAvailable => arm_error(
            StatusCode::CONFLICT,
            "SkuNotAvailable",
            "The requested VM size Standard_D2s_v5 is currently not available in location 'westeurope' zones '2'. Please try another size or deploy to a different location or different zone.",
        ),
        // Faults for the identity endpoints; Resource Manager answers each with a 503.
        Fault::Unavailable | Fault::ImdsUpdating | Fault::ImdsUpgrading => arm_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is temporarily unavailable. Please retry later.",
        ),
    }
}

/// Resource Manager's answer when a policy assignment with effect deny refuses the
/// request (see [`Fault::RequestDisallowedByPolicy`]).
fn policy_denied(assignment: &str, definition: &str) -> Response {
    let assignment_name: String = assignment
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let assignment_id = format!(
        "/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/policyAssignments/{assignment_name}"
    );
    let definition_name = "cccc23c7-8427-4f53-ad12-b6a63eb452b3";
    let definition_id =
        format!("/providers/Microsoft.Authorization/policyDefinitions/{definition_name}");
    let identifiers = json!([{
        "policyAssignment": {"name": assignment, "id": assignment_id},
        "policyDefinition": {"name": definition, "id": definition_id},
    }]);
    json_response(
        StatusCode::FORBIDDEN,
        json!({"error": {
            "code": "RequestDisallowedByPolicy",
            "target": SCALE_SET,
            "message": format!("Resource '{SCALE_SET}' was disallowed by policy. Policy identifiers: '{identifiers}'."),
            "additionalInfo": [{
                "type": "PolicyViolation",
                "info": {
                    "policyDefinitionDisplayName": definition,
                    "policyDefinitionId": definition_id,
                    "policyDefinitionName": definition_name,
                    "policyDefinitionEffect": "Deny",
                    "policyAssignmentId": assignment_id,
                    "policyAssignmentName": assignment_name,
                    "policyAssignmentDisplayName": assignment,
                    "policyAssignmentScope": format!("/subscriptions/{SUBSCRIPTION_ID}"),
                    "policyAssignmentParameters": {},
                },
            }],
        }}),
    )
}

fn quota_error() -> Response {
    arm_error(
        StatusCode::CONFLICT,
        "OperationNotAllowed",
        "Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: westeurope, Current Limit: 10, Current Usage: 10, Additional Required: 2, (Minimum) New Limit Required: 12.",
    )
}

fn forbidden(action: &str, principal: Option<&Principal>, scope: &str) -> Response {
    let (client, object) = principal
        .map(|p| (p.client_id.as_str(), p.object_id.as_str()))
        .unwrap_or((CLIENT_ID, PRINCIPAL_OBJECT_ID));
    arm_error(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &format!(
            "The client '{client}' with object id '{object}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        ),
    )
}

fn query_pairs(uri: &Uri) -> HashMap<String, String> {
    uri.query().map(parse_form).unwrap_or_default()
}

fn parse_form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && hex(bytes[i + 1]).is_some()
                && hex(bytes[i + 2]).is_some() =>
            {
                out.push(hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Inner {
    fn issue_token(&mut self, audience: &str, principal: Principal) -> (String, u64) {
        let expires = SystemTime::now() + self.token_lifetime;
        let exp = expires.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut claims = json!({
            "aud": audience,
            "iss": format!("{}/{TENANT_ID}/v2.0", self.base_url),
            "tid": TENANT_ID,
            "oid": principal.object_id,
            "appid": principal.client_id,
            "idtyp": "app",
            "exp": exp,
            "jti": format!("{}", self.tokens.len() + 1),
        });
        if principal.managed {
            claims["xms_mirid"] = json!(format!(
                "/subscriptions/{SUBSCRIPTION_ID}/resourcegroups/{RESOURCE_GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fleet-agent"
            ));
        }
        let token = format!(
            "{}.{}.c3RhbmQtaW4",
            base64url(br#"{"alg":"RS256","typ":"JWT"}"#),
            base64url(claims.to_string().as_bytes())
        );
        self.tokens.insert(token.clone(), (expires, principal));
        (token, self.token_lifetime.as_secs())
    }

    fn take_fault(&mut self, route: Route) -> Option<Fault> {
        self.faults.get_mut(&route).and_then(VecDeque::pop_front)
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = inner.lock().unwrap();
    let path: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let query = query_pairs(&uri);

    // Entra ID.
    if let (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) = (&method, path.as_slice()) {
        state
            .counts
            .entry(Route::Token)
            .and_modify(|c| *c += 1)
            .or_insert(1);
        return token_endpoint(
            &mut state,
            tenant,
            &parse_form(&String::from_utf8_lossy(&body)),
        );
    }
    if let (&Method::GET, ["metadata", "identity", "oauth2", "token"]) = (&method, path.as_slice())
    {
        state
            .counts
            .entry(Route::ManagedIdentity)
            .and_modify(|c| *c += 1)
            .or_insert(1);
        return managed_identity_endpoint(&mut state, &headers, &query);
    }

    // Resource Manager.
    let route = match (&method, path.as_slice()) {
        (
            &Method::GET,
            [
                "subscriptions",
                _,
                "providers",
                "Microsoft.Compute",
                "locations",
                _,
                "operations",
                _,
            ],
        ) => Route::OperationStatus,
        (
            _,
            [
                "subscriptions",
                _,
                "resourceGroups",
                _,
                "providers",
                "Microsoft.Compute",
                "virtualMachineScaleSets",
                _,
                rest @ ..,
            ],
        ) => match (&method, rest) {
            (&Method::GET, []) => Route::GetScaleSet,
            (&Method::PATCH, []) => Route::UpdateScaleSet,
            (&Method::GET, ["virtualMachines"]) => Route::ListVms,
            (&Method::PUT, ["virtualMachines", _]) => Route::UpdateVm,
            (&Method::POST, ["delete"]) => Route::DeleteInstances,
            (&Method::GET, ["providers", "Microsoft.Authorization", "permissions"]) => {
                Route::Permissions
            }
            _ => {
                return arm_error(
                    StatusCode::NOT_FOUND,
                    "InvalidResourceType",
                    "The resource type could not be found in the namespace 'Microsoft.Compute' for api version '2024-07-01'.",
                );
            }
        },
        _ => {
            return arm_error(
                StatusCode::NOT_FOUND,
                "InvalidResourceType",
                "No route for this request.",
            );
        }
    };
    state
        .counts
        .entry(route)
        .and_modify(|c| *c += 1)
        .or_insert(1);

    // Authentication first, as ARM does.
    let principal = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        None => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
        Some(token) => match state.tokens.get(token) {
            Some((expires, principal)) if *expires > SystemTime::now() => principal.clone(),
            Some(_) => {
                return arm_error(
                    StatusCode::UNAUTHORIZED,
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                );
            }
            None => {
                return arm_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "The access token is invalid.",
                );
            }
        },
    };

    let expected_version = if route == Route::Permissions {
        PERMISSIONS_API_VERSION.to_owned()
    } else {
        state.api_version.clone()
    };
    match query.get("api-version") {
        None => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(version) if *version != expected_version => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "NoRegisteredProviderFound",
                &format!(
                    "No registered resource provider found for location '{LOCATION}' and API version '{version}' for type 'virtualMachineScaleSets'. The supported api-versions are '{expected_version}'."
                ),
            );
        }
        Some(_) => {}
    }

    if path[1] != SUBSCRIPTION_ID {
        return arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!("The subscription '{}' could not be found.", path[1]),
        );
    }
    if route != Route::OperationStatus {
        if path[3] != RESOURCE_GROUP {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                &format!("Resource group '{}' could not be found.", path[3]),
            );
        }
        if path[7] != SCALE_SET {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!(
                    "The Resource 'Microsoft.Compute/virtualMachineScaleSets/{}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
                    path[7], path[3]
                ),
            );
        }
    }

    let scope = state.scale_set_id();
    let lose_answer = match state.take_fault(route) {
        Some(Fault::LoseAnswer) => true,
        Some(fault) => return fault_response(&fault, route, Some(&principal), &scope),
        None => false,
    };
    // Authorization happens in Resource Manager before the request reaches Compute, so
    // an operation the caller may not read is refused whether or not it exists.
    if route == Route::OperationStatus && !state.may_track_operations() {
        let operation_scope = format!(
            "/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Compute/locations/{LOCATION}/operations/{}",
            path[7]
        );
        return forbidden(route.action(), Some(&principal), &operation_scope);
    }
    if route != Route::OperationStatus && !state.allowed(route.action()) {
        return forbidden(route.action(), Some(&principal), &scope);
    }
    if let Some(throttled) = state.spend_budgets(route) {
        return throttled;
    }

    let response = match route {
        Route::GetScaleSet => {
            let running: Vec<String> = state
                .operations
                .iter()
                .filter(|(_, o)| !o.done)
                .map(|(id, _)| id.clone())
                .collect();
            for id in running {
                state.advance_operation(&id);
            }
            let response = json_response(StatusCode::OK, state.scale_set_json());
            if std::mem::take(&mut state.bump_etag_after_read) {
                state.etag += 1;
            }
            response
        }
        Route::ListVms => list_vms(&mut state, &query),
        Route::UpdateScaleSet => update_scale_set(&mut state, &headers, &body),
        Route::DeleteInstances => delete_instances(&mut state, &body),
        Route::UpdateVm => update_vm(&mut state, path[9], &body),
        Route::OperationStatus => operation_status(&mut state, path[7]),
        Route::Permissions => json_response(
            StatusCode::OK,
            json!({"value": state.assignments.iter().map(|a| json!({"actions": a.actions, "notActions": a.not_actions, "dataActions": [], "notDataActions": []})).collect::<Vec<_>>()}),
        ),
        Route::Token | Route::ManagedIdentity => unreachable!("answered above"),
    };
    if lose_answer {
        return arm_error(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            "The gateway did not receive a response from 'Microsoft.Compute' within the specified time period.",
        );
    }
    state.with_budget_headers(route, response)
}

fn token_endpoint(state: &mut Inner, tenant: &str, form: &HashMap<String, String>) -> Response {
    // Entra ID's answers that mean "retry", in its error format (`error`,
    // `error_description` with trace and correlation ids, `error_codes`, …: "Microsoft
    // Entra authentication and authorization error codes",
    // https://learn.microsoft.com/entra/identity-platform/reference-error-codes), whose
    // table gives `temporarily_unavailable`: "The server is temporarily too busy to handle
    // the request" / "Retry the request". "Understanding client and server throttling in
    // MSAL.NET" (https://learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling)
    // says that for the client credentials grant Entra ID replies "429 Too Many Requests,
    // with a Retry-After: 60 header", and when it has problems "a HTTP 5xx error code with
    // no Retry-After header". Neither page shows the body of a 429 or a 5xx: these send
    // `temporarily_unavailable` with AADSTS90024 (RequestBudgetExceededError, "A transient
    // error has occurred") and AADSTS90033 (MsodsServiceUnavailable), codes from the
    // reference's list.
    if let Some(fault) = state.take_fault(Route::Token) {
        return match fault {
            Fault::Throttle { retry_after_secs } => {
                let mut response = entra_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    "AADSTS90024: RequestBudgetExceededError - A transient error has occurred. Try again.",
                    90024,
                );
                response
                    .headers_mut()
                    .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
                response
            }
            Fault::Unavailable => entra_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "AADSTS90033: The Microsoft Online Directory Service (MSODS) isn't available.",
                90033,
            ),
            _ => entra_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "temporarily_unavailable",
                "AADSTS90033: The Microsoft Online Directory Service (MSODS) isn't available.",
                90033,
            ),
        };
    }
    if tenant != TENANT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
            90002,
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
            70003,
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(scope) = form.get("scope").filter(|s| s.ends_with("/.default")) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
            1002012,
        );
    };
    if client_id != CLIENT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{TENANT_ID}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
            700016,
        );
    }
    if let Some(assertion) = form.get("client_assertion") {
        state.assertions.push(assertion.clone());
        if let Some(refusal) = certificate_refusal(state, tenant, assertion) {
            return refusal;
        }
        if assertion != FEDERATED_TOKEN && !is_signed_assertion(assertion) {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS700213: No matching federated identity record found for presented assertion subject.",
                700213,
            );
        }
    } else if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
            ),
            7000215,
        );
    }
    let audience = scope.trim_end_matches("/.default").to_owned();
    let (token, lifetime) = state.issue_token(
        &audience,
        Principal {
            object_id: PRINCIPAL_OBJECT_ID.into(),
            client_id: CLIENT_ID.into(),
            managed: false,
        },
    );
    json_response(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
    )
}

/// A JWT with an `x5t#S256` or `x5t` header: a certificate's assertion rather than a
/// federated token.
fn is_signed_assertion(assertion: &str) -> bool {
    jwt_part(assertion, 0)
        .is_some_and(|header| header.get("x5t#S256").is_some() || header.get("x5t").is_some())
}

fn jwt_part(token: &str, index: usize) -> Option<Value> {
    let part = token.split('.').nth(index)?;
    serde_json::from_slice(&base64url_decode(part)?).ok()
}

/// Entra ID's checks of a certificate assertion, short of its signature: a trusted
/// thumbprint, PS256, issuer and subject the client, audience this tenant's token
/// endpoint, not expired.
///
/// The header is the one "Microsoft identity platform application authentication
/// certificate credentials" (https://learn.microsoft.com/entra/identity-platform/certificate-credentials)
/// asks for: `alg` "Should be PS256", `x5t#S256` the "Base64url-encoded SHA-256 thumbprint
/// of the X.509 certificate's DER encoding", a signature with PSS padding. Entra ID itself
/// still accepts RS256 with a SHA-1 `x5t`, and documents no error for such an assertion:
/// the stand-in is stricter on purpose. An assertion with no `x5t#S256` names no
/// certificate it knows, and gets Entra's AADSTS700027 (the certificate is not registered);
/// one signed otherwise than PS256 gets AADSTS5002738, the answer Entra ID gives to a
/// signing algorithm it does not support (its wording as seen in the field, e.g. MSAL.NET's
/// test fixtures: the error code reference lists no text for it).
fn certificate_refusal(state: &Inner, tenant: &str, assertion: &str) -> Option<Response> {
    if !is_signed_assertion(assertion) {
        return None;
    }
    let header = jwt_part(assertion, 0)?;
    let claims = jwt_part(assertion, 1).unwrap_or_default();
    let x5t = header["x5t#S256"].as_str().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let audience = format!("{}/{tenant}/oauth2/v2.0/token", state.base_url);
    let refuse = |code: u32, why: &str| {
        Some(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!("AADSTS{code}: {why}"),
            code,
        ))
    };
    if !state.trusted_thumbprints.iter().any(|t| t == x5t) {
        return refuse(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        );
    }
    if header["alg"] != "PS256" {
        let alg = header["alg"].as_str().unwrap_or_default();
        return refuse(
            5002738,
            &format!(
                "Invalid JWT token. '{alg}' is not a supported signature algorithm. Supported signing algorithms are: 'PS256'"
            ),
        );
    }
    if claims["iss"] != CLIENT_ID || claims["sub"] != CLIENT_ID {
        return refuse(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        );
    }
    if claims["aud"] != audience.as_str() {
        return refuse(
            700212,
            "No matching federated identity record found for presented assertion audience.",
        );
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return refuse(
            700024,
            "Client assertion is not within its valid time range.",
        );
    }
    None
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= value(*b)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

fn managed_identity_endpoint(
    state: &mut Inner,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    // The statuses "How to use managed identities for Azure resources on an Azure VM to
    // acquire an access token" (https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#error-handling)
    // lists, with how to handle each: 404 "IMDS endpoint is updating" (retry with
    // exponential backoff), 410 "IMDS is going through updates" ("IMDS will be available
    // within 70 seconds"), 429 "IMDS Throttle limit reached" (retry with exponential
    // backoff), 5xx a transient error ("safe to retry after waiting for at least 1
    // second"). The page gives no bodies for these: the stand-in sends IMDS's
    // `error`/`error_description` shape.
    if let Some(fault) = state.take_fault(Route::ManagedIdentity) {
        let imds_error = |status: StatusCode, error: &str, description: &str| {
            json_response(
                status,
                json!({"error": error, "error_description": description}),
            )
        };
        return match fault {
            Fault::ImdsUpdating => imds_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "IMDS endpoint is updating",
            ),
            Fault::ImdsUpgrading => {
                imds_error(StatusCode::GONE, "gone", "IMDS is going through updates")
            }
            Fault::Throttle { retry_after_secs } => {
                let mut response = imds_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "IMDS Throttle limit reached",
                );
                response
                    .headers_mut()
                    .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
                response
            }
            Fault::Unavailable => imds_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "Transient error from service",
            ),
            _ => imds_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Transient error from service",
            ),
        };
    }
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
        );
    }
    let Some(resource) = query.get("resource") else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "Required query variable 'resource' is missing"}),
        );
    };
    let principal = match query.get("client_id").map(String::as_str) {
        None => Principal {
            object_id: MANAGED_IDENTITY_OBJECT_ID.into(),
            client_id: MANAGED_IDENTITY_CLIENT_ID.into(),
            managed: true,
        },
        Some(MANAGED_IDENTITY_CLIENT_ID) => Principal {
            object_id: MANAGED_IDENTITY_OBJECT_ID.into(),
            client_id: MANAGED_IDENTITY_CLIENT_ID.into(),
            managed: true,
        },
        Some(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "Identity not found"}),
            );
        }
    };
    let (token, lifetime) = state.issue_token(resource, principal);
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + lifetime;
    json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "client_id": MANAGED_IDENTITY_CLIENT_ID,
            "expires_in": lifetime.to_string(),
            "expires_on": expires_on.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": (expires_on - lifetime).to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

fn list_vms(state: &mut Inner, query: &HashMap<String, String>) -> Response {
    let instance_view = query
        .get("$expand")
        .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
    let skip: usize = query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = vm_page(state, instance_view, skip);
    if skip == 0 {
        // A list read done: VMs within their lag have one read less to wait.
        state.unlisted.retain(|_, reads| {
            *reads -= 1;
            *reads > 0
        });
    }
    json_response(StatusCode::OK, body)
}

/// One page of the VM list; VMs still within their list lag stay out of it.
fn vm_page(state: &Inner, instance_view: bool, skip: usize) -> Value {
    let vms: Vec<&StandinVm> = state
        .vms
        .values()
        .filter(|vm| !state.unlisted.contains_key(&vm.instance_id))
        .collect();
    let page: Vec<Value> = vms
        .iter()
        .skip(skip)
        .take(state.page_size)
        .map(|vm| state.vm_json(vm, instance_view))
        .collect();
    let mut body = json!({"value": page});
    if skip + state.page_size < vms.len() {
        let mut next = format!(
            "{}{}/virtualMachines?api-version={}&$skiptoken={}",
            state.base_url,
            state.scale_set_id(),
            state.api_version,
            skip + state.page_size
        );
        if instance_view {
            next.push_str("&$expand=instanceView");
        }
        body["nextLink"] = json!(next);
    }
    body
}

fn accepted(state: &Inner, operation: &str) -> Response {
    let url = state.operation_url(operation);
    let mut builder = Response::builder()
        .status(StatusCode::ACCEPTED)
        .header("azure-asyncoperation", &url)
        .header("location", format!("{url}&monitor=true"))
        .header("x-ms-request-id", operation);
    if let Some(secs) = state.poll_retry_after {
        builder = builder.header("retry-after", secs.to_string());
    }
    builder.body(Body::empty()).expect("response")
}

/// A newer write to the scale set preempts its operations still in progress: Compute ends
/// each `Failed` with `OperationPreempted`, "Operation execution has been preempted by a
/// more recent operation." (the code and message Compute reports, as
/// kubernetes-sigs/cloud-provider-azure and the cluster autoscaler's Azure provider handle
/// them: "this CRP error means a concurrent VMSS mutation (e.g., scale-up, update, another
/// delete) superseded our delete"), and the newer operation carries on with the scale set
/// from where they left it. The stand-in lets what they started finish at once (the VMs
/// they were creating run, the ones they were deleting are gone), so that nothing is left
/// half done when the newer capacity is applied.
fn preempt_running_operations(state: &mut Inner) {
    let running: Vec<String> = state
        .operations
        .iter()
        .filter(|(_, operation)| !operation.done)
        .map(|(id, _)| id.clone())
        .collect();
    for id in running {
        if let Some(operation) = state.operations.get_mut(&id) {
            operation.failure = None;
        }
        state.finish_operation(&id);
        if let Some(operation) = state.operations.get_mut(&id) {
            operation.failure = Some((
                "OperationPreempted".to_owned(),
                "Operation execution has been preempted by a more recent operation.".to_owned(),
            ));
        }
    }
}

fn update_scale_set(state: &mut Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    let Ok(update) = serde_json::from_slice::<Value>(body) else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    if let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && if_match != "*"
        && if_match != state.etag()
    {
        return arm_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            &format!(
                "The specified precondition 'If-Match = {if_match}' failed: the scale set's etag is {}.",
                state.etag()
            ),
        );
    }
    let capacity = match update.pointer("/sku/capacity") {
        None => None,
        Some(value) => match value.as_u64().and_then(|c| u32::try_from(c).ok()) {
            Some(c) => Some(c),
            None => {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    "The value of parameter sku.capacity is invalid.",
                );
            }
        },
    };
    if let Some(c) = capacity
        && state.quota.is_some_and(|max| c > max)
    {
        return quota_error();
    }
    state.last_update_body = Some(update.clone());
    if let Some(Value::Object(tags)) = update.get("tags") {
        state.tags = tags.clone();
    }
    state.etag += 1;
    let Some(target) = capacity else {
        return json_response(StatusCode::OK, state.scale_set_json());
    };
    preempt_running_operations(state);

    let extras: Vec<String> = state
        .operations
        .values()
        .filter(|o| !o.done)
        .flat_map(|o| o.extras.iter().cloned())
        .collect();
    let live: Vec<u64> = state
        .vms
        .iter()
        .filter(|(_, vm)| vm.provisioning != "Deleting" && !extras.contains(&vm.instance_id))
        .map(|(id, _)| *id)
        .collect();
    let mut overprovisioned = Vec::new();
    let effect = if target as usize >= live.len() {
        let created: Vec<String> = (live.len()..target as usize)
            .map(|_| state.create_vm().to_string())
            .collect();
        // How many extra VMs Azure creates is not documented: a fifth more here.
        if state.overprovision && !created.is_empty() {
            overprovisioned = (0..created.len().div_ceil(5))
                .map(|_| state.create_vm().to_string())
                .collect();
        }
        for id in created.iter().chain(&overprovisioned) {
            if state.list_lag_reads > 0 {
                state.unlisted.insert(id.clone(), state.list_lag_reads);
            }
        }
        Effect::Create(created)
    } else {
        // Scale-in by capacity: the newest unprotected VMs go.
        let doomed: Vec<String> = live
            .iter()
            .rev()
            .filter(|id| !state.vms[*id].protected)
            .take(live.len() - target as usize)
            .map(|id| id.to_string())
            .collect();
        for vm in state
            .vms
            .values_mut()
            .filter(|vm| doomed.contains(&vm.instance_id))
        {
            vm.provisioning = "Deleting".into();
        }
        Effect::Delete(doomed)
    };
    state.capacity = target;
    let failure = if matches!(&effect, Effect::Create(ids) if !ids.is_empty())
        && state.allocation_failures > 0
    {
        state.allocation_failures -= 1;
        Some((
            "AllocationFailed".to_owned(),
            "Allocation failed. We do not have sufficient capacity for the requested VM size in this region. Read more about improving likelihood of allocation success at http://aka.ms/allocation-guidance".to_owned(),
        ))
    } else {
        None
    };
    let operation = state.start_operation(effect, failure);
    if let Some(started) = state.operations.get_mut(&operation) {
        started.extras = overprovisioned;
    }
    accepted(state, &operation)
}

fn delete_instances(state: &mut Inner, body: &[u8]) -> Response {
    let ids: Vec<String> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("instanceIds").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if ids.is_empty() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "The value of parameter instanceIds is invalid.",
        );
    }
    let unknown: Vec<&String> = ids
        .iter()
        .filter(|id| !state.vms.values().any(|vm| &vm.instance_id == *id))
        .collect();
    if !unknown.is_empty() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &format!(
                "The provided instanceId {} is not an active Virtual Machine Scale Set VM instanceId.",
                unknown[0]
            ),
        );
    }
    let mut removed = 0;
    for vm in state
        .vms
        .values_mut()
        .filter(|vm| ids.contains(&vm.instance_id))
    {
        if vm.provisioning != "Deleting" {
            vm.provisioning = "Deleting".into();
            removed += 1;
        }
    }
    state.capacity = state.capacity.saturating_sub(removed);
    state.etag += 1;
    let operation = state.start_operation(Effect::Delete(ids), None);
    accepted(state, &operation)
}

/// Virtual Machine Scale Set VMs - Update (learn.microsoft.com/rest/api/compute/
/// virtualmachinescalesetvms/update): a PUT of the VM's model. Its tags and its IP
/// configurations' `loadBalancerBackendAddressPools` are read from the body; the model
/// is stored at once and the VM is `Updating` until the operation (202,
/// `Azure-AsyncOperation`) ends. A VM being deleted cannot be updated (409).
fn update_vm(state: &mut Inner, instance_id: &str, body: &[u8]) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    if body.get("location").and_then(Value::as_str).is_none() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    }
    let tags: BTreeMap<String, String> = body
        .get("tags")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let pools: Option<Vec<String>> = body
        .pointer("/properties/networkProfileConfiguration/networkInterfaceConfigurations")
        .and_then(Value::as_array)
        .map(|nics| {
            nics.iter()
                .filter_map(|nic| nic.pointer("/properties/ipConfigurations")?.as_array())
                .flatten()
                .filter_map(|ip| {
                    ip.pointer("/properties/loadBalancerBackendAddressPools")?
                        .as_array()
                })
                .flatten()
                .filter_map(|pool| Some(pool.get("id")?.as_str()?.to_owned()))
                .collect()
        });
    let Some(vm) = state
        .vms
        .values_mut()
        .find(|vm| vm.instance_id == instance_id)
    else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The entity was not found in this Azure location: instance {instance_id}."),
        );
    };
    if vm.provisioning == "Deleting" {
        return arm_error(
            StatusCode::CONFLICT,
            "OperationNotAllowed",
            "The operation cannot be performed: the virtual machine is being deleted.",
        );
    }
    vm.tags = tags;
    if let Some(pools) = pools {
        vm.pools = pools;
    }
    vm.provisioning = "Updating".into();
    let operation = state.start_operation(Effect::Update(instance_id.to_owned()), None);
    accepted(state, &operation)
}

fn operation_status(state: &mut Inner, id: &str) -> Response {
    if !state.operations.contains_key(id) {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            &format!("The operation '{id}' could not be found."),
        );
    }
    state.advance_operation(id);
    let operation = &state.operations[id];
    let mut body = json!({"name": id, "startTime": "2026-01-01T00:00:00Z"});
    if !operation.done {
        body["status"] = json!("InProgress");
    } else if let Some((code, message)) = &operation.failure {
        body["status"] = json!("Failed");
        body["error"] = json!({"code": code, "message": message});
    } else {
        body["status"] = json!("Succeeded");
    }
    let mut response = json_response(StatusCode::OK, body);
    if let Some(secs) = state.poll_retry_after {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}
