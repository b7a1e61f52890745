//! The status page at `/`: every fleet at a glance, for a person in a browser.
//!
//! The page is behind the API's tokens: a bearer token, or a token given once to the
//! sign-in form and then kept in a cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over
//! TLS). Each fleet has a card: its policy, the bounds in force, its billed, serving,
//! booting and leaving instances, the demand of each signal, a pause or overrides in
//! force, a picture (server-rendered SVG) of the last hours of demand, serving and
//! billed instances with the planned trajectory ahead, and the latest decisions with
//! their reasons. An `operate` token also gets forms to pause, resume and override;
//! they post to `/fleets/{name}/...` and do what the `/v1` calls do, through the same
//! functions ([`super::routes`]), audited alike. A form is taken only from this page:
//! its origin must be the agent's, and it must carry the session's CSRF token.
//!
//! Failed sign-ins and refused cookies count in `fleetscale_api_auth_failures_total`
//! like refused API calls, and are logged without the token.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::auth::{Caller, Refusal, Role};
use super::routes::{self, ApiError, OverrideBody, ReasonBody};
use super::{Api, FleetEntry};
use crate::controller::Action;
use crate::operator::{DecisionRecord, bounds_in_force};

mod chart;
use chart::{Chart, chart_svg};

/// The cookie that holds a signed-in browser's token (hex-encoded).
pub const COOKIE: &str = "fleetscale_token";

/// How many of a fleet's latest decisions its card lists.
const DECISIONS_SHOWN: usize = 6;

/// What the page's sessions are checked with: a key for the forms' CSRF tokens (drawn at
/// start: a restart makes open pages' forms stale) and whether cookies are `Secure`.
#[derive(Clone)]
pub struct PageKeys {
    csrf: Arc<ring::hmac::Key>,
    secure: bool,
}

impl std::fmt::Debug for PageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageKeys")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl PageKeys {
    /// `secure`: the agent serves TLS, so cookies are sent over it only.
    pub fn new(secure: bool) -> Self {
        let key: [u8; 32] = rand::random();
        PageKeys {
            csrf: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)),
            secure,
        }
    }

    /// The CSRF token of the session holding `token`: the forms carry it, and a form
    /// without it is refused. Only who can read the page (has the token) can know it.
    fn csrf_for(&self, token: &str) -> String {
        hex(ring::hmac::sign(&self.csrf, token.as_bytes()).as_ref())
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", post(login).get(|| async { see_other("/") }))
        .route("/logout", post(logout))
        .route("/fleets/{name}/pause", post(pause))
        .route("/fleets/{name}/resume", post(resume))
        .route("/fleets/{name}/overrides", post(add_override))
        .route(
            "/fleets/{name}/overrides/{id}/remove",
            post(remove_override),
        )
        .with_state(api)
}

/// Who is looking: the caller, and the token when it came in the cookie (the forms of a
/// cookie session carry its CSRF token).
struct Session {
    caller: Caller,
    cookie_token: Option<String>,
}

/// The session of a request: from its `Authorization` header, else from its cookie.
/// `Ok(None)`: neither was given.
fn session(api: &Api, headers: &HeaderMap) -> Result<Option<Session>, Refusal> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let caller = api
            .tokens
            .check(Some(authorization.as_bytes()), Role::Read)?;
        return Ok(Some(Session {
            caller,
            cookie_token: None,
        }));
    }
    let Some(cookie) = cookie_value(headers) else {
        return Ok(None);
    };
    let token = unhex(&cookie)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Refusal::Malformed)?;
    let caller = api
        .tokens
        .check(Some(format!("Bearer {token}").as_bytes()), Role::Read)?;
    Ok(Some(Session {
        caller,
        cookie_token: Some(token),
    }))
}

/// The value of our cookie, from any `Cookie` header.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
}

/// Counts and logs a refusal (never the token).
fn refused(api: &Api, refusal: Refusal, what: &str) {
    api.metrics
        .auth_failures
        .with_label_values(&[refusal.as_str()])
        .inc();
    tracing::warn!(
        reason = refusal.as_str(),
        what = what,
        "status page: refused"
    );
}

/// Whether a form came from a page of this agent: its `Origin` (else its `Referer`),
/// when the browser sends one, names the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .collect();
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .map(|v| v.to_str().unwrap_or("null"));
    match source {
        None => true,
        Some(source) => {
            let authority = source
                .split_once("://")
                .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
            authority.is_some_and(|a| hosts.iter().any(|h| h.eq_ignore_ascii_case(a)))
        }
    }
}

async fn index(State(api): State<Api>, headers: HeaderMap) -> Response {
    match session(&api, &headers) {
        Ok(Some(session)) => html(StatusCode::OK, render_page(&api, &session, None)),
        Ok(None) => html(StatusCode::OK, login_page(None)),
        Err(refusal) => {
            refused(&api, refusal, "GET /");
            let mut response = html(
                StatusCode::UNAUTHORIZED,
                login_page(Some(
                    "That token is not valid (any more): sign in again with a valid one.",
                )),
            );
            clear_cookie(&mut response, &api.page);
            response
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(api): State<Api>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    let token = form.token.trim();
    let checked = if token.is_empty() {
        Err(Refusal::Missing)
    } else {
        api.tokens
            .check(Some(format!("Bearer {token}").as_bytes()), Role::Read)
    };
    match checked {
        Ok(caller) => {
            tracing::info!(who = %caller.name, role = caller.role.as_str(), "status page: signed in");
            let mut cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                hex(token.as_bytes())
            );
            if api.page.secure {
                cookie.push_str("; Secure");
            }
            let mut response = see_other("/");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(refusal) => {
            refused(&api, refusal, "sign-in");
            html(
                StatusCode::UNAUTHORIZED,
                login_page(Some("That token is not valid.")),
            )
        }
    }
}

async fn logout(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    let mut response = see_other("/");
    clear_cookie(&mut response, &api.page);
    response
}

fn clear_cookie(response: &mut Response, keys: &PageKeys) {
    let secure = if keys.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The fields of every control form; each form sends those it has.
#[derive(Debug, Default, Deserialize)]
struct ControlForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    min: String,
    #[serde(default)]
    max: String,
    #[serde(default)]
    size: String,
    #[serde(default)]
    duration: String,
}

enum Control {
    Pause,
    Resume,
    Override,
    RemoveOverride(String),
}

async fn pause(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    control(&api, &headers, &name, form, Control::Pause).await
}

async fn resume(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    control(&api, &headers, &name, form, Control::Resume).await
}

async fn add_override(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    control(&api, &headers, &name, form, Control::Override).await
}

async fn remove_override(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    control(&api, &headers, &name, form, Control::RemoveOverride(id)).await
}

/// A control form: checked (origin, token, role, CSRF token), then done by the same
/// function as the `/v1` call; back to the fleet's card on success, the page with the
/// error on top otherwise.
async fn control(
    api: &Api,
    headers: &HeaderMap,
    name: &str,
    form: ControlForm,
    what: Control,
) -> Response {
    if !same_origin(headers) {
        tracing::warn!(fleet = %name, "status page: a form from another origin was refused");
        return cross_origin();
    }
    let session = match session(api, headers) {
        Ok(Some(session)) => session,
        Ok(None) => {
            refused(api, Refusal::Missing, "a control form");
            return html(
                StatusCode::UNAUTHORIZED,
                login_page(Some("Sign in to do that.")),
            );
        }
        Err(refusal) => {
            refused(api, refusal, "a control form");
            let mut response = html(
                StatusCode::UNAUTHORIZED,
                login_page(Some(
                    "That token is not valid (any more): sign in again with a valid one.",
                )),
            );
            clear_cookie(&mut response, &api.page);
            return response;
        }
    };
    if !session.caller.role.allows(Role::Operate) {
        refused(api, Refusal::Forbidden, "a control form");
        let notice = Notice::error("This token's role is read: it may not change anything.");
        return html(
            StatusCode::FORBIDDEN,
            render_page(api, &session, Some(notice)),
        );
    }
    if let Some(token) = &session.cookie_token {
        let expected = api.page.csrf_for(token);
        if !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
            tracing::warn!(who = %session.caller.name, fleet = %name, "status page: a form without this session's CSRF token was refused");
            let notice = Notice::error(
                "That form was stale (the agent restarted, or it came from elsewhere): nothing was changed. Try again.",
            );
            return html(
                StatusCode::FORBIDDEN,
                render_page(api, &session, Some(notice)),
            );
        }
    }
    let who = &session.caller;
    let done = match what {
        Control::Pause => routes::pause_fleet(
            api,
            name,
            who,
            ReasonBody {
                reason: form.reason,
            },
        )
        .await
        .map(|_| ()),
        Control::Resume => routes::resume_fleet(
            api,
            name,
            who,
            ReasonBody {
                reason: form.reason,
            },
        )
        .await
        .map(|_| ()),
        Control::Override => match override_body(&form) {
            Ok(body) => routes::add_override_to(api, name, who, body)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        },
        Control::RemoveOverride(id) => routes::remove_override_from(api, name, who, &id)
            .await
            .map(|_| ()),
    };
    match done {
        Ok(()) => {
            let at = api
                .fleets
                .keys()
                .position(|f| f == name)
                .map_or_else(String::new, |i| format!("#fleet-{i}"));
            see_other(&format!("/{at}"))
        }
        Err(e) => {
            let notice = Notice::error(&format!("{name}: {}", e.message()));
            html(e.status(), render_page(api, &session, Some(notice)))
        }
    }
}

/// The override form's fields as the `/v1` body; an empty field is one not given.
fn override_body(form: &ControlForm) -> Result<OverrideBody, ApiError> {
    let number = |field: &str, text: &str| -> Result<Option<u32>, ApiError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            ApiError::bad_field(
                field,
                format!("{text:?} is not a whole number of instances"),
            )
        })
    };
    Ok(OverrideBody {
        min: number("min", &form.min)?,
        max: number("max", &form.max)?,
        size: number("size", &form.size)?,
        duration: form.duration.clone(),
        reason: form.reason.clone(),
    })
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn cross_origin() -> Response {
    html(
        StatusCode::FORBIDDEN,
        login_page(Some(
            "That form was sent from another site: nothing was changed.",
        )),
    )
}

/// An HTML answer, never cached, never framed, running only its own inline script.
fn html(status: StatusCode, (body, nonce): (String, String)) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; \
         img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// A message on top of the page.
struct Notice {
    text: String,
}

impl Notice {
    fn error(text: &str) -> Self {
        Notice { text: text.into() }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// Text made safe for HTML and SVG, in elements and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment, percent-encoded (fleet names may hold any character).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// `HH:MM:SS` in UTC.
fn clock_time(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%H:%M:%S")
        .to_string()
}

/// A span as a person says it: `45s`, `12m`, `3h 20m`, `2d 4h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}m", s / 3600),
        },
        _ => match (s % 86_400) / 3600 {
            0 => format!("{}d", s / 86_400),
            h => format!("{}d {h}h", s / 86_400),
        },
    }
}

fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

const STYLE: &str = r#"
:root{--bg:#f3f4f6;--card:#fff;--ink:#111827;--muted:#6b7280;--line:#e5e7eb;
--demand:#d97706;--serving:#059669;--billed:#2563eb;--warn:#b45309;--warn-bg:#fef3c7;
--bad:#b91c1c;--bad-bg:#fee2e2;--ok-bg:#d1fae5;--accent:#1f2937}
@media (prefers-color-scheme:dark){:root{--bg:#0f172a;--card:#1e293b;--ink:#e5e7eb;
--muted:#94a3b8;--line:#334155;--demand:#f59e0b;--serving:#34d399;--billed:#60a5fa;
--warn:#fbbf24;--warn-bg:#422006;--bad:#fca5a5;--bad-bg:#450a0a;--ok-bg:#064e3b;--accent:#e5e7eb}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
header.top{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;justify-content:space-between;
padding:10px 16px;background:var(--card);border-bottom:1px solid var(--line)}
header.top h1{font-size:18px;margin:0}
.who{display:flex;gap:10px;align-items:center;color:var(--muted);flex-wrap:wrap}
.summary{display:flex;flex-wrap:wrap;gap:6px 14px;padding:10px 16px 0;color:var(--muted)}
.summary b{color:var(--ink)}
main{padding:12px 16px 24px}
.notice{margin:12px 16px 0;padding:10px 12px;border-radius:8px;background:var(--bad-bg);color:var(--bad);
overflow-wrap:anywhere}
.fleets{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,540px),1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;min-width:0}
.card.paused{border-color:var(--warn);box-shadow:inset 4px 0 0 var(--warn)}
.card h2{font-size:17px;margin:0;overflow-wrap:anywhere}
.head{display:flex;flex-wrap:wrap;gap:6px 10px;align-items:baseline}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;background:var(--line);color:var(--ink)}
.badge.warn{background:var(--warn-bg);color:var(--warn);font-weight:600}
.badge.bad{background:var(--bad-bg);color:var(--bad);font-weight:600}
.badge.ok{background:var(--ok-bg)}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(78px,1fr));gap:6px;margin:10px 0 4px}
.stat{border:1px solid var(--line);border-radius:8px;padding:4px 8px;min-width:0}
.stat .k{display:block;font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.stat .v{font-size:20px;font-weight:650;font-variant-numeric:tabular-nums}
.stat .v small{font-size:12px;font-weight:400;color:var(--muted)}
.signals{margin:4px 0;color:var(--muted);overflow-wrap:anywhere}
.signals .err{color:var(--bad)}
.pausebox{margin:8px 0;padding:6px 10px;border-radius:8px;background:var(--warn-bg);color:var(--warn);overflow-wrap:anywhere}
figure{margin:8px 0 4px}
svg.chart{display:block;width:100%;height:auto}
svg.chart text{font:12px system-ui,sans-serif;fill:var(--muted)}
svg.chart .grid{stroke:var(--line);stroke-width:1}
svg.chart .now{stroke:var(--ink);stroke-width:1;stroke-dasharray:3 3;opacity:.6}
svg.chart .bound{stroke:var(--muted);stroke-width:1;stroke-dasharray:1 3}
svg.chart .demand{stroke:var(--demand);stroke-width:2;fill:none}
svg.chart .serving{stroke:var(--serving);stroke-width:2;fill:none}
svg.chart .billed{stroke:var(--billed);stroke-width:1.5;fill:none}
svg.chart .billed-area{fill:var(--billed);opacity:.10}
svg.chart .band{fill:var(--demand);opacity:.15}
svg.chart .ahead{stroke-dasharray:5 4}
svg.chart .future{fill:var(--ink);opacity:.035}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;color:var(--muted);margin-top:2px}
.legend i{display:inline-block;width:16px;height:0;border-top:2px solid;vertical-align:middle;margin-right:4px}
.legend .d{border-color:var(--demand)}.legend .s{border-color:var(--serving)}.legend .b{border-color:var(--billed)}
.legend .p{border-top-style:dashed;border-color:var(--serving)}
.legend .f{border-top-style:dashed;border-color:var(--demand)}
h3{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);margin:10px 0 4px}
ol.decisions{list-style:none;margin:0;padding:0}
ol.decisions li{display:grid;grid-template-columns:auto auto 1fr;gap:0 10px;padding:3px 0;border-top:1px solid var(--line);min-width:0}
ol.decisions .t{color:var(--muted);font-variant-numeric:tabular-nums;white-space:nowrap}
ol.decisions .a{font-weight:600;white-space:nowrap}
ol.decisions .r{overflow-wrap:anywhere;min-width:0}
ol.decisions .e{color:var(--bad)}
ol.decisions .clamp{display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
@media (max-width:520px){ol.decisions li{grid-template-columns:auto 1fr}ol.decisions .r{grid-column:1/-1}}
ul.overrides{margin:0;padding:0;list-style:none}
ul.overrides li{display:flex;flex-wrap:wrap;gap:4px 10px;align-items:center;padding:3px 0;overflow-wrap:anywhere}
.controls{margin-top:10px;border-top:1px solid var(--line);padding-top:8px}
form.row{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0}
form.row input[type=text],form.row input[type=number]{flex:1 1 140px;min-width:0}
form.row input.n{flex:0 1 80px}
input,button{font:inherit;padding:5px 8px;border-radius:6px;border:1px solid var(--line);background:var(--card);color:var(--ink)}
button{cursor:pointer;background:var(--accent);color:var(--card);border-color:var(--accent);font-weight:600}
button.pause{background:var(--warn);border-color:var(--warn);color:#fff}
button.link{background:none;border:none;color:var(--muted);text-decoration:underline;padding:0;font-weight:400}
details summary{cursor:pointer;color:var(--muted);margin:6px 0}
.login{max-width:380px;margin:12vh auto;padding:20px;background:var(--card);border:1px solid var(--line);border-radius:10px}
.login h1{font-size:20px;margin:0 0 6px}
.login p{color:var(--muted)}
.login form{display:flex;flex-direction:column;gap:8px}
.empty{color:var(--muted)}
"#;

/// Reloads the page every 30 s while nobody is typing into it or has a form open.
const SCRIPT: &str = "setInterval(function(){if(document.hidden)return;\
var a=document.activeElement;if(a&&/^(INPUT|BUTTON|SUMMARY)$/.test(a.tagName))return;\
if(document.querySelector('details[open]'))return;\
var f=document.querySelectorAll('input:not([type=hidden])');\
for(var i=0;i<f.length;i++)if(f[i].value)return;location.replace('/'+location.hash);},30000);";

fn document(title: &str, body: &str, script: bool) -> (String, String) {
    let nonce = nonce();
    let script = if script {
        format!("<script nonce=\"{nonce}\">{SCRIPT}</script>")
    } else {
        String::new()
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}{script}</body></html>\n",
        escape(title)
    );
    (page, nonce)
}

fn login_page(message: Option<&str>) -> (String, String) {
    let message = message.map_or_else(String::new, |m| {
        format!("<div class=\"notice\" role=\"alert\">{}</div>", escape(m))
    });
    let body = format!(
        "<div class=\"login\"><h1>fleetscale</h1>\
         <p>Sign in with an API token (<code>read</code> to look, <code>operate</code> to pause \
         and override). It is kept in a cookie for this site only.</p>{message}\
         <form method=\"post\" action=\"/login\">\
         <label for=\"token\">Token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required autofocus>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form></div>"
    );
    document("fleetscale: sign in", &body, false)
}

fn render_page(api: &Api, session: &Session, notice: Option<Notice>) -> (String, String) {
    let now = api.clock.now();
    let operate = session.caller.role.allows(Role::Operate);
    // A bearer session (no cookie) is no browser's: its forms need no CSRF token.
    let csrf = operate.then(|| {
        session
            .cookie_token
            .as_deref()
            .map_or_else(String::new, |t| api.page.csrf_for(t))
    });
    let mut cards = String::new();
    let (mut paused, mut suspended, mut billed, mut serving) = (0, 0, 0u64, 0u64);
    for (i, (name, entry)) in api.fleets.iter().enumerate() {
        let latest = entry.controls.latest();
        paused += usize::from(entry.controls.commands().pause.is_some());
        suspended += usize::from(latest.as_ref().is_some_and(|p| p.suspended));
        billed += latest.as_ref().map_or(0, |p| u64::from(p.report.billed));
        serving += latest.as_ref().map_or(0, |p| u64::from(p.report.serving));
        cards.push_str(&card(i, name, entry, now, csrf.as_deref()));
    }
    let notice = notice.map_or_else(String::new, |n| {
        format!(
            "<div class=\"notice\" role=\"alert\">{}</div>",
            escape(&n.text)
        )
    });
    let logout = if session.cookie_token.is_some() {
        "<form method=\"post\" action=\"/logout\"><button class=\"link\" type=\"submit\">sign out</button></form>"
    } else {
        ""
    };
    let fleets = api.fleets.len();
    let body = format!(
        "<header class=\"top\"><h1>fleetscale</h1><div class=\"who\">\
         <span>updated {} UTC</span><span>signed in as <b>{}</b> ({})</span>{logout}</div></header>\
         {notice}<div class=\"summary\"><span><b>{fleets}</b> fleet{}</span>\
         <span><b>{paused}</b> paused</span><span><b>{suspended}</b> suspended</span>\
         <span><b>{serving}</b> serving</span><span><b>{billed}</b> billed</span></div>\
         <main><div class=\"fleets\">{}</div></main>",
        clock_time(now),
        escape(&session.caller.name),
        session.caller.role.as_str(),
        if fleets == 1 { "" } else { "s" },
        if cards.is_empty() {
            "<p class=\"empty\">This agent runs no fleet.</p>".to_string()
        } else {
            cards
        },
    );
    document("fleetscale: status", &body, true)
}

fn hidden_csrf(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

/// One fleet's card. `csrf`: the session may operate, and its forms carry this token.
fn card(
    index: usize,
    name: &str,
    entry: &FleetEntry,
    now: SystemTime,
    csrf: Option<&str>,
) -> String {
    let commands = entry.controls.commands();
    let latest = entry.controls.latest();
    let report = latest.as_ref().map(|p| &p.report);
    let (min, max) = bounds_in_force(entry.configured, &commands, now);
    let mut out = String::new();
    let class = if commands.pause.is_some() {
        "card paused"
    } else {
        "card"
    };
    let _ = write!(
        out,
        "<section class=\"{class}\" id=\"fleet-{index}\" data-fleet=\"{}\"><div class=\"head\"><h2>{}</h2>\
         <span class=\"badge\">{}</span>",
        escape(name),
        escape(name),
        escape(entry.policy)
    );
    if commands.pause.is_some() {
        out.push_str("<span class=\"badge warn\">paused</span>");
    }
    if latest.as_ref().is_some_and(|p| p.suspended) {
        out.push_str("<span class=\"badge bad\">suspended</span>");
    }
    let overrides: Vec<_> = commands.in_force(now).collect();
    if !overrides.is_empty() {
        let _ = write!(
            out,
            "<span class=\"badge warn\">{} override{}</span>",
            overrides.len(),
            if overrides.len() == 1 { "" } else { "s" }
        );
    }
    if report.is_some_and(|r| r.signal_error.is_some()) {
        out.push_str("<span class=\"badge bad\">signal failing</span>");
    }
    if report.is_some_and(|r| r.error.is_some()) {
        out.push_str("<span class=\"badge bad\">cloud call failed</span>");
    }
    match &latest {
        Some(p) => {
            let _ = write!(
                out,
                "<span class=\"badge ok\" title=\"last tick\">{} UTC</span>",
                clock_time(p.at)
            );
        }
        None => out.push_str("<span class=\"badge\">no tick yet</span>"),
    }
    out.push_str("</div>");

    // The numbers.
    let count = |f: fn(&crate::controller::TickReport) -> u32| {
        report.map_or_else(|| "–".to_string(), |r| f(r).to_string())
    };
    let demand = report
        .and_then(|r| r.observed)
        .filter(|d| d.is_finite())
        .map_or_else(|| "–".to_string(), |d| format!("{d:.1}"));
    let configured = if (min, max) == entry.configured {
        String::new()
    } else {
        format!(
            " <small>(config {}–{})</small>",
            entry.configured.0, entry.configured.1
        )
    };
    let _ = write!(
        out,
        "<div class=\"stats\">\
         <div class=\"stat\"><span class=\"k\">demand</span><span class=\"v\">{demand}</span></div>\
         <div class=\"stat\"><span class=\"k\">serving</span><span class=\"v\">{}</span></div>\
         <div class=\"stat\"><span class=\"k\">billed</span><span class=\"v\">{}</span></div>\
         <div class=\"stat\"><span class=\"k\">booting</span><span class=\"v\">{}</span></div>\
         <div class=\"stat\"><span class=\"k\">leaving</span><span class=\"v\">{}</span></div>\
         <div class=\"stat\"><span class=\"k\">bounds</span><span class=\"v\">{min}–{max}{configured}</span></div>\
         </div>",
        count(|r| r.serving),
        count(|r| r.billed),
        count(|r| r.booting),
        count(|r| r.leaving),
    );
    if let Some(r) = report
        && !r.signals.is_empty()
    {
        out.push_str("<div class=\"signals\">demand by signal: ");
        for (i, s) in r.signals.iter().enumerate() {
            if i > 0 {
                out.push_str(" · ");
            }
            match (&s.error, s.demand.filter(|d| d.is_finite())) {
                (Some(e), _) => {
                    let _ = write!(
                        out,
                        "{} <span class=\"err\">{}</span>",
                        escape(&s.name),
                        escape(e)
                    );
                }
                (None, Some(d)) => {
                    let _ = write!(out, "{} <b>{d:.1}</b>", escape(&s.name));
                }
                (None, None) => {
                    let _ = write!(out, "{} –", escape(&s.name));
                }
            }
        }
        out.push_str("</div>");
    }
    if let Some(p) = &commands.pause {
        let _ = write!(
            out,
            "<div class=\"pausebox\"><b>Paused</b> by {} since {} UTC ({} ago): {}. \
             The agent observes and decides, and changes nothing.</div>",
            escape(&p.by),
            clock_time(p.since),
            span(now.duration_since(p.since).unwrap_or_default()),
            escape(&p.reason)
        );
    }

    // The picture.
    let plan = report
        .and_then(|r| r.decision.as_ref())
        .and_then(|d| d.plan.as_ref());
    let history = entry.controls.history();
    let chart = Chart {
        history: &history,
        now: latest.as_ref().map_or(now, |p| p.at),
        step: latest.as_ref().map_or(Duration::from_secs(60), |p| p.step),
        trajectory: plan.map_or(&[], |p| p.trajectory.as_slice()),
        forecast: plan.map_or(&[], |p| p.forecast.as_slice()),
        bounds: (min, max),
        label: name,
    };
    let _ = write!(
        out,
        "<figure>{}<figcaption class=\"legend\"><span><i class=\"d\"></i>demand</span>\
         <span><i class=\"s\"></i>serving</span><span><i class=\"b\"></i>billed</span>\
         <span><i class=\"p\"></i>planned serving</span><span><i class=\"f\"></i>forecast demand</span>\
         </figcaption></figure>",
        chart_svg(&chart)
    );

    // Overrides in force.
    if !overrides.is_empty() {
        out.push_str("<h3>Overrides</h3><ul class=\"overrides\">");
        for o in &overrides {
            let what = match (o.size, o.min, o.max) {
                (Some(size), _, _) => format!("size {size}"),
                (None, Some(lo), Some(hi)) => format!("min {lo} · max {hi}"),
                (None, Some(lo), None) => format!("min {lo}"),
                (None, None, Some(hi)) => format!("max {hi}"),
                (None, None, None) => "no change".to_string(),
            };
            let _ = write!(
                out,
                "<li><b>{what}</b><span>by {} until {} UTC (in {}): {}</span>",
                escape(&o.by),
                clock_time(o.expires_at),
                span(o.expires_at.duration_since(now).unwrap_or_default()),
                escape(&o.reason)
            );
            if let Some(csrf) = csrf {
                let _ = write!(
                    out,
                    "<form method=\"post\" action=\"/fleets/{}/overrides/{}/remove\">{}\
                     <button class=\"link\" type=\"submit\">remove</button></form>",
                    segment(name),
                    segment(&o.id),
                    hidden_csrf(csrf)
                );
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    }

    // The latest decisions, newest first.
    out.push_str("<h3>Latest decisions</h3>");
    let decisions = entry.controls.decisions();
    if decisions.is_empty() {
        out.push_str("<p class=\"empty\">None yet.</p>");
    } else {
        out.push_str("<ol class=\"decisions\">");
        // The newest in full, the older ones in two lines each (in full on hover).
        for (i, d) in decisions.iter().rev().take(DECISIONS_SHOWN).enumerate() {
            out.push_str(&decision_item(d, i > 0));
        }
        out.push_str("</ol>");
    }

    // The controls, for operate tokens only.
    if let Some(csrf) = csrf {
        let fleet = segment(name);
        let csrf = hidden_csrf(csrf);
        out.push_str("<div class=\"controls\">");
        if commands.pause.is_some() {
            let _ = write!(
                out,
                "<form class=\"row resume\" method=\"post\" action=\"/fleets/{fleet}/resume\">{csrf}\
                 <input type=\"text\" name=\"reason\" required placeholder=\"why resume\" aria-label=\"reason to resume\">\
                 <button type=\"submit\">Resume</button></form>"
            );
        } else {
            let _ = write!(
                out,
                "<form class=\"row pause\" method=\"post\" action=\"/fleets/{fleet}/pause\">{csrf}\
                 <input type=\"text\" name=\"reason\" required placeholder=\"why pause\" aria-label=\"reason to pause\">\
                 <button class=\"pause\" type=\"submit\">Pause</button></form>"
            );
        }
        let _ = write!(
            out,
            "<details><summary>Override the bounds for a while</summary>\
             <form class=\"row override\" method=\"post\" action=\"/fleets/{fleet}/overrides\">{csrf}\
             <input class=\"n\" type=\"number\" name=\"min\" min=\"0\" placeholder=\"min\" aria-label=\"min\">\
             <input class=\"n\" type=\"number\" name=\"max\" min=\"0\" placeholder=\"max\" aria-label=\"max\">\
             <input class=\"n\" type=\"number\" name=\"size\" min=\"0\" placeholder=\"or size\" aria-label=\"size\">\
             <input class=\"n\" type=\"text\" name=\"duration\" required placeholder=\"for 2h\" aria-label=\"duration\">\
             <input type=\"text\" name=\"reason\" required placeholder=\"why\" aria-label=\"reason for the override\">\
             <button type=\"submit\">Set override</button></form></details>"
        );
        out.push_str("</div>");
    }
    out.push_str("</section>");
    out
}

fn decision_item(d: &DecisionRecord, clamp: bool) -> String {
    let when = if d.ticks > 1 {
        format!(
            "{}–{} <small>×{}</small>",
            clock_time(d.first_at),
            clock_time(d.at),
            d.ticks
        )
    } else {
        clock_time(d.at)
    };
    let action = match &d.action {
        Action::None => match (d.desired, d.applied) {
            (_, Some(size)) => format!("hold {size}"),
            _ => "hold".to_string(),
        },
        Action::Grow {
            requested,
            launched,
        } if requested == launched => format!("grow +{launched}"),
        Action::Grow {
            requested,
            launched,
        } => format!("grow +{launched} of {requested}"),
        Action::Shrink {
            requested, removed, ..
        } if requested == removed => {
            format!("shrink −{removed}")
        }
        Action::Shrink {
            requested, removed, ..
        } => format!("shrink −{removed} of {requested}"),
        Action::ReplaceStuck { removed } => format!("replace {removed} stuck"),
        Action::Paused { .. } => "backing off".to_string(),
        Action::Held { .. } => "held (paused)".to_string(),
        Action::Fenced { .. } => "fenced (not the holder)".to_string(),
    };
    let wish = match (d.desired, d.applied) {
        (Some(want), Some(got)) if want != got => format!("wants {want}, guarded to {got}. "),
        _ => String::new(),
    };
    let until = match &d.action {
        Action::Paused { until } => format!("until {until}. "),
        _ => String::new(),
    };
    let error = d.error.as_ref().map_or_else(String::new, |e| {
        format!(" <span class=\"e\">{}</span>", escape(e))
    });
    let text = format!("{wish}{until}{}", d.reason);
    let (class, title) = if clamp {
        ("r clamp", format!(" title=\"{}\"", escape(&text)))
    } else {
        ("r", String::new())
    };
    format!(
        "<li><span class=\"t\">{when}</span><span class=\"a\">{}</span>\
         <span class=\"{class}\"{title}>{}{error}</span></li>",
        escape(&action),
        escape(&text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{Commands, FleetControls};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_card_escapes_what_it_shows_and_has_controls_only_to_operate() {
        let commands = Commands {
            pause: Some(crate::operator::Pause {
                by: "<b>eve</b>".into(),
                reason: "\"quoted\" & <script>alert(1)</script>".into(),
                since: at(0),
            }),
            overrides: Vec::new(),
        };
        let entry = FleetEntry {
            controls: FleetControls::new(commands),
            policy: "dp",
            configured: (1, 10),
        };
        let name = "we<b> \"x\"/y";
        let read = card(0, name, &entry, at(60), None);
        assert!(!read.contains("<script>") && !read.contains("<b>eve"));
        assert!(read.contains("&lt;script&gt;") && read.contains("we&lt;b&gt; &quot;x&quot;/y"));
        assert!(read.contains("<svg") && !read.contains("<form"));
        let operate = card(0, name, &entry, at(60), Some("abc"));
        // Paused: the form resumes; the fleet's name is percent-encoded in the action.
        assert!(operate.contains("action=\"/fleets/we%3Cb%3E%20%22x%22%2Fy/resume\""));
        assert!(operate.contains("name=\"csrf\" value=\"abc\""));
        assert!(!operate.contains("/pause\""));
    }

    #[test]
    fn cookies_and_origins_are_read_strictly() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9910"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9910"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}; c=d", hex(b"tok en"))).unwrap(),
        );
        assert_eq!(
            cookie_value(&headers).and_then(|v| unhex(&v)),
            Some(b"tok en".to_vec())
        );
        assert_eq!(unhex("abc"), None);
        let keys = PageKeys::new(false);
        assert_eq!(keys.csrf_for("t"), keys.csrf_for("t"));
        assert_ne!(keys.csrf_for("t"), keys.csrf_for("u"));
        assert_ne!(PageKeys::new(false).csrf_for("t"), keys.csrf_for("t"));
    }
}
