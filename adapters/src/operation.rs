//! The operations of [`CloudAdapter`](crate::CloudAdapter), named once for metrics, logs,
//! call counts and fault scripts.

use serde::Serialize;

/// One operation of the adapter trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    ReadFleet,
    Grow,
    Shrink,
    VerifyAccess,
    /// Marking instances as draining before their removal.
    MarkDraining,
}

impl Operation {
    /// Every operation, in the trait's order.
    pub const ALL: [Operation; 5] = [
        Operation::ReadFleet,
        Operation::Grow,
        Operation::Shrink,
        Operation::VerifyAccess,
        Operation::MarkDraining,
    ];

    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ReadFleet => "read_fleet",
            Operation::Grow => "grow",
            Operation::Shrink => "shrink",
            Operation::VerifyAccess => "verify_access",
            Operation::MarkDraining => "mark_draining",
        }
    }

    /// Whether the operation changes the fleet (a dry run never performs one).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            Operation::Grow | Operation::Shrink | Operation::MarkDraining
        )
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
