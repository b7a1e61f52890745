//! Azure VM Scale Sets behind the [`CloudAdapter`](crate::CloudAdapter) trait (cargo
//! feature `azure`).
//!
//! [`ScaleSetFleet`] manages one scale set through `azure_mgmt_compute` (API version
//! 2024-07-01) with an Entra ID identity from `azure_identity`: a service principal's
//! client secret or certificate, workload identity, a managed identity, or the Azure CLI's
//! account ([`CredentialConfig`]).
//!
//! Errors map to the adapter's kinds: 401 (which also drops the cached token) and a
//! refused token request → authentication; Entra ID's and the managed-identity
//! endpoint's 429 → throttled and their 5xx, `temporarily_unavailable`, IMDS 404 and 410
//! → transient; 403 `AuthorizationFailed` and `LinkedAuthorizationFailed` → permission,
//! naming the action the identity lacks; `RequestDisallowedByPolicy` → invalid, naming the
//! policy assignment; 429, or a `TooManyRequests` detail → throttled with `Retry-After`;
//! quota and allocation failures (`OperationNotAllowed` for quota, `AllocationFailed`,
//! `SkuNotAvailable`) → capacity; 404 → not found; 409 conflicts with an operation in
//! progress, 412, 5xx and timeouts → transient. An operation preempted by a newer write
//! (`OperationPreempted`) ends without error. The clients send each request once:
//! retrying is the `Retry` decorator's decision; pacing under Resource Manager's budgets
//! (Retry-After and the `x-ms-ratelimit-remaining-*` headers) is the error policy's, which
//! holds calls back, unsent, until a spent budget refills.
//!
//! # The roles the identity needs
//!
//! A custom role assigned on the scale set:
//!
//! ```json
//! {
//!   "Name": "fleetscale scale set operator",
//!   "Description": "Read, resize and remove instances of VM scale sets.",
//!   "Actions": [
//!     "Microsoft.Compute/virtualMachineScaleSets/read",
//!     "Microsoft.Compute/virtualMachineScaleSets/write",
//!     "Microsoft.Compute/virtualMachineScaleSets/delete/action",
//!     "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
//!     "Microsoft.Authorization/permissions/read"
//!   ],
//!   "AssignableScopes": ["/subscriptions/<subscription id>/resourceGroups/<resource group>"]
//! }
//! ```
//!
//! and one with `Microsoft.Compute/locations/operations/read` assigned on the scale set's
//! resource group: the status URL of the operations a grow or shrink starts is at
//! subscription scope, and Azure checks that read at the resource group ("Track
//! asynchronous Azure operations", Permissions for tracking async status). Without it,
//! grows and shrinks are followed by the scale set's `provisioningState` instead.
//!
//! `Microsoft.Authorization/permissions/read` only lets `fleetscale check` ask Azure which
//! of the others the identity holds. Growing a scale set whose VMs join a load balancer or
//! use a managed identity may also need `Microsoft.Network/*/join/action` or
//! `Microsoft.ManagedIdentity/userAssignedIdentities/assign/action` on those resources,
//! as Azure's 403 message then names.
//!
//! Only Uniform orchestration is managed; a Flexible scale set is refused with a message
//! that says so.

mod certificate;
mod config;
mod credential;
mod errors;
mod fleet;
mod operation;
mod permissions;

pub use config::{
    AzureConfig, ConfigProblem, CredentialConfig, PUBLIC_ARM_ENDPOINT, PUBLIC_AUTHORITY_HOST,
};
pub use credential::AzureEnvironment;
pub use fleet::{DRAINING_TAG, GROW_TAG, ScaleSetFleet};
pub use permissions::{
    DELETE_INSTANCES, NEEDED_ACTIONS, READ, READ_VMS, TRACK_OPERATIONS, WRITE, WRITE_VMS,
};
