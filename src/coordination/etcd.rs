//! The etcd side of coordination: one [`Coordinator`] per agent (the client, the member
//! lease and its keep-alive task, the local deadline), one [`Holding`] per fleet (its
//! campaign, its fence, and giving it up).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::time::Instant;

use super::{CoordinationConfig, Fence, LeaseIdentity, NotHolder, Permit, Seat, Standby};
use crate::telemetry::Metrics;

/// How old the count of live members may be when a share is computed.
const MEMBERS_MAX_AGE: Duration = Duration::from_millis(500);

/// One per agent: the etcd client, the member lease kept alive by a task of its own,
/// and the local deadline past which the agent does not act whatever etcd would say.
#[derive(Debug)]
pub struct Coordinator {
    inner: Arc<Inner>,
    keeper: tokio::task::JoinHandle<()>,
}

struct Inner {
    client: Client,
    prefix: String,
    member: String,
    ttl: Duration,
    margin: Duration,
    settle: Duration,
    /// Fleets in this agent's config: the numerator of the share.
    fleets: usize,
    metrics: Metrics,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The member lease, once granted and registered.
    lease: Option<i64>,
    /// When the lease ends as far as this agent can tell: the send time of the last
    /// keep-alive etcd answered, plus the TTL (monotonic clock).
    lease_end: Option<Instant>,
    members: usize,
    members_read: Option<Instant>,
    /// Fleets this agent holds (or is campaigning for, reserved).
    held: BTreeSet<String>,
    last_change: Instant,
    /// A lease given up for lost, to revoke once etcd answers (its holder keys go with it).
    stale: Option<i64>,
    /// Since when etcd has not answered, and its last error.
    unreachable_since: Option<Instant>,
    last_error: Option<String>,
}

impl Coordinator {
    /// Connects (lazily: an etcd that is down now is retried) and starts the member
    /// lease's keep-alive task. `fleets` is the number of fleets in the agent's config.
    pub async fn start(
        config: &CoordinationConfig,
        fleets: usize,
        metrics: Metrics,
    ) -> anyhow::Result<Coordinator> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.margin())
            .with_timeout(config.margin())
            .with_keep_alive(config.margin(), config.margin());
        if let Some((user, password)) = config.user.as_ref().zip(config.password.as_ref()) {
            options = options.with_user(user.clone(), password.clone());
        }
        if config.ca_file.is_some() || config.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_file {
                let pem = std::fs::read(ca).with_context(|| {
                    format!("agent.coordination.ca_file: cannot read {}", ca.display())
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = config.cert_file.as_ref().zip(config.key_file.as_ref()) {
                let cert_pem = std::fs::read(cert).with_context(|| {
                    format!(
                        "agent.coordination.cert_file: cannot read {}",
                        cert.display()
                    )
                })?;
                let key_pem = std::fs::read(key).with_context(|| {
                    format!("agent.coordination.key_file: cannot read {}", key.display())
                })?;
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {}", config.endpoints.join(", ")))?;
        let now = Instant::now();
        let inner = Arc::new(Inner {
            client,
            prefix: config.prefix.clone(),
            member: config.member_name(),
            ttl: config.lease_ttl,
            margin: config.margin(),
            settle: config.settle,
            fleets: fleets.max(1),
            metrics,
            state: Mutex::new(State {
                lease: None,
                lease_end: None,
                members: 1,
                members_read: None,
                held: BTreeSet::new(),
                last_change: now,
                stale: None,
                unreachable_since: None,
                last_error: None,
            }),
        });
        let keeper = tokio::spawn(keep_alive(inner.clone()));
        tracing::info!(member = %inner.member, endpoints = %config.endpoints.join(","), prefix = %inner.prefix, lease_ttl = %humantime::format_duration(inner.ttl), "coordinating through etcd");
        Ok(Coordinator { inner, keeper })
    }

    /// This agent's member name.
    pub fn member(&self) -> &str {
        &self.inner.member
    }

    /// The fleet's seat for its task.
    pub fn holding(&self, fleet: &str) -> Holding {
        Holding {
            inner: self.inner.clone(),
            fleet: fleet.to_string(),
            key: format!("{}/fleets/{fleet}/holder", self.inner.prefix),
            held: Mutex::new(None),
        }
    }

    /// The fleets this agent holds now.
    pub fn held(&self) -> Vec<String> {
        self.inner.lock().held.iter().cloned().collect()
    }

    /// On a clean stop, after every fleet resigned: revokes the member lease, so that
    /// the other agents count one member fewer at once.
    pub async fn close(self) {
        self.keeper.abort();
        let lease = self.inner.lock().lease.take();
        if let Some(lease) = lease {
            let mut client = self.inner.client.clone();
            let _ = self
                .inner
                .call("lease_revoke", client.lease_revoke(lease))
                .await;
        }
        tracing::info!(member = %self.inner.member, "left the coordination");
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // Dropped without close (the agent killed, or its task aborted): keep-alives stop,
        // and the lease runs out in etcd.
        self.keeper.abort();
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One etcd call, timed, counted, bounded by the deadline margin.
    async fn call<T>(
        &self,
        operation: &'static str,
        future: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.margin, future).await;
        self.metrics
            .etcd_call_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{operation}: {e}")),
            Err(_) => Err(format!(
                "{operation}: no answer within {}",
                humantime::format_duration(self.margin)
            )),
        };
        let mut state = self.lock();
        match &result {
            Ok(_) => {
                state.unreachable_since = None;
                state.last_error = None;
            }
            Err(e) => {
                self.metrics
                    .etcd_errors
                    .with_label_values(&[operation])
                    .inc();
                state.unreachable_since.get_or_insert(started);
                state.last_error = Some(e.clone());
            }
        }
        result
    }

    /// The lease while this agent may still act under it: its end, as this agent can
    /// tell, is more than the margin away.
    fn acting_lease(&self) -> Result<i64, NotHolder> {
        let state = self.lock();
        match (state.lease, state.lease_end) {
            (Some(lease), Some(end)) if Instant::now() + self.margin < end => Ok(lease),
            (Some(_), Some(_)) => Err(NotHolder(format!(
                "the lease's local deadline is near or past (etcd unreachable: {})",
                state.last_error.as_deref().unwrap_or("keep-alives late")
            ))),
            _ => Err(NotHolder("no member lease yet".into())),
        }
    }

    /// The instant a mutating call must start by: the lease's local end less the margin
    /// (what is left of the lease after it is the call's own time).
    fn start_by(&self) -> Option<Instant> {
        self.lock().lease_end.map(|end| end - self.margin)
    }

    fn members_key(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    /// The live members, read again when older than [`MEMBERS_MAX_AGE`].
    async fn members(&self) -> usize {
        let (count, fresh) = {
            let state = self.lock();
            let fresh = state
                .members_read
                .is_some_and(|at| at.elapsed() < MEMBERS_MAX_AGE);
            (state.members, fresh)
        };
        if fresh {
            return count;
        }
        let mut client = self.client.clone();
        let read = self
            .call(
                "members",
                client.get(
                    self.members_key(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await;
        let mut state = self.lock();
        if let Ok(response) = read {
            state.members = usize::try_from(response.count()).unwrap_or(1).max(1);
            state.members_read = Some(Instant::now());
        }
        state.members
    }

    /// Fleets per agent: ceil(fleets / live members).
    async fn share(&self) -> usize {
        self.fleets.div_ceil(self.members().await)
    }
}

/// The member lease's task: grants it and registers the member under it, keeps it
/// alive every third of the TTL, and grants a new one once the old one's local deadline
/// has passed (every holding under the old one is then lost).
async fn keep_alive(inner: Arc<Inner>) {
    let round = inner.ttl / 3;
    loop {
        let lease = inner.lock().lease;
        let ok = match lease {
            None => register(&inner).await,
            Some(lease) => {
                let sent = Instant::now();
                let mut client = inner.client.clone();
                let answer = inner
                    .call("lease_keep_alive", client.lease_keep_alive(lease))
                    .await;
                match answer {
                    Ok(_) => {
                        inner.lock().lease_end = Some(sent + inner.ttl);
                        true
                    }
                    Err(error) => {
                        let mut state = inner.lock();
                        let past = state.lease_end.is_none_or(|end| Instant::now() >= end);
                        tracing::warn!(member = %inner.member, error = %error, lease_deadline_passed = past, "cannot keep the etcd lease alive; not acting once its deadline is near");
                        if past {
                            tracing::warn!(member = %inner.member, lease = format!("{lease:x}"), "the etcd lease has run out: every fleet held under it is given up");
                            state.stale = state.lease.take();
                            state.lease_end = None;
                            state.held.clear();
                        }
                        false
                    }
                }
            }
        };
        let _ = inner.members().await;
        let wait = if ok {
            round
        } else {
            round.min(Duration::from_millis(500))
        };
        tokio::time::sleep(wait).await;
    }
}

/// Grants a member lease and registers `{prefix}/members/{member}` under it.
async fn register(inner: &Inner) -> bool {
    let ttl = i64::try_from(inner.ttl.as_secs()).unwrap_or(15);
    let sent = Instant::now();
    let mut client = inner.client.clone();
    let Ok(granted) = inner
        .call("lease_grant", client.lease_grant(ttl, None))
        .await
    else {
        return false;
    };
    let lease = granted.id();
    let key = format!("{}{}", inner.members_key(), inner.member);
    let put = inner
        .call(
            "register",
            client.put(
                key,
                inner.member.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await;
    if put.is_err() {
        let _ = inner.call("lease_revoke", client.lease_revoke(lease)).await;
        return false;
    }
    let stale = {
        let mut state = inner.lock();
        state.lease = Some(lease);
        state.lease_end = Some(sent + inner.ttl);
        state.members_read = None;
        state.stale.take()
    };
    if let Some(stale) = stale {
        // An etcd that restarted renews every lease it kept: the old one's holder keys
        // would block the campaigns until it ran out again.
        let _ = inner.call("lease_revoke", client.lease_revoke(stale)).await;
    }
    tracing::info!(member = %inner.member, lease = format!("{lease:x}"), "registered as a member under a new etcd lease");
    true
}

/// One fleet's place in the coordination: campaigns for it, fences its mutating calls,
/// and gives it up.
#[derive(Debug)]
pub struct Holding {
    inner: Arc<Inner>,
    fleet: String,
    key: String,
    /// The lease this agent holds the fleet under.
    held: Mutex<Option<i64>>,
}

impl Holding {
    fn held(&self) -> Option<i64> {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_held(&self, lease: Option<i64>, why: &str) {
        let before = std::mem::replace(
            &mut *self.held.lock().unwrap_or_else(PoisonError::into_inner),
            lease,
        );
        if before.is_some() == lease.is_some() {
            return;
        }
        let metrics = &self.inner.metrics;
        metrics
            .fleet_held
            .with_label_values(&[&self.fleet])
            .set(i64::from(lease.is_some()));
        metrics
            .leadership_changes
            .with_label_values(&[&self.fleet])
            .inc();
        let mut state = self.inner.lock();
        state.last_change = Instant::now();
        match lease {
            Some(lease) => {
                state.held.insert(self.fleet.clone());
                drop(state);
                tracing::info!(fleet = %self.fleet, member = %self.inner.member, lease = format!("{lease:x}"), "holding the fleet: this agent acts on it");
            }
            None => {
                state.held.remove(&self.fleet);
                drop(state);
                tracing::warn!(fleet = %self.fleet, member = %self.inner.member, reason = why, "gave up the fleet: standing by");
            }
        }
    }

    fn fence(&self, lease: i64) -> Arc<dyn Fence> {
        Arc::new(HolderFence {
            inner: self.inner.clone(),
            key: self.key.clone(),
            lease,
        })
    }

    /// Campaigns once: creates the holder key under `lease` if there is none.
    async fn campaign(&self, lease: i64) -> Result<Arc<dyn Fence>, Standby> {
        // A fleet someone holds is not campaigned for: its campaign would reserve a
        // place in this agent's share (below) that its free fleets then could not use.
        let mut client = self.inner.client.clone();
        let read = self
            .inner
            .call("check_holder", client.get(self.key.clone(), None))
            .await
            .map_err(|error| Standby {
                healthy: false,
                detail: format!("standby: cannot campaign ({error})"),
            })?;
        if let Some(kv) = read.kvs().first()
            && kv.lease() != lease
        {
            return Err(Standby {
                healthy: true,
                detail: format!("standby: held by {}", String::from_utf8_lossy(kv.value())),
            });
        }
        let share = self.inner.share().await;
        {
            let mut state = self.inner.lock();
            if state.held.len() >= share {
                return Err(Standby {
                    healthy: true,
                    detail: format!(
                        "standby: this agent holds its share ({} of {} fleets)",
                        state.held.len(),
                        self.inner.fleets
                    ),
                });
            }
            // Reserved while campaigning, so that the agent's other fleets count it.
            state.held.insert(self.fleet.clone());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                self.inner.member.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let answer = self.inner.call("campaign", client.txn(txn)).await;
        self.inner.lock().held.remove(&self.fleet);
        let response = answer.map_err(|error| Standby {
            healthy: false,
            detail: format!("standby: cannot campaign ({error})"),
        })?;
        if response.succeeded() {
            self.set_held(Some(lease), "campaign won");
            return Ok(self.fence(lease));
        }
        let holder = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| (kv.lease(), String::from_utf8_lossy(kv.value()).into_owned())),
            _ => None,
        });
        match holder {
            // Held under this very lease already (a task restarted after a panic).
            Some((held, _)) if held == lease => {
                self.set_held(Some(lease), "already held under this lease");
                Ok(self.fence(lease))
            }
            Some((_, member)) => Err(Standby {
                healthy: true,
                detail: format!("standby: held by {member}"),
            }),
            None => Err(Standby {
                healthy: true,
                detail: "standby: the fleet changed hands; campaigning again".into(),
            }),
        }
    }

    /// Whether the holder key is still under `lease`.
    async fn still_held(&self, lease: i64) -> Result<bool, String> {
        let mut client = self.inner.client.clone();
        let read = self
            .inner
            .call("check_holder", client.get(self.key.clone(), None))
            .await?;
        Ok(read.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }
}

#[async_trait::async_trait]
impl Seat for Holding {
    async fn hold(&self) -> Result<Arc<dyn Fence>, Standby> {
        let lease = match self.inner.acting_lease() {
            Ok(lease) => lease,
            Err(why) => {
                if self.held().is_some() {
                    self.set_held(None, "the lease's local deadline is near or past");
                }
                return Err(Standby {
                    healthy: false,
                    detail: format!("not acting: {why}"),
                });
            }
        };
        match self.held() {
            Some(held) if held == lease => match self.still_held(lease).await {
                Ok(true) => Ok(self.fence(lease)),
                Ok(false) => {
                    self.set_held(None, "the holder key is no longer this agent's");
                    self.campaign(lease).await
                }
                Err(error) => Err(Standby {
                    healthy: false,
                    detail: format!("not acting: cannot confirm the holding ({error})"),
                }),
            },
            Some(_) => {
                self.set_held(None, "the lease it was held under has run out");
                self.campaign(lease).await
            }
            None => self.campaign(lease).await,
        }
    }

    async fn after_tick(&self) {
        let Some(lease) = self.held() else {
            return;
        };
        let share = self.inner.share().await;
        // Decided under the lock, and the change marked at once: one fleet at a time.
        let resign = {
            let mut state = self.inner.lock();
            let resign =
                state.held.len() > share && state.last_change.elapsed() >= self.inner.settle;
            if resign {
                state.last_change = Instant::now();
            }
            resign
        };
        if resign {
            self.give_up(
                lease,
                "spreading fleets: this agent holds more than its share",
            )
            .await;
        }
    }

    async fn resign(&self) {
        if let Some(lease) = self.held() {
            self.give_up(lease, "stopping").await;
        }
    }
}

impl Holding {
    /// Deletes the holder key if it is still this lease's.
    async fn give_up(&self, lease: i64, why: &str) {
        let txn = Txn::new()
            .when([Compare::lease(self.key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        let mut client = self.inner.client.clone();
        let _ = self.inner.call("resign", client.txn(txn)).await;
        self.set_held(None, why);
    }
}

/// The fence of a fleet held under `lease`.
#[derive(Debug)]
struct HolderFence {
    inner: Arc<Inner>,
    key: String,
    lease: i64,
}

#[async_trait::async_trait]
impl Fence for HolderFence {
    async fn may_act(&self) -> Result<Permit, NotHolder> {
        // The local deadline first: a paused or partitioned agent never asks etcd with
        // a lease it may have lost.
        let current = self.inner.acting_lease()?;
        if current != self.lease {
            return Err(NotHolder(
                "the lease the fleet was held under ran out".into(),
            ));
        }
        let mut client = self.inner.client.clone();
        let left = self
            .inner
            .call("fence_lease", client.lease_time_to_live(self.lease, None))
            .await
            .map_err(|e| NotHolder(format!("cannot check the lease: {e}")))?;
        let margin = i64::try_from(self.inner.margin.as_secs().max(1)).unwrap_or(i64::MAX);
        if left.ttl() < margin {
            return Err(NotHolder(format!(
                "the lease has {}s left, less than the margin of {margin}s",
                left.ttl().max(0)
            )));
        }
        let holder = self
            .inner
            .call("fence_holder", client.get(self.key.clone(), None))
            .await
            .map_err(|e| NotHolder(format!("cannot check the holder: {e}")))?;
        let ours = holder.kvs().first().map(|kv| kv.lease()) == Some(self.lease);
        if !ours {
            return Err(NotHolder("another agent holds the fleet now".into()));
        }
        // Checked again: the calls above may have taken the agent past its deadline.
        self.inner.acting_lease()?;
        Ok(Permit {
            identity: LeaseIdentity::Lease(self.lease),
            start_by: self.inner.start_by(),
        })
    }
}
