//! A PromQL query against a Prometheus-compatible server, read as a fleet's demand.
//!
//! `latest` is one instant query at `now`; `history` is a range query at the tick's step,
//! split into chunks under Prometheus's limit of 11,000 points per series, and is only
//! asked for at start and to fill a gap after an outage, so a running agent reads one
//! instant value per tick and never the whole window again.
//!
//! Reading is strict: the query must return exactly one series, whose value is finite and
//! non-negative and whose underlying samples are no older than the staleness limit.
//! Anything else is a [`SignalError`], on which the controller holds the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self as promql, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

pub use super::Conversion;
use super::{SignalError, SignalSource};

/// Prometheus refuses range queries of more than 11,000 points per series; stay under it.
pub const MAX_POINTS_PER_QUERY: usize = 10_000;

/// At most this many label sets are listed when a query returns several series.
const LISTED_SERIES: usize = 10;

/// `[fleets.signal] kind = "prometheus"`: a PromQL query whose value is the fleet's load.
///
/// ```toml
/// [fleets.signal]
/// kind = "prometheus"
/// address = "https://prometheus.example:9090"
/// query = 'sum(rate(http_requests_total{job="web"}[2m]))'
/// meaning = "throughput"
/// per_instance = 50.0
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// The server's base URL, with any path prefix it is served under
    /// (`http://127.0.0.1:9090`, `https://metrics.example/prometheus`). No credentials in
    /// it: use `basic_auth` or a bearer token.
    pub address: String,
    /// The PromQL query. It must return exactly one series (aggregate with `sum()` or
    /// `max()` when it would return several).
    pub query: String,
    /// What the query's value measures, and so how it becomes demand in instances.
    pub meaning: Meaning,
    /// `meaning = "throughput"`: how much of the value one instance serves at its
    /// service-level limit. Demand = value / per_instance.
    #[serde(default)]
    pub per_instance: Option<f64>,
    /// `meaning = "utilisation"`: the utilisation one instance should run at, in the
    /// query's own unit (0.7, or 70 for a percentage). Demand = value x serving / target.
    #[serde(default)]
    pub target: Option<f64>,
    /// `meaning = "queue_depth"`: how many waiting items one instance works off.
    /// Demand = value / items_per_instance.
    #[serde(default)]
    pub items_per_instance: Option<f64>,
    /// Longest wait for one answer; a slower server is unavailable. Default 10s.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Newest sample older than this is stale (the fleet holds). Default 5m.
    #[serde(default = "defaults::staleness_limit", with = "humantime_serde")]
    pub staleness_limit: Duration,
    /// A file holding a bearer token, read again before every query (so a rotated token
    /// is picked up).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding a bearer token, read at start.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Extra headers sent with every query, e.g. `{ "X-Scope-OrgID" = "tenant-1" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS settings for an `https` address.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// What a query's value measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meaning {
    /// Work per unit of time (requests per second, jobs per minute): demand is
    /// `value / per_instance`.
    Throughput,
    /// How busy the serving instances are (mean CPU, 0.0 to 1.0 or a percentage): demand
    /// is `value x serving / target`.
    Utilisation,
    /// Items waiting (a queue's depth, jobs pending): demand is
    /// `value / items_per_instance`.
    QueueDepth,
}

impl Meaning {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Meaning::Throughput => "throughput",
            Meaning::Utilisation => "utilisation",
            Meaning::QueueDepth => "queue_depth",
        }
    }
}

/// `[fleets.signal.basic_auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    /// A file holding the password (trailing newline ignored), read at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password, read at start.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// `[fleets.signal.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust instead of the built-in web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that require one; with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Unsafe: for tests only; logged as a warning.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

mod defaults {
    use std::time::Duration;
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn staleness_limit() -> Duration {
        Duration::from_secs(300)
    }
}

/// `prometheus` among the signal kinds.
impl super::SignalKind for PrometheusConfig {
    fn problems(&self) -> Vec<(&'static str, String)> {
        PrometheusConfig::problems(self)
    }

    fn build(
        &self,
        _clock: &dyn fleetscale_adapters::Clock,
    ) -> anyhow::Result<Box<dyn SignalSource>> {
        Ok(Box::new(PrometheusSignal::new(self)?))
    }
}

impl PrometheusConfig {
    /// Every problem with the values, as (field, message); files are checked to exist,
    /// environment variables are read only when the source is built.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match Url::parse(&self.address) {
            Err(e) => problems.push(("address", format!("{:?} is not a URL: {e}", self.address))),
            Ok(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    problems.push((
                        "address",
                        format!(
                            "must start with http:// or https://, not {}://",
                            url.scheme()
                        ),
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    problems.push((
                        "address",
                        "must not hold credentials: use basic_auth or a bearer token".into(),
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    problems.push((
                        "address",
                        "must be the server's base URL, without ?query or #fragment".into(),
                    ));
                }
                let tls_set = self.tls.ca_file.is_some()
                    || self.tls.cert_file.is_some()
                    || self.tls.insecure_skip_verify;
                if url.scheme() == "http" && tls_set {
                    problems.push(("tls", "TLS settings need an https:// address".into()));
                }
            }
        }
        if self.query.trim().is_empty() {
            problems.push(("query", "must not be empty".into()));
        } else {
            match promql::parse(&self.query) {
                Err(e) => problems.push(("query", format!("not valid PromQL: {}", e.trim()))),
                Ok(expr) if matches!(expr.value_type(), ValueType::Matrix | ValueType::String) => problems.push((
                    "query",
                    "must give an instant vector or a scalar, not a range vector or a string (wrap a range in rate() or avg_over_time())".into(),
                )),
                Ok(_) => {}
            }
        }
        // Each meaning needs its own field, and the other meanings' fields are refused.
        let fields = [
            (
                "throughput",
                "per_instance",
                self.per_instance,
                "the value one instance serves",
            ),
            (
                "utilisation",
                "target",
                self.target,
                "the utilisation to run at",
            ),
            (
                "queue_depth",
                "items_per_instance",
                self.items_per_instance,
                "the items one instance works off",
            ),
        ];
        let meaning = self.meaning.as_str();
        for (owner, field, value, what) in fields {
            match value {
                None if owner == meaning => problems.push((
                    field,
                    format!("meaning = \"{meaning}\" needs {field} ({what})"),
                )),
                Some(v) if owner == meaning && !(v.is_finite() && v > 0.0) => {
                    problems.push((field, format!("must be a positive number, not {v}")))
                }
                Some(_) if owner != meaning => {
                    problems.push((field, format!("applies to meaning = \"{owner}\" only")))
                }
                _ => {}
            }
        }
        if self.timeout.is_zero() {
            problems.push(("timeout", "must be longer than 0s".into()));
        }
        if self.staleness_limit.is_zero() {
            problems.push(("staleness_limit", "must be longer than 0s".into()));
        }
        let bearer = self.bearer_token_file.is_some() || self.bearer_token_env.is_some();
        if self.bearer_token_file.is_some() && self.bearer_token_env.is_some() {
            problems.push((
                "bearer_token_env",
                "give bearer_token_file or bearer_token_env, not both".into(),
            ));
        }
        if bearer && self.basic_auth.is_some() {
            problems.push((
                "basic_auth",
                "give a bearer token or basic_auth, not both".into(),
            ));
        }
        if self
            .bearer_token_env
            .as_ref()
            .is_some_and(|env| env.is_empty())
        {
            problems.push((
                "bearer_token_env",
                "must name an environment variable".into(),
            ));
        }
        let mut file = |field: &'static str, path: &Option<PathBuf>| {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
                problems.push((field, format!("{} is not a readable file", path.display())));
            }
        };
        file("bearer_token_file", &self.bearer_token_file);
        file("tls.ca_file", &self.tls.ca_file);
        file("tls.cert_file", &self.tls.cert_file);
        file("tls.key_file", &self.tls.key_file);
        if let Some(basic) = &self.basic_auth {
            file("basic_auth.password_file", &basic.password_file);
            if basic.username.is_empty() {
                problems.push(("basic_auth.username", "must not be empty".into()));
            }
            match (&basic.password_file, &basic.password_env) {
                (None, None) => {
                    problems.push(("basic_auth", "needs password_file or password_env".into()))
                }
                (Some(_), Some(_)) => problems.push((
                    "basic_auth.password_env",
                    "give password_file or password_env, not both".into(),
                )),
                (None, Some(env)) if env.is_empty() => problems.push((
                    "basic_auth.password_env",
                    "must name an environment variable".into(),
                )),
                _ => {}
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push(("tls", "cert_file and key_file go together".into()));
        }
        if self.tls.insecure_skip_verify && self.tls.ca_file.is_some() {
            problems.push((
                "tls.insecure_skip_verify",
                "ca_file has no effect when verification is off: remove one".into(),
            ));
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push((
                    "headers",
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            } else if HeaderValue::from_str(value).is_err() {
                problems.push((
                    "headers",
                    format!("the value of {name:?} is not a valid HTTP header value"),
                ));
            } else if name.eq_ignore_ascii_case("authorization")
                && (bearer || self.basic_auth.is_some())
            {
                problems.push((
                    "headers",
                    "an Authorization header conflicts with the bearer token or basic_auth".into(),
                ));
            }
        }
        problems
    }
}

/// A Prometheus signal that could not be built from its (validated) config.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("{field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    /// Read from the file before every query.
    BearerFile(PathBuf),
    Bearer(Secret),
    Basic {
        username: String,
        password: Secret,
    },
}

/// The Prometheus signal source.
#[derive(Debug)]
pub struct PrometheusSignal {
    client: reqwest::Client,
    /// The address as configured, for messages (it holds no credentials).
    address: String,
    query_url: Url,
    range_url: Url,
    query: String,
    /// A query for the time of the newest raw sample behind `query`, when it reads any
    /// series directly.
    freshness_query: Option<String>,
    conversion: Conversion,
    timeout: Duration,
    staleness_limit: Duration,
    auth: Auth,
}

impl PrometheusSignal {
    /// Builds the source from a config that passed [`PrometheusConfig::problems`]; reads
    /// the secrets and certificates it names.
    pub fn new(config: &PrometheusConfig) -> Result<Self, PrometheusError> {
        if let Some((field, message)) = config.problems().into_iter().next() {
            return Err(PrometheusError::Config { field, message });
        }
        let conversion = match config.meaning {
            Meaning::Throughput => Conversion::Throughput {
                per_instance: config.per_instance.unwrap_or(1.0),
            },
            Meaning::Utilisation => Conversion::Utilisation {
                target: config.target.unwrap_or(1.0),
            },
            Meaning::QueueDepth => Conversion::QueueDepth {
                items_per_instance: config.items_per_instance.unwrap_or(1.0),
            },
        };
        let mut base = Url::parse(&config.address).map_err(|e| PrometheusError::Config {
            field: "address",
            message: e.to_string(),
        })?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |path: &str| {
            base.join(path).map_err(|e| PrometheusError::Config {
                field: "address",
                message: e.to_string(),
            })
        };
        let query_url = join("api/v1/query")?;
        let range_url = join("api/v1/query_range")?;
        let freshness_query = promql::parse(&config.query)
            .ok()
            .and_then(|expr| freshness_query(&expr));

        let auth = match (
            &config.bearer_token_file,
            &config.bearer_token_env,
            &config.basic_auth,
        ) {
            (Some(path), _, _) => {
                read_secret(path, "bearer_token_file")?;
                Auth::BearerFile(path.clone())
            }
            (None, Some(env), _) => Auth::Bearer(env_secret(env, "bearer_token_env")?),
            (None, None, Some(basic)) => {
                let password = match (&basic.password_file, &basic.password_env) {
                    (Some(path), _) => read_secret(path, "basic_auth.password_file")?,
                    (None, Some(env)) => env_secret(env, "basic_auth.password_env")?,
                    (None, None) => {
                        return Err(PrometheusError::Config {
                            field: "basic_auth",
                            message: "needs password_file or password_env".into(),
                        });
                    }
                };
                Auth::Basic {
                    username: basic.username.clone(),
                    password,
                }
            }
            (None, None, None) => Auth::None,
        };

        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let invalid = |message: String| PrometheusError::Config {
                field: "headers",
                message,
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(format!("{name:?}: {e}")))?;
            let mut value =
                HeaderValue::from_str(value).map_err(|e| invalid(format!("{name}: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .user_agent(concat!("fleetscale/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some(path) = &config.tls.ca_file {
            let pem = std::fs::read(path).map_err(|source| PrometheusError::Read {
                field: "tls.ca_file",
                path: path.clone(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                PrometheusError::Config {
                    field: "tls.ca_file",
                    message: format!("{}: not a PEM certificate bundle: {e}", path.display()),
                }
            })?;
            if certificates.is_empty() {
                return Err(PrometheusError::Config {
                    field: "tls.ca_file",
                    message: format!("{}: holds no PEM certificate", path.display()),
                });
            }
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            let mut pem = std::fs::read(cert).map_err(|source| PrometheusError::Read {
                field: "tls.cert_file",
                path: cert.clone(),
                source,
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|source| PrometheusError::Read {
                field: "tls.key_file",
                path: key.clone(),
                source,
            })?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| PrometheusError::Config {
                    field: "tls.cert_file",
                    message: format!(
                        "{} with {}: not a PEM certificate and private key: {e}",
                        cert.display(),
                        key.display()
                    ),
                })?;
            builder = builder.identity(identity);
        }
        if config.tls.insecure_skip_verify {
            tracing::warn!(address = %config.address, "tls.insecure_skip_verify = true: the Prometheus server's certificate is NOT verified; anyone on the path can forge the signal");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| PrometheusError::Client(error_chain(&e)))?;
        Ok(PrometheusSignal {
            client,
            address: config.address.clone(),
            query_url,
            range_url,
            query: config.query.clone(),
            freshness_query,
            conversion,
            timeout: config.timeout,
            staleness_limit: config.staleness_limit,
            auth,
        })
    }

    pub fn conversion(&self) -> Conversion {
        self.conversion
    }

    /// The query's raw value at `at` (before conversion), checked: one series, fresh,
    /// finite and non-negative.
    pub async fn value_at(&self, at: SystemTime) -> Result<f64, SignalError> {
        let time = seconds(at);
        let value = async {
            let data = self
                .post(&self.query_url, &self.query, &[("time", time.clone())])
                .await?;
            self.single_value(data)
        };
        let newest = async {
            match &self.freshness_query {
                Some(query) => self.newest_sample(query, &time).await,
                None => Ok(None),
            }
        };
        let (value, newest) = tokio::join!(value, newest);
        let value = value?;
        match newest {
            Ok(Some(newest)) => {
                let age = at.duration_since(newest).unwrap_or_default();
                if age > self.staleness_limit {
                    return Err(SignalError::Stale {
                        age: round_ms(age),
                        limit: self.staleness_limit,
                    });
                }
            }
            Ok(None) => {}
            // The value itself was read: a failed freshness check alone does not stop it.
            Err(e) => {
                tracing::debug!(address = %self.address, error = %e, "could not check the signal's freshness")
            }
        }
        super::checked(value, "the query's value")
    }

    /// The query's raw values at `steps` instants spaced `step` apart, the last at `end`;
    /// `NaN` where the query has no value or an absurd one.
    pub async fn values_until(
        &self,
        end: SystemTime,
        step: Duration,
        steps: usize,
    ) -> Result<Vec<f64>, SignalError> {
        let mut values = vec![f64::NAN; steps];
        if steps == 0 {
            return Ok(values);
        }
        if step.is_zero() {
            return Err(SignalError::Missing(
                "a history needs a step longer than 0s".into(),
            ));
        }
        let end_s = seconds_f64(end);
        let step_s = step.as_secs_f64();
        let first_s = end_s - step_s * (steps - 1) as f64;
        let mut absurd = 0usize;
        for chunk_start in (0..steps).step_by(MAX_POINTS_PER_QUERY) {
            let chunk_end = (chunk_start + MAX_POINTS_PER_QUERY).min(steps) - 1;
            let from = first_s + step_s * chunk_start as f64;
            let to = first_s + step_s * chunk_end as f64;
            let params = [
                ("start", format!("{from:.3}")),
                ("end", format!("{to:.3}")),
                ("step", format!("{step_s}")),
            ];
            let data = self.post(&self.range_url, &self.query, &params).await?;
            let series = match data {
                ApiData::Matrix(series) => series,
                other => {
                    return Err(SignalError::Ambiguous(format!(
                        "the range query returned {}, not a range vector",
                        other.describe()
                    )));
                }
            };
            let series = match <[_; 1]>::try_from(series) {
                Ok([one]) => one,
                Err(none) if none.is_empty() => continue,
                Err(many) => return Err(ambiguous(&self.query, many.iter().map(|s| &s.metric))),
            };
            for [at, value] in series.values {
                let (Some(at), Some(value)) = (number(&at), number(&value)) else {
                    continue;
                };
                let index = ((at - first_s) / step_s).round();
                if !(0.0..steps as f64).contains(&index) {
                    continue;
                }
                let Some(slot) = values.get_mut(index as usize) else {
                    continue;
                };
                if value.is_finite() && value >= 0.0 {
                    *slot = value;
                } else {
                    absurd += 1;
                }
            }
        }
        if absurd > 0 {
            tracing::warn!(address = %self.address, query = %self.query, absurd, "history: NaN, infinite or negative values read as gaps");
        }
        Ok(values)
    }

    /// Sends one query, mapping every failure to a [`SignalError`] whose message names the
    /// server and never a secret.
    async fn post(
        &self,
        url: &Url,
        query: &str,
        params: &[(&str, String)],
    ) -> Result<ApiData, SignalError> {
        let mut form: Vec<(&str, String)> = vec![("query", query.to_owned())];
        form.extend(params.iter().cloned());
        form.push(("timeout", format!("{}ms", self.timeout.as_millis().max(1))));
        let mut request = self.client.post(url.clone()).form(&form);
        request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(&token.0),
            Auth::BearerFile(path) => {
                let token = read_secret(path, "bearer_token_file")
                    .map_err(|e| SignalError::Unavailable(e.to_string()))?;
                request.bearer_auth(&token.0)
            }
            Auth::Basic { username, password } => request.basic_auth(username, Some(&password.0)),
        };
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        match status {
            StatusCode::UNAUTHORIZED => {
                return Err(SignalError::Unavailable(format!(
                    "{} refused the credentials (401 Unauthorized): check basic_auth or the bearer token",
                    self.address
                )));
            }
            StatusCode::FORBIDDEN => {
                return Err(SignalError::Unavailable(format!(
                    "{} denied the query (403 Forbidden): the credentials lack permission to read",
                    self.address
                )));
            }
            _ => {}
        }
        let parsed: Result<ApiResponse, _> = serde_json::from_slice(&body);
        match parsed {
            Ok(ApiResponse {
                status: ApiStatus::Success,
                data: Some(data),
                warnings,
                ..
            }) if status.is_success() => {
                for warning in warnings.unwrap_or_default() {
                    tracing::warn!(address = %self.address, query, %warning, "Prometheus warned about the query");
                }
                Ok(data)
            }
            Ok(ApiResponse {
                error_type, error, ..
            }) => Err(SignalError::Unavailable(format!(
                "{} answered {status}{}: {}",
                self.address,
                error_type.map(|t| format!(" ({t})")).unwrap_or_default(),
                error.unwrap_or_else(|| "no result".into())
            ))),
            Err(_) => Err(SignalError::Unavailable(format!(
                "{} answered {status} with something that is not a Prometheus API response ({}); is the address a Prometheus server?",
                self.address,
                excerpt(&body)
            ))),
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> SignalError {
        let error = error.without_url();
        if error.is_timeout() {
            SignalError::Unavailable(format!(
                "{} did not answer within the timeout of {:?}",
                self.address, self.timeout
            ))
        } else if error.is_connect() {
            SignalError::Unavailable(format!(
                "cannot connect to {}: {}",
                self.address,
                error_chain(&error)
            ))
        } else {
            SignalError::Unavailable(format!(
                "query to {} failed: {}",
                self.address,
                error_chain(&error)
            ))
        }
    }

    /// One series' value out of an instant query's answer.
    fn single_value(&self, data: ApiData) -> Result<f64, SignalError> {
        match data {
            ApiData::Scalar([_, value]) => number(&value).ok_or_else(|| {
                SignalError::Ambiguous(format!("the scalar {value} is not a number"))
            }),
            ApiData::Vector(samples) => match samples.as_slice() {
                [] => Err(SignalError::Missing(format!(
                    "the query returned no series: {}",
                    self.query
                ))),
                [sample] => {
                    let [_, value] = &sample.value;
                    number(value).ok_or_else(|| {
                        SignalError::Ambiguous(format!("the value {value} is not a number"))
                    })
                }
                _ => Err(ambiguous(&self.query, samples.iter().map(|s| &s.metric))),
            },
            other => Err(SignalError::Ambiguous(format!(
                "the query returned {}; it must return one series (an instant vector)",
                other.describe()
            ))),
        }
    }

    /// The oldest of the newest raw samples of the series the query reads, if any has a
    /// sample within Prometheus's lookback.
    async fn newest_sample(
        &self,
        query: &str,
        time: &str,
    ) -> Result<Option<SystemTime>, SignalError> {
        let data = self
            .post(&self.query_url, query, &[("time", time.to_owned())])
            .await?;
        let ApiData::Vector(samples) = data else {
            return Ok(None);
        };
        let oldest = samples
            .iter()
            .filter_map(|s| number(&s.value[1]))
            .filter(|v| v.is_finite())
            .fold(None, |min: Option<f64>, v| {
                Some(min.map_or(v, |m| m.min(v)))
            });
        // A timestamp beyond what a time can hold is no answer, not a panic.
        Ok(oldest.and_then(|s| {
            Duration::try_from_secs_f64(s.max(0.0))
                .ok()
                .and_then(|d| UNIX_EPOCH.checked_add(d))
        }))
    }
}

impl PrometheusSignal {
    /// Prometheus carries a series' last sample forward for up to 5 minutes: the history's
    /// last steps may repeat a sample older than the staleness limit. Those steps become
    /// gaps, so that a start never trusts a value `latest` would call stale.
    async fn drop_stale_tail(&self, values: &mut [f64], now: SystemTime, step: Duration) {
        let Some(query) = &self.freshness_query else {
            return;
        };
        let newest = match self.newest_sample(query, &seconds(now)).await {
            Ok(Some(newest)) => newest,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(address = %self.address, error = %e, "could not check the history's freshness");
                return;
            }
        };
        let trusted_until = newest + self.staleness_limit;
        for (back, value) in values.iter_mut().rev().enumerate() {
            match now.checked_sub(step * back as u32) {
                Some(at) if at > trusted_until => *value = f64::NAN,
                _ => break,
            }
        }
    }
}

#[async_trait]
impl SignalSource for PrometheusSignal {
    fn kind(&self) -> &'static str {
        "prometheus"
    }

    async fn history(
        &mut self,
        now: SystemTime,
        step: Duration,
        steps: usize,
        serving: u32,
    ) -> Result<Vec<f64>, SignalError> {
        // Past utilisation scaled by nothing serving would be a history of zeros, and a
        // warm-up would take it for no demand: gaps instead (the past's serving counts
        // are not known).
        if serving == 0 && self.conversion.needs_serving() {
            return Ok(vec![f64::NAN; steps]);
        }
        let mut values = self.values_until(now, step, steps).await?;
        self.drop_stale_tail(&mut values, now, step).await;
        Ok(values
            .into_iter()
            .map(|v| self.conversion.demand(v, serving))
            .collect())
    }

    async fn latest(&mut self, now: SystemTime, serving: u32) -> Result<f64, SignalError> {
        let value = self.value_at(now).await?;
        if serving == 0 && self.conversion.needs_serving() {
            return Err(SignalError::Missing(
                "utilisation says nothing about demand while no instance serves".into(),
            ));
        }
        super::checked(self.conversion.demand(value, serving), "demand")
    }
}

/// The `/api/v1/query` and `/api/v1/query_range` envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: ApiStatus,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApiStatus {
    Success,
    Error,
}

/// A sample as the API writes it: `[unix seconds, "value"]`.
type RawSample = [serde_json::Value; 2];

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<InstantSeries>),
    Matrix(Vec<RangeSeries>),
    Scalar(RawSample),
    String(RawSample),
}

impl ApiData {
    fn describe(&self) -> String {
        match self {
            ApiData::Vector(v) => format!("an instant vector of {} series", v.len()),
            ApiData::Matrix(m) => format!("a range vector of {} series", m.len()),
            ApiData::Scalar(_) => "a scalar".into(),
            ApiData::String([_, text]) => format!("the string {text}"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct InstantSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: RawSample,
}

#[derive(Debug, Deserialize)]
struct RangeSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<RawSample>,
}

/// A number as the API writes it: a JSON number (timestamps) or a string (`"1.5"`,
/// `"NaN"`, `"+Inf"`).
fn number(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `name{label="value", ...}` as Prometheus writes a series.
pub fn label_set(metric: &BTreeMap<String, String>) -> String {
    let name = metric.get("__name__").map(String::as_str).unwrap_or("");
    let labels: Vec<String> = metric
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", labels.join(", "))
}

fn ambiguous<'a>(
    query: &str,
    metrics: impl ExactSizeIterator<Item = &'a BTreeMap<String, String>>,
) -> SignalError {
    let count = metrics.len();
    let mut listed: Vec<String> = metrics.take(LISTED_SERIES).map(label_set).collect();
    if count > LISTED_SERIES {
        listed.push(format!("and {} more", count - LISTED_SERIES));
    }
    SignalError::Ambiguous(format!(
        "the query returned {count} series, one is needed: {}; aggregate them into one, e.g. sum({query}) or max({query})",
        listed.join(", ")
    ))
}

/// Collects the series selectors of a query (without `offset` or `@`, whose samples are
/// old on purpose).
#[derive(Default)]
struct Selectors(BTreeSet<String>);

impl ExprVisitor for Selectors {
    type Error = std::convert::Infallible;
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let selector = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = selector.filter(|vs| vs.offset.is_none() && vs.at.is_none()) {
            self.0.insert(vs.to_string());
        }
        Ok(true)
    }
}

/// A query for the oldest of the newest samples of every series selector in `expr`:
/// `timestamp()` of a plain selector is the sample's own time, whatever aggregation the
/// query puts on top of it.
pub fn freshness_query(expr: &Expr) -> Option<String> {
    let mut selectors = Selectors::default();
    let _ = walk_expr(&mut selectors, expr);
    let parts: Vec<String> = selectors
        .0
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "label_replace(max(timestamp({s})), \"fleetscale_selector\", \"{i}\", \"\", \"\")"
            )
        })
        .collect();
    match parts.len() {
        0 => None,
        _ => Some(format!("min({})", parts.join(" or "))),
    }
}

fn read_secret(path: &Path, field: &'static str) -> Result<Secret, PrometheusError> {
    let text = std::fs::read_to_string(path).map_err(|source| PrometheusError::Read {
        field,
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(PrometheusError::Config {
            field,
            message: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret(secret))
}

fn env_secret(name: &str, field: &'static str) -> Result<Secret, PrometheusError> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(Secret(value)),
        Ok(_) => Err(PrometheusError::Config {
            field,
            message: format!("the environment variable {name} is empty"),
        }),
        Err(_) => Err(PrometheusError::Config {
            field,
            message: format!("the environment variable {name} is not set"),
        }),
    }
}

/// An error and its causes, `a: b: c`, without repeats.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The first bytes of a body, printable, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..120).unwrap_or(body));
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{:?}", text.trim())
}

fn seconds_f64(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A time as the API takes it: unix seconds, millisecond precision.
fn seconds(at: SystemTime) -> String {
    format!("{:.3}", seconds_f64(at))
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for Prometheus's instant-query endpoint (`POST /api/v1/query`, form
    /// encoded, answering a vector: Prometheus's "HTTP API" page) that answers the
    /// freshness query with a sample time no `SystemTime` can hold, and 5 otherwise.
    async fn answering_a_huge_timestamp() -> String {
        use axum::{Json, Router, routing::post};
        let app = Router::new().route(
            "/api/v1/query",
            post(|body: String| async move {
                let value = if body.contains("timestamp") {
                    "1e300"
                } else {
                    "5"
                };
                Json(serde_json::json!({
                    "status": "success",
                    "data": {"resultType": "vector",
                             "result": [{"metric": {}, "value": [1700000000.0, value]}]}
                }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn utilisation_history_with_nothing_serving_is_gaps_not_zeros() {
        let mut signal = PrometheusSignal::new(&config(
            "address = \"http://127.0.0.1:9\"\nquery = \"avg(cpu)\"\nmeaning = \"utilisation\"\ntarget = 0.6\n",
        ))
        .unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let history = signal
            .history(at, Duration::from_secs(60), 30, 0)
            .await
            .unwrap();
        assert_eq!(history.len(), 30);
        assert!(history.iter().all(|v| v.is_nan()), "{history:?}");
    }

    #[tokio::test]
    async fn a_sample_time_beyond_any_time_is_no_answer_not_a_panic() {
        let address = answering_a_huge_timestamp().await;
        let signal = PrometheusSignal::new(&config(&format!(
            "address = \"{address}\"\nquery = \"sum(up)\"\nmeaning = \"throughput\"\nper_instance = 1.0\n"
        )))
        .unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(signal.value_at(at).await.unwrap(), 5.0);
    }

    fn config(toml_text: &str) -> PrometheusConfig {
        toml::from_str(toml_text).expect("config parses")
    }

    const BASE: &str = "address = \"http://127.0.0.1:9090\"\nquery = \"sum(up)\"\n";

    #[test]
    fn numbers_read_as_prometheus_writes_them() {
        for (text, expected) in [
            ("1.5", 1.5),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("0", 0.0),
        ] {
            assert_eq!(
                number(&serde_json::Value::String(text.into())),
                Some(expected),
                "{text}"
            );
        }
        assert!(number(&serde_json::Value::String("NaN".into())).is_some_and(f64::is_nan));
        assert_eq!(
            number(&serde_json::json!(1712345678.123)),
            Some(1712345678.123)
        );
        assert_eq!(number(&serde_json::Value::String("lots".into())), None);
    }

    #[test]
    fn both_conversions() {
        assert_eq!(
            Conversion::Throughput { per_instance: 50.0 }.demand(500.0, 3),
            10.0
        );
        // 6 instances at 90 % with a 60 % target need 9.
        assert!((Conversion::Utilisation { target: 0.6 }.demand(0.9, 6) - 9.0).abs() < 1e-12);
        assert!((Conversion::Utilisation { target: 60.0 }.demand(90.0, 6) - 9.0).abs() < 1e-12);
        // 120 items waiting, 40 per instance: 3 instances, whatever serves now.
        let queue = Conversion::QueueDepth {
            items_per_instance: 40.0,
        };
        assert!((queue.demand(120.0, 7) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_good_config_has_no_problem() {
        let c = config(&format!(
            "{BASE}meaning = \"throughput\"\nper_instance = 10.0\n"
        ));
        assert_eq!(c.problems(), vec![]);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.staleness_limit, Duration::from_secs(300));
        let c = config(&format!(
            "{BASE}meaning = \"utilisation\"\ntarget = 0.7\ntimeout = \"2s\"\nstaleness_limit = \"90s\"\n[headers]\nX-Scope-OrgID = \"tenant-1\"\n"
        ));
        assert_eq!(c.problems(), vec![]);
    }

    #[test]
    fn every_problem_is_named() {
        let c = config(
            "address = \"ftp://user:secret@host\"\nquery = \"sum(rate(x[5m])\"\nmeaning = \"throughput\"\ntarget = 0.5\n\
             timeout = \"0s\"\nbearer_token_env = \"A\"\nbearer_token_file = \"/nonexistent/token\"\n\
             [basic_auth]\nusername = \"u\"\n[tls]\ncert_file = \"/nonexistent/cert.pem\"\n[headers]\n\"bad header\" = \"x\"\n",
        );
        let fields: Vec<&str> = c.problems().iter().map(|(f, _)| *f).collect();
        for field in [
            "address",
            "query",
            "per_instance",
            "target",
            "timeout",
            "bearer_token_env",
            "basic_auth",
            "bearer_token_file",
            "tls.cert_file",
            "tls",
            "headers",
        ] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
        let address = c
            .problems()
            .into_iter()
            .filter(|(f, _)| *f == "address")
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            !address.contains("secret"),
            "a problem repeats a password: {address}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<PrometheusConfig>(&format!(
            "{BASE}meaning = \"throughput\"\nper_instance = 1.0\nquerry = \"x\"\n"
        ))
        .unwrap_err();
        assert!(error.to_string().contains("querry"), "{error}");
    }

    #[test]
    fn a_range_vector_query_is_refused() {
        let c = config(
            "address = \"http://h:9090\"\nquery = \"x[5m]\"\nmeaning = \"throughput\"\nper_instance = 1.0\n",
        );
        assert!(
            c.problems()
                .iter()
                .any(|(f, m)| *f == "query" && m.contains("range vector"))
        );
    }

    #[test]
    fn freshness_reads_the_selectors_under_any_aggregation() {
        let expr = promql::parse(
            "sum(rate(http_requests_total{job=\"web\"}[2m])) / max(up offset 1h) + on() avg(load)",
        )
        .unwrap();
        let query = freshness_query(&expr).expect("selectors found");
        assert!(
            query.contains("timestamp(http_requests_total{job=\"web\"})"),
            "{query}"
        );
        assert!(query.contains("timestamp(load)"), "{query}");
        assert!(
            !query.contains("timestamp(up"),
            "offset selectors are old on purpose: {query}"
        );
        assert!(promql::parse(&query).is_ok(), "{query}");
        assert_eq!(freshness_query(&promql::parse("vector(3)").unwrap()), None);
    }

    #[test]
    fn several_series_are_listed_with_a_suggestion() {
        let metrics: Vec<BTreeMap<String, String>> = (0..12)
            .map(|i| {
                BTreeMap::from([
                    ("__name__".to_string(), "load".to_string()),
                    ("zone".to_string(), format!("z{i}")),
                ])
            })
            .collect();
        let SignalError::Ambiguous(message) = ambiguous("load", metrics.iter()) else {
            panic!("not ambiguous")
        };
        assert!(message.contains("returned 12 series"), "{message}");
        assert!(message.contains("load{zone=\"z0\"}"), "{message}");
        assert!(message.contains("and 2 more"), "{message}");
        assert!(message.contains("sum(load)"), "{message}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secret = Secret("hunter2".into());
        let auth = Auth::Basic {
            username: "u".into(),
            password: secret,
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
