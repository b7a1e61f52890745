//! Wires a configuration into running controllers: one task per fleet, the metrics
//! server, and a clean stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetscale_adapters::{Clock, CloudAdapter, DryRun, Metered, Retry, RetryConfig};
use tokio::sync::watch;

use crate::config::{AgentConfig, Config, FleetConfig, SignalConfig};
use crate::controller::{ControllerParts, FleetController};
use crate::coordination::Seat;
use crate::guards::GuardConfig;
use crate::signal::NamedSignal;
use crate::signal::SignalSource;
use crate::telemetry::{self, Health, Metrics};

/// How a fleet's adapter is wrapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wiring {
    /// Record intended actions instead of making them.
    pub dry_run: bool,
}

/// What the agent needs of one kind of adapter's settings (`kind = ...` in
/// `[fleets.adapter]`). Each kind implements it once, here, and is registered by one line
/// of the list of kinds in `crate::config` (`AdapterConfig`).
#[async_trait::async_trait]
pub trait AdapterKind: std::fmt::Debug + Send + Sync {
    /// Problems with the values, as (field relative to the adapter's table, message);
    /// a config with any is refused.
    fn problems(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The backend for fleet `fleet`, connected, without decorators.
    async fn connect(
        &self,
        fleet: &str,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Box<dyn CloudAdapter>>;

    /// How long the backend's reads may lag behind its writes, for a fleet whose guards
    /// do not say (`guards.read_lag`).
    fn read_lag(&self) -> Duration {
        crate::guards::CLOUD_READ_LAG
    }
}

/// `mock`: the in-memory cloud, whose read lag is its own setting.
#[async_trait::async_trait]
impl AdapterKind for fleetscale_adapters::mock::MockConfig {
    async fn connect(
        &self,
        _fleet: &str,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Box<dyn CloudAdapter>> {
        Ok(Box::new(fleetscale_adapters::mock::MockCloud::new(
            self.clone(),
            clock,
        )))
    }

    fn read_lag(&self) -> Duration {
        self.launch_read_lag.max(self.removal_read_lag)
    }
}

/// `aws`: an EC2 fleet.
#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl AdapterKind for fleetscale_adapters::aws::AwsConfig {
    fn problems(&self) -> Vec<(String, String)> {
        self.validate()
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    async fn connect(
        &self,
        fleet: &str,
        _clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Box<dyn CloudAdapter>> {
        Ok(Box::new(
            fleetscale_adapters::aws::Ec2Fleet::connect(fleet, self)
                .await
                .with_context(|| format!("fleet {fleet}: connecting to EC2"))?,
        ))
    }
}

/// `aws-asg`: an EC2 Auto Scaling group.
#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl AdapterKind for fleetscale_adapters::aws::AsgConfig {
    fn problems(&self) -> Vec<(String, String)> {
        self.validate()
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    async fn connect(
        &self,
        fleet: &str,
        _clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Box<dyn CloudAdapter>> {
        Ok(Box::new(
            fleetscale_adapters::aws::asg::AsgFleet::connect(fleet, self)
                .await
                .with_context(|| format!("fleet {fleet}: connecting to EC2 Auto Scaling"))?,
        ))
    }
}

/// `azure`: a VM Scale Set.
#[cfg(feature = "azure")]
#[async_trait::async_trait]
impl AdapterKind for fleetscale_adapters::azure::AzureConfig {
    fn problems(&self) -> Vec<(String, String)> {
        match self.validate() {
            Ok(()) => Vec::new(),
            Err(found) => found.into_iter().map(|p| (p.field, p.message)).collect(),
        }
    }

    async fn connect(
        &self,
        fleet: &str,
        _clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Box<dyn CloudAdapter>> {
        Ok(Box::new(
            fleetscale_adapters::azure::ScaleSetFleet::new(self.clone())
                .with_context(|| format!("fleet {fleet}: connecting to Azure"))?,
        ))
    }
}

/// The cloud backend a fleet's config names, without decorators.
pub async fn build_cloud(
    fleet: &FleetConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Box<dyn CloudAdapter>> {
    fleet.adapter.settings().connect(&fleet.name, clock).await
}

/// The backend wrapped as every fleet runs it: metered on the outside (so /metrics shows
/// every attempt's outcome), retried, and in dry-run never mutating.
pub fn decorate(
    cloud: Box<dyn CloudAdapter>,
    fleet: &str,
    metrics: Option<&Metrics>,
    wiring: Wiring,
    clock: Arc<dyn Clock>,
    boot_delay: Duration,
) -> Box<dyn CloudAdapter> {
    let cloud: Box<dyn CloudAdapter> = if wiring.dry_run {
        Box::new(DryRun::new(cloud, clock, boot_delay))
    } else {
        cloud
    };
    let cloud: Box<dyn CloudAdapter> = match metrics {
        Some(m) => Box::new(Metered::new(cloud, fleet, m.adapter.clone())),
        None => cloud,
    };
    Box::new(Retry::new(cloud, RetryConfig::default()))
}

/// Every signal source a fleet's config names, under their names.
pub fn build_signals(fleet: &FleetConfig, clock: &dyn Clock) -> anyhow::Result<Vec<NamedSignal>> {
    fleet
        .signals
        .iter()
        .map(|entry| {
            build_signal(&fleet.name, &entry.source, clock)
                .with_context(|| format!("signal {:?}", entry.name))
                .map(|source| NamedSignal {
                    name: entry.name.clone(),
                    source,
                })
        })
        .collect()
}

/// The signal source one of fleet `fleet`'s signals names.
pub fn build_signal(
    fleet: &str,
    signal: &SignalConfig,
    clock: &dyn Clock,
) -> anyhow::Result<Box<dyn SignalSource>> {
    signal
        .settings()
        .build(clock)
        .with_context(|| format!("fleet {fleet}: {} signal", signal.kind()))
}

/// A controller for one fleet of `config`.
pub async fn build_controller(
    fleet: &FleetConfig,
    agent: &AgentConfig,
    wiring: Wiring,
    metrics: Option<&Metrics>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<FleetController> {
    let cloud = build_cloud(fleet, clock.clone()).await?;
    let mut controller = controller_on(cloud, fleet, agent, wiring, metrics, clock)?;
    wire_drains(&mut controller, fleet, wiring).await?;
    Ok(controller)
}

/// A controller for one fleet over a backend already connected (`build_cloud`'s, or one
/// given credentials of its own).
pub fn controller_on(
    cloud: Box<dyn CloudAdapter>,
    fleet: &FleetConfig,
    agent: &AgentConfig,
    wiring: Wiring,
    metrics: Option<&Metrics>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<FleetController> {
    let adapter = decorate(
        cloud,
        &fleet.name,
        metrics,
        wiring,
        clock.clone(),
        fleet.boot_delay,
    );
    let signals = build_signals(fleet, clock.as_ref())?;
    let history_steps = (fleet.history.as_secs_f64() / agent.tick.as_secs_f64()).ceil() as usize;
    let mut controller = FleetController::new(ControllerParts {
        name: fleet.name.clone(),
        adapter,
        signals,
        policy: fleet.policy.build(),
        guards: GuardConfig {
            read_lag: Some(
                fleet
                    .guards
                    .read_lag
                    .unwrap_or_else(|| fleet.adapter.settings().read_lag()),
            ),
            ..fleet.guards.clone()
        },
        clock,
        step: agent.tick,
        boot_delay: fleet.boot_delay,
        metrics: metrics.cloned(),
        history_steps,
    });
    controller.schedule_with(fleet.schedules.clone());
    Ok(controller)
}

/// Gives `controller` the fleet's `[fleets.drain]`, connecting to its load balancer.
pub async fn wire_drains(
    controller: &mut FleetController,
    fleet: &FleetConfig,
    wiring: Wiring,
) -> anyhow::Result<()> {
    let Some(drain) = &fleet.drain else {
        return Ok(());
    };
    if wiring.dry_run {
        // A drain calls hooks and load balancers: a dry run removes at once.
        tracing::info!(fleet = %fleet.name, "dry run: scale-in is not drained (no hook or load balancer is called)");
        return Ok(());
    }
    controller.drain_with(crate::drain::connect(drain, fleet).await?);
    Ok(())
}

/// Runs every fleet until `shutdown` resolves; each fleet finishes the tick it is in
/// (no call is abandoned half-way), then the metrics server stops.
pub async fn run(
    config: &Config,
    wiring: Wiring,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(config, wiring, clock, RunOptions::default(), shutdown).await
}

/// Connects a fleet's backend in place of its config's (tests: one mock shared by
/// several agents in one process).
pub type Connect = Arc<dyn Fn(&FleetConfig) -> Box<dyn CloudAdapter> + Send + Sync>;

/// What [`run_with`] may be given beside the config.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// The metrics to register into (a fresh set when none).
    pub metrics: Option<Metrics>,
    /// The backends, instead of connecting the config's (a fleet's task rebuilt after
    /// a panic connects its config's).
    pub connect: Option<Connect>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("metrics", &self.metrics.is_some())
            .field("connect", &self.connect.is_some())
            .finish()
    }
}

/// A task aborted when its handle is dropped: an agent's future dropped half-way (its
/// task aborted) takes its fleets' tasks, its server and its etcd keep-alives with it.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`run`], with `options`.
pub async fn run_with(
    config: &Config,
    wiring: Wiring,
    clock: Arc<dyn Clock>,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = match options.metrics {
        Some(metrics) => metrics,
        None => Metrics::new().context("registering the agent's metrics")?,
    };
    let health = Health::default();
    let mut coordinator = coordinate(config, &metrics).await?;
    // The management API beside /metrics and /healthz: pauses and overrides read back
    // from the state file before any fleet ticks (coordinating: from etcd, and no fleet
    // is acted on before they are).
    let api = crate::api::Api::start_with(
        &config.agent.api,
        &config.fleets,
        clock.clone(),
        &metrics.registry,
        shared_commands(coordinator.as_ref()),
    )?;
    follow_commands(coordinator.as_mut(), config, &api);
    let tls = match &config.agent.api.tls {
        Some(tls) => Some(crate::api::tls_acceptor(tls)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = telemetry::bind(config.agent.metrics_address).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let app = telemetry::router(metrics.clone(), health.clone()).merge(api.router());
    let server = AbortOnDrop(tokio::spawn(crate::api::serve(
        listener,
        app,
        tls,
        wait(stopped.clone()),
    )));
    tracing::info!(metrics = %format!("{scheme}://{address}/metrics"), api = %format!("{scheme}://{address}/v1/fleets"), fleets = config.fleets.len(), dry_run = wiring.dry_run, "fleetscale started");

    let mut tasks = Vec::new();
    for fleet in &config.fleets {
        let mut controller = match &options.connect {
            Some(connect) => {
                let mut controller = controller_on(
                    connect(fleet),
                    fleet,
                    &config.agent,
                    wiring,
                    Some(&metrics),
                    clock.clone(),
                )?;
                wire_drains(&mut controller, fleet, wiring).await?;
                controller
            }
            None => {
                build_controller(fleet, &config.agent, wiring, Some(&metrics), clock.clone())
                    .await?
            }
        };
        if let Some(controls) = api.controls(&fleet.name) {
            controller.operate_with(controls);
        }
        health.set(&fleet.name, true, "starting");
        let rebuild = Rebuild {
            fleet: fleet.clone(),
            agent: config.agent.clone(),
            wiring,
            clock: clock.clone(),
        };
        let seat = seat_for(coordinator.as_ref(), &fleet.name);
        tasks.push(AbortOnDrop(tokio::spawn(supervise_with(
            controller,
            rebuild,
            metrics.clone(),
            stopped.clone(),
            health.clone(),
            seat,
        ))));
    }

    shutdown.await;
    tracing::info!("stopping: each fleet finishes its current tick");
    let _ = stop.send(true);
    for task in tasks {
        task.await.context("a fleet's supervisor panicked")?;
    }
    close(coordinator).await;
    server
        .await
        .context("the metrics server panicked")?
        .context("the metrics server failed")?;
    tracing::info!("fleetscale stopped");
    Ok(())
}

#[cfg(feature = "etcd")]
type Coordinator = crate::coordination::Coordinator;
#[cfg(not(feature = "etcd"))]
type Coordinator = ();

/// The agent's coordinator, when the config has `[agent.coordination]`.
async fn coordinate(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Coordinator>> {
    let Some(settings) = &config.agent.coordination else {
        return Ok(None);
    };
    #[cfg(feature = "etcd")]
    {
        Ok(Some(
            Coordinator::start(settings, config.fleets.len(), metrics.clone()).await?,
        ))
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (settings, metrics);
        anyhow::bail!("agent.coordination: this binary was built without the `etcd` feature")
    }
}

/// Coordinating, the store every agent keeps its pauses and overrides in.
fn shared_commands(
    coordinator: Option<&Coordinator>,
) -> Option<Arc<dyn crate::api::state::SharedCommands>> {
    #[cfg(feature = "etcd")]
    {
        coordinator.map(|c| Arc::new(c.commands()) as Arc<dyn crate::api::state::SharedCommands>)
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = coordinator;
        None
    }
}

/// Coordinating, follows the pauses and overrides in etcd onto the API's boards.
fn follow_commands(coordinator: Option<&mut Coordinator>, config: &Config, api: &crate::api::Api) {
    #[cfg(feature = "etcd")]
    if let Some(coordinator) = coordinator {
        let api = api.clone();
        let fleets = config.fleets.iter().map(|f| f.name.clone()).collect();
        coordinator.follow_commands(
            fleets,
            Arc::new(move |fleet: &str, commands| api.apply_shared(fleet, commands)),
        );
    }
    #[cfg(not(feature = "etcd"))]
    let _ = (coordinator, config, api);
}

fn seat_for(coordinator: Option<&Coordinator>, fleet: &str) -> Option<Arc<dyn Seat>> {
    #[cfg(feature = "etcd")]
    {
        coordinator.map(|c| Arc::new(c.holding(fleet)) as Arc<dyn Seat>)
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (coordinator, fleet);
        None
    }
}

async fn close(coordinator: Option<Coordinator>) {
    #[cfg(feature = "etcd")]
    if let Some(coordinator) = coordinator {
        coordinator.close().await;
    }
    #[cfg(not(feature = "etcd"))]
    let _ = coordinator;
}

/// What a fleet's controller is rebuilt from after a panic.
pub struct Rebuild {
    pub fleet: FleetConfig,
    pub agent: AgentConfig,
    pub wiring: Wiring,
    pub clock: Arc<dyn Clock>,
}

/// The longest wait before a fleet that panicked is started again.
const MOST_PANIC_BACKOFF: Duration = Duration::from_secs(600);

/// Runs one fleet's loop, and starts it again, rebuilt from its config, when it panics:
/// the panic is logged, counted (`fleetscale_fleet_panics_total`) and shown by
/// `/healthz` (unhealthy) while the fleet waits, a tick at first and doubling up to ten
/// minutes. Other fleets run on their own tasks and carry on. A rebuilt controller is a
/// restarted agent for its fleet (see `crate::account`).
pub async fn supervise(
    controller: FleetController,
    rebuild: Rebuild,
    metrics: Metrics,
    stopped: watch::Receiver<bool>,
    health: Health,
) {
    supervise_with(controller, rebuild, metrics, stopped, health, None).await
}

/// [`supervise`], with the fleet's seat when coordinating: the fleet's task then ticks
/// only while this agent holds the fleet.
pub async fn supervise_with(
    controller: FleetController,
    rebuild: Rebuild,
    metrics: Metrics,
    mut stopped: watch::Receiver<bool>,
    health: Health,
    seat: Option<Arc<dyn Seat>>,
) {
    let name = rebuild.fleet.name.clone();
    let tick = rebuild.agent.tick;
    // A rebuilt controller keeps the operator's board (pauses, overrides, its status).
    let controls = controller.controls().cloned();
    let mut next = Some(controller);
    let mut backoff = tick.max(crate::config::MIN_TICK);
    loop {
        let controller = match next.take() {
            Some(controller) => controller,
            None => match controller_on_config(&rebuild, &metrics).await {
                Ok(mut controller) => {
                    if let Some(controls) = &controls {
                        controller.operate_with(controls.clone());
                    }
                    controller
                }
                Err(e) => {
                    health.set(&name, false, format!("could not restart: {e:#}"));
                    tracing::error!(fleet = %name, error = %format!("{e:#}"), "could not restart the fleet");
                    if pause(&mut stopped, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let task = AbortOnDrop(tokio::spawn(run_fleet_with(
            controller,
            tick,
            stopped.clone(),
            health.clone(),
            seat.clone(),
        )));
        match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let message = panic_message(e.into_panic());
                metrics.fleet_panics.with_label_values(&[&name]).inc();
                tracing::error!(fleet = %name, panic = %message, restart_in = %humantime::format_duration(backoff), "the fleet's task panicked; restarting it");
                health.set(&name, false, format!("panicked ({message}); restarting"));
                if pause(&mut stopped, &mut backoff).await {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn controller_on_config(
    rebuild: &Rebuild,
    metrics: &Metrics,
) -> anyhow::Result<FleetController> {
    build_controller(
        &rebuild.fleet,
        &rebuild.agent,
        rebuild.wiring,
        Some(metrics),
        rebuild.clock.clone(),
    )
    .await
}

/// Waits `backoff` (then doubles it); true if told to stop meanwhile.
async fn pause(stopped: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MOST_PANIC_BACKOFF);
    tokio::select! {
        _ = stopped.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// One fleet's loop: a tick every `tick`, until told to stop between ticks.
pub async fn run_fleet(
    controller: FleetController,
    tick: Duration,
    stopped: watch::Receiver<bool>,
    health: Health,
) {
    run_fleet_with(controller, tick, stopped, health, None).await
}

/// [`run_fleet`]; with a seat (coordinating), each tick first asks it whether this
/// agent holds the fleet: a standby does not tick (it neither reads the cloud nor
/// acts) and says so in /healthz; a holder ticks under the seat's fence, then lets the
/// seat give the fleet up if the agent holds more than its share. A clean stop resigns.
pub async fn run_fleet_with(
    mut controller: FleetController,
    tick: Duration,
    mut stopped: watch::Receiver<bool>,
    health: Health,
    seat: Option<Arc<dyn Seat>>,
) {
    controller.stop_on(stopped.clone());
    // A zero period would panic; config checks refuse ticks under a second.
    let mut interval = tokio::time::interval(tick.max(crate::config::MIN_TICK));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding = false;
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = interval.tick() => {}
        }
        if let Some(seat) = &seat {
            match seat.hold().await {
                Ok(fence) => {
                    if !std::mem::replace(&mut holding, true) {
                        controller.holding_began();
                    }
                    controller.fence_with(fence);
                }
                Err(standby) => {
                    holding = false;
                    health.set(controller.name(), standby.healthy, standby.detail);
                    continue;
                }
            }
        }
        // A tick runs to completion even when a stop arrives during it.
        let report = controller.tick().await;
        if let Some(seat) = &seat {
            seat.after_tick().await;
        }
        let healthy = report.error.is_none() && !controller.is_suspended();
        let detail = match (&report.error, &report.signal_error) {
            (Some(e), _) => e.to_string(),
            (None, Some(e)) => format!("signal: {e}"),
            (None, None) => format!(
                "serving {} of {} billed; {}",
                report.serving, report.billed, report.reason
            ),
        };
        health.set(controller.name(), healthy, detail);
    }
    if let Some(seat) = &seat {
        seat.resign().await;
    }
    tracing::info!(fleet = %controller.name(), "fleet stopped");
}
