//! Wires a configuration into running controllers: one task per fleet, the metrics
//! server, and a clean stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetscale_adapters::{Clock, CloudAdapter, DryRun, Metered, Retry, RetryConfig};
use tokio::sync::watch;

use crate::config::{AgentConfig, Config, FleetConfig, SignalConfig};
use crate::controller::{ControllerParts, FleetController};
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
    controller_on(cloud, fleet, agent, wiring, metrics, clock)
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

/// Runs every fleet until `shutdown` resolves; each fleet finishes the tick it is in
/// (no call is abandoned half-way), then the metrics server stops.
pub async fn run(
    config: &Config,
    wiring: Wiring,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering the agent's metrics")?;
    let health = Health::default();
    // The management API beside /metrics and /healthz: pauses and overrides read back
    // from the state file before any fleet ticks.
    let api = crate::api::Api::start(
        &config.agent.api,
        &config.fleets,
        clock.clone(),
        &metrics.registry,
    )?;
    let tls = match &config.agent.api.tls {
        Some(tls) => Some(crate::api::tls_acceptor(tls)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = telemetry::bind(config.agent.metrics_address).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let app = telemetry::router(metrics.clone(), health.clone()).merge(api.router());
    let server = tokio::spawn(crate::api::serve(listener, app, tls, wait(stopped.clone())));
    tracing::info!(metrics = %format!("{scheme}://{address}/metrics"), api = %format!("{scheme}://{address}/v1/fleets"), fleets = config.fleets.len(), dry_run = wiring.dry_run, "fleetscale started");

    let mut tasks = Vec::new();
    for fleet in &config.fleets {
        let mut controller =
            build_controller(fleet, &config.agent, wiring, Some(&metrics), clock.clone()).await?;
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
        tasks.push(tokio::spawn(supervise(
            controller,
            rebuild,
            metrics.clone(),
            stopped.clone(),
            health.clone(),
        )));
    }

    shutdown.await;
    tracing::info!("stopping: each fleet finishes its current tick");
    let _ = stop.send(true);
    for task in tasks {
        task.await.context("a fleet's supervisor panicked")?;
    }
    server
        .await
        .context("the metrics server panicked")?
        .context("the metrics server failed")?;
    tracing::info!("fleetscale stopped");
    Ok(())
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
    mut stopped: watch::Receiver<bool>,
    health: Health,
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
        let task = tokio::spawn(run_fleet(controller, tick, stopped.clone(), health.clone()));
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
    mut controller: FleetController,
    tick: Duration,
    mut stopped: watch::Receiver<bool>,
    health: Health,
) {
    controller.stop_on(stopped.clone());
    // A zero period would panic; config checks refuse ticks under a second.
    let mut interval = tokio::time::interval(tick.max(crate::config::MIN_TICK));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = interval.tick() => {}
        }
        // A tick runs to completion even when a stop arrives during it.
        let report = controller.tick().await;
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
    tracing::info!(fleet = %controller.name(), "fleet stopped");
}
