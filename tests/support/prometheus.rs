//! Test harness for the Prometheus signal: a real `prometheus` server on a free loopback
//! port with a temporary data folder (optionally backfilled with `promtool`, optionally
//! behind a web config with basic auth and TLS), a live exporter it scrapes, a stand-in
//! API server for behaviours a real server will not show on demand (slowness, headers),
//! and a test PKI.
//!
//! Every server is stopped when its handle is dropped.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INSTALL: &str =
    "install it with `apt-get install prometheus` (the README's test command does)";

/// The path of a tool of the Debian `prometheus` package; a missing tool fails the test.
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    match on_path {
        Some(path) => path,
        None => {
            let fallback = PathBuf::from("/usr/bin").join(name);
            assert!(
                fallback.is_file(),
                "`{name}` was not found on PATH nor in /usr/bin: {INSTALL}"
            );
            fallback
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// How to start a Prometheus server.
#[derive(Debug, Default, Clone)]
pub struct PrometheusOptions {
    /// `host:port` targets scraped every `scrape_interval`.
    pub scrape_targets: Vec<String>,
    /// Default 1s.
    pub scrape_interval: Option<Duration>,
    /// OpenMetrics text to backfill with `promtool tsdb create-blocks-from openmetrics`.
    pub backfill: Option<String>,
    /// Contents of `--web.config.file` (basic auth, TLS).
    pub web_config: Option<String>,
    /// Serve https (the web config has a `tls_server_config`).
    pub tls: bool,
    /// A whole `prometheus.yml` to use instead of the one made from `scrape_targets`.
    pub config: Option<String>,
}

/// A running `prometheus` process. Killed on drop; its folder is removed then.
pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    options: PrometheusOptions,
}

impl Prometheus {
    pub fn start(options: PrometheusOptions) -> Prometheus {
        tool("prometheus");
        let dir = tempfile::tempdir().expect("temporary folder");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        if let Some(text) = &options.backfill {
            let input = dir.path().join("backfill.om");
            std::fs::write(&input, text).unwrap();
            let output = Command::new(tool("promtool"))
                .args([
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    "--max-block-duration=24h",
                ])
                .arg(&input)
                .arg(&data)
                .output()
                .unwrap_or_else(|e| panic!("cannot run promtool: {e}: {INSTALL}"));
            assert!(
                output.status.success(),
                "promtool could not backfill: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let interval = options.scrape_interval.unwrap_or(Duration::from_secs(1));
        let mut config = format!(
            "global:\n  scrape_interval: {}ms\n  scrape_timeout: {}ms\n  evaluation_interval: {}ms\n",
            interval.as_millis(),
            interval.as_millis(),
            interval.as_millis()
        );
        if !options.scrape_targets.is_empty() {
            let targets: Vec<String> = options
                .scrape_targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect();
            config.push_str(&format!(
                "scrape_configs:\n  - job_name: exporter\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config = options.config.clone().unwrap_or(config);
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        if let Some(web) = &options.web_config {
            std::fs::write(dir.path().join("web.yml"), web).unwrap();
        }
        let mut server = Prometheus {
            child: None,
            port: free_port(),
            dir,
            options,
        };
        server.launch();
        server
    }

    /// Starts the process (again) on the same port and data folder, and waits until it
    /// is ready.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut command = Command::new(tool("prometheus"));
        command
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--storage.tsdb.retention.time=30d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.options.web_config.is_some() {
            command.arg(format!(
                "--web.config.file={}",
                self.dir.path().join("web.yml").display()
            ));
        }
        let mark = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start prometheus: {e}: {INSTALL}")),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let since =
                String::from_utf8_lossy(&text[(mark as usize).min(text.len())..]).to_string();
            if since.contains("Server is ready to receive web requests") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("prometheus exited ({status}) before it was ready:\n{since}");
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 60s:\n{since}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (the data folder stays, for [`Prometheus::launch`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn address(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until `query` returns at least one series (e.g. the first scrape landed).
    pub async fn wait_for(&self, query: &str, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            let answer = client
                .post(format!("{}/api/v1/query", self.address()))
                .form(&[("query", query)])
                .send()
                .await
                .ok();
            if let Some(answer) = answer {
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                if body["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{query:?} returned nothing within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The server's own count of requests to an API handler (e.g. `/api/v1/query_range`).
    pub async fn requests_to(&self, handler: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.address()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let needle =
            format!("prometheus_http_requests_total{{code=\"200\",handler=\"{handler}\"}}");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(&needle)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An OpenMetrics gauge `name` with one sample per `step` from `end - span` to `end`,
/// valued `value(unix seconds)`, for [`PrometheusOptions::backfill`].
pub fn openmetrics_gauge(
    name: &str,
    end: SystemTime,
    span: Duration,
    step: Duration,
    value: impl Fn(f64) -> f64,
) -> String {
    let end = end.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let start = end - span.as_secs();
    let mut text = format!("# HELP {name} Backfilled test load.\n# TYPE {name} gauge\n");
    let mut at = start;
    while at <= end {
        text.push_str(&format!("{name} {:.3} {at}\n", value(at as f64)));
        at += step.as_secs();
    }
    text.push_str("# EOF\n");
    text
}

/// A `/metrics` endpoint whose text the test sets, for Prometheus to scrape.
pub struct Exporter {
    pub address: SocketAddr,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub async fn start(body: &str) -> Exporter {
        let shared = Arc::new(Mutex::new(body.to_string()));
        let served = shared.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let served = served.clone();
                async move { served.lock().unwrap().clone() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Exporter {
            address,
            body: shared,
            task,
        }
    }

    /// The shared text, for a task that updates it on its own.
    pub fn body(&self) -> Arc<Mutex<String>> {
        self.body.clone()
    }

    pub fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    pub fn target(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`StandIn`] saw of one request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// A stand-in for the Prometheus API: answers every query with `value` after `delay`,
/// and records each request's path and headers.
pub struct StandIn {
    pub address: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub async fn start(value: f64, delay: Duration) -> StandIn {
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let recorder = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let recorder = recorder.clone();
            async move {
                let headers = request
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let path = request.uri().path().to_string();
                recorder.lock().unwrap().push(SeenRequest { path: path.clone(), headers });
                let form = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
                tokio::time::sleep(delay).await;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
                // The freshness check asks for the newest sample's time: it is now.
                let value = if String::from_utf8_lossy(&form).contains("timestamp") { now } else { value };
                let body = if path.ends_with("/query_range") {
                    format!(r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[[{now},"{value}"]]}}]}}}}"#)
                } else {
                    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now},"{value}"]}}]}}}}"#)
                };
                ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            address,
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A test certificate authority, a server certificate for 127.0.0.1 and a client
/// certificate, written as PEM files into a folder.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn create(dir: &Path, name: &str) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("fleetscale test CA {name}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let issue = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, common_name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "prometheus",
        );
        let (client_cert, client_key) =
            issue(vec![], ExtendedKeyUsagePurpose::ClientAuth, "fleetscale");
        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            path
        };
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

/// A Prometheus web config: basic auth for `user` with a bcrypt hash of `password`, and
/// TLS with `pki`'s server certificate, requiring a client certificate from its CA.
pub fn web_config(user: &str, password: &str, pki: &TestPki) -> String {
    // Cost 4 is bcrypt's minimum: fast enough for tests, the same format as any other.
    let hash = bcrypt::hash(password, 4).unwrap();
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  {user}: '{hash}'\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    )
}
