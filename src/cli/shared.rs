//! What the commands share: how a command ends ([`Failure`], mapped to the exit code in
//! one place), reading the config, and the runtime they run on.

use crate::config::Config;

/// How a command ended, mapped to the process's exit code in one place.
#[derive(Debug)]
pub enum Failure {
    /// The input is wrong (a config, a trace, an argument, a request the agent refused):
    /// exit 2.
    Invalid(String),
    /// Something failed while running (or the agent could not be reached): exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Invalid(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invalid(message) => write!(f, "{}", message.trim_end()),
            Failure::Runtime(error) => write!(f, "error: {error:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

/// Reads and validates the config at `path`; every problem is an [`Failure::Invalid`].
pub fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Invalid(e.to_string()))
}

/// A multi-threaded runtime for the command's async work.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure::Runtime(e.into()))
}
