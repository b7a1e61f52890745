//! The management API under `/v1` on the agent's HTTP server: fleets' state, last
//! decision, forecast and plan; pauses and time-limited overrides, each audited in the
//! log and kept in a state file across restarts. Bearer tokens with `read` or `operate`
//! roles ([`auth`]); TLS when configured. The schema is docs/openapi.json. The status
//! page at `/` ([`page`]) shows the same to a browser, behind the same tokens.
//!
//! The controllers never see HTTP: each shares a [`FleetControls`] board with the API.

pub mod auth;
pub mod page;
pub mod routes;
pub mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetscale_adapters::Clock;
use serde::Deserialize;

use crate::config::FleetConfig;
use crate::operator::{self, FleetControls};

/// Where the CLI finds an agent by default: the agent's default `metrics_address`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9910";

/// `[agent.api]`: who may use the API, where pauses and overrides are kept, and TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `[[agent.api.tokens]]`: without any, every `/v1` call is refused (401).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The state file of pauses and overrides. Default: beside the config file, named
    /// after it (`fleetscale.toml` -> `fleetscale.state.json`).
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// `[agent.api.tls]`: serve the agent's HTTP server (the API, /metrics and /healthz)
    /// over TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// One bearer token: its holder's name (in the audit log) and role, and the token as the
/// hex SHA-256 of its text or as a file holding the text (hashed at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: auth::Role,
    /// `printf %s "$TOKEN" | sha256sum`: 64 hex digits.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file whose content (surrounding whitespace trimmed) is the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[agent.api.tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl ApiConfig {
    /// Problems found without reading any file, each with its field's path under
    /// `agent.api`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let at = format!("tokens[{i}]");
            if token.name.trim().is_empty() {
                problems.push((format!("{at}.name"), "must not be empty".into()));
            } else if !names.insert(token.name.as_str()) {
                problems.push((
                    format!("{at}.name"),
                    format!("token {:?} is named twice", token.name),
                ));
            }
            match (&token.sha256, &token.token_file) {
                (Some(_), Some(_)) => problems.push((
                    format!("{at}.token_file"),
                    "give sha256 or token_file, not both".into(),
                )),
                (None, None) => problems.push((
                    format!("{at}.sha256"),
                    "missing: give sha256 (printf %s \"$TOKEN\" | sha256sum) or token_file".into(),
                )),
                (Some(hash), None) => {
                    if auth::parse_hash(hash).is_none() {
                        problems.push((
                            format!("{at}.sha256"),
                            "must be 64 hex digits (the SHA-256 of the token, not the token)"
                                .into(),
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
        }
        problems
    }

    /// The state file: the configured one, or the default beside `config_file`.
    pub fn state_file_beside(&self, config_file: &Path) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            let stem = config_file
                .file_stem()
                .map_or_else(|| "fleetscale".into(), |s| s.to_string_lossy().into_owned());
            config_file.with_file_name(format!("{stem}.state.json"))
        })
    }
}

/// The API's shared state: one board per fleet, the tokens, the state file and the
/// agent's clock (the controllers' own, so that overrides expire by it).
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) fleets: Arc<BTreeMap<String, FleetEntry>>,
    pub(crate) tokens: Arc<auth::Tokens>,
    pub(crate) store: Arc<state::StateStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: auth::ApiMetrics,
    pub(crate) page: page::PageKeys,
}

impl Api {
    /// Reads the tokens (hashing token files) and the state file (`None`: kept in memory
    /// only), and makes a board for each of `fleets`. A damaged state file is an error
    /// naming it, never a silent reset.
    pub fn start(
        config: &ApiConfig,
        fleets: &[FleetConfig],
        clock: Arc<dyn Clock>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Api> {
        Api::start_with(config, fleets, clock, registry, None)
    }

    /// [`Api::start`]; with `shared` (agents coordinating), pauses and overrides are
    /// kept there, the state file is neither read nor written, and the boards start
    /// empty until [`Api::apply_shared`] fills them from the store.
    pub fn start_with(
        config: &ApiConfig,
        fleets: &[FleetConfig],
        clock: Arc<dyn Clock>,
        registry: &prometheus::Registry,
        shared: Option<Arc<dyn state::SharedCommands>>,
    ) -> anyhow::Result<Api> {
        let tokens = auth::Tokens::load(&config.tokens)?;
        let path = config.state_file.clone();
        let mut saved = match (&path, &shared) {
            (Some(path), None) => state::load(path, clock.now())?,
            (Some(path), Some(store)) => {
                tracing::info!(file = %path.display(), store = %store.describe(), "pauses and overrides are kept in the coordination store: the state file is not used");
                BTreeMap::new()
            }
            (None, _) => BTreeMap::new(),
        };
        for (fleet, _) in saved
            .iter()
            .filter(|(f, _)| !fleets.iter().any(|c| &c.name == *f))
        {
            tracing::warn!(fleet = %fleet, "the state file names a fleet the config does not have: its pause and overrides are dropped");
        }
        let boards = fleets
            .iter()
            .map(|fleet| {
                let name = &fleet.name;
                let commands = saved.remove(name).unwrap_or_default();
                if let Some(pause) = &commands.pause {
                    tracing::warn!(fleet = %name, by = %pause.by, reason = %pause.reason, "the fleet is paused (from the state file): it makes no change until resumed");
                }
                let entry = FleetEntry {
                    controls: FleetControls::new(commands),
                    policy: fleet.policy.name(),
                    configured: (fleet.guards.min, fleet.guards.max),
                };
                (name.clone(), entry)
            })
            .collect();
        Ok(Api {
            fleets: Arc::new(boards),
            tokens: Arc::new(tokens),
            store: Arc::new(match shared {
                Some(shared) => state::StateStore::shared(shared),
                None => state::StateStore::new(path),
            }),
            clock,
            metrics: auth::ApiMetrics::register(registry)
                .context("registering the API's metrics")?,
            page: page::PageKeys::new(config.tls.is_some()),
        })
    }

    /// Puts `commands`, read from the shared store, in force on fleet `name`'s board
    /// (a fleet not in this agent's config is ignored).
    pub fn apply_shared(&self, name: &str, mut commands: operator::Commands) {
        if let Some(entry) = self.fleets.get(name) {
            commands.prune(self.clock.now());
            if entry.controls.commands() != commands {
                tracing::info!(fleet = %name, paused = commands.pause.is_some(), overrides = commands.overrides.len(), "pauses and overrides changed in the coordination store");
                entry.controls.set_commands(commands);
            }
        }
    }

    /// The board a fleet's controller is given.
    pub fn controls(&self, fleet: &str) -> Option<FleetControls> {
        self.fleets.get(fleet).map(|f| f.controls.clone())
    }

    /// The `/v1` routes and the status page's (`/`, `/login`, the page's forms).
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone()).merge(page::router(self.clone()))
    }
}

/// One fleet as the API knows it.
#[derive(Debug, Clone)]
pub(crate) struct FleetEntry {
    pub(crate) controls: FleetControls,
    pub(crate) policy: &'static str,
    /// The configured `(min, max)`, before overrides.
    pub(crate) configured: (u32, u32),
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate chain and key into a TLS acceptor; errors name the file.
pub fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.certificate)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "agent.api.tls.certificate: cannot read {}: {e}",
                tls.certificate.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "agent.api.tls.certificate: {} holds no PEM certificate",
            tls.certificate.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        anyhow::anyhow!("agent.api.tls.key: cannot read {}: {e}", tls.key.display())
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("agent.api.tls: no TLS version available")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .with_context(|| {
        format!(
            "agent.api.tls: {} and {} do not make a usable certificate and key",
            tls.certificate.display(),
            tls.key.display()
        )
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections arrive after their TLS handshake. Handshakes run on
/// tasks of their own, so that a slow or silent client holds up no other.
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (send, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let send = send.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = send.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            local,
            ready,
            accepting,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it never does but on drop): accept no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` on `listener`, over TLS when `tls` is given, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(acceptor) => {
            axum::serve(TlsListener::new(listener, acceptor), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
