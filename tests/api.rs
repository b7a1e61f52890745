//! The management API: against a live agent (`fleetscale run` on the mock cloud, on a
//! free loopback port) every endpoint answers as docs/openapi.json says, tokens are
//! required and roles enforced, pauses and overrides survive a restart and a damaged
//! state file stops the agent naming it; the CLI drives it. Against a controller on a
//! manual clock sharing the API's state: an override applies within one tick and expires
//! on time, and a pause stops every mutating call the mock cloud counts.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetscale::agent::{Wiring, controller_on};
use fleetscale::api::Api;
use fleetscale::config::Config;
use fleetscale::controller::Action;
use fleetscale_adapters::ManualClock;
use fleetscale_adapters::mock::MockCloud;
use serde_json::{Value, json};

const READ_TOKEN: &str = "read-token-for-tests";
const OPERATE_TOKEN: &str = "operate-token-for-tests";

fn sha256_hex(text: &str) -> String {
    fleetscale::api::auth::hash(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A one-fleet config on the mock cloud, with a read token (as a hash) and an operate
/// token (in a file), and the state file at `state`.
fn agent_config(dir: &Path, port: u16, policy: &str) -> PathBuf {
    let token_file = dir.join("operate.token");
    std::fs::write(&token_file, format!("{OPERATE_TOKEN}\n")).unwrap();
    let text = format!(
        r#"
[agent]
tick = "1s"
metrics_address = "127.0.0.1:{port}"
log_format = "json"

[agent.api]
state_file = {state:?}

[[agent.api.tokens]]
name = "viewer"
role = "read"
sha256 = "{read_hash}"

[[agent.api.tokens]]
name = "alice"
role = "operate"
token_file = {token_file:?}

[[fleets]]
name = "web"
boot_delay = "1s"
history = "30s"

[fleets.adapter]
kind = "mock"
boot_delay = "1s"
launch_latency = "0s"
terminate_latency = "0s"
zones = ["zone-a", "zone-b"]
initial_size = 4

[fleets.signal]
kind = "synthetic"
mean = 6.0
speedup = 60.0

[fleets.policy]
{policy}

[fleets.guards]
min = 1
max = 40
"#,
        state = dir.join("state.json"),
        read_hash = sha256_hex(READ_TOKEN),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Agent {
    child: Child,
    url: String,
}

impl Agent {
    fn start(config: &Path, port: u16) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fleetscale starts");
        let mut agent = Agent {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready once the fleet has ticked (its last decision is published).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("the agent exited with {status}:\n{}", agent.log());
            }
            if let Ok((200, body, _)) = agent.call("GET", "/v1/fleets", Some(READ_TOKEN), None)
                && !body["fleets"][0]["last_decision"].is_null()
            {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not tick within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value, reqwest::header::HeaderMap)> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut request = client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        ))
    }

    fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.url))
            .unwrap()
            .text()
            .unwrap()
    }

    /// Stops it with SIGTERM; returns its exit code and log.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "did not stop within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), self.log())
    }

    fn log(&mut self) -> String {
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// docs/openapi.json, and a check of real responses against it.
struct OpenApi {
    doc: Value,
    /// (path template, method, status) answered and checked.
    seen: BTreeSet<(String, String, u16)>,
}

impl OpenApi {
    fn load() -> OpenApi {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let text = std::fs::read_to_string(&path).unwrap();
        OpenApi {
            doc: serde_json::from_str(&text).unwrap(),
            seen: BTreeSet::new(),
        }
    }

    /// Checks `body` against the schema the document gives for this answer.
    fn check(&mut self, template: &str, method: &str, status: u16, body: &Value) {
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in docs/openapi.json"
        );
        let schema =
            &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} answered {status}, which docs/openapi.json does not list: {body}"
        );
        let mut errors = Vec::new();
        self.validate(schema, body, "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{method} {template} {status} does not match docs/openapi.json:\n  {}\n{body:#}",
            errors.join("\n  ")
        );
        self.seen
            .insert((template.to_string(), method.to_lowercase(), status));
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(reference) => {
                let name = reference.trim_start_matches("#/components/schemas/");
                let target = &self.doc["components"]["schemas"][name];
                assert!(target.is_object(), "unresolved {reference}");
                self.resolve(target)
            }
            None => schema,
        }
    }

    /// Every field of `value` is declared with its JSON type, every required field is
    /// present, enums hold, and so on down.
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let nullable = schema["nullable"].as_bool() == Some(true);
        if value.is_null() && nullable {
            return;
        }
        if let Some(parts) = schema["allOf"].as_array() {
            // The members' properties and required fields together.
            let mut merged = json!({"type": "object", "properties": {}, "required": []});
            for part in parts {
                let part = self.resolve(part);
                if part["type"] != "object" {
                    self.validate(part, value, at, errors);
                    continue;
                }
                for (k, v) in part["properties"].as_object().unwrap() {
                    merged["properties"][k] = v.clone();
                }
                for r in part["required"].as_array().into_iter().flatten() {
                    merged["required"].as_array_mut().unwrap().push(r.clone());
                }
            }
            if merged["properties"].as_object().unwrap().is_empty() {
                return;
            }
            return self.validate(&merged, value, at, errors);
        }
        let kind = schema["type"].as_str().unwrap_or("");
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => {
                errors.push(format!("{at}: the schema has no type I check ({other:?})"));
                return;
            }
        };
        if !fits {
            errors.push(format!("{at}: expected {kind}, got {value}"));
            return;
        }
        if let Some(choices) = schema["enum"].as_array()
            && !choices.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {choices:?}"));
        }
        if let Some(least) = schema["minimum"].as_f64()
            && value.as_f64().is_some_and(|v| v < least)
        {
            errors.push(format!("{at}: {value} is below {least}"));
        }
        match value {
            Value::Object(map) => {
                let properties = schema["properties"].as_object();
                for (key, field) in map {
                    match properties.and_then(|p| p.get(key)) {
                        Some(field_schema) => {
                            self.validate(field_schema, field, &format!("{at}.{key}"), errors)
                        }
                        None => errors.push(format!("{at}.{key}: not declared")),
                    }
                }
                for required in schema["required"].as_array().into_iter().flatten() {
                    let key = required.as_str().unwrap();
                    if !map.contains_key(key) {
                        errors.push(format!("{at}.{key}: required, missing"));
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.validate(&schema["items"], item, &format!("{at}[{i}]"), errors);
                }
            }
            _ => {}
        }
    }

    /// Every operation the document lists was answered with each status it lists.
    fn assert_all_seen(&self) {
        let mut missing = Vec::new();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for status in operation["responses"].as_object().unwrap().keys() {
                    let key = (template.clone(), method.clone(), status.parse().unwrap());
                    if !self.seen.contains(&key) {
                        missing.push(format!("{method} {template} {status}"));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "never exercised: {missing:?}");
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn every_endpoint_answers_as_the_openapi_document_says_and_tokens_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), port, "name = \"dp\"\nhorizon = \"10s\"");
    let agent = Agent::start(&config, port);
    let mut api = OpenApi::load();
    let mut call = |method: &str, template: &str, path: &str, token: Option<&str>, body| {
        let (status, answer, headers) = agent.call(method, path, token, body).unwrap();
        api.check(template, method, status, &answer);
        (status, answer, headers)
    };
    let read = Some(READ_TOKEN);
    let operate = Some(OPERATE_TOKEN);

    // Reads, with either token.
    let (status, list, _) = call("GET", "/v1/fleets", "/v1/fleets", read, None);
    assert_eq!(status, 200);
    let web = &list["fleets"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["policy"], "dp");
    assert_eq!(web["bounds"]["min"], 1);
    assert_eq!(web["bounds"]["max"], 40);
    assert_eq!(web["demand"]["signals"][0]["name"], "synthetic");
    // The dp planner's plan and forecast are shown once it has decided.
    let deadline = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        let (status, detail, _) = call("GET", "/v1/fleets/{name}", "/v1/fleets/web", operate, None);
        assert_eq!(status, 200);
        if detail["plan"]["trajectory"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
        {
            break detail;
        }
        assert!(Instant::now() < deadline, "no plan within 20 s: {detail:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !detail["forecast"].as_array().unwrap().is_empty(),
        "{detail:#}"
    );
    let (status, history, _) = call(
        "GET",
        "/v1/fleets/{name}/history",
        "/v1/fleets/web/history",
        read,
        None,
    );
    assert_eq!(status, 200);
    assert!(!history["points"].as_array().unwrap().is_empty());
    for template in ["/v1/fleets/{name}", "/v1/fleets/{name}/history"] {
        let path = template.replace("{name}", "nope");
        let (status, answer, _) = call("GET", template, &path, read, None);
        assert_eq!(status, 404, "{answer}");
    }

    // Authentication: none, wrong, and a read token writing.
    let failures = |reason: &str| {
        metric(
            &agent.metrics(),
            &format!("fleetscale_api_auth_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    for template in [
        "/v1/fleets",
        "/v1/fleets/{name}",
        "/v1/fleets/{name}/history",
    ] {
        let path = template.replace("{name}", "web");
        for token in [None, Some("wrong-token")] {
            let (status, _, headers) = call("GET", template, &path, token, None);
            assert_eq!(status, 401);
            assert!(
                headers[reqwest::header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{headers:?}"
            );
        }
    }
    assert_eq!(failures("missing"), 3.0);
    assert_eq!(failures("unknown_token"), 3.0);
    let writes = [
        ("POST", "/v1/fleets/{name}/pause", json!({"reason": "x"})),
        ("POST", "/v1/fleets/{name}/resume", json!({"reason": "x"})),
        (
            "POST",
            "/v1/fleets/{name}/overrides",
            json!({"size": 3, "duration": "1h", "reason": "x"}),
        ),
        ("DELETE", "/v1/fleets/{name}/overrides/{id}", Value::Null),
    ];
    for (method, template, body) in &writes {
        let path = template.replace("{name}", "web").replace("{id}", "o-1");
        let body = (!body.is_null()).then(|| body.clone());
        let (status, _, _) = call(method, template, &path, read, body.clone());
        assert_eq!(status, 403, "{method} {template}");
        let (status, _, _) = call(method, template, &path, None, body.clone());
        assert_eq!(status, 401, "{method} {template}");
        // An unknown fleet is 404 once authenticated.
        let path = template.replace("{name}", "nope").replace("{id}", "o-1");
        let (status, _, _) = call(method, template, &path, operate, body);
        assert_eq!(status, 404, "{method} {template}");
    }
    assert_eq!(failures("forbidden"), 4.0);

    // Pause and resume, and their conflicts and bad bodies.
    let (status, paused, _) = call(
        "POST",
        "/v1/fleets/{name}/pause",
        "/v1/fleets/web/pause",
        operate,
        Some(json!({"reason": "deploying"})),
    );
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"]["by"], "alice");
    let (status, _, _) = call(
        "POST",
        "/v1/fleets/{name}/pause",
        "/v1/fleets/web/pause",
        operate,
        Some(json!({"reason": "again"})),
    );
    assert_eq!(status, 409);
    let (status, bad, _) = call(
        "POST",
        "/v1/fleets/{name}/pause",
        "/v1/fleets/web/pause",
        operate,
        Some(json!({"reason": "x", "until": "later"})),
    );
    assert_eq!(
        (status, bad["field"].as_str()),
        (400, Some("until")),
        "{bad}"
    );
    let (_, list, _) = call("GET", "/v1/fleets", "/v1/fleets", read, None);
    assert_eq!(list["fleets"][0]["paused"]["reason"], "deploying");
    let (status, resumed, _) = call(
        "POST",
        "/v1/fleets/{name}/resume",
        "/v1/fleets/web/resume",
        operate,
        Some(json!({"reason": "deployed"})),
    );
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["resumed"]["reason"], "deploying");
    let (status, _, _) = call(
        "POST",
        "/v1/fleets/{name}/resume",
        "/v1/fleets/web/resume",
        operate,
        Some(json!({"reason": "again"})),
    );
    assert_eq!(status, 409);
    let (status, bad, _) = call(
        "POST",
        "/v1/fleets/{name}/resume",
        "/v1/fleets/web/resume",
        operate,
        Some(json!({})),
    );
    assert_eq!(
        (status, bad["field"].as_str()),
        (400, Some("reason")),
        "{bad}"
    );

    // Overrides: created, refused with the field named, in conflict, removed.
    let overrides = "/v1/fleets/{name}/overrides";
    let (status, created, _) = call(
        "POST",
        overrides,
        "/v1/fleets/web/overrides",
        operate,
        Some(json!({"min": 5, "duration": "2h", "reason": "launch day"})),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    for (body, field) in [
        (json!({"min": 5, "reason": "x"}), "duration"),
        (
            json!({"min": 5, "duration": "soon", "reason": "x"}),
            "duration",
        ),
        (
            json!({"min": 5, "duration": "1h", "reason": "x", "extra": 1}),
            "extra",
        ),
        (
            json!({"size": 5, "min": 2, "duration": "1h", "reason": "x"}),
            "size",
        ),
        (
            json!({"min": "five", "duration": "1h", "reason": "x"}),
            "min",
        ),
        (json!({"duration": "1h", "reason": "x"}), "min"),
    ] {
        let (status, bad, _) = call(
            "POST",
            overrides,
            "/v1/fleets/web/overrides",
            operate,
            Some(body.clone()),
        );
        assert_eq!(
            (status, bad["field"].as_str()),
            (400, Some(field)),
            "{body} -> {bad}"
        );
    }
    // A max below the min in force (5, from the override) conflicts.
    let (status, conflict, _) = call(
        "POST",
        overrides,
        "/v1/fleets/web/overrides",
        operate,
        Some(json!({"max": 3, "duration": "1h", "reason": "x"})),
    );
    assert_eq!(status, 409, "{conflict}");
    let (_, list, _) = call("GET", "/v1/fleets", "/v1/fleets", read, None);
    assert_eq!(list["fleets"][0]["bounds"]["min"], 5);
    assert_eq!(list["fleets"][0]["overrides"][0]["id"], id.as_str());
    let remove = "/v1/fleets/{name}/overrides/{id}";
    let (status, removed, _) = call(
        "DELETE",
        remove,
        &format!("/v1/fleets/web/overrides/{id}"),
        operate,
        None,
    );
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["removed"]["id"], id.as_str());
    let (status, _, _) = call(
        "DELETE",
        remove,
        &format!("/v1/fleets/web/overrides/{id}"),
        operate,
        None,
    );
    assert_eq!(status, 404);
    api.assert_all_seen();

    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    // Every write is audited: who, what, the previous value; never a token.
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fleetscale::audit"))
        .collect();
    assert_eq!(audit.len(), 4, "{log}");
    assert!(
        audit
            .iter()
            .all(|l| l.contains("\"who\":\"alice\"") && l.contains("previous")),
        "{audit:#?}"
    );
    assert!(
        !log.contains(OPERATE_TOKEN) && !log.contains(READ_TOKEN),
        "a token in the log"
    );
}

#[test]
fn pauses_and_overrides_survive_a_restart_and_a_damaged_state_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), port, "name = \"static\"\nsize = 4");
    let agent = Agent::start(&config, port);
    let operate = Some(OPERATE_TOKEN);
    let (status, _, _) = agent
        .call(
            "POST",
            "/v1/fleets/web/pause",
            operate,
            Some(json!({"reason": "incident 7"})),
        )
        .unwrap();
    assert_eq!(status, 200);
    let (status, created, _) = agent
        .call(
            "POST",
            "/v1/fleets/web/overrides",
            operate,
            Some(json!({"max": 6, "duration": "2h", "reason": "budget"})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    // Restarted: the same pause and override, and the fleet holds.
    let agent = Agent::start(&config, port);
    let (_, list, _) = agent
        .call("GET", "/v1/fleets", Some(READ_TOKEN), None)
        .unwrap();
    let web = &list["fleets"][0];
    assert_eq!(web["paused"]["reason"], "incident 7", "{web:#}");
    assert_eq!(web["overrides"][0], created, "{web:#}");
    assert_eq!(web["bounds"]["max"], 6);
    assert_eq!(web["last_decision"]["action"]["kind"], "held", "{web:#}");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    // The CLI against the same agent, after a damaged state file is refused.
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        "{\"version\": 1, \"fleets\": {\"web\": {\"pause\": tru",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("damaged"),
        "{stderr}"
    );
}

#[test]
fn the_cli_shows_pauses_and_overrides_a_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), port, "name = \"static\"\nsize = 4");
    let agent = Agent::start(&config, port);
    let token_file = dir.path().join("operate.token");
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
            .args(args)
            .args([
                "--server",
                &agent.url,
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("FLEET") && out.contains("web") && out.contains("static"),
        "{out}"
    );
    let (code, out, err) = cli(&["pause", "web", "--reason", "maintenance"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("paused"), "{out}");
    let (code, _, err) = cli(&["pause", "web", "--reason", "again"]);
    assert_eq!(code, Some(2), "a conflict is the caller's mistake: {err}");
    assert!(err.contains("409"), "{err}");
    let (code, out, err) = cli(&[
        "override", "web", "--size", "3", "--for", "30m", "--reason", "test", "--format", "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["size"], 3);
    let (code, out, err) = cli(&["status", "web"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("paused") && out.contains("maintenance") && out.contains("size 3"),
        "{out}"
    );
    let id = created["id"].as_str().unwrap();
    let (code, out, err) = cli(&["override", "web", "--remove", id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("removed"), "{out}");
    let (code, _, err) = cli(&["resume", "web", "--reason", "done"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = cli(&["status", "--format", "json"]);
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert!(list["fleets"][0]["paused"].is_null());
    assert!(
        list["fleets"][0]["overrides"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    agent.stop();
}

/// A controller on a manual clock, and the API on the same clock and board, served on a
/// free port (no state file).
struct Rig {
    controller: fleetscale::controller::FleetController,
    mock: MockCloud,
    clock: ManualClock,
    url: String,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn rig(policy: &str, faults: &str) -> Rig {
    let text = format!(
        r#"
[agent]
tick = "60s"

[[fleets]]
name = "web"
boot_delay = "60s"
history = "10m"

[fleets.adapter]
kind = "mock"
boot_delay = "60s"
launch_latency = "0s"
terminate_latency = "0s"
initial_size = 4
{faults}

[fleets.signal]
kind = "synthetic"
mean = 4.0
noise = 0.0

[fleets.policy]
{policy}

[fleets.guards]
min = 1
max = 40
max_boot_time = "5m"
"#
    );
    let config = Config::parse(&text, "test.toml".as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let fleet = &config.fleets[0];
    let fleetscale::config::AdapterConfig::Mock(mock_config) = &fleet.adapter else {
        unreachable!()
    };
    let mock = MockCloud::new(mock_config.clone(), Arc::new(clock.clone()));
    let mut controller = controller_on(
        Box::new(mock.clone()),
        fleet,
        &config.agent,
        Wiring::default(),
        None,
        Arc::new(clock.clone()),
    )
    .unwrap();
    let registry = prometheus::Registry::new();
    let mut api_config = fleetscale::api::ApiConfig::default();
    api_config.tokens.push(fleetscale::api::TokenConfig {
        name: "alice".into(),
        role: fleetscale::api::auth::Role::Operate,
        sha256: Some(sha256_hex(OPERATE_TOKEN)),
        token_file: None,
    });
    let api = Api::start(
        &api_config,
        &config.fleets,
        Arc::new(clock.clone()),
        &registry,
    )
    .unwrap();
    controller.operate_with(api.controls("web").unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(fleetscale::api::serve(
        listener,
        api.router(),
        None,
        std::future::pending(),
    ));
    Rig {
        controller,
        mock,
        clock,
        url,
        _server: server,
    }
}

impl Rig {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(OPERATE_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// One tick a minute on the manual clock.
    async fn tick(&mut self) -> fleetscale::controller::TickReport {
        self.clock.advance(Duration::from_secs(60));
        self.controller.tick().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_applies_within_one_tick_and_expires_on_the_controllers_clock() {
    let mut rig = rig("name = \"static\"\nsize = 4", "").await;
    for _ in 0..3 {
        let report = rig.tick().await;
        assert_eq!(report.applied, Some(4), "{report:?}");
    }
    let (status, created) = rig
        .post(
            "/v1/fleets/web/overrides",
            json!({"size": 9, "duration": "5m", "reason": "load test"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The very next tick runs with it.
    let report = rig.tick().await;
    assert_eq!(report.applied, Some(9), "{report:?}");
    assert!(
        matches!(report.action, Action::Grow { launched: 5, .. }),
        "{report:?}"
    );
    assert_eq!(rig.mock.inspect().instances.len(), 9);
    // Created at t; ticks at t+1m .. t+4m are within it; t+5m is its expiry.
    for _ in 0..3 {
        assert_eq!(rig.tick().await.applied, Some(9));
    }
    let report = rig.tick().await;
    assert_eq!(report.applied, Some(4), "expired at 5m: {report:?}");
    let (_, fleets) = rig.send(reqwest::Method::GET, "/v1/fleets", None).await;
    assert!(
        fleets["fleets"][0]["overrides"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{fleets}"
    );
    assert_eq!(fleets["fleets"][0]["bounds"]["max"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_fleet_makes_no_mutating_call_but_still_observes() {
    // Every launch sticks in booting, so that stuck-instance replacement is due too.
    let mut rig = rig(
        "name = \"static\"\nsize = 8",
        "faults = { never_boot_rate = 1.0 }",
    )
    .await;
    let report = rig.tick().await;
    assert!(
        matches!(report.action, Action::Grow { launched: 4, .. }),
        "{report:?}"
    );
    let before = rig.mock.calls().mutating();
    assert_eq!(before, 1);
    let (status, _) = rig
        .post("/v1/fleets/web/pause", json!({"reason": "freeze"}))
        .await;
    assert_eq!(status, 200);
    // Past max_boot_time (replacement due), then an override that wants a shrink.
    let mut reasons = Vec::new();
    for i in 0..10 {
        if i == 6 {
            let (status, _) = rig
                .post(
                    "/v1/fleets/web/overrides",
                    json!({"size": 2, "duration": "1h", "reason": "shrink"}),
                )
                .await;
            assert_eq!(status, 201);
        }
        let report = rig.tick().await;
        assert!(matches!(report.action, Action::Held { .. }), "{report:?}");
        assert_eq!(report.billed, 8, "it still observes: {report:?}");
        reasons.push(report.reason.clone());
    }
    assert_eq!(rig.mock.calls().mutating(), before, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("would replace")),
        "{reasons:#?}"
    );
    // The override reaches the decision while paused; stuck instances come first.
    let last = reasons.last().unwrap();
    assert!(
        last.contains("-> 2 within bounds [2, 2]") && last.contains("nothing changed"),
        "{reasons:#?}"
    );
    // Resumed: the change it held back is made.
    let (status, _) = rig
        .post("/v1/fleets/web/resume", json!({"reason": "thaw"}))
        .await;
    assert_eq!(status, 200);
    let report = rig.tick().await;
    assert!(
        !matches!(report.action, Action::Held { .. } | Action::None),
        "{report:?}"
    );
    assert!(rig.mock.calls().mutating() > before);
}

#[test]
fn a_bad_api_config_names_the_field() {
    let text = r#"
[agent.api]
stat_file = "x"

[[agent.api.tokens]]
name = "a"
role = "admin"
sha256 = "abc"

[[fleets]]
name = "web"
[fleets.adapter]
kind = "mock"
[fleets.signal]
kind = "synthetic"
[fleets.guards]
max = 4
"#;
    let error = Config::parse(text, "t.toml".as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("agent.api") && error.contains("stat_file"),
        "{error}"
    );
    let text = text
        .replace("stat_file = \"x\"\n", "")
        .replace("\"admin\"", "\"read\"");
    let error = Config::parse(&text, "t.toml".as_ref())
        .unwrap_err()
        .to_string();
    assert!(error.contains("agent.api.tokens[0].sha256"), "{error}");
}
