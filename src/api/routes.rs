//! The `/v1` routes. Every call needs a bearer token (GET: `read`, others: `operate`);
//! bodies are JSON with unknown fields refused, and errors are `{"error", "field"}`.
//! The schema of every response is docs/openapi.json (a test checks them against it).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::auth::{Caller, Role};
use super::state::{SharedCommands, SharedError};
use super::{Api, FleetEntry};
use crate::operator::{Commands, Override, Pause, bounds_in_force, rfc3339};

/// The longest override: past a month, change the config.
pub const MAX_OVERRIDE: Duration = Duration::from_secs(30 * 86_400);

pub fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/fleets", get(list))
        .route("/fleets/{name}", get(detail))
        .route("/fleets/{name}/history", get(history))
        .route("/fleets/{name}/pause", post(pause))
        .route("/fleets/{name}/resume", post(resume))
        .route("/fleets/{name}/overrides", post(add_override))
        .route("/fleets/{name}/overrides/{id}", delete(remove_override))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ))
        .with_state(api);
    Router::new().nest("/v1", v1)
}

/// An error answer: `{"error": "...", "field": "..."}` (`field` for a bad body).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    pub(crate) fn bad_field(field: &str, error: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field.into()),
        }
    }
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The error for a person: the field at fault first, when there is one.
    pub(crate) fn message(&self) -> String {
        match &self.field {
            Some(field) => format!("{field}: {}", self.error),
            None => self.error.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let (Some(field), Some(map)) = (self.field, body.as_object_mut()) {
            map.insert("field".into(), Value::String(field));
        }
        (self.status, axum::Json(body)).into_response()
    }
}

type Answer = Result<Response, ApiError>;

/// Checks the bearer token: 401 (with `WWW-Authenticate: Bearer`) without a known one,
/// 403 for a `read` token that writes. Refusals are counted and logged, never the token.
async fn authenticate(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let needed = if request.method() == axum::http::Method::GET {
        Role::Read
    } else {
        Role::Operate
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    match api.tokens.check(authorization.as_deref(), needed) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            api.metrics
                .auth_failures
                .with_label_values(&[refusal.as_str()])
                .inc();
            tracing::warn!(reason = refusal.as_str(), method = %request.method(), path = %request.uri().path(), "management API call refused");
            let (status, challenge, message) = match refusal {
                super::auth::Refusal::Forbidden => (
                    StatusCode::FORBIDDEN,
                    "Bearer realm=\"fleetscale\", error=\"insufficient_scope\"",
                    "this token's role is read: it may not change anything",
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "Bearer realm=\"fleetscale\"",
                    "a valid bearer token is required",
                ),
            };
            let mut response = ApiError::new(status, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

pub(crate) fn fleet<'a>(api: &'a Api, name: &str) -> Result<&'a FleetEntry, ApiError> {
    api.fleets
        .get(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no fleet named {name:?}")))
}

fn caller(request_caller: Option<axum::Extension<Caller>>) -> Result<Caller, ApiError> {
    request_caller
        .map(|axum::Extension(c)| c)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no caller"))
}

/// Reads a JSON body as `T`; an error names the field at fault.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    let mut reader = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A missing or unknown field is reported at its parent: name it from the message.
        let named = message.split('`').nth(1).filter(|_| {
            message.starts_with("missing field") || message.starts_with("unknown field")
        });
        let field = match (path.as_str(), named) {
            ("." | "", Some(name)) => name.to_string(),
            ("." | "", None) => "(body)".to_string(),
            (path, _) => path.to_string(),
        };
        ApiError::bad_field(&field, message)
    })
}

/// A fleet's state as `GET /v1/fleets` lists it.
fn summary(name: &str, entry: &FleetEntry, now: SystemTime) -> Value {
    let commands = entry.controls.commands();
    let latest = entry.controls.latest();
    let (min, max) = bounds_in_force(entry.configured, &commands, now);
    let report = latest.as_ref().map(|p| &p.report);
    let count = |f: fn(&crate::controller::TickReport) -> u32| report.map_or(0, f);
    let last_decision = latest.as_ref().map(|p| {
        let r = &p.report;
        json!({
            "at": rfc3339::format(p.at),
            "desired": r.desired,
            "applied": r.applied,
            "reason": r.reason,
            "action": serde_json::to_value(&r.action).unwrap_or(Value::Null),
            "interventions": serde_json::to_value(&r.interventions).unwrap_or(Value::Null),
            "error": r.error.as_ref().map(|e| e.to_string()),
            "bounds": { "min": p.bounds.0, "max": p.bounds.1 },
            "paused": p.paused,
        })
    });
    // Each signal's reading, in the config's order (one entry for a single signal).
    let signals: Vec<Value> = report.map_or_else(Vec::new, |r| {
        r.signals
            .iter()
            .map(|s| json!({ "name": s.name, "demand": finite(s.demand), "error": s.error }))
            .collect()
    });
    let overrides: Vec<&Override> = commands.in_force(now).collect();
    json!({
        "name": name,
        "policy": entry.policy,
        "bounds": {
            "min": min,
            "max": max,
            "configured_min": entry.configured.0,
            "configured_max": entry.configured.1,
        },
        "billed": count(|r| r.billed),
        "serving": count(|r| r.serving),
        "booting": count(|r| r.booting),
        "in_flight": count(|r| r.in_flight),
        "leaving": count(|r| r.leaving),
        "demand": {
            "latest": finite(report.and_then(|r| r.observed)),
            "error": report.and_then(|r| r.signal_error.clone()),
            "signals": signals,
        },
        "last_decision": last_decision,
        "paused": commands.pause,
        "suspended": latest.as_ref().is_some_and(|p| p.suspended),
        "overrides": overrides,
        "updated_at": latest.as_ref().map(|p| rfc3339::format(p.at)),
    })
}

fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

async fn list(State(api): State<Api>) -> Answer {
    let now = api.clock.now();
    let fleets: Vec<Value> = api
        .fleets
        .iter()
        .map(|(name, entry)| summary(name, entry, now))
        .collect();
    Ok(axum::Json(json!({ "fleets": fleets })).into_response())
}

async fn detail(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let entry = fleet(&api, &name)?;
    let mut view = summary(&name, entry, api.clock.now());
    let plan = entry
        .controls
        .latest()
        .and_then(|p| p.report.decision)
        .and_then(|d| d.plan);
    let forecast: Vec<Value> = plan.as_ref().map_or_else(Vec::new, |plan| {
        plan.forecast
            .iter()
            .enumerate()
            .map(|(step, quantiles)| {
                let quantiles: Vec<Value> = quantiles
                    .iter()
                    .map(|(q, v)| json!({ "q": finite(Some(*q)), "value": finite(Some(*v)) }))
                    .collect();
                json!({ "step": step + 1, "quantiles": quantiles })
            })
            .collect()
    });
    let plan = plan.map(|plan| {
        json!({
            "trajectory": plan.trajectory,
            "expected_cost": finite(Some(plan.expected_cost)),
            "expected_unserved": finite(Some(plan.expected_unserved)),
        })
    });
    if let Some(map) = view.as_object_mut() {
        map.insert("forecast".into(), Value::Array(forecast));
        map.insert("plan".into(), plan.unwrap_or(Value::Null));
    }
    Ok(axum::Json(view).into_response())
}

async fn history(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let entry = fleet(&api, &name)?;
    Ok(axum::Json(json!({
        "fleet": name,
        "span_seconds": crate::operator::HISTORY_SPAN.as_secs(),
        "points": entry.controls.history(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    pub(crate) reason: String,
}

fn reason(body: ReasonBody) -> Result<String, ApiError> {
    let reason = body.reason.trim().to_string();
    if reason.is_empty() {
        return Err(ApiError::bad_field("reason", "must not be empty"));
    }
    Ok(reason)
}

/// Makes one change to a fleet's commands. Alone: under the store's lock, the new
/// commands are written to the state file (with every other fleet's) and only then put
/// in force, so that what the agent does is what a restart would read. Coordinating:
/// read from the shared store, edited, and written back only if no other agent changed
/// them meanwhile (else read and edited again), then put in force here; the other
/// agents see the change through their watch.
async fn change(
    api: &Api,
    name: &str,
    entry: &FleetEntry,
    edit: impl FnMut(&mut Commands) -> Result<(), ApiError>,
) -> Result<Commands, ApiError> {
    match api.store.shared_store() {
        Some(shared) => change_shared(api, shared.as_ref(), name, entry, edit).await,
        None => change_in_file(api, name, entry, edit),
    }
}

fn change_in_file(
    api: &Api,
    name: &str,
    entry: &FleetEntry,
    mut edit: impl FnMut(&mut Commands) -> Result<(), ApiError>,
) -> Result<Commands, ApiError> {
    let _writing = api.store.lock();
    let now = api.clock.now();
    let previous = entry.controls.commands();
    let mut commands = previous.clone();
    commands.prune(now);
    edit(&mut commands)?;
    let all: BTreeMap<String, Commands> = api
        .fleets
        .iter()
        .map(|(fleet, e)| {
            let mut c = if fleet == name {
                commands.clone()
            } else {
                e.controls.commands()
            };
            c.prune(now);
            (fleet.clone(), c)
        })
        .collect();
    api.store.save(&all).map_err(|e| {
        let file = api
            .store
            .path()
            .map_or_else(String::new, |p| p.display().to_string());
        tracing::error!(file = %file, error = %e, "cannot write the state file: the change is not made");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the state file {file}: {e}; nothing was changed"),
        )
    })?;
    entry.controls.set_commands(commands);
    Ok(previous)
}

/// How many times a shared change is read and edited again when another agent wrote
/// between the read and the write.
const SHARED_ATTEMPTS: usize = 5;

async fn change_shared(
    api: &Api,
    shared: &dyn SharedCommands,
    name: &str,
    entry: &FleetEntry,
    mut edit: impl FnMut(&mut Commands) -> Result<(), ApiError>,
) -> Result<Commands, ApiError> {
    let failed = |e: SharedError| {
        tracing::error!(fleet = %name, store = %shared.describe(), error = %e, "cannot change the fleet's pauses and overrides in the coordination store: the change is not made");
        let status = match e {
            SharedError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SharedError::Damaged(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(
            status,
            format!("{} ({e}); nothing was changed", shared.describe()),
        )
    };
    for _ in 0..SHARED_ATTEMPTS {
        let (previous, revision) = shared.read(name).await.map_err(failed)?;
        let mut commands = previous.clone();
        commands.prune(api.clock.now());
        edit(&mut commands)?;
        if shared
            .write(name, &commands, revision)
            .await
            .map_err(failed)?
        {
            entry.controls.set_commands(commands);
            return Ok(previous);
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "the fleet's pauses and overrides kept changing under this change ({SHARED_ATTEMPTS} \
             attempts): nothing was changed; try again"
        ),
    ))
}

/// One audit line per write: who (the token's name), what, when, before and after.
fn audit(
    caller: &Caller,
    fleet: &str,
    action: &str,
    previous: &Value,
    new: &Value,
    at: SystemTime,
) {
    tracing::info!(
        target: "fleetscale::audit",
        who = %caller.name,
        role = caller.role.as_str(),
        fleet = %fleet,
        action = action,
        previous = %previous,
        new = %new,
        at = %rfc3339::format(at),
        "audit: {} {action} on fleet {fleet}",
        caller.name
    );
}

async fn pause(
    State(api): State<Api>,
    Path(name): Path<String>,
    who: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> Answer {
    let who = caller(who)?;
    fleet(&api, &name)?;
    let paused = pause_fleet(&api, &name, &who, body(&bytes)?).await?;
    Ok(axum::Json(json!({ "fleet": name, "paused": paused })).into_response())
}

/// Pauses fleet `name` for `who`, audited: what `POST /v1/fleets/{name}/pause` and the
/// status page's pause button do.
pub(crate) async fn pause_fleet(
    api: &Api,
    name: &str,
    who: &Caller,
    body: ReasonBody,
) -> Result<Pause, ApiError> {
    let entry = fleet(api, name)?;
    let reason = reason(body)?;
    let now = api.clock.now();
    let paused = Pause {
        by: who.name.clone(),
        reason,
        since: now,
    };
    let previous = change(api, name, entry, |c| match &c.pause {
        Some(p) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "already paused by {} since {}: {}",
                p.by,
                rfc3339::format(p.since),
                p.reason
            ),
        )),
        None => {
            c.pause = Some(paused.clone());
            Ok(())
        }
    })
    .await?;
    let new = json!(paused);
    audit(who, name, "pause", &json!(previous.pause), &new, now);
    Ok(paused)
}

async fn resume(
    State(api): State<Api>,
    Path(name): Path<String>,
    who: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> Answer {
    let who = caller(who)?;
    fleet(&api, &name)?;
    let request: ReasonBody = body(&bytes)?;
    let reason = request.reason.trim().to_string();
    let resumed = resume_fleet(&api, &name, &who, request).await?;
    Ok(axum::Json(json!({ "fleet": name, "resumed": resumed, "reason": reason })).into_response())
}

/// Resumes fleet `name` for `who`, audited; returns the pause it ended. What
/// `POST /v1/fleets/{name}/resume` and the status page's resume button do.
pub(crate) async fn resume_fleet(
    api: &Api,
    name: &str,
    who: &Caller,
    body: ReasonBody,
) -> Result<Option<Pause>, ApiError> {
    let entry = fleet(api, name)?;
    let reason = reason(body)?;
    let previous = change(api, name, entry, |c| match c.pause.take() {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "the fleet is not paused",
        )),
    })
    .await?;
    let now = api.clock.now();
    audit(
        who,
        name,
        "resume",
        &json!(previous.pause),
        &json!({ "reason": reason }),
        now,
    );
    Ok(previous.pause)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideBody {
    #[serde(default)]
    pub(crate) min: Option<u32>,
    #[serde(default)]
    pub(crate) max: Option<u32>,
    #[serde(default)]
    pub(crate) size: Option<u32>,
    pub(crate) duration: String,
    pub(crate) reason: String,
}

async fn add_override(
    State(api): State<Api>,
    Path(name): Path<String>,
    who: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> Answer {
    let who = caller(who)?;
    fleet(&api, &name)?;
    let created = add_override_to(&api, &name, &who, body(&bytes)?).await?;
    Ok((StatusCode::CREATED, axum::Json(json!(created))).into_response())
}

/// Sets an override on fleet `name` for `who`, audited: what
/// `POST /v1/fleets/{name}/overrides` and the status page's override form do.
pub(crate) async fn add_override_to(
    api: &Api,
    name: &str,
    who: &Caller,
    request: OverrideBody,
) -> Result<Override, ApiError> {
    let entry = fleet(api, name)?;
    if request.size.is_some() && (request.min.is_some() || request.max.is_some()) {
        return Err(ApiError::bad_field(
            "size",
            "give size alone, or min and/or max",
        ));
    }
    if request.size.is_none() && request.min.is_none() && request.max.is_none() {
        return Err(ApiError::bad_field("min", "give min, max or size"));
    }
    if let (Some(min), Some(max)) = (request.min, request.max)
        && min > max
    {
        return Err(ApiError::bad_field(
            "min",
            format!("min {min} is above max {max}"),
        ));
    }
    let duration = humantime::parse_duration(request.duration.trim())
        .map_err(|e| ApiError::bad_field("duration", format!("not a duration such as 2h: {e}")))?;
    if duration.is_zero() || duration > MAX_OVERRIDE {
        return Err(ApiError::bad_field(
            "duration",
            "must be longer than 0s and at most 30 days",
        ));
    }
    let reason = reason(ReasonBody {
        reason: request.reason,
    })?;
    let now = api.clock.now();
    let created = Override {
        id: format!("o-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
        min: request.min,
        max: request.max,
        size: request.size,
        reason,
        by: who.name.clone(),
        created_at: now,
        expires_at: now + duration,
    };
    let configured = entry.configured;
    let previous = change(api, name, entry, |c| {
        let (min, max) = bounds_in_force(configured, c, now);
        match (created.min, created.max) {
            (Some(m), None) if m > max => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("min {m} is above the max in force ({max}): give max too, or a size"),
            )),
            (None, Some(m)) if m < min => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("max {m} is below the min in force ({min}): give min too, or a size"),
            )),
            _ => {
                c.overrides.push(created.clone());
                Ok(())
            }
        }
    })
    .await?;
    let previous_bounds = bounds_in_force(configured, &previous, now);
    audit(
        who,
        name,
        "override",
        &json!({ "min": previous_bounds.0, "max": previous_bounds.1 }),
        &json!(created),
        now,
    );
    Ok(created)
}

async fn remove_override(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    who: Option<axum::Extension<Caller>>,
) -> Answer {
    let who = caller(who)?;
    fleet(&api, &name)?;
    let removed = remove_override_from(&api, &name, &who, &id).await?;
    Ok(axum::Json(json!({ "fleet": name, "removed": removed })).into_response())
}

/// Removes override `id` from fleet `name` for `who`, audited: what
/// `DELETE /v1/fleets/{name}/overrides/{id}` and the status page's remove button do.
pub(crate) async fn remove_override_from(
    api: &Api,
    name: &str,
    who: &Caller,
    id: &str,
) -> Result<Option<Override>, ApiError> {
    let entry = fleet(api, name)?;
    let mut removed = None;
    change(api, name, entry, |c| {
        let at = c.overrides.iter().position(|o| o.id == id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("fleet {name:?} has no override {id:?} in force"),
            )
        })?;
        removed = Some(c.overrides.remove(at));
        Ok(())
    })
    .await?;
    let now = api.clock.now();
    audit(
        who,
        name,
        "remove-override",
        &json!(removed),
        &Value::Null,
        now,
    );
    Ok(removed)
}
