//! Where each fleet's pause and overrides are kept, so that a restarted agent keeps
//! them. Alone, the state file: written atomically (a temporary file beside it, fsynced,
//! renamed over it, the directory fsynced), read at start; a damaged file is an error
//! naming it. Coordinating, a [`SharedCommands`] store (etcd), which every agent reads.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::operator::Commands;

/// The file's format version; a file of another is refused, not guessed at.
pub const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Fleets with a pause or an override in force; others are left out.
    fleets: BTreeMap<String, Commands>,
}

/// Reads the state file at `path`: a missing file is an empty state; a damaged one (not
/// JSON, unknown fields, another version) is an error naming the file and what is wrong.
/// Overrides expired by `now` are dropped.
pub fn load(path: &Path, now: SystemTime) -> anyhow::Result<BTreeMap<String, Commands>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => anyhow::bail!("cannot read the state file {}: {e}", path.display()),
    };
    let mut reader = serde_json::Deserializer::from_str(&text);
    let file: StateFile = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!(
            "the state file {} is damaged (at {at}: {}); it holds the fleets' pauses and \
             overrides: repair it, or remove it to start with none",
            path.display(),
            e.into_inner()
        )
    })?;
    if file.version != VERSION {
        anyhow::bail!(
            "the state file {} has version {}, this fleetscale reads version {VERSION}",
            path.display(),
            file.version
        );
    }
    let mut fleets = file.fleets;
    for commands in fleets.values_mut() {
        commands.prune(now);
    }
    Ok(fleets)
}

/// Writes `fleets` to `path` atomically.
pub fn save(path: &Path, fleets: &BTreeMap<String, Commands>) -> std::io::Result<()> {
    let file = StateFile {
        version: VERSION,
        fleets: fleets
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The pauses and overrides of agents that coordinate: one record per fleet that every
/// agent reads, written with a compare-and-set on the revision it was read at.
#[async_trait::async_trait]
pub trait SharedCommands: std::fmt::Debug + Send + Sync {
    /// The fleet's commands and the revision they were read at (0: none written).
    async fn read(&self, fleet: &str) -> Result<(Commands, i64), SharedError>;
    /// Writes `commands` if the record is still at `revision`; false if it changed
    /// meanwhile (nothing written then).
    async fn write(
        &self,
        fleet: &str,
        commands: &Commands,
        revision: i64,
    ) -> Result<bool, SharedError>;
    /// Where the records are, for messages (`etcd at http://...`).
    fn describe(&self) -> String;
}

/// Why the shared store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    #[error("cannot reach the store: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Damaged(String),
}

/// Serialises writes: one change at a time is applied to the boards and the file. With
/// a shared store, changes go there instead, and the file is not used.
#[derive(Debug)]
pub struct StateStore {
    path: Option<PathBuf>,
    writing: Mutex<()>,
    shared: Option<Arc<dyn SharedCommands>>,
}

impl StateStore {
    /// `None`: nothing is persisted (tests that need no file).
    pub fn new(path: Option<PathBuf>) -> Self {
        StateStore {
            path,
            writing: Mutex::new(()),
            shared: None,
        }
    }

    /// Changes go to `shared`, read by every agent.
    pub fn shared(shared: Arc<dyn SharedCommands>) -> Self {
        StateStore {
            path: None,
            writing: Mutex::new(()),
            shared: Some(shared),
        }
    }

    pub fn shared_store(&self) -> Option<&Arc<dyn SharedCommands>> {
        self.shared.as_ref()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Held while a change is made: read the boards, write the file, then set them.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes every fleet's commands (when there is a file).
    pub fn save(&self, fleets: &BTreeMap<String, Commands>) -> std::io::Result<()> {
        match &self.path {
            Some(path) => save(path, fleets),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Pause;

    #[test]
    fn a_saved_state_reads_back_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut fleets = BTreeMap::new();
        fleets.insert(
            "web".to_string(),
            Commands {
                pause: Some(Pause {
                    by: "alice".into(),
                    reason: "deploy".into(),
                    since: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                }),
                overrides: Vec::new(),
            },
        );
        fleets.insert("idle".to_string(), Commands::default());
        save(&path, &fleets).unwrap();
        let read = load(&path, SystemTime::now()).unwrap();
        assert_eq!(read.get("web"), fleets.get("web"));
        assert!(!read.contains_key("idle"));
        std::fs::write(
            &path,
            "{\"version\": 1, \"fleets\": {\"web\": {\"paws\": null}}}",
        )
        .unwrap();
        let error = load(&path, SystemTime::now()).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(
            error.contains("damaged") && error.contains("paws"),
            "{error}"
        );
    }
}
