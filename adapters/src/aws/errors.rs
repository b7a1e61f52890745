//! EC2 and STS errors mapped to the adapter's kinds.
//!
//! The kind is decided on the error's code (or the failure's type), never on a message.
//! Authentication failures get a message of our own that tells an operator what to
//! check; the provider's text is left out of them, so nothing about the credentials
//! ever reaches a log.

use std::error::Error as StdError;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::AdapterError;

/// The error codes EC2 (and the AWS SDKs' own retry classifiers) use for throttling.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Quotas and the provider's capacity: the controller backs off and reports them.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientAddressCapacity",
    "MaxSpotInstanceCountExceeded",
    "VolumeLimitExceeded",
    "MaxIOPSLimitExceeded",
    "AddressLimitExceeded",
    "NetworkInterfaceLimitExceeded",
];

/// The identity is known but may not perform the action. EC2 says
/// `UnauthorizedOperation`; most other services (and the emulator) say `AccessDenied`.
const PERMISSION: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];

/// Failures that may pass if the same call is made again.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestResourceCountExceeded",
    "IncorrectInstanceState",
    "IncorrectState",
];

/// Map any SDK error of an EC2 or STS call. `action` is the IAM action of the call
/// (`ec2:RunInstances`), named in permission errors.
pub(crate) fn from_sdk<E>(action: &str, err: SdkError<E, HttpResponse>) -> AdapterError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            // An answer in a slightly different XML shape (some endpoints and
            // emulators nest <Errors>) leaves the SDK without a code: read it directly.
            let code = err
                .code()
                .map(str::to_owned)
                .or_else(|| xml_element(raw, "Code"))
                .unwrap_or_default();
            let message = err
                .message()
                .map(str::to_owned)
                .or_else(|| xml_element(raw, "Message"))
                .unwrap_or_default();
            from_code(
                action,
                &code,
                &message,
                raw.status_code(),
                raw.retry_after(),
            )
        }
        SdkError::TimeoutError(_) => {
            AdapterError::transient(format!("{action} timed out before AWS answered"))
        }
        SdkError::DispatchFailure(failure) => {
            if let Some(problem) = credentials_problem(&err) {
                return problem;
            }
            if failure.is_timeout() {
                AdapterError::transient(format!("{action}: the connection to AWS timed out"))
            } else if failure.is_io() {
                AdapterError::transient(format!(
                    "{action}: could not reach the AWS endpoint ({})",
                    source_chain(&err)
                ))
            } else {
                AdapterError::transient(format!(
                    "{action}: request not sent ({})",
                    source_chain(&err)
                ))
            }
        }
        SdkError::ResponseError(response) => {
            let status = response.raw().status_code();
            if status >= 500 || status == 0 {
                AdapterError::transient(format!(
                    "{action}: unreadable answer from AWS (HTTP {status})"
                ))
            } else {
                AdapterError::invalid(format!(
                    "{action}: unreadable answer from AWS (HTTP {status}): {}",
                    source_chain(&err)
                ))
            }
        }
        SdkError::ConstructionFailure(_) => credentials_problem(&err).unwrap_or_else(|| {
            AdapterError::invalid(format!(
                "{action}: could not build the request ({})",
                source_chain(&err)
            ))
        }),
        _ => AdapterError::transient(format!("{action}: {}", source_chain(&err))),
    }
}

/// Map an AWS error code. Exposed for the mapping table's tests.
pub(crate) fn from_code(
    action: &str,
    code: &str,
    message: &str,
    status: u16,
    retry_after: Option<Duration>,
) -> AdapterError {
    let detail = if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    };
    if THROTTLING.contains(&code) {
        return AdapterError::throttled(retry_after, format!("{action}: {detail}"));
    }
    if CAPACITY.contains(&code) {
        return AdapterError::capacity(format!("{action}: {detail}"));
    }
    if PERMISSION.contains(&code) {
        return AdapterError::permission(action, detail);
    }
    if let Some(explanation) = authentication_explanation(code) {
        return AdapterError::authentication(format!("{explanation} ({code}, calling {action})"));
    }
    if TRANSIENT.contains(&code) {
        return AdapterError::transient(format!("{action}: {detail}"));
    }
    if code == "IdempotentParameterMismatch" {
        // A launch with this ClientToken was made with other parameters: it stands, and
        // its instances show in a later read, which the next decision starts from.
        return AdapterError::conflict(format!("{action}: {detail}"));
    }
    if code.ends_with(".NotFound")
        || code.ends_with("NotFoundException")
        || code.ends_with("NotFound")
    {
        return AdapterError::not_found(format!("{action}: {detail}"));
    }
    if status >= 500 {
        return AdapterError::transient(format!("{action}: HTTP {status}: {detail}"));
    }
    if code.is_empty() && (status == 401 || (status == 403 && action == "sts:GetCallerIdentity")) {
        // GetCallerIdentity needs no permission: a refusal is about the credentials.
        return AdapterError::authentication(format!(
            "AWS refused the credentials (HTTP {status}, calling {action}): check the access key id and the secret access key the agent uses"
        ));
    }
    if code.is_empty() && status == 403 {
        return AdapterError::permission(action, format!("HTTP 403: {message}"));
    }
    if code.is_empty() {
        return AdapterError::invalid(format!("{action}: HTTP {status} without an error code"));
    }
    AdapterError::invalid(format!("{action}: {detail}"))
}

/// What an operator should check, for the codes that mean the credentials themselves
/// were refused. AWS's own text is dropped: it may quote the request's signing data.
fn authentication_explanation(code: &str) -> Option<&'static str> {
    Some(match code {
        "AuthFailure" => {
            "AWS could not validate the credentials: check the access key id and the secret access key the agent uses"
        }
        "InvalidClientTokenId" | "InvalidAccessKeyId" | "UnrecognizedClientException" => {
            "AWS does not know the access key id: it may be deleted, deactivated, mistyped, or from another account or partition"
        }
        "SignatureDoesNotMatch" => {
            "the request signature does not match: the secret access key does not belong to the access key id (or the system clock is far off)"
        }
        "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException" => {
            "the request was not signed with usable credentials: check the credentials the agent uses"
        }
        "ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired" => {
            "the session credentials have expired: renew them (aws sso login, a fresh assumed role or web identity token)"
        }
        "RequestExpired" | "InvalidSignatureException" => {
            "AWS refused the request's timestamp: check that the system clock is right"
        }
        _ => return None,
    })
}

/// Missing or unloadable credentials: the default chain found nothing, a profile is
/// broken, an SSO session expired. Found by type anywhere in the error's sources.
fn credentials_problem(err: &(dyn StdError + 'static)) -> Option<AdapterError> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(credentials) = current.downcast_ref::<CredentialsError>() {
            return Some(from_credentials_error(credentials));
        }
        source = current.source();
    }
    None
}

/// Map a failure of the credentials chain.
pub(crate) fn from_credentials_error(err: &CredentialsError) -> AdapterError {
    let what = match err {
        CredentialsError::CredentialsNotLoaded(_) => {
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile (AWS_PROFILE or the fleet's `profile`), log in with `aws sso login`, or run with an instance role or web identity"
        }
        CredentialsError::ProviderTimedOut(_) => {
            "the AWS credentials provider timed out (instance metadata or an SSO/STS endpoint did not answer)"
        }
        CredentialsError::InvalidConfiguration(_) => {
            "the AWS credentials configuration is invalid (check the profile in the shared config and credentials files)"
        }
        _ => "the AWS credentials provider failed",
    };
    // The chain's own explanation names providers and files, never secret values.
    AdapterError::authentication(format!("{what}: {}", source_chain(err)))
}

/// The error and its sources on one line.
fn source_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}

/// The text of the first `<name>` element of an XML error body.
fn xml_element(raw: &HttpResponse, name: &str) -> Option<String> {
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_owned()).filter(|s| !s.is_empty())
}

/// The little we need from a raw HTTP response.
trait HttpStatus {
    fn status_code(&self) -> u16;
    fn retry_after(&self) -> Option<Duration>;
}

impl HttpStatus for HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }

    fn retry_after(&self) -> Option<Duration> {
        let header = |name: &str| self.headers().get(name).map(str::trim);
        if let Some(millis) = header("x-amz-retry-after").and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(millis));
        }
        header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use proptest::prelude::*;

    proptest! {
        /// Any code, message, status and retry-after EC2 or STS could answer maps to an
        /// error that names the action, without a panic; a 5xx is never taken for a
        /// refusal.
        #[test]
        fn any_error_answer_maps_without_panic(
            code in "[A-Za-z.]{0,30}|RequestLimitExceeded|InsufficientInstanceCapacity|UnauthorizedOperation|AuthFailure|IdempotentParameterMismatch|InvalidInstanceID.NotFound",
            message in "[ -~]{0,80}",
            status in prop::sample::select(vec![0u16, 200, 400, 401, 403, 404, 429, 500, 503, 599]),
            retry_after in prop::option::of(any::<u64>().prop_map(Duration::from_millis)),
        ) {
            let e = from_code("ec2:RunInstances", &code, &message, status, retry_after);
            prop_assert!(!e.to_string().is_empty());
            if status >= 500 && code.is_empty() {
                prop_assert!(e.is_retryable(), "{e}");
            }
        }
    }

    fn kind(code: &str, status: u16) -> ErrorKind {
        from_code("ec2:RunInstances", code, "message from AWS", status, None).kind()
    }

    #[test]
    fn codes_map_to_kinds() {
        for code in ["RequestLimitExceeded", "Throttling", "ThrottlingException"] {
            assert_eq!(kind(code, 503), ErrorKind::Throttled, "{code}");
        }
        for code in [
            "InsufficientInstanceCapacity",
            "InstanceLimitExceeded",
            "VcpuLimitExceeded",
        ] {
            assert_eq!(kind(code, 400), ErrorKind::Capacity, "{code}");
        }
        for code in ["UnauthorizedOperation", "AccessDenied"] {
            assert_eq!(kind(code, 403), ErrorKind::Permission, "{code}");
        }
        for code in [
            "AuthFailure",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "RequestExpired",
        ] {
            assert_eq!(kind(code, 403), ErrorKind::Authentication, "{code}");
        }
        for code in [
            "InvalidInstanceID.NotFound",
            "InvalidLaunchTemplateName.NotFoundException",
            "InvalidSubnetID.NotFound",
        ] {
            assert_eq!(kind(code, 400), ErrorKind::NotFound, "{code}");
        }
        assert_eq!(
            kind("IdempotentParameterMismatch", 400),
            ErrorKind::Conflict
        );
        assert_eq!(kind("InternalError", 500), ErrorKind::Transient);
        assert_eq!(kind("SomethingNew", 503), ErrorKind::Transient);
        assert_eq!(kind("InvalidInstanceID.Malformed", 400), ErrorKind::Invalid);
        assert_eq!(kind("InvalidParameterValue", 400), ErrorKind::Invalid);
        assert_eq!(kind("", 400), ErrorKind::Invalid);
    }

    #[test]
    fn permission_names_the_action_and_throttle_keeps_retry_after() {
        let err = from_code(
            "ec2:TerminateInstances",
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
            403,
            None,
        );
        match &err {
            AdapterError::Permission { action, .. } => assert_eq!(action, "ec2:TerminateInstances"),
            other => panic!("expected a permission error, got {other:?}"),
        }
        assert!(err.to_string().contains("ec2:TerminateInstances"), "{err}");

        let err = from_code(
            "ec2:DescribeInstances",
            "RequestLimitExceeded",
            "Request limit exceeded.",
            503,
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert!(err.is_retryable());
    }

    #[test]
    fn authentication_messages_leave_out_the_providers_text() {
        let secret_echo =
            "The Canonical String for this request should have been AKIA… wJalrXUtnFEMI";
        let err = from_code(
            "sts:GetCallerIdentity",
            "SignatureDoesNotMatch",
            secret_echo,
            403,
            None,
        );
        let text = err.to_string();
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(text.contains("secret access key"), "{text}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn errors_without_a_code_map_by_status() {
        assert_eq!(kind("", 401), ErrorKind::Authentication);
        let sts = from_code("sts:GetCallerIdentity", "", "", 403, None);
        assert_eq!(sts.kind(), ErrorKind::Authentication);
        assert_eq!(kind("", 403), ErrorKind::Permission);
        assert_eq!(kind("", 502), ErrorKind::Transient);
    }

    #[test]
    fn missing_credentials_tell_how_to_provide_them() {
        let err = from_credentials_error(&CredentialsError::not_loaded_no_source());
        assert_eq!(err.kind(), ErrorKind::Authentication);
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
        assert!(err.to_string().contains("aws sso login"), "{err}");
    }
}
