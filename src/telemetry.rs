//! Metrics, logs and the agent's HTTP endpoints (/metrics, /healthz).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every metric the agent exports, registered once. Names are documented in the README.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub desired: IntGaugeVec,
    pub applied: IntGaugeVec,
    pub billed: IntGaugeVec,
    pub serving: IntGaugeVec,
    pub demand: GaugeVec,
    pub decisions: IntCounterVec,
    pub guard_interventions: IntCounterVec,
    pub signal_errors: IntCounterVec,
    /// Each signal's latest demand; NaN while that signal fails.
    pub signal_demand: GaugeVec,
    pub tick_failures: IntCounterVec,
    pub suspended: IntGaugeVec,
    pub stuck_replaced: IntCounterVec,
    /// Drains finished by removal, by `outcome` (`drained`, `timed_out`).
    pub drains_finished: IntCounterVec,
    /// Instances being drained before their removal.
    pub draining: IntGaugeVec,
    pub launch_shortfall: IntCounterVec,
    pub fleet_panics: IntCounterVec,
    pub decide_seconds: HistogramVec,
    /// 1 on the agent that holds the fleet (coordinating through etcd), 0 on standbys.
    pub fleet_held: IntGaugeVec,
    pub leadership_changes: IntCounterVec,
    pub etcd_call_seconds: HistogramVec,
    pub etcd_errors: IntCounterVec,
    pub adapter: fleetscale_adapters::AdapterMetrics,
}

impl Metrics {
    /// Creates every metric in a registry of its own. Fails only on a metric the
    /// registry refuses (a bad name, or one registered twice): a mistake in this code,
    /// reported rather than panicked on.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["fleet"])?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let desired = gauge(
            "fleetscale_desired_instances",
            "Fleet size the policy wants (billed instances).",
        )?;
        let applied = gauge(
            "fleetscale_applied_instances",
            "Fleet size after the guards.",
        )?;
        let billed = gauge(
            "fleetscale_billed_instances",
            "Instances billed now (booting, serving or stopping).",
        )?;
        let serving = gauge("fleetscale_serving_instances", "Instances serving now.")?;
        let suspended = gauge(
            "fleetscale_fleet_suspended",
            "1 while the fleet is suspended after repeated failures.",
        )?;
        let demand = GaugeVec::new(
            Opts::new(
                "fleetscale_observed_demand_instances",
                "Latest observed demand, in instances.",
            ),
            &["fleet"],
        )?;
        registry.register(Box::new(demand.clone()))?;
        let decisions = counter(
            "fleetscale_decisions_total",
            "Decisions by direction (up, down, none).",
            &["fleet", "direction"],
        )?;
        let guard_interventions = counter(
            "fleetscale_guard_interventions_total",
            "Times a guard changed the policy's wish.",
            &["fleet", "guard"],
        )?;
        let signal_errors = counter(
            "fleetscale_signal_errors_total",
            "Signal reads that failed, by signal and reason.",
            &["fleet", "signal", "reason"],
        )?;
        let signal_demand = GaugeVec::new(
            Opts::new(
                "fleetscale_signal_demand_instances",
                "Each signal's latest demand, in instances (NaN while it fails).",
            ),
            &["fleet", "signal"],
        )?;
        registry.register(Box::new(signal_demand.clone()))?;
        let tick_failures = counter(
            "fleetscale_tick_failures_total",
            "Ticks that failed on an adapter call, by error kind.",
            &["fleet", "kind"],
        )?;
        let stuck_replaced = counter(
            "fleetscale_stuck_instances_replaced_total",
            "Instances removed for booting past max_boot_time.",
            &["fleet"],
        )?;
        let drains_finished = counter(
            "fleetscale_drains_finished_total",
            "Drained instances removed, by outcome (drained, or timed_out: removed at the drain's timeout).",
            &["fleet", "outcome"],
        )?;
        let draining = gauge(
            "fleetscale_draining_instances",
            "Instances being drained before their removal.",
        )?;
        let launch_shortfall = counter(
            "fleetscale_launch_shortfall_total",
            "Instances asked for but not launched by the provider.",
            &["fleet"],
        )?;
        let fleet_panics = counter(
            "fleetscale_fleet_panics_total",
            "Times a fleet's task panicked (it restarts with backoff).",
            &["fleet"],
        )?;
        let decide_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fleetscale_decide_duration_seconds",
                "Time the policy took to decide.",
            )
            .buckets(vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]),
            &["fleet"],
        )?;
        registry.register(Box::new(decide_seconds.clone()))?;
        let fleet_held = gauge(
            "fleetscale_fleet_held",
            "1 while this agent holds the fleet (coordinating through etcd).",
        )?;
        let leadership_changes = counter(
            "fleetscale_leadership_changes_total",
            "Times this agent took or gave up the fleet.",
            &["fleet"],
        )?;
        let etcd_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fleetscale_etcd_call_duration_seconds",
                "Time of each etcd call, by operation.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["operation"],
        )?;
        registry.register(Box::new(etcd_call_seconds.clone()))?;
        let etcd_errors = counter(
            "fleetscale_etcd_errors_total",
            "etcd calls that failed or timed out, by operation.",
            &["operation"],
        )?;
        let adapter = fleetscale_adapters::AdapterMetrics::register(&registry)?;
        Ok(Metrics {
            fleet_held,
            leadership_changes,
            etcd_call_seconds,
            etcd_errors,
            registry,
            desired,
            applied,
            billed,
            serving,
            demand,
            decisions,
            guard_interventions,
            signal_errors,
            signal_demand,
            tick_failures,
            suspended,
            stuck_replaced,
            drains_finished,
            draining,
            launch_shortfall,
            fleet_panics,
            decide_seconds,
            adapter,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> prometheus::Result<String> {
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer)
            .map_err(|e| prometheus::Error::Msg(format!("the exposition is not UTF-8: {e}")))
    }
}

/// Per-fleet health, shown at /healthz.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetHealth {
    pub fleet: String,
    pub healthy: bool,
    pub detail: String,
}

/// Shared health board: each fleet task writes its own line.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Vec<FleetHealth>>>);

impl Health {
    pub fn set(&self, fleet: &str, healthy: bool, detail: impl Into<String>) {
        let mut board = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let line = FleetHealth {
            fleet: fleet.into(),
            healthy,
            detail: detail.into(),
        };
        match board.iter_mut().find(|h| h.fleet == fleet) {
            Some(h) => *h = line,
            None => board.push(line),
        }
    }

    pub fn snapshot(&self) -> Vec<FleetHealth> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Serves /metrics and /healthz until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The /metrics and /healthz routes (open: no token), which the agent serves beside the
/// management API's.
pub fn router(metrics: Metrics, health: Health) -> axum::Router {
    use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.render() {
                        Ok(text) => {
                            ([("content-type", prometheus::TEXT_FORMAT)], text).into_response()
                        }
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("cannot render the metrics: {e}\n"),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move {
                    let fleets = health.snapshot();
                    let status = if fleets.iter().all(|f| f.healthy) {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(fleets))
                }
            }),
        )
}

/// Binds the metrics address; an error names it.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} for /metrics: {e}"))
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber (RUST_LOG filters; default info).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
