//! `fleetscale status | pause | resume | override`: the management API's client, against
//! a running agent. A readable table by default, the API's JSON with `--format json`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::shared::Failure;
use crate::api::DEFAULT_SERVER;

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Show a running agent's fleets: bounds, sizes, demand, last decision, pauses and
    /// overrides; with a fleet's name, also its forecast and planned trajectory.
    Status(StatusArgs),
    /// Pause a fleet: it keeps observing and deciding but changes nothing (no grow, no
    /// shrink, no replacement) until resumed. Kept across restarts.
    Pause(PauseArgs),
    /// Resume a paused fleet.
    Resume(PauseArgs),
    /// Override a fleet's bounds for a while (--min, --max or --size, --for, --reason),
    /// or remove an override (--remove ID). Kept across restarts; expires by itself.
    Override(OverrideArgs),
}

/// How to reach the agent.
#[derive(Debug, Args)]
pub struct Connection {
    /// The agent's HTTP server (its `metrics_address`).
    #[arg(long, env = "FLEETSCALE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// A file holding the bearer token (never given on the command line, where other
    /// users could read it).
    #[arg(long, env = "FLEETSCALE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A PEM certificate to trust for an https server (a private CA or a self-signed
    /// certificate).
    #[arg(long)]
    pub ca_certificate: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One fleet, in detail (default: every fleet).
    pub fleet: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    pub fleet: String,
    /// Why (kept in the audit log and shown by status).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct OverrideArgs {
    pub fleet: String,
    /// Fewest instances while the override lasts.
    #[arg(long, conflicts_with_all = ["size", "remove"])]
    pub min: Option<u32>,
    /// Most instances while the override lasts.
    #[arg(long, conflicts_with_all = ["size", "remove"])]
    pub max: Option<u32>,
    /// Hold the fleet at this size (min and max both).
    #[arg(long, conflicts_with = "remove")]
    pub size: Option<u32>,
    /// How long it lasts, e.g. 30m or 2h.
    #[arg(long = "for", value_name = "DURATION", required_unless_present = "remove", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Why (kept in the audit log and shown by status).
    #[arg(long, required_unless_present = "remove")]
    pub reason: Option<String>,
    /// Remove the override with this id instead.
    #[arg(long, value_name = "ID")]
    pub remove: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Runs one of the API's commands. A request refused as wrong fails as
/// [`Failure::Invalid`] (exit 2); an agent that cannot be reached or answers with an error
/// of its own, as [`Failure::Runtime`] (exit 1).
pub fn execute(command: ApiCommand) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(run(command))
}

async fn run(command: ApiCommand) -> Result<(), Failure> {
    match command {
        ApiCommand::Status(args) => {
            let client = Client::new(&args.connection)?;
            match &args.fleet {
                None => {
                    let body = client
                        .call(reqwest::Method::GET, "/v1/fleets", None)
                        .await?;
                    client.print(&body, fleets_table)
                }
                Some(fleet) => {
                    let path = format!("/v1/fleets/{}", segment(fleet));
                    let body = client.call(reqwest::Method::GET, &path, None).await?;
                    client.print(&body, fleet_detail)
                }
            }
        }
        ApiCommand::Pause(args) => {
            let client = Client::new(&args.connection)?;
            let path = format!("/v1/fleets/{}/pause", segment(&args.fleet));
            let body = json!({ "reason": args.reason });
            let answer = client
                .call(reqwest::Method::POST, &path, Some(body))
                .await?;
            client.print(&answer, |a| {
                format!(
                    "fleet {} paused: {}\n",
                    args.fleet,
                    text(at(a, "/paused/reason"))
                )
            })
        }
        ApiCommand::Resume(args) => {
            let client = Client::new(&args.connection)?;
            let path = format!("/v1/fleets/{}/resume", segment(&args.fleet));
            let body = json!({ "reason": args.reason });
            let answer = client
                .call(reqwest::Method::POST, &path, Some(body))
                .await?;
            client.print(&answer, |a| {
                format!(
                    "fleet {} resumed (it was paused by {}: {})\n",
                    args.fleet,
                    text(at(a, "/resumed/by")),
                    text(at(a, "/resumed/reason"))
                )
            })
        }
        ApiCommand::Override(args) => {
            let client = Client::new(&args.connection)?;
            if let Some(id) = &args.remove {
                let path = format!(
                    "/v1/fleets/{}/overrides/{}",
                    segment(&args.fleet),
                    segment(id)
                );
                let answer = client.call(reqwest::Method::DELETE, &path, None).await?;
                return client.print(&answer, |_| {
                    format!("override {id} of fleet {} removed\n", args.fleet)
                });
            }
            let mut body = json!({
                "duration": humantime::format_duration(args.duration.unwrap_or_default()).to_string(),
                "reason": args.reason.clone().unwrap_or_default(),
            });
            for (field, value) in [("min", args.min), ("max", args.max), ("size", args.size)] {
                if let (Some(v), Some(map)) = (value, body.as_object_mut()) {
                    map.insert(field.into(), json!(v));
                }
            }
            let path = format!("/v1/fleets/{}/overrides", segment(&args.fleet));
            let answer = client
                .call(reqwest::Method::POST, &path, Some(body))
                .await?;
            client.print(&answer, |o| {
                format!(
                    "override {} of fleet {}: {} until {}\n",
                    text(at(o, "/id")),
                    args.fleet,
                    override_bounds(o),
                    text(at(o, "/expires_at"))
                )
            })
        }
    }
}

/// A path segment with the characters a URL path cannot hold escaped.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Client {
    http: reqwest::Client,
    server: String,
    token: String,
    format: OutputFormat,
}

impl Client {
    fn new(connection: &Connection) -> Result<Client, Failure> {
        let file = connection.token_file.as_ref().ok_or_else(|| {
            Failure::Invalid(
                "--token-file (or FLEETSCALE_TOKEN_FILE) is required: every /v1 call needs a token"
                    .into(),
            )
        })?;
        let token = std::fs::read_to_string(file)
            .map_err(|e| Failure::Invalid(format!("cannot read {}: {e}", file.display())))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(Failure::Invalid(format!("{} is empty", file.display())));
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &connection.ca_certificate {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::Invalid(format!("cannot read {}: {e}", ca.display())))?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Failure::Invalid(format!("{} is not a PEM certificate: {e}", ca.display()))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        Ok(Client {
            http: builder.build().map_err(|e| Failure::Runtime(e.into()))?,
            server: connection.server.trim_end_matches('/').to_string(),
            token,
            format: connection.format,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.server);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot reach {url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("reading {url}: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let mut message = format!("{url}: {status}: {}", text_or(at(&body, "/error"), &body));
        if let Some(field) = at(&body, "/field").as_str() {
            message.push_str(&format!(" (field {field})"));
        }
        Err(match status.as_u16() {
            400 | 404 | 409 => Failure::Invalid(message),
            _ => Failure::Runtime(anyhow::anyhow!(message)),
        })
    }

    fn print(&self, body: &Value, table: impl Fn(&Value) -> String) -> Result<(), Failure> {
        match self.format {
            OutputFormat::Json => {
                let text =
                    serde_json::to_string_pretty(body).map_err(|e| Failure::Runtime(e.into()))?;
                println!("{text}");
            }
            OutputFormat::Table => print!("{}", table(body)),
        }
        Ok(())
    }
}

/// The value at a JSON pointer, or null.
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    value.pointer(pointer).unwrap_or(&NULL)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn text_or(value: &Value, whole: &Value) -> String {
    if value.is_null() {
        text(whole)
    } else {
        text(value)
    }
}

fn override_bounds(o: &Value) -> String {
    if !at(o, "/size").is_null() {
        return format!("size {}", text(at(o, "/size")));
    }
    match (at(o, "/min").is_null(), at(o, "/max").is_null()) {
        (false, true) => format!("min {}", text(at(o, "/min"))),
        (true, false) => format!("max {}", text(at(o, "/max"))),
        _ => format!("min {} max {}", text(at(o, "/min")), text(at(o, "/max"))),
    }
}

fn state(fleet: &Value) -> &'static str {
    if !at(fleet, "/paused").is_null() {
        "paused"
    } else if at(fleet, "/suspended").as_bool() == Some(true) {
        "suspended"
    } else if at(fleet, "/last_decision").is_null() {
        "starting"
    } else {
        "running"
    }
}

/// Rows of cells as aligned columns.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn fleets_table(body: &Value) -> String {
    let mut rows = vec![
        [
            "FLEET",
            "POLICY",
            "MIN",
            "MAX",
            "BILLED",
            "SERVING",
            "BOOTING",
            "LEAVING",
            "DEMAND",
            "DESIRED",
            "APPLIED",
            "STATE",
            "OVERRIDES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let empty = Vec::new();
    let fleets = at(body, "/fleets").as_array().unwrap_or(&empty);
    for f in fleets {
        let decision = at(f, "/last_decision");
        rows.push(vec![
            text(at(f, "/name")),
            text(at(f, "/policy")),
            text(at(f, "/bounds/min")),
            text(at(f, "/bounds/max")),
            text(at(f, "/billed")),
            text(at(f, "/serving")),
            text(at(f, "/booting")),
            text(at(f, "/leaving")),
            text(at(f, "/demand/latest")),
            text(at(decision, "/desired")),
            text(at(decision, "/applied")),
            state(f).into(),
            at(f, "/overrides")
                .as_array()
                .map_or(0, Vec::len)
                .to_string(),
        ]);
    }
    let mut out = columns(&rows);
    for f in fleets {
        if let Some(reason) = at(f, "/last_decision/reason").as_str() {
            out.push_str(&format!("{}: {reason}\n", text(at(f, "/name"))));
        }
    }
    out
}

fn fleet_detail(f: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<16} {value}\n"));
    line("fleet", text(at(f, "/name")));
    line("policy", text(at(f, "/policy")));
    line("state", state(f).into());
    line(
        "bounds",
        format!(
            "{}..{} (configured {}..{})",
            text(at(f, "/bounds/min")),
            text(at(f, "/bounds/max")),
            text(at(f, "/bounds/configured_min")),
            text(at(f, "/bounds/configured_max"))
        ),
    );
    line(
        "instances",
        format!(
            "{} billed: {} serving, {} booting, {} leaving",
            text(at(f, "/billed")),
            text(at(f, "/serving")),
            text(at(f, "/booting")),
            text(at(f, "/leaving"))
        ),
    );
    line("demand", text(at(f, "/demand/latest")));
    for s in at(f, "/demand/signals").as_array().into_iter().flatten() {
        line(
            &format!("  {}", text(at(s, "/name"))),
            match at(s, "/error").as_str() {
                Some(e) => format!("failed: {e}"),
                None => text(at(s, "/demand")),
            },
        );
    }
    let d = at(f, "/last_decision");
    line(
        "last decision",
        format!(
            "desired {}, applied {} at {}",
            text(at(d, "/desired")),
            text(at(d, "/applied")),
            text(at(d, "/at"))
        ),
    );
    line("reason", text(at(d, "/reason")));
    if !at(f, "/paused").is_null() {
        line(
            "paused",
            format!(
                "by {} since {}: {}",
                text(at(f, "/paused/by")),
                text(at(f, "/paused/since")),
                text(at(f, "/paused/reason"))
            ),
        );
    }
    for o in at(f, "/overrides").as_array().into_iter().flatten() {
        line(
            "override",
            format!(
                "{} {} until {} by {}: {}",
                text(at(o, "/id")),
                override_bounds(o),
                text(at(o, "/expires_at")),
                text(at(o, "/by")),
                text(at(o, "/reason"))
            ),
        );
    }
    if let Some(trajectory) = at(f, "/plan/trajectory").as_array() {
        let steps: Vec<String> = trajectory.iter().take(24).map(text).collect();
        line("plan", steps.join(" "));
    }
    let forecast: Vec<String> = at(f, "/forecast")
        .as_array()
        .into_iter()
        .flatten()
        .take(24)
        .map(|step| {
            // The median where the forecast has one, else its first quantile.
            let quantiles = at(step, "/quantiles").as_array();
            quantiles
                .and_then(|qs| {
                    qs.iter()
                        .find(|q| at(q, "/q").as_f64() == Some(0.5))
                        .or(qs.first())
                })
                .map_or_else(|| "-".into(), |q| text(at(q, "/value")))
        })
        .collect();
    if !forecast.is_empty() {
        line("forecast (p50)", forecast.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_is_the_agents_default_address() {
        let address = crate::config::AgentConfig::default().metrics_address;
        assert_eq!(DEFAULT_SERVER, format!("http://{address}"));
    }

    #[test]
    fn an_override_is_described_by_what_it_sets() {
        assert_eq!(
            override_bounds(&json!({"size": 5, "min": null, "max": null})),
            "size 5"
        );
        assert_eq!(
            override_bounds(&json!({"size": null, "min": 3, "max": null})),
            "min 3"
        );
        assert_eq!(
            override_bounds(&json!({"size": null, "min": null, "max": 9})),
            "max 9"
        );
        assert_eq!(
            override_bounds(&json!({"size": null, "min": 3, "max": 9})),
            "min 3 max 9"
        );
        assert_eq!(segment("web/1 a"), "web%2F1%20a");
    }
}
