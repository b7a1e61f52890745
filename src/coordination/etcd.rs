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

/// The pause before an etcd call refused as unavailable is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A member down or unreachable: another attempt may reach another one.
fn unavailable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// How old the count of live members may be when a share is computed.
const MEMBERS_MAX_AGE: Duration = Duration::from_millis(500);

/// One per agent: the etcd client, the member lease kept alive by a task of its own,
/// and the local deadline past which the agent does not act whatever etcd would say.
#[derive(Debug)]
pub struct Coordinator {
    inner: Arc<Inner>,
    keeper: tokio::task::JoinHandle<()>,
    endpoints: String,
    /// The task following the pauses and overrides in etcd, once started.
    follower: Option<tokio::task::JoinHandle<()>>,
}

/// Whether the pauses and overrides in etcd have been read: a holder does not act on a
/// fleet before they are, so that a pause set while it was away holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommandsRead {
    /// Nobody follows them (an agent without the API's boards, in tests).
    NotFollowed,
    /// Not read yet, or the watch broke and they are being read again.
    Waiting,
    Read,
}

pub(super) struct Inner {
    client: Client,
    pub(super) prefix: String,
    member: String,
    pub(super) ttl: Duration,
    pub(super) margin: Duration,
    settle: Duration,
    /// Fleets in this agent's config: the numerator of the share.
    fleets: usize,
    metrics: Metrics,
    state: Mutex<State>,
}

#[derive(Debug)]
pub(super) struct State {
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
    pub(super) commands: CommandsRead,
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
                commands: CommandsRead::NotFollowed,
            }),
        });
        let keeper = tokio::spawn(keep_alive(inner.clone()));
        tracing::info!(member = %inner.member, endpoints = %config.endpoints.join(","), prefix = %inner.prefix, lease_ttl = %humantime::format_duration(inner.ttl), "coordinating through etcd");
        Ok(Coordinator {
            inner,
            keeper,
            endpoints: config.endpoints.join(","),
            follower: None,
        })
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

    /// The pauses and overrides store every agent of this coordination shares.
    pub fn commands(&self) -> super::commands::EtcdCommands {
        super::commands::EtcdCommands {
            inner: self.inner.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    /// Follows the pauses and overrides of `fleets` in etcd, putting each change in
    /// force through `apply`; from now on no fleet is acted on before they are read.
    pub fn follow_commands(&mut self, fleets: Vec<String>, apply: super::commands::ApplyCommands) {
        self.inner.lock().commands = CommandsRead::Waiting;
        if let Some(old) = self.follower.take() {
            old.abort();
        }
        self.follower = Some(tokio::spawn(super::commands::follow(
            self.commands(),
            fleets,
            apply,
        )));
    }

    /// The fleets this agent holds now.
    pub fn held(&self) -> Vec<String> {
        self.inner.lock().held.iter().cloned().collect()
    }

    /// On a clean stop, after every fleet resigned: revokes the member lease, so that
    /// the other agents count one member fewer at once.
    pub async fn close(mut self) {
        self.keeper.abort();
        if let Some(follower) = self.follower.take() {
            follower.abort();
        }
        let lease = self.inner.lock().lease.take();
        if let Some(lease) = lease {
            let _ = self
                .inner
                .call("lease_revoke", |mut c| async move {
                    c.lease_revoke(lease).await
                })
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
        if let Some(follower) = &self.follower {
            follower.abort();
        }
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One etcd call, timed, counted, bounded by the deadline margin. `make` is called
    /// with a client for each attempt: a call refused as unavailable (a member down;
    /// the etcd client does not move to another endpoint by itself, etcd-client#12) is
    /// tried again, within the margin, so that a cluster that lost one member of three
    /// goes on answering.
    pub(super) async fn call<T, F>(
        &self,
        operation: &'static str,
        make: impl Fn(Client) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let deadline = started + self.margin;
        let outcome = tokio::time::timeout_at(deadline, async {
            loop {
                match make(self.client.clone()).await {
                    Err(error)
                        if unavailable(&error) && Instant::now() + RETRY_PAUSE < deadline =>
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    answer => return answer,
                }
            }
        })
        .await;
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

    pub(super) fn client(&self) -> Client {
        self.client.clone()
    }

    /// One transaction, as [`Inner::call`].
    pub(super) async fn txn(
        &self,
        operation: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, String> {
        self.call(operation, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
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
        let key = self.members_key();
        let read = self
            .call("members", |mut c| {
                let key = key.clone();
                async move {
                    let options = GetOptions::new().with_prefix().with_count_only();
                    c.get(key, Some(options)).await
                }
            })
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
/// alive every sixth of the TTL, and grants a new one once the old one's local deadline
/// has passed (every holding under the old one is then lost).
///
/// The agent stops acting a third of the TTL before its local deadline (the margin), so
/// keep-alives every sixth leave half the TTL for an etcd leader election or a slow answer
/// (a third, the usual cadence, would leave one round: a single late keep-alive would stop
/// the agent acting while its lease is sound).
async fn keep_alive(inner: Arc<Inner>) {
    let round = inner.ttl / 6;
    loop {
        let lease = inner.lock().lease;
        let ok = match lease {
            None => register(&inner).await,
            Some(lease) => {
                let sent = Instant::now();
                let answer = inner
                    .call("lease_keep_alive", |mut c| async move {
                        c.lease_keep_alive(lease).await
                    })
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
    let Ok(granted) = inner
        .call("lease_grant", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .await
    else {
        return false;
    };
    let lease = granted.id();
    let key = format!("{}{}", inner.members_key(), inner.member);
    let put = inner
        .call("register", |mut c| {
            let (key, member) = (key.clone(), inner.member.clone());
            async move {
                c.put(key, member, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await;
    if put.is_err() {
        let _ = inner
            .call("lease_revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
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
        let _ = inner
            .call("lease_revoke", |mut c| async move {
                c.lease_revoke(stale).await
            })
            .await;
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
        let read = self
            .inner
            .call("check_holder", |c| self.get_holder(c))
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
        let answer = self.inner.txn("campaign", txn).await;
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

    /// Reads the holder key.
    fn get_holder(
        &self,
        mut client: Client,
    ) -> impl std::future::Future<Output = Result<etcd_client::GetResponse, etcd_client::Error>> + use<>
    {
        let key = self.key.clone();
        async move { client.get(key, None).await }
    }

    /// Whether the holder key is still under `lease`.
    async fn still_held(&self, lease: i64) -> Result<bool, String> {
        let read = self
            .inner
            .call("check_holder", |c| self.get_holder(c))
            .await?;
        Ok(read.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }
}

#[async_trait::async_trait]
impl Seat for Holding {
    async fn hold(&self) -> Result<Arc<dyn Fence>, Standby> {
        let acting = if self.inner.lock().commands == CommandsRead::Waiting {
            Err(NotHolder(
                "the pauses and overrides are not read from etcd yet".into(),
            ))
        } else {
            self.inner.acting_lease()
        };
        let lease = match acting {
            Ok(lease) => lease,
            Err(why) => {
                if self.held().is_some() {
                    self.set_held(None, &why.0);
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
        let _ = self.inner.txn("resign", txn).await;
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
        let lease = self.lease;
        let left = self
            .inner
            .call("fence_lease", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
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
            .call("fence_holder", |mut c| {
                let key = self.key.clone();
                async move { c.get(key, None).await }
            })
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
