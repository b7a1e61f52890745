//! Pauses and overrides in etcd, so that every agent sees the same: one key per fleet,
//! `{prefix}/commands/{fleet}`, holding the fleet's [`Commands`] as JSON (no key: none
//! in force). A change is a transaction that writes only if the key's `mod_revision`
//! is still the one read (etcd's compare-and-set), so two agents' API calls never lose
//! one another's change. Every agent follows the keys with a watch and puts what it
//! reads on its boards; the holder of a fleet does not act on it before the first read
//! has succeeded (see `Holding::hold`), so a pause set while an agent was away is in
//! force before it acts again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

use super::etcd::{CommandsRead, Inner};
use crate::api::state::{SharedCommands, SharedError};
use crate::operator::Commands;

/// Puts a fleet's commands, as read from etcd, in force (on the API's boards).
pub type ApplyCommands = Arc<dyn Fn(&str, Commands) + Send + Sync>;

/// The shared store of one agent's coordinator.
#[derive(Debug, Clone)]
pub struct EtcdCommands {
    pub(super) inner: Arc<Inner>,
    pub(super) endpoints: String,
}

impl EtcdCommands {
    fn prefix(&self) -> String {
        format!("{}/commands/", self.inner.prefix)
    }

    fn key(&self, fleet: &str) -> String {
        format!("{}{fleet}", self.prefix())
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Result<Commands, SharedError> {
        serde_json::from_slice(value).map_err(|e| {
            SharedError::Damaged(format!(
                "the etcd key {} does not hold pauses and overrides ({e}); repair it with \
                 etcdctl put, or delete it to clear them",
                String::from_utf8_lossy(key)
            ))
        })
    }
}

#[async_trait::async_trait]
impl SharedCommands for EtcdCommands {
    async fn read(&self, fleet: &str) -> Result<(Commands, i64), SharedError> {
        let key = self.key(fleet);
        let read = self
            .inner
            .call("commands_read", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await
            .map_err(SharedError::Unreachable)?;
        match read.kvs().first() {
            Some(kv) => Ok((self.parse(kv.key(), kv.value())?, kv.mod_revision())),
            None => Ok((Commands::default(), 0)),
        }
    }

    async fn write(
        &self,
        fleet: &str,
        commands: &Commands,
        revision: i64,
    ) -> Result<bool, SharedError> {
        let key = self.key(fleet);
        // An absent key has mod_revision 0, so the same compare covers the first write.
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
        let write = if commands.is_empty() {
            TxnOp::delete(key.clone(), None)
        } else {
            let json = serde_json::to_vec(commands)
                .map_err(|e| SharedError::Damaged(format!("cannot encode the commands: {e}")))?;
            TxnOp::put(key.clone(), json, None)
        };
        let txn = Txn::new().when([unchanged]).and_then([write]);
        let answer = self
            .inner
            .txn("commands_write", txn)
            .await
            .map_err(SharedError::Unreachable)?;
        Ok(answer.succeeded())
    }

    fn describe(&self) -> String {
        format!("etcd at {} (key {})", self.endpoints, self.prefix())
    }
}

/// How long a watch is trusted before every key is read again: a watch on a connection
/// that died without an error would otherwise miss changes for good.
fn resync_every(inner: &Inner) -> Duration {
    inner.ttl.max(Duration::from_secs(5))
}

/// The follower's task: reads every fleet's commands, applies them, watches for
/// changes from the revision read, and starts over when the watch breaks or is due for
/// a resync. While a read fails (etcd unreachable, a damaged key), the commands are
/// marked unread and holders wait.
pub(super) async fn follow(store: EtcdCommands, fleets: Vec<String>, apply: ApplyCommands) {
    let inner = store.inner.clone();
    let prefix = store.prefix();
    loop {
        if let Err(error) = follow_once(&store, &prefix, &fleets, &apply).await {
            let waiting = inner.lock().commands == CommandsRead::Waiting;
            if waiting {
                tracing::warn!(error = %error, "cannot read the pauses and overrides in etcd; fleets are not acted on until they are read");
            } else {
                tracing::info!(error = %error, "the watch on the pauses and overrides in etcd broke; reading them again");
            }
            tokio::time::sleep(AFTER_ERROR).await;
        }
    }
}

/// The pause after a failed read or a broken watch, before reading again.
const AFTER_ERROR: Duration = Duration::from_millis(100);

async fn follow_once(
    store: &EtcdCommands,
    prefix: &str,
    fleets: &[String],
    apply: &ApplyCommands,
) -> Result<(), String> {
    let inner = &store.inner;
    let read = inner
        .call("commands_read", |mut c| {
            let prefix = prefix.to_string();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .inspect_err(|_| inner.lock().commands = CommandsRead::Waiting)?;
    let revision = read.header().map_or(0, |h| h.revision());
    for fleet in fleets {
        let key = store.key(fleet);
        let commands = match read.kvs().iter().find(|kv| kv.key() == key.as_bytes()) {
            Some(kv) => match store.parse(kv.key(), kv.value()) {
                Ok(commands) => commands,
                Err(e) => {
                    inner.lock().commands = CommandsRead::Waiting;
                    return Err(e.to_string());
                }
            },
            None => Commands::default(),
        };
        apply(fleet, commands);
    }
    inner.lock().commands = CommandsRead::Read;
    let mut client = inner.client();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = client
        .watch(prefix, Some(options))
        .await
        .map_err(|e| format!("commands_watch: {e}"))?;
    let resync = tokio::time::sleep(resync_every(inner));
    tokio::pin!(resync);
    loop {
        let message = tokio::select! {
            message = watch.message() => message,
            () = &mut resync => return Ok(()),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Err("commands_watch: the watch ended".into()),
            Err(e) => return Err(format!("commands_watch: {e}")),
        };
        if response.canceled() {
            return Err(format!(
                "commands_watch: cancelled by etcd ({})",
                response.cancel_reason()
            ));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(fleet) = kv
                .key()
                .strip_prefix(prefix.as_bytes())
                .map(String::from_utf8_lossy)
            else {
                continue;
            };
            let commands = match event.event_type() {
                etcd_client::EventType::Put => match store.parse(kv.key(), kv.value()) {
                    Ok(commands) => commands,
                    Err(e) => {
                        inner.lock().commands = CommandsRead::Waiting;
                        return Err(e.to_string());
                    }
                },
                etcd_client::EventType::Delete => Commands::default(),
            };
            apply(&fleet, commands);
        }
    }
}
