//! Azure VM Scale Sets behind the [`CloudAdapter`](crate::CloudAdapter) trait (cargo
//! feature `azure`).
//!
//! [`ScaleSetFleet`] manages one scale set through `azure_mgmt_compute` (API version
//! 2024-07-01) with an Entra ID identity from `azure_identity`: a service principal's
//! client secret or certificate, workload identity, a managed identity, or the Azure CLI's
//! account ([`CredentialConfig`]).
//!
//! Errors map to the adapter's kinds: 401 and a refused token request → authentication;
//! 403 `AuthorizationFailed` → permission, naming the action; 429 → throttled with
//! `Retry-After`; quota and allocation failures (`OperationNotAllowed` for quota,
//! `AllocationFailed`, `SkuNotAvailable`) → capacity; 404 → not found; 409 conflicts
//! with an operation in progress, 412, 5xx and timeouts → transient. The clients send
//! each request once: retrying is the `Retry` decorator's decision.
//!
//! # The role the identity needs
//!
//! A custom role, assigned on the scale set (or its resource group):
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
//! The last action only lets `fleetscale check` ask Azure which of the others the
//! identity holds. Growing a scale set whose VMs join a load balancer or use a managed
//! identity may also need `Microsoft.Network/*/join/action` or
//! `Microsoft.ManagedIdentity/userAssignedIdentities/assign/action` on those resources,
//! as Azure's 403 message then names.

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
pub use fleet::{GROW_TAG, ScaleSetFleet};
pub use permissions::{DELETE_INSTANCES, NEEDED_ACTIONS, READ, READ_VMS, WRITE};
