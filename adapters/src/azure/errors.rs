//! Azure's failures, read once where they happen and mapped to the adapter's kinds.
//!
//! Resource Manager answers with a status and a body `{"error": {"code", "message"}}`;
//! azure_core keeps the status and code but drops `Retry-After`, so [`ArmErrorPolicy`]
//! reads every unsuccessful response itself. Token failures are classified by
//! [`super::credential`] into [`CredentialFailure`]. [`to_adapter_error`] turns either
//! into an [`AdapterError`], deciding on status and code, never on wording alone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::ErrorKind as AzureErrorKind;
use azure_core::headers::Headers;
use azure_core::{Context, Policy, PolicyResult, Request};

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
/// headers azure_core would drop. Placed after azure_core's retry policy (which is off:
/// retrying is the `Retry` decorator's job), just before the transport.
#[derive(Debug, Default)]
pub(crate) struct ArmErrorPolicy;

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
        let response = transport.send(ctx, request, rest).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await.unwrap_or_default();
        let (code, message) = error_code_and_message(&body);
        let failure = ArmFailure {
            status: status as u16,
            code: code.clone(),
            message,
            retry_after: retry_after(&headers),
            request_id: headers
                .get_optional_string(&azure_core::headers::HeaderName::from_static(
                    "x-ms-request-id",
                ))
                .or_else(|| {
                    headers.get_optional_string(&azure_core::headers::HeaderName::from_static(
                        "x-ms-correlation-request-id",
                    ))
                }),
            request: describe_request(request),
        };
        Err(azure_core::Error::new(
            AzureErrorKind::http_response(status, code),
            failure,
        ))
    }
}

/// `GET virtualMachineScaleSets/web-vmss/virtualMachines`: the method and the path from the
/// provider on, without the subscription or query.
fn describe_request(request: &Request) -> String {
    let path = request.url().path();
    let short = path
        .find("/providers/")
        .map(|at| &path[at + "/providers/".len()..])
        .map(|rest| rest.strip_prefix("Microsoft.Compute/").unwrap_or(rest))
        .unwrap_or(path);
    format!("{} {}", request.method(), short)
}

/// The code and message of an ARM error body (`{"error": {"code", "message"}}`), or of an
/// operation status (`{"status": "Failed", "error": {...}}`).
pub(crate) fn error_code_and_message(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect::<String>();
        return (None, (!text.is_empty()).then_some(text));
    };
    let error = value.get("error").unwrap_or(&value);
    let text = |key: &str| {
        error
            .get(key)
            .or_else(|| error.get(capitalise(key)))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut message = text("message");
    // Deployment-style errors nest the useful part one level down.
    if let Some(detail) = error
        .get("details")
        .and_then(|d| d.as_array())
        .and_then(|d| d.first())
        && let Some(inner) = detail.get("message").and_then(|m| m.as_str())
        && message.as_deref() != Some(inner)
    {
        message = Some(match message {
            Some(outer) => format!("{outer} ({inner})"),
            None => inner.to_owned(),
        });
    }
    (text("code"), message)
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

/// The action in ARM's AuthorizationFailed message: "... does not have authorization to
/// perform action 'Microsoft.Compute/virtualMachineScaleSets/write' over scope ...".
fn action_named_in(message: &str) -> Option<String> {
    let after = message.split("perform action '").nth(1)?;
    let action = after.split('\'').next()?;
    (!action.is_empty()).then(|| action.to_owned())
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
            let (code, message) = error_code_and_message(body.as_bytes());
            let failure = ArmFailure {
                status,
                code,
                message,
                retry_after,
                request_id: None,
                request: "PATCH virtualMachineScaleSets/web".to_owned(),
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
}
