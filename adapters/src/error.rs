use std::time::Duration;

/// The kinds of failure the controller acts on. Backoff and retry decide on the kind,
/// never on a message string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The credentials are missing, wrong or expired. Retrying does not help.
    Authentication,
    /// The identity may not perform an action. Retrying does not help.
    Permission,
    /// The provider asked us to slow down.
    Throttled,
    /// A quota, limit or the provider's capacity stopped the call.
    Capacity,
    /// The fleet or an instance does not exist.
    NotFound,
    /// The request was malformed or refused as invalid (including a protected instance).
    Invalid,
    /// A failure that may pass: a network error, a 5xx, a conflicting operation.
    Transient,
    /// The idempotency token was already used for a different request: a launch made
    /// from the same view of the fleet stands, and its instances show in a later read.
    /// Repeating the call cannot help; deciding again after the next read does.
    Conflict,
}

impl ErrorKind {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication",
            ErrorKind::Permission => "permission",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Capacity => "capacity",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Transient => "transient",
            ErrorKind::Conflict => "conflict",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An adapter call that failed, with its kind. Messages never carry credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    #[error("authentication failed: {message}")]
    Authentication { message: String },
    #[error("permission denied for {action}: {message}")]
    Permission { action: String, message: String },
    #[error("throttled by the provider{}: {message}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    Throttled {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("capacity or quota exhausted: {message}")]
    Capacity { message: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("invalid request: {message}")]
    Invalid { message: String },
    #[error("transient failure: {message}")]
    Transient { message: String },
    #[error("idempotency conflict: {message}")]
    Conflict { message: String },
}

impl AdapterError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdapterError::Authentication { .. } => ErrorKind::Authentication,
            AdapterError::Permission { .. } => ErrorKind::Permission,
            AdapterError::Throttled { .. } => ErrorKind::Throttled,
            AdapterError::Capacity { .. } => ErrorKind::Capacity,
            AdapterError::NotFound { .. } => ErrorKind::NotFound,
            AdapterError::Invalid { .. } => ErrorKind::Invalid,
            AdapterError::Transient { .. } => ErrorKind::Transient,
            AdapterError::Conflict { .. } => ErrorKind::Conflict,
        }
    }

    /// The provider's requested wait, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AdapterError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the same call may succeed if repeated after a pause. Every operation of
    /// the trait is safe to repeat (grow carries an idempotency token, shrink names its
    /// instances), so this depends on the kind alone.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Throttled | ErrorKind::Transient)
    }

    pub fn authentication(message: impl Into<String>) -> Self {
        AdapterError::Authentication {
            message: message.into(),
        }
    }
    pub fn permission(action: impl Into<String>, message: impl Into<String>) -> Self {
        AdapterError::Permission {
            action: action.into(),
            message: message.into(),
        }
    }
    pub fn throttled(retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        AdapterError::Throttled {
            retry_after,
            message: message.into(),
        }
    }
    pub fn capacity(message: impl Into<String>) -> Self {
        AdapterError::Capacity {
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AdapterError::NotFound {
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        AdapterError::Invalid {
            message: message.into(),
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        AdapterError::Transient {
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        AdapterError::Conflict {
            message: message.into(),
        }
    }
}
