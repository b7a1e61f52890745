//! The ARM actions the adapter needs, and Azure's answer to "what may I do here?".

use serde::Deserialize;

/// Read the scale set (capacity, tags, etag).
pub const READ: &str = "Microsoft.Compute/virtualMachineScaleSets/read";
/// Change the capacity (and the grow marker tag).
pub const WRITE: &str = "Microsoft.Compute/virtualMachineScaleSets/write";
/// Delete named instances (`deleteInstances`).
pub const DELETE_INSTANCES: &str = "Microsoft.Compute/virtualMachineScaleSets/delete/action";
/// List the scale set's VMs.
pub const READ_VMS: &str = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read";
/// Update one VM of the scale set: a drain's mark (a tag) and its leaving the load
/// balancer's backend pool. Needed only by fleets with a `[fleets.drain]`.
pub const WRITE_VMS: &str = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write";

/// Read the status of the operations grows and shrinks start. Their URL is at
/// subscription scope, so this is granted on the resource group (or higher), not on the
/// scale set: "To track the status of an asynchronous operation, you need sufficient
/// permission at the resource group level" ("Track asynchronous Azure operations",
/// Permissions for tracking async status).
pub const TRACK_OPERATIONS: &str = "Microsoft.Compute/locations/operations/read";

/// Every action the adapter needs, in the order `fleetscale check` reports them: a custom
/// role on the scale set grants all but [`TRACK_OPERATIONS`] (and
/// `Microsoft.Authorization/permissions/read`, to let `fleetscale check` verify them), and
/// one on its resource group grants [`TRACK_OPERATIONS`].
pub const NEEDED_ACTIONS: [&str; 5] = [READ, READ_VMS, TRACK_OPERATIONS, WRITE, DELETE_INSTANCES];

/// The Resource Manager API version of `Microsoft.Authorization/permissions`.
pub(crate) const PERMISSIONS_API_VERSION: &str = "2022-04-01";

/// One page of `.../providers/Microsoft.Authorization/permissions`: the caller's
/// effective permissions, one entry per role it holds on the scope.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PermissionsPage {
    #[serde(default)]
    pub value: Vec<RolePermission>,
    #[serde(rename = "nextLink", default)]
    pub next_link: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RolePermission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(rename = "notActions", default)]
    pub not_actions: Vec<String>,
}

/// Whether any role grants `action`: one of its `actions` matches and none of its
/// `notActions` does (Azure RBAC: wildcards, case-insensitive).
pub(crate) fn allows(roles: &[RolePermission], action: &str) -> bool {
    roles.iter().any(|role| {
        role.actions.iter().any(|pattern| matches(pattern, action))
            && !role
                .not_actions
                .iter()
                .any(|pattern| matches(pattern, action))
    })
}

/// Glob match where `*` stands for any run of characters.
fn matches(pattern: &str, action: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let action = action.to_ascii_lowercase();
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = action.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(actions: &[&str], not_actions: &[&str]) -> RolePermission {
        RolePermission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: not_actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards_and_exclusions() {
        assert!(allows(&[role(&["*"], &[])], WRITE));
        assert!(allows(
            &[role(&["Microsoft.Compute/virtualMachineScaleSets/*"], &[])],
            DELETE_INSTANCES
        ));
        assert!(allows(&[role(&["*/read"], &[])], READ_VMS));
        assert!(!allows(&[role(&["*/read"], &[])], WRITE));
        assert!(!allows(
            &[role(&["*"], &["Microsoft.Compute/*/delete/action"])],
            DELETE_INSTANCES
        ));
        assert!(allows(
            &[
                role(&["*"], &["Microsoft.Compute/*/delete/action"]),
                role(&[DELETE_INSTANCES], &[])
            ],
            DELETE_INSTANCES
        ));
        assert!(allows(
            &[role(
                &["microsoft.compute/VIRTUALMACHINESCALESETS/write"],
                &[]
            )],
            WRITE
        ));
        assert!(!allows(&[], READ));
    }
}
