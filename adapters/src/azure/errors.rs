//! Azure's failures, read once where they happen and mapped to the adapter's kinds.
//!
//! Resource Manager answers with a status and a body `{"error": {"code", "message"}}`;
//! azure_core keeps the status and code but drops `Retry-After`, so [`ArmErrorPolicy`]
//! reads every unsuccessful response itself. Token failures are classified by
//! [`super::credential`] into [`CredentialFailure`]. [`to_adapter_error`] turns either
//! into an [`AdapterError`], deciding on status and code, never on wording alone.
//!
//! The same policy paces the adapter under Resource Manager's and Compute's request
//! budgets ([`Pacer`]): it reads the remaining counts every answer carries and the
//! `Retry-After` of a throttled one, and holds back, without sending them, the requests of
//! a spent budget until it has refilled.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::ErrorKind as AzureErrorKind;
use azure_core::headers::{HeaderName, Headers};
use azure_core::{Context, Method, Policy, PolicyResult, Request};
use tokio::time::Instant;

use crate::AdapterError;

/// An unsuccessful answer from Resource Manager.
#[derive(Debug, Clone)]
pub(crate) struct ArmFailure {
    pub status: u16,
    pub code: Option<String>,
    pub message: Option<String>,
    pub retry_after: Option<Duration>,
    pub request_id: Option<String>,
    /// `PATCH virtualMachineScaleSets/web-vmss`, for the operator.
    pub request: String,
    /// `error.details`: Compute names the spent budget of a throttled request in a
    /// `TooManyRequests` detail whose target is the throttling policy.
    pub details: Vec<ErrorDetail>,
    /// The policy assignment that denied the request (`RequestDisallowedByPolicy`).
    pub policy: Option<PolicyDenial>,
}

/// One entry of an ARM error's `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorDetail {
    pub code: String,
    pub target: Option<String>,
}

/// The Azure Policy assignment that denied a request, as `RequestDisallowedByPolicy`
/// names it: in `additionalInfo` (`type: PolicyViolation`) or, failing that, in the
/// message's "Policy identifiers: '[{"policyAssignment": {"name", "id"}, ...}]'" ("Resolve
/// errors for request disallowed by policy", learn.microsoft.com/azure/
/// azure-resource-manager/troubleshooting/error-policy-requestdisallowedbypolicy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PolicyDenial {
    /// The assignment's display name (or its name).
    pub assignment: Option<String>,
    pub assignment_id: Option<String>,
    /// The policy definition's display name (or its name).
    pub definition: Option<String>,
}

impl fmt::Display for PolicyDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("policy assignment")?;
        match (&self.assignment, &self.assignment_id) {
            (Some(name), Some(id)) => write!(f, " '{name}' ({id})")?,
            (Some(name), None) => write!(f, " '{name}'")?,
            (None, Some(id)) => write!(f, " {id}")?,
            (None, None) => f.write_str(" (not named)")?,
        }
        if let Some(definition) = &self.definition {
            write!(f, ", policy '{definition}'")?;
        }
        Ok(())
    }
}

impl ArmFailure {
    /// Compute's throttling policy named by a `TooManyRequests` detail, if any.
    fn throttled_by(&self) -> Option<&str> {
        self.details
            .iter()
            .filter(|d| d.code.eq_ignore_ascii_case("TooManyRequests"))
            .find_map(|d| d.target.as_deref())
    }

    fn has_detail(&self, code: &str) -> bool {
        self.details
            .iter()
            .any(|d| d.code.eq_ignore_ascii_case(code))
    }

    fn is_code(&self, code: &str) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(code))
    }
}

impl fmt::Display for ArmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} answered {}", self.request, self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ArmFailure {}

/// A token that could not be had, classified where the credential failed.
#[derive(Debug, Clone)]
pub(crate) struct CredentialFailure {
    pub kind: CredentialFailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialFailureKind {
    /// The identity provider refused the credential (a wrong secret, an unknown client,
    /// an expired federated token), or none could be found.
    Refused,
    /// The identity provider could not be reached or failed (retrying may help).
    Unreachable,
    /// The identity provider asked us to slow down.
    Throttled(Option<Duration>),
}

impl fmt::Display for CredentialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CredentialFailure {}

/// Turns every unsuccessful Resource Manager response into an [`ArmFailure`], keeping the
/// headers azure_core would drop, and paces the requests under Azure's budgets
/// ([`Pacer`]). Placed after azure_core's retry policy (which is off: retrying is the
/// `Retry` decorator's job), just before the transport. One instance serves every client
/// of a fleet (the Compute client and the raw pipeline share it), so every request the
/// fleet sends to Resource Manager passes through it.
#[derive(Debug, Default)]
pub(crate) struct ArmErrorPolicy {
    pacer: Pacer,
}

#[async_trait]
impl Policy for ArmErrorPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((transport, rest)) = next.split_first() else {
            return Err(azure_core::Error::message(
                AzureErrorKind::Other,
                "ArmErrorPolicy is the pipeline's last policy: no transport follows it to send the request",
            ));
        };
        let sent = Sent::new(request.method(), request.url().path());
        if let Some(held) = self.pacer.held(&sent) {
            tracing::debug!(
                request = %sent.what,
                budget = %held.budget,
                wait_ms = held.wait.as_millis() as u64,
                "not sent: its budget is spent"
            );
            return Err(azure_core::Error::new(AzureErrorKind::Other, held));
        }
        let response = transport.send(ctx, request, rest).await?;
        if response.status().is_success() {
            self.pacer.observe(
                &sent,
                response.status() as u16,
                response.headers(),
                None,
                None,
            );
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await.unwrap_or_default();
        let parsed = parse_error_body(&body);
        let failure = ArmFailure {
            status: status as u16,
            code: parsed.code.clone(),
            message: parsed.message,
            retry_after: retry_after(&headers),
            request_id: headers
                .get_optional_string(&HeaderName::from_static("x-ms-request-id"))
                .or_else(|| {
                    headers.get_optional_string(&HeaderName::from_static(
                        "x-ms-correlation-request-id",
                    ))
                }),
            request: sent.what.clone(),
            details: parsed.details,
            policy: parsed.policy,
        };
        self.pacer.observe(
            &sent,
            failure.status,
            &headers,
            failure.throttled_by(),
            failure.retry_after,
        );
        Err(azure_core::Error::new(
            AzureErrorKind::http_response(status, parsed.code),
            failure,
        ))
    }
}

/// `GET virtualMachineScaleSets/web-vmss/virtualMachines`: the method and the path from the
/// provider on, without the subscription or query.
fn describe_request(method: &Method, path: &str) -> String {
    let short = path
        .find("/providers/")
        .and_then(|at| path.get(at + "/providers/".len()..))
        .map(|rest| rest.strip_prefix("Microsoft.Compute/").unwrap_or(rest))
        .unwrap_or(path);
    format!("{method} {short}")
}

/// A request as the [`Pacer`] sees it.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// The method and path, an operation's id left out: the requests that count against
    /// the same budgets.
    class: String,
    /// Resource Manager's own budget for the request's kind.
    arm_budget: &'static str,
    /// `PATCH virtualMachineScaleSets/web-vmss`, for messages.
    what: String,
}

impl Sent {
    pub(crate) fn new(method: &Method, path: &str) -> Sent {
        let mut class = method.to_string();
        let mut after_operations = false;
        for segment in path.split('/') {
            class.push('/');
            if after_operations {
                class.push('*');
            } else {
                class.push_str(&segment.to_ascii_lowercase());
            }
            after_operations = segment.eq_ignore_ascii_case("operations");
        }
        // Resource Manager counts a subscription's reads, writes and deletes apart
        // ("Understand how Azure Resource Manager throttles requests", learn.microsoft.com/
        // azure/azure-resource-manager/management/request-limits-and-throttling).
        let arm_budget = match method {
            Method::Get | Method::Head => SUBSCRIPTION_READS,
            Method::Delete => SUBSCRIPTION_DELETES,
            _ => SUBSCRIPTION_WRITES,
        };
        Sent {
            class,
            arm_budget,
            what: describe_request(method, path),
        }
    }
}

const SUBSCRIPTION_READS: &str = "subscription-reads";
const SUBSCRIPTION_WRITES: &str = "subscription-writes";
const SUBSCRIPTION_DELETES: &str = "subscription-deletes";
const ARM_BUDGETS: [&str; 3] = [
    SUBSCRIPTION_READS,
    SUBSCRIPTION_WRITES,
    SUBSCRIPTION_DELETES,
];

/// Resource Manager refills a subscription's buckets every second (25 reads, 10 writes
/// and 10 deletes a second: "Understand how Azure Resource Manager throttles requests",
/// Regional throttling and token bucket algorithm): a spent one is waited out for that.
const ARM_REFILL: Duration = Duration::from_secs(1);

/// Compute's resource-level budgets refill every minute ("All Compute resources have a
/// uniform window of 1 min. Users can successfully invoke API calls, 1 min after getting
/// throttled", "Compute throttling limits", learn.microsoft.com/azure/virtual-machines/
/// compute-throttling-limits): the wait for a spent budget whose name gives no window.
const COMPUTE_WINDOW: Duration = Duration::from_secs(60);

/// The longest hold: a provider's retry-after beyond it is answered by waiting a day.
const MAX_HOLD: Duration = Duration::from_secs(86_400);

/// A request not sent because its budget is spent: the caller is throttled for `wait`.
#[derive(Debug, Clone)]
pub(crate) struct HeldBack {
    pub request: String,
    /// The budget as Azure names it: `Microsoft.Compute/VMScaleSetActions3Min`, or
    /// Resource Manager's `subscription-writes`.
    pub budget: String,
    /// How long until the budget's requests are sent again.
    pub wait: Duration,
    /// What spent it.
    pub why: String,
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} was not sent: Azure's request budget {} is spent ({}); its requests are sent again in {}",
            self.request,
            self.budget,
            self.why,
            humantime::format_duration(whole_seconds(self.wait))
        )
    }
}

impl std::error::Error for HeldBack {}

/// `d` rounded up to whole seconds, for messages.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Paces a fleet's requests under Resource Manager's and Compute's request budgets.
///
/// Compute counts each request against one or more throttling policies and reports what
/// is left of each on every answer: `x-ms-ratelimit-remaining-resource:
/// Microsoft.Compute/HighCostGet3Min;159` (`<source RP>/<policy or bucket>;<count>`, one
/// entry per policy). A throttled request is answered 429 `OperationNotAllowed` with a
/// `TooManyRequests` detail whose target is the spent policy, and a `Retry-After` ("the
/// minimum number of seconds the client should wait before retrying", as long as 1,200 s)
/// ("Troubleshooting API throttling errors", learn.microsoft.com/troubleshoot/azure/
/// virtual-machines/troubleshooting-throttling-errors). Resource Manager reports its own
/// per-subscription budgets as `x-ms-ratelimit-remaining-subscription-reads`, `-writes`
/// and `-deletes`, and throttles with 429 and `Retry-After`: "If you send a request
/// before the retry value has elapsed, your request isn't processed and a new retry value
/// is returned" ("Understand how Azure Resource Manager throttles requests").
///
/// So, as the Compute page advises ("consider implementing proactive client-side
/// self-throttling when the available call count for a target operation group drops below
/// some low threshold"), a spent budget holds back every request that counts against it,
/// without sending it: until `Retry-After` has passed after a 429 (the policies it names,
/// or Resource Manager's budget of the request's kind when it names none), or, when an
/// answer reports a count of 0, for the policy's window as its name gives it (`3Min`;
/// one minute when it gives none), at most a minute, or Resource Manager's one-second
/// refill. A longer window (`30Min`) may refill well before it ends, and a fleet held
/// blind for half an hour costs more than one request answered 429, whose `Retry-After`
/// then says how long to wait. Which policies a request counts against is learned from
/// the answers to requests of its kind.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    state: Mutex<PaceState>,
}

#[derive(Debug, Default)]
struct PaceState {
    /// By budget key ([`budget_key`]): requests that count against it wait until then.
    holds: HashMap<String, Hold>,
    /// By request class: the keys of the Compute policies its last answer named.
    counted_in: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
struct Hold {
    budget: String,
    until: Instant,
    why: String,
}

/// Compares policy names as Compute spells them in headers
/// (`Microsoft.Compute/HighCostGet30Min`) and in a throttled answer's detail target
/// (`HighCostGet30Min`).
fn budget_key(name: &str) -> String {
    name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase()
}

impl Pacer {
    /// The hold that keeps `sent` back, if one of its budgets is spent.
    pub(crate) fn held(&self, sent: &Sent) -> Option<HeldBack> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.holds.retain(|_, hold| hold.until > now);
        let compute = state.counted_in.get(&sent.class).into_iter().flatten();
        let hold = compute
            .map(String::as_str)
            .chain(std::iter::once(sent.arm_budget))
            .filter_map(|key| state.holds.get(key))
            .max_by_key(|hold| hold.until)?;
        Some(HeldBack {
            request: sent.what.clone(),
            budget: hold.budget.clone(),
            wait: hold.until.saturating_duration_since(now),
            why: hold.why.clone(),
        })
    }

    /// Reads the budgets an answer to `sent` reports and holds the spent ones.
    /// `throttled_by` is the policy a throttled answer's `TooManyRequests` detail names.
    pub(crate) fn observe(
        &self,
        sent: &Sent,
        status: u16,
        headers: &Headers,
        throttled_by: Option<&str>,
        retry_after: Option<Duration>,
    ) {
        let compute = remaining_resource(headers);
        let arm = remaining_subscription(headers);
        let now = Instant::now();
        let mut spent: Vec<(String, Duration, String)> = Vec::new();
        match retry_after {
            Some(wait) if status == 429 => {
                let mut named: Vec<String> = throttled_by.map(str::to_owned).into_iter().collect();
                named.extend(
                    compute
                        .iter()
                        .chain(&arm)
                        .filter(|(_, left)| *left == 0)
                        .map(|(name, _)| name.clone()),
                );
                if named.is_empty() {
                    named.push(sent.arm_budget.to_owned());
                }
                let why = format!(
                    "{} answered 429 with Retry-After {}",
                    sent.what,
                    humantime::format_duration(whole_seconds(wait))
                );
                spent.extend(named.into_iter().map(|name| (name, wait, why.clone())));
            }
            _ => {
                let why = format!("none left after {}", sent.what);
                spent.extend(
                    compute
                        .iter()
                        .filter(|(_, left)| *left == 0)
                        .map(|(name, _)| {
                            let wait = window_of(name).min(COMPUTE_WINDOW);
                            (name.clone(), wait, why.clone())
                        }),
                );
                spent.extend(
                    arm.iter()
                        .filter(|(_, left)| *left == 0)
                        .map(|(name, _)| (name.clone(), ARM_REFILL, why.clone())),
                );
            }
        }

        let mut placed = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut counted: Vec<String> =
                compute.iter().map(|(name, _)| budget_key(name)).collect();
            // A throttled request counts against the policy that throttled it, whether or
            // not the answer's headers name it.
            counted.extend(
                spent
                    .iter()
                    .map(|(name, _, _)| budget_key(name))
                    .filter(|key| !ARM_BUDGETS.contains(&key.as_str())),
            );
            counted.sort_unstable();
            counted.dedup();
            if !counted.is_empty() {
                state.counted_in.insert(sent.class.clone(), counted);
            }
            for (budget, wait, why) in spent {
                let wait = wait.min(MAX_HOLD);
                if wait.is_zero() {
                    continue;
                }
                let until = now + wait;
                let key = budget_key(&budget);
                if state
                    .holds
                    .get(&key)
                    .is_some_and(|hold| hold.until >= until)
                {
                    continue;
                }
                state.holds.insert(
                    key,
                    Hold {
                        budget: budget.clone(),
                        until,
                        why: why.clone(),
                    },
                );
                placed.push((budget, wait, why));
            }
        }
        for (budget, wait, why) in placed {
            tracing::warn!(
                budget = %budget,
                wait_s = whole_seconds(wait).as_secs(),
                "Azure's request budget {budget} is spent ({why}): its requests are held back, \
                 unsent, for {}",
                humantime::format_duration(whole_seconds(wait))
            );
        }
    }
}

/// Compute's `x-ms-ratelimit-remaining-resource`: `policy;count` entries, comma
/// separated (azure_core keeps one value of a repeated header, and Compute sends them
/// joined in one: `Microsoft.Compute/HighCostGetVMScaleSet3Min;107,
/// Microsoft.Compute/HighCostGetVMScaleSet30Min;827`).
pub(crate) fn remaining_resource(headers: &Headers) -> Vec<(String, u64)> {
    headers
        .get_optional_str(&HeaderName::from_static(
            "x-ms-ratelimit-remaining-resource",
        ))
        .map(|value| {
            value
                .split(',')
                .filter_map(|entry| {
                    let (name, count) = entry.trim().rsplit_once(';')?;
                    let count = count.trim().parse().ok()?;
                    let name = name.trim();
                    (!name.is_empty()).then(|| (name.to_owned(), count))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resource Manager's `x-ms-ratelimit-remaining-subscription-reads`, `-writes` and
/// `-deletes`, by budget.
fn remaining_subscription(headers: &Headers) -> Vec<(String, u64)> {
    [
        (
            "x-ms-ratelimit-remaining-subscription-reads",
            SUBSCRIPTION_READS,
        ),
        (
            "x-ms-ratelimit-remaining-subscription-writes",
            SUBSCRIPTION_WRITES,
        ),
        (
            "x-ms-ratelimit-remaining-subscription-deletes",
            SUBSCRIPTION_DELETES,
        ),
    ]
    .into_iter()
    .filter_map(|(header, budget)| {
        let count = headers
            .get_optional_str(&HeaderName::from_static(header))?
            .trim()
            .parse()
            .ok()?;
        Some((budget.to_owned(), count))
    })
    .collect()
}

/// The window a Compute policy's name ends with (`HighCostGet30Min`: 30 minutes,
/// `VMScaleSetBatchedVMRequests5Min`: 5), or Compute's one-minute refill.
fn window_of(policy: &str) -> Duration {
    let name = policy.rsplit('/').next().unwrap_or(policy);
    let lower = name.to_ascii_lowercase();
    let (rest, unit) = [("min", 60), ("hour", 3600), ("sec", 1)]
        .into_iter()
        .find_map(|(suffix, secs)| lower.strip_suffix(suffix).map(|rest| (rest, secs)))
        .unwrap_or((lower.as_str(), 0));
    let digits = rest.len() - rest.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    match rest
        .get(rest.len() - digits..)
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) if unit > 0 && n > 0 => Duration::from_secs(n.saturating_mul(unit)).min(MAX_HOLD),
        _ => COMPUTE_WINDOW,
    }
}

/// What an ARM error body says.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
    pub details: Vec<ErrorDetail>,
    pub policy: Option<PolicyDenial>,
}

/// The code and message of an ARM error body (`{"error": {"code", "message"}}`), or of an
/// operation status (`{"status": "Failed", "error": {...}}`).
pub(crate) fn error_code_and_message(body: &[u8]) -> (Option<String>, Option<String>) {
    let parsed = parse_error_body(body);
    (parsed.code, parsed.message)
}

/// Reads an ARM error body: code, message, the details' codes and targets, and the policy
/// assignment of a `RequestDisallowedByPolicy`. Compute's throttled answer may come without
/// the `error` wrapper (`{"code": "OperationNotAllowed", "details": [...]}`, as
/// "Troubleshooting API throttling errors" shows it); both shapes are read.
pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect::<String>();
        return ErrorBody {
            message: (!text.is_empty()).then_some(text),
            ..ErrorBody::default()
        };
    };
    let error = value.get("error").unwrap_or(&value);
    let text = |key: &str| {
        field(error, key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let code = text("code");
    let mut message = text("message");
    let details: Vec<&serde_json::Value> = field(error, "details")
        .and_then(|d| d.as_array())
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    // Deployment-style errors nest the useful part one level down; a throttled answer
    // names the spent policy there.
    if let Some(detail) = details.first() {
        let detail_text = |key: &str| {
            field(detail, key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let inner =
            if detail_text("code").is_some_and(|c| c.eq_ignore_ascii_case("TooManyRequests")) {
                Some(throttle_detail(
                    detail_text("target").as_deref(),
                    detail_text("message").as_deref(),
                ))
            } else {
                detail_text("message")
            };
        if let Some(inner) = inner
            && message.as_deref() != Some(inner.as_str())
        {
            message = Some(match message {
                Some(outer) => format!("{outer} ({inner})"),
                None => inner,
            });
        }
    }
    let details_read = details
        .iter()
        .filter_map(|detail| {
            Some(ErrorDetail {
                code: field(detail, "code")?.as_str()?.to_owned(),
                target: field(detail, "target")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned),
            })
        })
        .collect();
    let denied = |e: &serde_json::Value| {
        field(e, "code")
            .and_then(|c| c.as_str())
            .is_some_and(|c| c.eq_ignore_ascii_case("RequestDisallowedByPolicy"))
    };
    let policy = std::iter::once(error)
        .chain(details.iter().copied())
        .find(|e| denied(e))
        .map(policy_denial);
    ErrorBody {
        code,
        message,
        details: details_read,
        policy,
    }
}

/// `key` or `Key` (operation status documents capitalise their fields).
fn field<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    value.get(key).or_else(|| value.get(capitalise(key)))
}

/// "TooManyRequests: policy HighCostGet30Min, 1238 requests where 800 are allowed": the
/// detail's message is a serialized `{"operationGroup", "startTime", "endTime",
/// "allowedRequestCount", "measuredRequestCount"}` ("Troubleshooting API throttling
/// errors", Throttling error details).
fn throttle_detail(target: Option<&str>, message: Option<&str>) -> String {
    let mut text = String::from("TooManyRequests");
    if let Some(target) = target {
        text.push_str(&format!(": policy {target}"));
    }
    let counts = message
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|v| {
            Some((
                v.get("measuredRequestCount")?.as_u64()?,
                v.get("allowedRequestCount")?.as_u64()?,
            ))
        });
    if let Some((measured, allowed)) = counts {
        text.push_str(&format!(
            ", {measured} requests where {allowed} are allowed"
        ));
    }
    text
}

/// The assignment and definition of a `RequestDisallowedByPolicy` error: from
/// `additionalInfo[].info` of type `PolicyViolation`, else from the message's "Policy
/// identifiers: '[...]'" list.
fn policy_denial(error: &serde_json::Value) -> PolicyDenial {
    let string = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(info) = field(error, "additionalInfo")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.eq_ignore_ascii_case("PolicyViolation"))
        })
        .find_map(|i| i.get("info"))
    {
        return PolicyDenial {
            assignment: string(info, "policyAssignmentDisplayName")
                .or_else(|| string(info, "policyAssignmentName")),
            assignment_id: string(info, "policyAssignmentId"),
            definition: string(info, "policyDefinitionDisplayName")
                .or_else(|| string(info, "policyDefinitionName")),
        };
    }
    let identifiers = field(error, "message")
        .and_then(|m| m.as_str())
        .and_then(|m| m.split_once("Policy identifiers: '"))
        .and_then(|(_, rest)| rest.rsplit_once('\''))
        .and_then(|(list, _)| serde_json::from_str::<serde_json::Value>(list).ok());
    let first = identifiers
        .as_ref()
        .and_then(|v| v.as_array())
        .and_then(|a| a.first());
    let part = |name: &str| first.and_then(|f| f.get(name));
    PolicyDenial {
        assignment: part("policyAssignment").and_then(|a| string(a, "name")),
        assignment_id: part("policyAssignment").and_then(|a| string(a, "id")),
        definition: part("policyDefinition").and_then(|d| string(d, "name")),
    }
}

fn capitalise(key: &str) -> String {
    let mut chars = key.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// `retry-after-ms`, `x-ms-retry-after-ms`, then `Retry-After` (seconds or an HTTP date).
pub(crate) fn retry_after(headers: &Headers) -> Option<Duration> {
    let get = |name: &'static str| {
        headers.get_optional_string(&azure_core::headers::HeaderName::from_static(name))
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(name).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = humantime::parse_rfc3339_weak(&value)
        .ok()
        .or_else(|| httpdate_to_system_time(&value))?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_to_system_time(value: &str) -> Option<std::time::SystemTime> {
    let at = azure_core::date::parse_rfc1123(value).ok()?;
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Codes that mean Azure has no room: the region, zone or SKU is out of capacity, or a
/// quota would be exceeded.
const CAPACITY_CODES: &[&str] = &[
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "SkuNotAvailable",
    "QuotaExceeded",
    "OperationNotAllowedQuotaExceeded",
];

/// Codes that mean another operation holds the resource, or Azure failed internally.
const TRANSIENT_CODES: &[&str] = &[
    "Conflict",
    "AnotherOperationInProgress",
    "OperationPreempted",
    "ConcurrentRequestConflict",
    "RetryableError",
    "InternalExecutionError",
    "InternalOperationError",
    "InternalServerError",
    "ServiceUnavailable",
    "GatewayTimeout",
    "PreconditionFailed",
];

/// What a failed code (from a response or from a failed long-running operation) means.
fn kind_of_code(code: &str, message: &str) -> Option<CodeKind> {
    let lower = message.to_ascii_lowercase();
    if CAPACITY_CODES.iter().any(|c| c.eq_ignore_ascii_case(code))
        || code.to_ascii_lowercase().ends_with("quotaexceeded")
    {
        return Some(CodeKind::Capacity);
    }
    if code.eq_ignore_ascii_case("OperationNotAllowed") {
        // Compute reports exhausted quota as OperationNotAllowed ("... exceeding approved
        // Total Regional Cores quota"); the same code also names a conflicting operation.
        return Some(if lower.contains("quota") || lower.contains("capacity") {
            CodeKind::Capacity
        } else if lower.contains("in progress") || lower.contains("conflict") {
            CodeKind::Transient
        } else {
            CodeKind::Invalid
        });
    }
    if TRANSIENT_CODES.iter().any(|c| c.eq_ignore_ascii_case(code)) {
        return Some(CodeKind::Transient);
    }
    None
}

enum CodeKind {
    Capacity,
    Transient,
    Invalid,
}

/// The adapter error for an ARM error code reported by a finished operation.
pub(crate) fn operation_failure(code: Option<&str>, message: &str, what: &str) -> AdapterError {
    let text = match code {
        Some(code) => format!("{what} failed in Azure: {code}: {message}"),
        None => format!("{what} failed in Azure: {message}"),
    };
    match code.and_then(|code| kind_of_code(code, message)) {
        Some(CodeKind::Capacity) => AdapterError::capacity(text),
        Some(CodeKind::Invalid) => AdapterError::invalid(text),
        // An operation that failed for a reason Azure does not name may pass.
        Some(CodeKind::Transient) | None => AdapterError::transient(text),
    }
}

/// Maps an error from azure_core or azure_mgmt_compute. `action` is the ARM action the
/// call needed, named in a permission error when Azure's message does not name one.
pub(crate) fn to_adapter_error(error: &azure_core::Error, action: &str) -> AdapterError {
    if let Some(held) = find::<HeldBack>(error) {
        return AdapterError::throttled(Some(held.wait), held.to_string());
    }
    if let Some(failure) = find::<ArmFailure>(error) {
        return from_arm(failure, action);
    }
    if let Some(failure) = find::<CredentialFailure>(error) {
        return from_credential(failure);
    }
    match error.kind() {
        AzureErrorKind::Io => AdapterError::transient(format!(
            "could not reach Azure Resource Manager: {}",
            chain(error)
        )),
        AzureErrorKind::Credential => AdapterError::authentication(chain(error)),
        AzureErrorKind::DataConversion => AdapterError::transient(format!(
            "unexpected answer from Azure Resource Manager: {}",
            chain(error)
        )),
        _ => AdapterError::transient(chain(error)),
    }
}

pub(crate) fn from_credential(failure: &CredentialFailure) -> AdapterError {
    match failure.kind {
        CredentialFailureKind::Refused => AdapterError::authentication(failure.message.clone()),
        CredentialFailureKind::Unreachable => AdapterError::transient(failure.message.clone()),
        CredentialFailureKind::Throttled(retry_after) => {
            AdapterError::throttled(retry_after, failure.message.clone())
        }
    }
}

fn from_arm(failure: &ArmFailure, action: &str) -> AdapterError {
    let code = failure.code.as_deref().unwrap_or("");
    let message = failure.message.as_deref().unwrap_or("");
    match failure.status {
        401 => AdapterError::authentication(format!(
            "Azure Resource Manager refused the access token ({failure}); check that the identity \
             belongs to the subscription's tenant and that authority_host and arm_endpoint name \
             the same cloud"
        )),
        _ if failure.policy.is_some() => policy_denied(failure),
        403 if failure.is_code("LinkedAuthorizationFailed") => {
            let named = action_named_in(message).unwrap_or_else(|| action.to_owned());
            let linked = linked_scope_in(message)
                .map(|scope| format!("linked scope {scope}"))
                .unwrap_or_else(|| "the resource the scale set refers to".to_owned());
            AdapterError::permission(
                named.clone(),
                format!(
                    "{failure}; the identity may change the scale set, but the change refers to \
                     another resource (a subnet, load balancer, application security group or \
                     user-assigned identity of the scale set's model) on which it lacks \
                     `{named}`: grant the identity a role with `{named}` on {linked} (role \
                     assignments can take a few minutes to apply)"
                ),
            )
        }
        403 => {
            let named = action_named_in(message).unwrap_or_else(|| action.to_owned());
            AdapterError::permission(
                named.clone(),
                format!(
                    "{failure}; grant the identity a role with `{named}` on the scale set or its \
                     resource group (role assignments can take a few minutes to apply)"
                ),
            )
        }
        404 => AdapterError::not_found(failure.to_string()),
        429 => AdapterError::throttled(failure.retry_after, failure.to_string()),
        408 | 500..=599 => AdapterError::transient(failure.to_string()),
        // Compute reports throttling as `OperationNotAllowed` with a `TooManyRequests`
        // detail ("Troubleshooting API throttling errors"), the same top code as an
        // exhausted quota: the detail decides, whatever the status.
        _ if failure.has_detail("TooManyRequests") => {
            AdapterError::throttled(failure.retry_after, failure.to_string())
        }
        status => match kind_of_code(code, message) {
            Some(CodeKind::Capacity) => AdapterError::capacity(failure.to_string()),
            Some(CodeKind::Transient) => AdapterError::transient(failure.to_string()),
            Some(CodeKind::Invalid) => AdapterError::invalid(failure.to_string()),
            // 409 is a conflict with another operation unless its code says otherwise;
            // 412 means the scale set changed since it was read.
            None if status == 409 || status == 412 => AdapterError::transient(failure.to_string()),
            None => AdapterError::invalid(failure.to_string()),
        },
    }
}

/// `RequestDisallowedByPolicy`: an Azure Policy assignment (deny effect) refused the
/// request for what it asks, whatever roles the identity holds. Repeating it cannot help
/// and granting a role does not either: invalid, naming the assignment.
fn policy_denied(failure: &ArmFailure) -> AdapterError {
    let policy = failure.policy.clone().unwrap_or_default();
    AdapterError::invalid(format!(
        "Azure Policy denied the request, not a missing role: {policy} refused {} ({failure}); \
         granting roles does not help: change the scale set or the request to comply, or ask \
         the policy's owner for an exemption for this scale set",
        failure.request
    ))
}

/// The action the identity lacks, as ARM's 403 messages name it:
///
/// - `AuthorizationFailed`: "The client 'c' with object id 'o' does not have authorization
///   to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' over scope 's' or
///   the scope is invalid.";
/// - `LinkedAuthorizationFailed`: "The client 'c' with object id 'o' has permission to
///   perform action 'A' on scope 'S'; however, it does not have permission to perform
///   action(s) 'B' on the linked scope(s) 'L' or the linked scope(s) are invalid." (as
///   Azure words it, e.g. "LinkedAuthorizationFailed error" in Microsoft's AKS
///   troubleshooting, learn.microsoft.com/troubleshoot/azure/azure-kubernetes/): the action
///   named after "does not have", not the one the identity holds.
fn action_named_in(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let lacking = lower.find("does not have").unwrap_or(0);
    let at = lacking + lower.get(lacking..)?.find("perform action")?;
    quoted_after(message, at)
}

/// The linked scope a `LinkedAuthorizationFailed` message names.
fn linked_scope_in(message: &str) -> Option<String> {
    let at = message.to_ascii_lowercase().find("linked scope")?;
    quoted_after(message, at)
}

/// The first `'...'` in `text` from byte `at` on.
fn quoted_after(text: &str, at: usize) -> Option<String> {
    let (_, after) = text.get(at..)?.split_once('\'')?;
    let (inside, _) = after.split_once('\'')?;
    (!inside.is_empty()).then(|| inside.to_owned())
}

/// Whether a finished operation's error code says a newer write preempted it: Compute
/// ends an operation on a scale set `Failed` (or `Canceled`) with `OperationPreempted`,
/// "Operation execution has been preempted by a more recent operation.", when another
/// write to the scale set starts (a capacity change, an update, another deletion). The
/// newer write decides the scale set's size.
pub(crate) fn superseded(code: Option<&str>) -> bool {
    code.is_some_and(|code| code.eq_ignore_ascii_case("OperationPreempted"))
}

/// The first error of type `T` in the source chain.
pub(crate) fn find<T: std::error::Error + 'static>(error: &azure_core::Error) -> Option<&T> {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(azure) = current.downcast_ref::<azure_core::Error>()
            && let Some(inner) = azure.get_ref()
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(found) = inner.downcast_ref::<T>() {
                return Some(found);
            }
        }
        current = current.source()?;
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use proptest::prelude::*;

    /// Bodies ARM, Entra ID or a proxy in front of them could send: JSON error shapes
    /// (ARM's "Common error response" and long-running operation status), with odd
    /// types in their fields, and text that is not JSON.
    fn body() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            "[ -~]{0,20}".prop_map(|s| serde_json::Value::String(s).to_string()),
            Just("null".to_string()),
            Just("17".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
        ];
        prop_oneof![
            (field.clone(), field.clone()).prop_map(|(c, m)| format!("{{\"error\":{{\"code\":{c},\"message\":{m}}}}}")),
            (field.clone(), field.clone(), field.clone()).prop_map(|(c, m, d)| format!(
                "{{\"error\":{{\"code\":{c},\"message\":{m},\"details\":[{{\"code\":\"TooManyRequests\",\"message\":{d}}}]}}}}"
            )),
            (field.clone(), field).prop_map(|(c, m)| format!("{{\"status\":\"Failed\",\"error\":{{\"Code\":{c},\"Message\":{m}}}}}")),
            "[ -~]{0,200}",
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        /// Any body and status maps to an error without a panic, and a 5xx or 429 is
        /// always one to retry.
        #[test]
        fn any_arm_answer_maps_without_panic(
            body in body(),
            status in prop::sample::select(vec![200u16, 400, 401, 403, 404, 409, 429, 500, 503]),
            retry_after in prop::option::of(any::<u64>().prop_map(Duration::from_millis)),
        ) {
            let parsed = parse_error_body(body.as_bytes());
            let failure = ArmFailure {
                status,
                code: parsed.code,
                message: parsed.message,
                retry_after,
                request_id: None,
                request: "PATCH virtualMachineScaleSets/web".to_owned(),
                details: parsed.details,
                policy: parsed.policy,
            };
            let e = from_arm(&failure, "Microsoft.Compute/virtualMachineScaleSets/write");
            prop_assert!(!e.to_string().is_empty());
            if status >= 500 || status == 429 {
                prop_assert!(e.is_retryable(), "{status} {body}: {e}");
            }
        }

        /// Any retry-after header value is a wait or none, never a panic.
        #[test]
        fn any_retry_after_header_is_read_without_panic(
            name in prop::sample::select(vec!["retry-after", "retry-after-ms", "x-ms-retry-after-ms"]),
            value in "[0-9]{0,25}|[ -~]{0,40}|Wed, 21 Oct 2015 07:28:00 GMT|Fri, 31 Dec 9999 23:59:59 GMT",
        ) {
            let mut headers = Headers::new();
            headers.insert(name, value);
            let _ = retry_after(&headers);
        }
    }

    fn arm(status: u16, code: &str, message: &str) -> ArmFailure {
        ArmFailure {
            status,
            code: Some(code.to_owned()),
            message: Some(message.to_owned()),
            retry_after: Some(Duration::from_secs(7)),
            request_id: None,
            request: "PATCH virtualMachineScaleSets/web".to_owned(),
            details: Vec::new(),
            policy: None,
        }
    }

    /// An answer as the policy reads it: status, body, `Retry-After`.
    fn answer(status: u16, body: &str, retry_after_secs: Option<u64>) -> ArmFailure {
        let parsed = parse_error_body(body.as_bytes());
        ArmFailure {
            status,
            code: parsed.code,
            message: parsed.message,
            retry_after: retry_after_secs.map(Duration::from_secs),
            request_id: None,
            request: "PATCH virtualMachineScaleSets/web-vmss".to_owned(),
            details: parsed.details,
            policy: parsed.policy,
        }
    }

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        let write = "Microsoft.Compute/virtualMachineScaleSets/write";
        let cases = [
            (
                arm(
                    401,
                    "InvalidAuthenticationToken",
                    "The access token is invalid.",
                ),
                ErrorKind::Authentication,
            ),
            (
                arm(
                    403,
                    "AuthorizationFailed",
                    "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/delete/action' over scope 'z'",
                ),
                ErrorKind::Permission,
            ),
            (
                arm(404, "ResourceNotFound", "not found"),
                ErrorKind::NotFound,
            ),
            (
                arm(429, "TooManyRequests", "slow down"),
                ErrorKind::Throttled,
            ),
            (
                arm(
                    409,
                    "OperationNotAllowed",
                    "Operation could not be completed as it results in exceeding approved standardDSv3Family Cores quota.",
                ),
                ErrorKind::Capacity,
            ),
            (
                arm(
                    409,
                    "OperationNotAllowed",
                    "Another operation is in progress on the scale set.",
                ),
                ErrorKind::Transient,
            ),
            (
                arm(409, "AllocationFailed", "Allocation failed."),
                ErrorKind::Capacity,
            ),
            (
                arm(
                    409,
                    "SkuNotAvailable",
                    "The requested size is not available.",
                ),
                ErrorKind::Capacity,
            ),
            (arm(409, "Conflict", "conflict"), ErrorKind::Transient),
            (arm(412, "PreconditionFailed", "etag"), ErrorKind::Transient),
            (
                arm(
                    400,
                    "NoRegisteredProviderFound",
                    "No registered resource provider found for api version",
                ),
                ErrorKind::Invalid,
            ),
            (
                arm(503, "ServiceUnavailable", "later"),
                ErrorKind::Transient,
            ),
        ];
        for (failure, kind) in cases {
            let mapped = from_arm(&failure, write);
            assert_eq!(mapped.kind(), kind, "{failure}");
        }
        let denied = from_arm(&cases_403(), write);
        assert!(
            matches!(&denied, AdapterError::Permission { action, .. } if action == "Microsoft.Compute/virtualMachineScaleSets/delete/action"),
            "{denied}"
        );
        assert_eq!(
            from_arm(&arm(429, "", ""), write).retry_after(),
            Some(Duration::from_secs(7))
        );
    }

    fn cases_403() -> ArmFailure {
        arm(
            403,
            "AuthorizationFailed",
            "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/delete/action' over scope 'z'",
        )
    }

    #[test]
    fn errors_are_found_through_azure_wrappers() {
        let inner = azure_core::Error::new(
            AzureErrorKind::http_response(azure_core::StatusCode::Forbidden, None),
            arm(403, "AuthorizationFailed", "no"),
        );
        let outer = inner.context("while listing");
        assert!(find::<ArmFailure>(&outer).is_some());
        let mapped = to_adapter_error(&outer, "Microsoft.Compute/virtualMachineScaleSets/read");
        assert!(
            matches!(&mapped, AdapterError::Permission { action, .. } if action == "Microsoft.Compute/virtualMachineScaleSets/read")
        );
    }

    #[test]
    fn error_bodies_are_read() {
        let body = br#"{"error":{"code":"AllocationFailed","message":"Allocation failed.","details":[{"code":"X","message":"No capacity in zone 2."}]}}"#;
        let (code, message) = error_code_and_message(body);
        assert_eq!(code.as_deref(), Some("AllocationFailed"));
        assert_eq!(
            message.as_deref(),
            Some("Allocation failed. (No capacity in zone 2.)")
        );
        assert_eq!(
            operation_failure(code.as_deref(), "x", "grow").kind(),
            ErrorKind::Capacity
        );
        let (code, message) = error_code_and_message(b"<html>bad gateway</html>");
        assert_eq!(code, None);
        assert_eq!(message.as_deref(), Some("<html>bad gateway</html>"));
    }

    #[test]
    fn linked_authorization_failed_names_the_action_the_identity_lacks() {
        let message = "The client '3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f' with object id '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d' has permission to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' on scope '/subscriptions/s/resourceGroups/fleet-rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-vmss'; however, it does not have permission to perform action(s) 'Microsoft.Network/virtualNetworks/subnets/join/action' on the linked scope(s) '/subscriptions/s/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/web' or the linked scope(s) are invalid.";
        let mapped = from_arm(
            &arm(403, "LinkedAuthorizationFailed", message),
            "Microsoft.Compute/virtualMachineScaleSets/write",
        );
        match &mapped {
            AdapterError::Permission { action, message } => {
                assert_eq!(
                    action,
                    "Microsoft.Network/virtualNetworks/subnets/join/action"
                );
                assert!(
                    message.contains(
                        "on linked scope /subscriptions/s/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/web"
                    ),
                    "{message}"
                );
            }
            other => panic!("expected a permission error, got {other}"),
        }
        // AuthorizationFailed names one action, the one lacking.
        assert_eq!(
            action_named_in(
                "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/read' over scope 'z' or the scope is invalid."
            )
            .as_deref(),
            Some("Microsoft.Compute/virtualMachineScaleSets/read")
        );
        assert_eq!(action_named_in("no quotes here"), None);
    }

    #[test]
    fn a_policy_denial_is_not_a_missing_role() {
        // As ARM answers a direct request: the assignment in additionalInfo.
        let body = r#"{"error":{"code":"RequestDisallowedByPolicy","target":"web-vmss","message":"Resource 'web-vmss' was disallowed by policy. Policy identifiers: '[{\"policyAssignment\":{\"name\":\"Allowed VM sizes\",\"id\":\"/subscriptions/s/providers/Microsoft.Authorization/policyAssignments/allowed-sizes\"},\"policyDefinition\":{\"name\":\"Allowed virtual machine size SKUs\",\"id\":\"/providers/Microsoft.Authorization/policyDefinitions/cccc23c7-8427-4f53-ad12-b6a63eb452b3\"}}]'.","additionalInfo":[{"type":"PolicyViolation","info":{"policyDefinitionDisplayName":"Allowed virtual machine size SKUs","policyDefinitionEffect":"deny","policyAssignmentId":"/subscriptions/s/providers/Microsoft.Authorization/policyAssignments/allowed-sizes","policyAssignmentName":"allowed-sizes","policyAssignmentDisplayName":"Allowed VM sizes"}}]}}"#;
        let mapped = from_arm(
            &answer(403, body, None),
            "Microsoft.Compute/virtualMachineScaleSets/write",
        );
        assert_eq!(mapped.kind(), ErrorKind::Invalid, "{mapped}");
        assert!(!mapped.is_retryable());
        let text = mapped.to_string();
        for expected in [
            "Azure Policy denied the request, not a missing role",
            "policy assignment 'Allowed VM sizes' (/subscriptions/s/providers/Microsoft.Authorization/policyAssignments/allowed-sizes)",
            "policy 'Allowed virtual machine size SKUs'",
            "RequestDisallowedByPolicy",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in {text}");
        }
        // Without additionalInfo, the message's policy identifiers name it.
        let body = r#"{"error":{"code":"RequestDisallowedByPolicy","message":"Resource 'web-vmss' was disallowed by policy. Policy identifiers: '[{\"policyAssignment\":{\"name\":\"Require a cost-centre tag\",\"id\":\"/subscriptions/s/providers/Microsoft.Authorization/policyAssignments/tags\"},\"policyDefinition\":{\"name\":\"Require a tag on resources\",\"id\":\"/providers/Microsoft.Authorization/policyDefinitions/871b6d14\"}}]'."}}"#;
        let parsed = parse_error_body(body.as_bytes());
        assert_eq!(
            parsed.policy,
            Some(PolicyDenial {
                assignment: Some("Require a cost-centre tag".to_owned()),
                assignment_id: Some(
                    "/subscriptions/s/providers/Microsoft.Authorization/policyAssignments/tags"
                        .to_owned()
                ),
                definition: Some("Require a tag on resources".to_owned()),
            })
        );
    }

    /// Compute's throttled answer, as "Troubleshooting API throttling errors" shows it.
    const COMPUTE_THROTTLED: &str = r#"{"error":{"code":"OperationNotAllowed","message":"The server rejected the request because too many requests have been received for this subscription.","details":[{"code":"TooManyRequests","target":"HighCostGet30Min","message":"{\"operationGroup\":\"HighCostGet30Min\",\"startTime\":\"2018-06-29T19:54:21.0914017+00:00\",\"endTime\":\"2018-06-29T20:14:21.0914017+00:00\",\"allowedRequestCount\":800,\"measuredRequestCount\":1238}"}]}}"#;

    #[test]
    fn compute_throttling_is_known_by_its_details_not_its_top_code() {
        let write = "Microsoft.Compute/virtualMachineScaleSets/write";
        let throttled = from_arm(&answer(429, COMPUTE_THROTTLED, Some(1200)), write);
        assert_eq!(throttled.kind(), ErrorKind::Throttled);
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(1200)));
        assert!(
            throttled.to_string().contains(
                "TooManyRequests: policy HighCostGet30Min, 1238 requests where 800 are allowed"
            ),
            "{throttled}"
        );
        // The same body with 409 is throttling too; without the detail it is not.
        let as_conflict = from_arm(&answer(409, COMPUTE_THROTTLED, Some(60)), write);
        assert_eq!(as_conflict.kind(), ErrorKind::Throttled, "{as_conflict}");
        assert_eq!(as_conflict.retry_after(), Some(Duration::from_secs(60)));
        let quota = r#"{"error":{"code":"OperationNotAllowed","message":"Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota."}}"#;
        assert_eq!(
            from_arm(&answer(409, quota, None), write).kind(),
            ErrorKind::Capacity
        );
        // Without the `error` wrapper, as the page prints it.
        let bare = parse_error_body(
            br#"{"code":"OperationNotAllowed","message":"too many","details":[{"code":"TooManyRequests","target":"VMScaleSetActions3Min"}]}"#,
        );
        assert_eq!(
            bare.details,
            [ErrorDetail {
                code: "TooManyRequests".to_owned(),
                target: Some("VMScaleSetActions3Min".to_owned()),
            }]
        );
    }

    #[test]
    fn remaining_counts_and_windows_are_read() {
        let mut headers = Headers::new();
        headers.insert(
            "x-ms-ratelimit-remaining-resource",
            "Microsoft.Compute/HighCostGetVMScaleSet3Min;107, Microsoft.Compute/HighCostGetVMScaleSet30Min;827,garbage,;4,x;y",
        );
        headers.insert("x-ms-ratelimit-remaining-subscription-reads", "11999");
        assert_eq!(
            remaining_resource(&headers),
            [
                (
                    "Microsoft.Compute/HighCostGetVMScaleSet3Min".to_owned(),
                    107
                ),
                (
                    "Microsoft.Compute/HighCostGetVMScaleSet30Min".to_owned(),
                    827
                ),
            ]
        );
        assert_eq!(
            remaining_subscription(&headers),
            [(SUBSCRIPTION_READS.to_owned(), 11999)]
        );
        assert_eq!(
            window_of("Microsoft.Compute/HighCostGet30Min"),
            Duration::from_secs(1800)
        );
        assert_eq!(
            window_of("Microsoft.Compute/VMScaleSetBatchedVMRequests5Min"),
            Duration::from_secs(300)
        );
        assert_eq!(
            window_of("Microsoft.Compute/VmssQueuedVMOperations"),
            COMPUTE_WINDOW
        );
        assert_eq!(window_of("Min"), COMPUTE_WINDOW);
        assert_eq!(window_of(""), COMPUTE_WINDOW);
        assert_eq!(window_of("X99999999999999999999Min"), COMPUTE_WINDOW);
        assert_eq!(window_of("X999999999Hour"), MAX_HOLD);
    }

    fn rate_headers(resource: &str) -> Headers {
        let mut headers = Headers::new();
        headers.insert("x-ms-ratelimit-remaining-resource", resource.to_owned());
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_budget_holds_its_requests_for_retry_after() {
        let pacer = Pacer::default();
        let path = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-vmss";
        let list = Sent::new(&Method::Get, &format!("{path}/virtualMachines"));
        let get = Sent::new(&Method::Get, path);
        let patch = Sent::new(&Method::Patch, path);
        pacer.observe(
            &get,
            200,
            &rate_headers("Microsoft.Compute/GetVMScaleSet3Min;35"),
            None,
            None,
        );
        // The list is throttled by its policy, named by the detail, for 1,200 s.
        pacer.observe(
            &list,
            429,
            &rate_headers("Microsoft.Compute/HighCostGetVMScaleSet3Min;0"),
            Some("HighCostGetVMScaleSet3Min"),
            Some(Duration::from_secs(1200)),
        );
        let held = pacer.held(&list).expect("the list is held");
        assert_eq!(held.budget, "HighCostGetVMScaleSet3Min");
        assert_eq!(held.wait, Duration::from_secs(1200));
        assert!(held.to_string().contains("was not sent"), "{held}");
        // Requests counted in other budgets go on.
        assert!(pacer.held(&get).is_none());
        assert!(pacer.held(&patch).is_none());
        tokio::time::advance(Duration::from_secs(1199)).await;
        assert_eq!(
            pacer.held(&list).map(|h| h.wait),
            Some(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pacer.held(&list).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_holds_for_its_window_and_arm_budgets_for_a_second() {
        let pacer = Pacer::default();
        let path = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-vmss";
        let patch = Sent::new(&Method::Patch, path);
        let delete = Sent::new(&Method::Post, &format!("{path}/delete"));
        pacer.observe(
            &delete,
            202,
            &rate_headers("Microsoft.Compute/VMScaleSetActions3Min;5"),
            None,
            None,
        );
        // The write takes the last of the budget: the next write, and the deletion that
        // counts against the same policy, wait for its window, at most a minute (a 429's
        // Retry-After says if it is longer).
        pacer.observe(
            &patch,
            202,
            &rate_headers(
                "Microsoft.Compute/VMScaleSetActions3Min;0,Microsoft.Compute/VMScaleSetActions30Min;587",
            ),
            None,
            None,
        );
        assert_eq!(
            pacer.held(&patch).map(|h| h.wait),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            pacer.held(&delete).map(|h| h.budget),
            Some("Microsoft.Compute/VMScaleSetActions3Min".to_owned())
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(pacer.held(&patch).is_none());
        // A spent half-hour budget holds a minute too, not half an hour.
        pacer.observe(
            &patch,
            202,
            &rate_headers("Microsoft.Compute/VMScaleSetActions30Min;0"),
            None,
            None,
        );
        assert_eq!(
            pacer.held(&patch).map(|h| h.wait),
            Some(Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(pacer.held(&patch).is_none());

        // Resource Manager's own: every read waits for its refill.
        let operation = Sent::new(
            &Method::Get,
            "/subscriptions/s/providers/Microsoft.Compute/locations/westeurope/operations/1",
        );
        let mut headers = Headers::new();
        headers.insert("x-ms-ratelimit-remaining-subscription-reads", "0");
        pacer.observe(&operation, 200, &headers, None, None);
        let other_operation = Sent::new(
            &Method::Get,
            "/subscriptions/s/providers/Microsoft.Compute/locations/westeurope/operations/2",
        );
        assert_eq!(
            pacer.held(&other_operation).map(|h| h.wait),
            Some(ARM_REFILL)
        );
        assert!(pacer.held(&patch).is_none());

        // A 429 naming no budget holds Resource Manager's for its kind, here writes.
        pacer.observe(
            &patch,
            429,
            &Headers::new(),
            None,
            Some(Duration::from_secs(9)),
        );
        assert_eq!(
            pacer.held(&delete).map(|h| (h.budget, h.wait)),
            Some((SUBSCRIPTION_WRITES.to_owned(), Duration::from_secs(9)))
        );
        // A retry-after beyond any reason is held a day, without overflow.
        pacer.observe(&patch, 429, &Headers::new(), None, Some(Duration::MAX));
        assert_eq!(pacer.held(&patch).map(|h| h.wait), Some(MAX_HOLD));
    }

    #[test]
    fn held_requests_are_throttled_with_the_remaining_wait() {
        let held = HeldBack {
            request: "PATCH virtualMachineScaleSets/web-vmss".to_owned(),
            budget: "Microsoft.Compute/VMScaleSetActions3Min".to_owned(),
            wait: Duration::from_millis(1_500),
            why: "none left after PATCH virtualMachineScaleSets/web-vmss".to_owned(),
        };
        let error = azure_core::Error::new(AzureErrorKind::Other, held);
        let mapped = to_adapter_error(&error, "Microsoft.Compute/virtualMachineScaleSets/write");
        assert_eq!(mapped.kind(), ErrorKind::Throttled);
        assert_eq!(mapped.retry_after(), Some(Duration::from_millis(1_500)));
        assert!(mapped.to_string().contains("sent again in 2s"), "{mapped}");
    }

    #[test]
    fn a_preempted_operation_is_superseded_not_failed() {
        assert!(superseded(Some("OperationPreempted")));
        assert!(superseded(Some("operationpreempted")));
        assert!(!superseded(Some("AllocationFailed")));
        assert!(!superseded(None));
    }
}
