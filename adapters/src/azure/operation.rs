//! Resource Manager's long-running operations, followed to their end.
//!
//! A capacity change or a deletion is accepted with 200, 201 or 202 and a URL to poll:
//! `Azure-AsyncOperation` (a status document `{"status": "InProgress" | "Succeeded" |
//! "Failed" | "Canceled", "error": {...}}`) or `Location` (202 until done, then 200 or
//! 204). The generated azure_mgmt_compute code re-sends the request instead of polling,
//! so the adapter polls itself, honouring `Retry-After`, until the operation ends or its
//! deadline passes.

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::headers::{HeaderName, Headers};
use azure_core::{Context, Method, Pipeline, Request, Url};
use tokio::time::Instant;

use super::errors::{
    error_code_and_message, operation_failure, retry_after, superseded, to_adapter_error,
};
use super::permissions::TRACK_OPERATIONS;
use crate::AdapterError;

/// Raw authenticated GETs through the same pipeline (and error policy) as the clients.
#[derive(Clone)]
pub(crate) struct ArmHttp {
    pub pipeline: Pipeline,
    pub credential: Arc<dyn TokenCredential>,
    pub scopes: Vec<String>,
}

/// A successful answer: status, headers and body.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl ArmHttp {
    pub(crate) async fn get(&self, url: Url) -> azure_core::Result<Answer> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = self.credential.get_token(&scopes).await?;
        let mut request = Request::new(url, Method::Get);
        request.insert_header("authorization", format!("Bearer {}", token.token.secret()));
        let response = self.pipeline.send(&Context::new(), &mut request).await?;
        let (status, headers, body) = response.deconstruct();
        Ok(Answer {
            status: status as u16,
            headers,
            body: body.collect().await?.to_vec(),
        })
    }
}

/// Where to learn how an accepted request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Finished when accepted.
    Done,
    /// `Azure-AsyncOperation`: a status document to poll.
    StatusDocument {
        url: Url,
        first_wait: Option<Duration>,
    },
    /// `Location`: 202 until the operation ends.
    Location {
        url: Url,
        first_wait: Option<Duration>,
    },
}

impl Operation {
    /// Reads the headers of the answer that accepted a request.
    pub(crate) fn from_acceptance(status: u16, headers: &Headers) -> Operation {
        let url = |name: &'static str| {
            headers
                .get_optional_string(&HeaderName::from_static(name))
                .and_then(|v| Url::parse(&v).ok())
        };
        let first_wait = retry_after(headers);
        if let Some(url) = url("azure-asyncoperation") {
            Operation::StatusDocument { url, first_wait }
        } else if let (Some(url), 202) = (url("location"), status) {
            Operation::Location { url, first_wait }
        } else {
            Operation::Done
        }
    }

    pub(crate) fn url(&self) -> Option<&Url> {
        match self {
            Operation::Done => None,
            Operation::StatusDocument { url, .. } | Operation::Location { url, .. } => Some(url),
        }
    }
}

/// How an operation is followed.
pub(crate) struct Follow<'a> {
    pub http: &'a ArmHttp,
    pub poll_interval: Duration,
    pub timeout: Duration,
    /// "changing the capacity of scale set web to 5", for messages.
    pub what: &'a str,
    /// The action whose permission a failed poll would lack.
    pub action: &'a str,
    /// The resource the operation changes (its URL with `api-version`): followed by its
    /// `provisioningState` when the operation's status may not be read.
    pub resource: Option<Url>,
}

/// How following an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Azure reports the operation succeeded.
    Succeeded,
    /// The timeout passed first. The operation goes on in Azure: instances it creates
    /// read as pending, instances it deletes as stopping, until it ends.
    StillRunning,
    /// A newer write to the scale set preempted it: Compute ended it `Failed` or
    /// `Canceled` with `OperationPreempted`. Not a failed call: the newer write decides
    /// the scale set's size, and the controller's next read sees it.
    Superseded,
}

impl Follow<'_> {
    /// Polls until the operation ends or the timeout passes: its mapped error when it
    /// failed. Transient and throttled poll failures are waited out until the deadline; a
    /// slow operation is not a failed call (Azure often takes minutes to boot VMs).
    pub(crate) async fn run(&self, operation: &Operation) -> Result<Ended, AdapterError> {
        let (url, mut wait) = match operation {
            Operation::Done => return Ok(Ended::Succeeded),
            Operation::StatusDocument { url, first_wait }
            | Operation::Location { url, first_wait } => {
                (url.clone(), first_wait.unwrap_or(self.poll_interval))
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut polls = 0u32;
        loop {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    operation = %url,
                    polls,
                    "{} had not finished after {}; it goes on in Azure",
                    self.what,
                    humantime::format_duration(self.timeout)
                );
                return Ok(Ended::StillRunning);
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            polls += 1;
            let answer = match self.http.get(url.clone()).await {
                Ok(answer) => answer,
                Err(error) => {
                    let mapped = to_adapter_error(&error, self.action);
                    if mapped.kind() == crate::ErrorKind::Permission
                        && let Some(resource) = &self.resource
                    {
                        tracing::warn!(
                            operation = %url, error = %mapped,
                            "cannot read the status of {}: following the scale set's provisioning state instead; grant {TRACK_OPERATIONS} on the resource group to follow operations",
                            self.what
                        );
                        return self.follow_resource(resource, deadline).await;
                    }
                    if !mapped.is_retryable() {
                        return Err(mapped);
                    }
                    tracing::debug!(operation = %url, error = %mapped, "operation poll failed; polling on");
                    wait = mapped.retry_after().unwrap_or(self.poll_interval);
                    continue;
                }
            };
            wait = retry_after(&answer.headers).unwrap_or(self.poll_interval);
            match operation {
                Operation::Location { .. } => {
                    if answer.status != 202 {
                        return Ok(Ended::Succeeded);
                    }
                }
                _ => {
                    let status: serde_json::Value =
                        serde_json::from_slice(&answer.body).unwrap_or_default();
                    match status.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                        s if s.eq_ignore_ascii_case("Succeeded") => return Ok(Ended::Succeeded),
                        s if s.eq_ignore_ascii_case("Failed")
                            || s.eq_ignore_ascii_case("Canceled") =>
                        {
                            let (code, message) = error_code_and_message(&answer.body);
                            let message =
                                message.unwrap_or_else(|| format!("the operation ended {s}"));
                            if superseded(code.as_deref()) {
                                tracing::info!(
                                    operation = %url,
                                    "{} was superseded by a newer write to the scale set ({message}); the next read shows the size it set",
                                    self.what
                                );
                                return Ok(Ended::Superseded);
                            }
                            return Err(operation_failure(code.as_deref(), &message, self.what));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl Follow<'_> {
    /// Polls the resource until its `provisioningState` leaves `Updating` (or any state
    /// other than `Succeeded` and `Failed`), or the deadline passes. Resource Manager's
    /// documented fallback: "If no value is returned for provisioningState, the operation
    /// finished and succeeded" ("Track asynchronous Azure operations").
    async fn follow_resource(
        &self,
        resource: &Url,
        deadline: Instant,
    ) -> Result<Ended, AdapterError> {
        let mut wait = self.poll_interval;
        loop {
            let answer = match self.http.get(resource.clone()).await {
                Ok(answer) => answer,
                Err(error) => {
                    let mapped = to_adapter_error(&error, super::permissions::READ);
                    if !mapped.is_retryable() {
                        return Err(mapped);
                    }
                    wait = mapped.retry_after().unwrap_or(self.poll_interval);
                    Answer {
                        status: 0,
                        headers: Headers::new(),
                        body: Vec::new(),
                    }
                }
            };
            if answer.status != 0 {
                let body: serde_json::Value =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                let state = body
                    .pointer("/properties/provisioningState")
                    .and_then(|s| s.as_str());
                match state {
                    None => return Ok(Ended::Succeeded),
                    Some(s) if s.eq_ignore_ascii_case("Succeeded") => return Ok(Ended::Succeeded),
                    Some(s) if s.eq_ignore_ascii_case("Failed") => {
                        return Err(operation_failure(
                            None,
                            "the scale set's provisioning state is Failed",
                            self.what,
                        ));
                    }
                    Some(_) => {}
                }
                wait = retry_after(&answer.headers).unwrap_or(self.poll_interval);
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    resource = %resource,
                    "{} had not finished after {}; it goes on in Azure",
                    self.what,
                    humantime::format_duration(self.timeout)
                );
                return Ok(Ended::StillRunning);
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_headers_name_the_operation() {
        let mut headers = Headers::new();
        headers.insert(
            "azure-asyncoperation",
            "http://127.0.0.1:1/op/1?api-version=2024-07-01",
        );
        headers.insert("location", "http://127.0.0.1:1/loc/1");
        headers.insert("retry-after", "3");
        assert_eq!(
            Operation::from_acceptance(202, &headers),
            Operation::StatusDocument {
                url: Url::parse("http://127.0.0.1:1/op/1?api-version=2024-07-01").unwrap(),
                first_wait: Some(Duration::from_secs(3)),
            }
        );
        let mut headers = Headers::new();
        headers.insert("location", "http://127.0.0.1:1/loc/1");
        assert!(matches!(
            Operation::from_acceptance(202, &headers),
            Operation::Location { .. }
        ));
        assert_eq!(
            Operation::from_acceptance(200, &Headers::new()),
            Operation::Done
        );
    }
}
