//! The Entra ID identity the adapter acts as.
//!
//! Tokens come from azure_identity's credentials (client secret, workload identity, Azure
//! CLI), except managed identity: azure_identity 0.21 offers only the system-assigned
//! identity, so a small credential here speaks the IMDS / App Service protocol and takes
//! a user-assigned client id. [`FleetCredential`] wraps the chosen source (or the default
//! chain) and classifies every failure once, so the adapter can tell "refused" (no retry
//! helps) from "unreachable" (retry). After a refusal it answers from memory for a while
//! instead of asking Entra ID again: a wrong secret costs one token request, not one per
//! call.
//!
//! Answers that say "retry" are not refusals. Entra ID's token endpoint (client secret,
//! certificate and workload identity alike) is read by [`EntraHttp`], which keeps the
//! status and `Retry-After` azure_identity drops: 429 is throttled with its `Retry-After`,
//! 5xx and `temporarily_unavailable` are transient. The managed identity endpoint's 404
//! and 410 (IMDS updating), 429 and 5xx likewise. And a 401 from Resource Manager drops
//! the tokens held ([`FleetCredential::unauthorized_policy`]), so the next request fetches
//! a fresh one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::error::ErrorKind as AzureErrorKind;
use azure_core::headers::Headers;
use azure_core::{
    Context, HttpClient, Method, Policy, PolicyResult, Request, Response, StatusCode, Url,
};
use azure_identity::{AzureCliCredential, ClientSecretCredential, WorkloadIdentityCredential};
use time::OffsetDateTime;

use super::certificate::ClientCertificateCredential;
use super::config::{AzureConfig, CredentialConfig};
use super::errors::{CredentialFailure, CredentialFailureKind, chain, find, retry_after};

/// How long a refused credential is answered from memory before Entra ID is asked again.
const REFUSAL_HOLD: Duration = Duration::from_secs(30);
/// The instance metadata service's token endpoint.
const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// How long the default chain waits for a managed identity endpoint that may not exist.
const MANAGED_IDENTITY_PROBE: Duration = Duration::from_secs(2);

/// Where credentials are looked up: environment variables and the managed identity
/// endpoint. [`AzureEnvironment::from_process`] in production; tests build one by hand so
/// they never touch the process environment or a real metadata endpoint.
#[derive(Clone, Default)]
pub struct AzureEnvironment {
    vars: HashMap<String, String>,
    managed_identity_endpoint: Option<String>,
}

impl std::fmt::Debug for AzureEnvironment {
    // Values may be secrets: list names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("AzureEnvironment")
            .field("vars", &names)
            .field("managed_identity_endpoint", &self.managed_identity_endpoint)
            .finish()
    }
}

impl AzureEnvironment {
    /// The process's environment variables, and IMDS (or App Service's
    /// `IDENTITY_ENDPOINT`) for managed identity.
    pub fn from_process() -> Self {
        AzureEnvironment {
            vars: std::env::vars().collect(),
            managed_identity_endpoint: None,
        }
    }

    /// No variables, and no managed identity endpoint unless one is set.
    pub fn empty() -> Self {
        AzureEnvironment::default()
    }

    /// Sets an environment variable as the credentials will see it.
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Sends managed identity token requests here (IMDS protocol) instead of
    /// `http://169.254.169.254/metadata/identity/oauth2/token`.
    pub fn with_managed_identity_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.managed_identity_endpoint = Some(endpoint.into());
        self
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

/// One place a token may come from.
struct Source {
    /// "client secret (client id …, tenant …)": never the secret.
    description: String,
    credential: Availability,
    /// A configured source whose failure ends the search (environment, workload identity);
    /// otherwise the default chain moves on (managed identity, CLI).
    final_on_failure: bool,
    /// A limit on the first attempt, for sources probed by the default chain.
    probe_timeout: Option<Duration>,
}

enum Availability {
    Ready(Arc<dyn TokenCredential>),
    /// Not set up here; the default chain skips it.
    NotConfigured(String),
    /// Set up wrongly: reported as refused.
    Misconfigured(String),
}

/// The adapter's credential: one source, or the default chain.
pub(crate) struct FleetCredential {
    sources: Vec<Source>,
    chosen: Mutex<Option<usize>>,
    refused: Mutex<Option<(Instant, CredentialFailure)>>,
    authority: String,
}

impl std::fmt::Debug for FleetCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCredential")
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(|s| &s.description)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl FleetCredential {
    /// Fails only when `config.authority_host` is not a URL (a validated config's is).
    pub(crate) fn new(
        config: &AzureConfig,
        env: &AzureEnvironment,
        http: Arc<dyn HttpClient>,
    ) -> crate::Result<Self> {
        let authority = Url::parse(&config.authority_host).map_err(|e| {
            crate::AdapterError::invalid(format!(
                "authority_host: `{}` is not a URL: {e}",
                config.authority_host
            ))
        })?;
        let build = Builder {
            env,
            http,
            authority: authority.clone(),
            request_timeout: config.request_timeout,
        };
        let sources = match &config.credential {
            CredentialConfig::Default => vec![
                build.environment(),
                build.workload_identity(None, None, None, false),
                build.managed_identity(env.var("AZURE_CLIENT_ID").map(str::to_owned), true),
                build.azure_cli(false),
            ],
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                secret_env,
                secret_file,
            } => {
                vec![build.client_secret(
                    tenant_id,
                    client_id,
                    secret_env.as_deref(),
                    secret_file.as_ref(),
                )]
            }
            CredentialConfig::ClientCertificate {
                tenant_id,
                client_id,
                certificate_file,
            } => vec![build.client_certificate(tenant_id, client_id, certificate_file)],
            CredentialConfig::ManagedIdentity { client_id } => {
                vec![build.managed_identity(client_id.clone(), false)]
            }
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => vec![build.workload_identity(
                tenant_id.as_deref(),
                client_id.as_deref(),
                token_file.as_ref(),
                true,
            )],
            CredentialConfig::AzureCli => vec![build.azure_cli(true)],
        };
        Ok(FleetCredential {
            sources,
            chosen: Mutex::new(None),
            refused: Mutex::new(None),
            authority: config.authority_host.clone(),
        })
    }

    /// The source that issued the last token ("client secret (client id …)").
    pub(crate) fn source_in_use(&self) -> Option<String> {
        let chosen = *self.chosen.lock().unwrap_or_else(PoisonError::into_inner);
        chosen
            .and_then(|i| self.sources.get(i))
            .map(|source| source.description.clone())
    }

    /// Forgets every token the sources hold, so that the next request fetches a fresh
    /// one: Resource Manager refused the last (401 `InvalidAuthenticationToken`,
    /// `ExpiredAuthenticationToken`…), which a revoked or rotated token earns long before
    /// its `expires_on`.
    pub(crate) async fn invalidate(&self) {
        for source in &self.sources {
            if let Availability::Ready(credential) = &source.credential
                && let Err(error) = credential.clear_cache().await
            {
                tracing::debug!(source = %source.description, %error, "could not drop a cached token");
            }
        }
    }

    /// The pipeline policy through which every Resource Manager request passes: on a 401
    /// it [invalidates](FleetCredential::invalidate) the tokens held. It reads both a 401
    /// response and the error [`super::errors::ArmErrorPolicy`] makes of one, so it may
    /// stand before or after that policy.
    pub(crate) fn unauthorized_policy(self: &Arc<Self>) -> Arc<dyn Policy> {
        Arc::new(DropTokensOnUnauthorized(self.clone()))
    }

    async fn token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialFailure> {
        if let Some((at, failure)) = &*self.refused.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < REFUSAL_HOLD
        {
            return Err(failure.clone());
        }
        let result = self.token_uncached(scopes).await;
        if let Err(failure) = &result
            && failure.kind == CredentialFailureKind::Refused
        {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), failure.clone()));
        }
        result
    }

    async fn token_uncached(&self, scopes: &[&str]) -> Result<AccessToken, CredentialFailure> {
        let chosen = *self.chosen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(source) = chosen.and_then(|i| self.sources.get(i)) {
            let Availability::Ready(credential) = &source.credential else {
                return Err(refused(format!("{}: not available", source.description)));
            };
            return credential
                .get_token(scopes)
                .await
                .map_err(|e| self.classify(&e, &source.description));
        }

        let single = self.sources.len() == 1;
        let mut skipped = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let credential = match &source.credential {
                Availability::Ready(credential) => credential,
                Availability::NotConfigured(why) if !single => {
                    skipped.push(format!("{}: {why}", source.description));
                    continue;
                }
                Availability::NotConfigured(why) | Availability::Misconfigured(why) => {
                    return Err(refused(format!("{}: {why}", source.description)));
                }
            };
            let attempt = credential.get_token(scopes);
            let result = match source.probe_timeout {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => {
                        skipped.push(format!(
                            "{}: no answer within {}",
                            source.description,
                            humantime::format_duration(limit)
                        ));
                        continue;
                    }
                },
                None => attempt.await,
            };
            match result {
                Ok(token) => {
                    *self.chosen.lock().unwrap_or_else(PoisonError::into_inner) = Some(i);
                    return Ok(token);
                }
                Err(error) => {
                    let failure = self.classify(&error, &source.description);
                    if single || source.final_on_failure {
                        return Err(failure);
                    }
                    skipped.push(failure.message);
                }
            }
        }
        Err(refused(format!(
            "no Azure credential is available. Tried, in order: {}. Set AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, run on a machine with a managed identity, \
             sign in with `az login`, or name a credential in the fleet's adapter.credential",
            skipped.join("; ")
        )))
    }

    /// Reads a token failure once: refused, unreachable or throttled, with a message an
    /// operator can act on and no secret in it.
    fn classify(&self, error: &azure_core::Error, source: &str) -> CredentialFailure {
        type TokenError =
            oauth2::RequestTokenError<azure_core::Error, oauth2::basic::BasicErrorResponse>;

        if let Some(failure) = find::<CredentialFailure>(error) {
            return CredentialFailure {
                kind: failure.kind,
                message: format!("{source}: {}", failure.message),
            };
        }
        if let Some(answer) = find::<EntraAnswer>(error) {
            return answer.failure(&self.authority, source);
        }
        if let Some(token_error) = find::<TokenError>(error) {
            return match token_error {
                oauth2::RequestTokenError::ServerResponse(response) => {
                    let description = response
                        .error_description()
                        .map(|d| format!(": {}", first_line_and_trace(d)))
                        .unwrap_or_default();
                    refused(format!(
                        "Entra ID ({}) refused the {source}: {}{description}",
                        self.authority,
                        response.error().as_ref()
                    ))
                }
                oauth2::RequestTokenError::Request(inner) => unreachable(format!(
                    "could not reach Entra ID at {} for the {source}: {}",
                    self.authority,
                    chain(inner)
                )),
                oauth2::RequestTokenError::Parse(_, _) => unreachable(format!(
                    "Entra ID at {} answered the {source} with something other than a token",
                    self.authority
                )),
                oauth2::RequestTokenError::Other(text) => unreachable(format!(
                    "Entra ID at {} failed for the {source}: {text}",
                    self.authority
                )),
            };
        }
        if let AzureErrorKind::HttpResponse { status, error_code } = error.kind() {
            let code = error_code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            let status = *status as u16;
            let text = format!("the token endpoint answered the {source} with {status}{code}");
            return match status {
                429 => CredentialFailure {
                    kind: CredentialFailureKind::Throttled(None),
                    message: text,
                },
                408 | 500..=599 => unreachable(text),
                _ => refused(text),
            };
        }
        if has_io_error(error) {
            return unreachable(format!("{source}: {}", chain(error)));
        }
        refused(format!("{source}: {}", chain(error)))
    }
}

fn refused(message: String) -> CredentialFailure {
    CredentialFailure {
        kind: CredentialFailureKind::Refused,
        message,
    }
}

fn unreachable(message: String) -> CredentialFailure {
    CredentialFailure {
        kind: CredentialFailureKind::Unreachable,
        message,
    }
}

fn has_io_error(error: &azure_core::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>()
            && azure.kind() == &AzureErrorKind::Io
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Entra ID's descriptions run over several lines ("AADSTS7000215: Invalid client secret
/// provided. …\r\nTrace ID: …\r\nCorrelation ID: …"); the first and the trace id are the
/// useful part.
fn first_line_and_trace(description: &str) -> String {
    let mut lines = description.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    match description
        .lines()
        .find_map(|l| l.trim().strip_prefix("Trace ID: "))
    {
        Some(trace) => format!("{first} (trace id {trace})"),
        None => first,
    }
}

/// The HTTP client the Entra ID credentials (client secret, certificate, workload
/// identity) reach the token endpoint through. Every unsuccessful answer becomes an
/// [`EntraAnswer`] here, while its status and headers are still known: azure_identity's
/// client-secret flow hands oauth2 the body alone, and its client-assertion flow keeps the
/// status but neither the body nor `Retry-After`.
#[derive(Debug)]
struct EntraHttp(Arc<dyn HttpClient>);

#[async_trait]
impl HttpClient for EntraHttp {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let response = self.0.execute_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await?;
        Err(azure_core::Error::new(
            AzureErrorKind::Credential,
            EntraAnswer::read(status as u16, &headers, &body),
        ))
    }
}

/// An unsuccessful answer of Entra ID's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntraAnswer {
    status: u16,
    /// The OAuth `error`: `invalid_client`, `temporarily_unavailable`…
    error: Option<String>,
    /// The first line of `error_description` and its trace id, or the start of a body
    /// that is not Entra ID's JSON (a proxy's page).
    description: Option<String>,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for EntraAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(error) = &self.error {
            write!(f, " {error}")?;
        }
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EntraAnswer {}

impl EntraAnswer {
    /// Reads Entra ID's error format (`{"error", "error_description", "error_codes", …}`:
    /// "Microsoft Entra authentication and authorization error codes",
    /// https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
    fn read(status: u16, headers: &Headers, body: &[u8]) -> Self {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        let text = |key: &str| {
            json.as_ref()
                .and_then(|v| v.get(key))
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let description = match json {
            Some(_) => text("error_description").map(first_line_and_trace),
            None => {
                let body = String::from_utf8_lossy(body);
                let first = body.lines().map(str::trim).find(|l| !l.is_empty());
                first.map(|l| l.chars().take(200).collect())
            }
        };
        EntraAnswer {
            status,
            error: text("error").map(str::to_owned),
            description,
            retry_after: retry_after(headers),
        }
    }

    /// What the answer means for the credential that asked.
    fn failure(&self, authority: &str, source: &str) -> CredentialFailure {
        // Entra ID throttles the client credentials grant with "429 Too Many Requests,
        // with a Retry-After" header, and answers its own problems with "a HTTP 5xx error
        // code" ("Understanding client and server throttling in MSAL.NET",
        // https://learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling).
        // `temporarily_unavailable`, whatever its status, is "The server is temporarily
        // too busy to handle the request" with the client action "Retry the request" (the
        // error code reference above). Neither is a refusal, and neither is held as one.
        let temporarily_unavailable = self.error.as_deref() == Some("temporarily_unavailable");
        if self.status == 429 {
            CredentialFailure {
                kind: CredentialFailureKind::Throttled(self.retry_after),
                message: format!("Entra ID ({authority}) asked the {source} to slow down: {self}"),
            }
        } else if self.status == 408 || self.status >= 500 || temporarily_unavailable {
            unreachable(format!(
                "Entra ID ({authority}) could not serve the {source} for now: {self}"
            ))
        } else {
            refused(format!(
                "Entra ID ({authority}) refused the {source}: {self}"
            ))
        }
    }
}

/// See [`FleetCredential::unauthorized_policy`].
#[derive(Debug)]
struct DropTokensOnUnauthorized(Arc<FleetCredential>);

#[async_trait]
impl Policy for DropTokensOnUnauthorized {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::message(
                AzureErrorKind::Other,
                "the token-dropping policy is the pipeline's last: no transport follows it",
            ));
        };
        let result = first.send(ctx, request, rest).await;
        let unauthorized = match &result {
            Ok(response) => response.status() == StatusCode::Unauthorized,
            Err(error) => matches!(
                error.kind(),
                AzureErrorKind::HttpResponse {
                    status: StatusCode::Unauthorized,
                    ..
                }
            ),
        };
        if unauthorized {
            tracing::debug!(
                "Resource Manager refused the access token: the next request fetches a fresh one"
            );
            self.0.invalidate().await;
        }
        result
    }
}

#[async_trait]
impl TokenCredential for FleetCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        self.token(scopes)
            .await
            .map_err(|failure| azure_core::Error::new(AzureErrorKind::Credential, failure))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
        for source in &self.sources {
            if let Availability::Ready(credential) = &source.credential {
                credential.clear_cache().await?;
            }
        }
        Ok(())
    }
}

struct Builder<'a> {
    env: &'a AzureEnvironment,
    http: Arc<dyn HttpClient>,
    authority: Url,
    request_timeout: Duration,
}

impl Builder<'_> {
    /// The client for Entra ID's token endpoint: see [`EntraHttp`].
    fn entra_http(&self) -> Arc<dyn HttpClient> {
        Arc::new(EntraHttp(self.http.clone()))
    }

    fn client_secret(
        &self,
        tenant_id: &str,
        client_id: &str,
        secret_env: Option<&str>,
        secret_file: Option<&PathBuf>,
    ) -> Source {
        let (origin, secret) = match (secret_env, secret_file) {
            (Some(var), _) => (
                format!("environment variable {var}"),
                self.env.var(var).map(|s| s.trim().to_owned()).ok_or_else(|| {
                    format!("environment variable {var}, which should hold the client secret, is not set")
                }),
            ),
            (None, Some(path)) => (
                format!("file {}", path.display()),
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| format!("cannot read the client secret from {}: {e}", path.display()))
                    .and_then(|s| {
                        if s.is_empty() {
                            Err(format!("the client secret file {} is empty", path.display()))
                        } else {
                            Ok(s)
                        }
                    }),
            ),
            (None, None) => ("nowhere".to_owned(), Err("no secret_env or secret_file given".to_owned())),
        };
        let description = format!(
            "client secret credential (client id {client_id}, tenant {tenant_id}, secret from {origin})"
        );
        let credential = match secret {
            Ok(secret) => Availability::Ready(Arc::new(ClientSecretCredential::new(
                self.entra_http(),
                self.authority.clone(),
                tenant_id.to_owned(),
                client_id.to_owned(),
                secret,
            ))),
            Err(why) => Availability::Misconfigured(why),
        };
        Source {
            description,
            credential,
            final_on_failure: true,
            probe_timeout: None,
        }
    }

    fn client_certificate(
        &self,
        tenant_id: &str,
        client_id: &str,
        path: &std::path::Path,
    ) -> Source {
        let description = format!(
            "client certificate credential (client id {client_id}, tenant {tenant_id}, certificate {})",
            path.display()
        );
        let credential = match ClientCertificateCredential::from_file(
            self.entra_http(),
            self.authority.clone(),
            tenant_id,
            client_id,
            path,
        ) {
            Ok(credential) => Availability::Ready(Arc::new(credential)),
            Err(why) => Availability::Misconfigured(why),
        };
        Source {
            description,
            credential,
            final_on_failure: true,
            probe_timeout: None,
        }
    }

    /// `AZURE_CLIENT_SECRET` (or a certificate) with `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`.
    fn environment(&self) -> Source {
        let tenant = self.env.var("AZURE_TENANT_ID");
        let client = self.env.var("AZURE_CLIENT_ID");
        if self.env.var("AZURE_CLIENT_SECRET").is_some() {
            return match (tenant, client) {
                (Some(tenant), Some(client)) => {
                    let mut source =
                        self.client_secret(tenant, client, Some("AZURE_CLIENT_SECRET"), None);
                    source.description = format!(
                        "client secret credential from the environment (AZURE_CLIENT_ID {client}, AZURE_TENANT_ID {tenant})"
                    );
                    source
                }
                _ => Source {
                    description: "client secret credential from the environment".to_owned(),
                    credential: Availability::Misconfigured(
                        "AZURE_CLIENT_SECRET is set, but AZURE_TENANT_ID and AZURE_CLIENT_ID must be set too".to_owned(),
                    ),
                    final_on_failure: true,
                    probe_timeout: None,
                },
            };
        }
        if let Some(path) = self.env.var("AZURE_CLIENT_CERTIFICATE_PATH") {
            let mut source = match (tenant, client) {
                (Some(tenant), Some(client)) => {
                    self.client_certificate(tenant, client, &PathBuf::from(path))
                }
                _ => Source {
                    description: String::new(),
                    credential: Availability::Misconfigured(
                        "AZURE_CLIENT_CERTIFICATE_PATH is set, but AZURE_TENANT_ID and AZURE_CLIENT_ID must be set too".to_owned(),
                    ),
                    final_on_failure: true,
                    probe_timeout: None,
                },
            };
            source.description = format!(
                "client certificate credential from the environment (AZURE_CLIENT_ID {}, AZURE_TENANT_ID {}, certificate {path})",
                client.unwrap_or("unset"),
                tenant.unwrap_or("unset")
            );
            if self.env.var("AZURE_CLIENT_CERTIFICATE_PASSWORD").is_some() {
                source.credential = Availability::Misconfigured(
                    "password-protected certificates are not supported: give a PEM file with the \
                     certificate and its unencrypted private key"
                        .to_owned(),
                );
            }
            return source;
        }
        Source {
            description: "environment".to_owned(),
            credential: Availability::NotConfigured(
                "AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are not set".to_owned(),
            ),
            final_on_failure: false,
            probe_timeout: None,
        }
    }

    fn workload_identity(
        &self,
        tenant_id: Option<&str>,
        client_id: Option<&str>,
        token_file: Option<&PathBuf>,
        named: bool,
    ) -> Source {
        let tenant = tenant_id.or_else(|| self.env.var("AZURE_TENANT_ID"));
        let client = client_id.or_else(|| self.env.var("AZURE_CLIENT_ID"));
        let file = token_file.cloned().or_else(|| {
            self.env
                .var("AZURE_FEDERATED_TOKEN_FILE")
                .map(PathBuf::from)
        });
        let description = format!(
            "workload identity credential (client id {}, tenant {}, token file {})",
            client.unwrap_or("unset"),
            tenant.unwrap_or("unset"),
            file.as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "unset".to_owned())
        );
        let credential = match (tenant, client, file) {
            (Some(tenant), Some(client), Some(file)) => {
                Availability::Ready(Arc::new(WorkloadIdentityFromFile {
                    http: self.entra_http(),
                    authority: self.authority.clone(),
                    tenant_id: tenant.to_owned(),
                    client_id: client.to_owned(),
                    file,
                    current: Mutex::new(None),
                }))
            }
            (_, _, None) if !named => {
                Availability::NotConfigured("AZURE_FEDERATED_TOKEN_FILE is not set".to_owned())
            }
            _ => Availability::Misconfigured(
                "needs a tenant id, a client id and a token file (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)".to_owned(),
            ),
        };
        Source {
            description,
            credential,
            final_on_failure: true,
            probe_timeout: None,
        }
    }

    fn managed_identity(&self, client_id: Option<String>, probed: bool) -> Source {
        let description = match &client_id {
            Some(id) => format!("managed identity credential (user-assigned, client id {id})"),
            None => "managed identity credential (system-assigned)".to_owned(),
        };
        let endpoint = match (
            &self.env.managed_identity_endpoint,
            self.env.var("IDENTITY_ENDPOINT"),
            self.env.var("IDENTITY_HEADER"),
        ) {
            (Some(endpoint), _, _) => Url::parse(endpoint).map(ManagedIdentityEndpoint::Imds),
            (None, Some(endpoint), Some(header)) => {
                Url::parse(endpoint).map(|url| ManagedIdentityEndpoint::AppService {
                    url,
                    header: header.to_owned(),
                })
            }
            (None, _, _) => Url::parse(IMDS_ENDPOINT).map(ManagedIdentityEndpoint::Imds),
        };
        let credential = match endpoint {
            Ok(endpoint) => Availability::Ready(Arc::new(ManagedIdentityCredential {
                http: self.http.clone(),
                endpoint,
                client_id,
                cache: Mutex::new(None),
            })),
            Err(e) => Availability::Misconfigured(format!(
                "the managed identity endpoint is not a URL: {e}"
            )),
        };
        Source {
            description,
            credential,
            final_on_failure: false,
            probe_timeout: probed.then_some(MANAGED_IDENTITY_PROBE.min(self.request_timeout)),
        }
    }

    fn azure_cli(&self, named: bool) -> Source {
        Source {
            description: "Azure CLI credential (`az login`)".to_owned(),
            credential: Availability::Ready(Arc::new(AzureCliCredential::new())),
            final_on_failure: named,
            probe_timeout: None,
        }
    }
}

/// Workload identity that reads its federated token file whenever it needs a token, so
/// the token AKS rotates in the file is always the one exchanged.
#[derive(Debug)]
struct WorkloadIdentityFromFile {
    http: Arc<dyn HttpClient>,
    authority: Url,
    tenant_id: String,
    client_id: String,
    file: PathBuf,
    current: Mutex<Option<(String, Arc<WorkloadIdentityCredential>)>>,
}

#[async_trait]
impl TokenCredential for WorkloadIdentityFromFile {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let assertion = std::fs::read_to_string(&self.file)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                azure_core::Error::new(
                    AzureErrorKind::Credential,
                    refused(format!(
                        "cannot read the federated token file {}: {e}",
                        self.file.display()
                    )),
                )
            })?;
        let credential = {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            match &*current {
                Some((known, credential)) if *known == assertion => credential.clone(),
                _ => {
                    let credential = Arc::new(WorkloadIdentityCredential::new(
                        self.http.clone(),
                        self.authority.clone(),
                        self.tenant_id.clone(),
                        self.client_id.clone(),
                        assertion.clone(),
                    ));
                    *current = Some((assertion, credential.clone()));
                    credential
                }
            }
        };
        credential.get_token(scopes).await
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

#[derive(Debug)]
enum ManagedIdentityEndpoint {
    /// The instance metadata service (VMs, VM scale sets, AKS nodes).
    Imds(Url),
    /// App Service, Functions and Container Apps: `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
    AppService { url: Url, header: String },
}

/// A managed identity, system- or user-assigned.
#[derive(Debug)]
struct ManagedIdentityCredential {
    http: Arc<dyn HttpClient>,
    endpoint: ManagedIdentityEndpoint,
    client_id: Option<String>,
    cache: Mutex<Option<AccessToken>>,
}

#[derive(serde::Deserialize)]
struct ManagedIdentityToken {
    access_token: String,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

fn as_seconds(value: &serde_json::Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

#[async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        if let Some(token) = &*self.cache.lock().unwrap_or_else(PoisonError::into_inner)
            && token.expires_on > OffsetDateTime::now_utc() + Duration::from_secs(300)
        {
            return Ok(token.clone());
        }
        let resource = scopes
            .first()
            .map(|s| s.trim_end_matches("/.default"))
            .unwrap_or_default()
            .to_owned();
        let (mut url, api_version) = match &self.endpoint {
            ManagedIdentityEndpoint::Imds(url) => (url.clone(), "2018-02-01"),
            ManagedIdentityEndpoint::AppService { url, .. } => (url.clone(), "2019-08-01"),
        };
        url.query_pairs_mut()
            .append_pair("api-version", api_version)
            .append_pair("resource", &resource);
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("client_id", id);
        }
        let mut request = Request::new(url, Method::Get);
        match &self.endpoint {
            ManagedIdentityEndpoint::Imds(_) => request.insert_header("metadata", "true"),
            ManagedIdentityEndpoint::AppService { header, .. } => {
                request.insert_header("x-identity-header", header.clone())
            }
        }
        let response = self.http.execute_request(&request).await?;
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await?;
        let status = status as u16;
        if !(200..300).contains(&status) {
            let imds = matches!(self.endpoint, ManagedIdentityEndpoint::Imds(_));
            let failure = managed_identity_failure(imds, status, &headers, &body);
            return Err(azure_core::Error::new(AzureErrorKind::Credential, failure));
        }
        let token: ManagedIdentityToken = serde_json::from_slice(&body).map_err(|e| {
            azure_core::Error::new(
                AzureErrorKind::Credential,
                unreachable(format!(
                    "the managed identity endpoint's answer is not a token: {e}"
                )),
            )
        })?;
        let now = OffsetDateTime::now_utc();
        let expires_on = token
            .expires_on
            .as_ref()
            .and_then(as_seconds)
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
            .or_else(|| {
                token
                    .expires_in
                    .as_ref()
                    .and_then(as_seconds)
                    .map(|s| now + Duration::from_secs(s.max(0) as u64))
            })
            .unwrap_or(now + Duration::from_secs(600));
        let token = AccessToken::new(Secret::new(token.access_token), expires_on);
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

/// What an unsuccessful answer of the managed identity endpoint means (`imds`: the
/// instance metadata service, else App Service's endpoint). IMDS's statuses are read as
/// "How to use managed identities for Azure resources on an Azure VM to acquire an access
/// token" tells ("Error handling" and "Retry guidance",
/// https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#error-handling):
/// only a 4xx other than 404, 410 and 429 is a refusal.
fn managed_identity_failure(
    imds: bool,
    status: u16,
    headers: &Headers,
    body: &[u8],
) -> CredentialFailure {
    let detail = managed_identity_detail(body)
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    match status {
        // "404 Not found. | IMDS endpoint is updating. | Retry with Exponential Backoff."
        404 if imds => unreachable(format!(
            "the instance metadata service is updating (it answered 404{detail}); retry with backoff"
        )),
        // "410 | IMDS is going through updates | IMDS will be available within 70
        // seconds"; "it indicates that IMDS is going through updates and will be available
        // in a maximum of 70 seconds" (Retry guidance).
        410 if imds => unreachable(format!(
            "the instance metadata service is being upgraded (it answered 410{detail}) and answers again within 70 s"
        )),
        // "429 Too many requests. | IMDS Throttle limit reached. | Retry with Exponential
        // Backoff.", after the `Retry-After` it sent when it sent one.
        429 => CredentialFailure {
            kind: CredentialFailureKind::Throttled(retry_after(headers)),
            message: format!("the managed identity endpoint asked to slow down (429{detail})"),
        },
        // "5xx Transient error from service. | … | It's safe to retry after waiting for
        // at least 1 second."
        408 | 500..=599 => unreachable(format!(
            "the managed identity endpoint answered {status}{detail}"
        )),
        // "4xx Error in request. | One or more of the request parameters was incorrect. |
        // Don't retry." An unknown client id is IMDS's 400 "Identity not found".
        400 | 404 => refused(format!(
            "no such identity is assigned to this machine (the endpoint answered {status}{detail})"
        )),
        _ => refused(format!(
            "the managed identity endpoint answered {status}{detail}"
        )),
    }
}

/// The reason in a managed identity endpoint's error body: IMDS's
/// `{"error", "error_description"}`, App Service's `{"message"}` or an ARM-style
/// `{"error": {"code", "message"}}`.
fn managed_identity_detail(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let text = |key: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    text("error_description")
        .or_else(|| text("message"))
        .or_else(|| text("error"))
        .or_else(|| {
            let (code, message) = super::errors::error_code_and_message(body);
            message.or(code)
        })
}

/// Who a token speaks for, read from its claims (decoded, not verified: the adapter only
/// reports it). `None` when the token is not a JWT.
pub(crate) fn identity_from_token(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&azure_core::base64::decode_url_safe(payload).ok()?).ok()?;
    let claim = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let object = claim("oid");
    let tenant = claim("tid");
    let app = claim("appid").or_else(|| claim("azp"));
    let user = claim("upn")
        .or_else(|| claim("unique_name"))
        .or_else(|| claim("preferred_username"));
    let managed = claim("xms_mirid");

    let mut parts = Vec::new();
    if let Some(app) = &app {
        parts.push(format!("client id {app}"));
    }
    if let Some(object) = &object {
        parts.push(format!("object id {object}"));
    }
    if let Some(tenant) = &tenant {
        parts.push(format!("tenant {tenant}"));
    }
    let who = if let Some(resource) = managed {
        format!(
            "managed identity {}",
            resource.rsplit('/').next().unwrap_or(&resource)
        )
    } else if let Some(user) = user {
        format!("user {user}")
    } else if app.is_some() {
        "service principal".to_owned()
    } else {
        "identity".to_owned()
    };
    if parts.is_empty() {
        None
    } else {
        Some(format!("{who} ({})", parts.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_read_from_claims() {
        let payload = azure_core::base64::encode_url_safe(
            br#"{"oid":"o-1","tid":"t-1","appid":"a-1","idtyp":"app"}"#,
        );
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            identity_from_token(&token).as_deref(),
            Some("service principal (client id a-1, object id o-1, tenant t-1)")
        );
        assert_eq!(identity_from_token("opaque"), None);
    }

    #[test]
    fn entra_descriptions_are_shortened() {
        let text = "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: abc\r\nCorrelation ID: def";
        assert_eq!(
            first_line_and_trace(text),
            "AADSTS7000215: Invalid client secret provided. (trace id abc)"
        );
    }

    fn entra_body(error: &str, description: &str) -> Vec<u8> {
        serde_json::json!({
            "error": error,
            "error_description": format!("{description}\r\nTrace ID: t-1\r\nCorrelation ID: c-1"),
            "error_codes": [1],
        })
        .to_string()
        .into_bytes()
    }

    fn entra_kind(status: u16, headers: &Headers, body: &[u8]) -> CredentialFailureKind {
        EntraAnswer::read(status, headers, body)
            .failure("https://login.example", "client secret credential")
            .kind
    }

    #[test]
    fn entra_answers_that_say_retry_are_not_refusals() {
        let none = Headers::new();
        let mut retry_after = Headers::new();
        retry_after.insert("retry-after", "60");

        let busy = entra_body("temporarily_unavailable", "AADSTS90024: try again");
        assert_eq!(
            entra_kind(429, &retry_after, &busy),
            CredentialFailureKind::Throttled(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            entra_kind(429, &none, b"<html>slow down</html>"),
            CredentialFailureKind::Throttled(None)
        );
        for status in [500, 502, 503, 504] {
            assert_eq!(
                entra_kind(status, &none, &busy),
                CredentialFailureKind::Unreachable
            );
        }
        // `temporarily_unavailable` means "retry the request" whatever its status.
        assert_eq!(
            entra_kind(400, &none, &busy),
            CredentialFailureKind::Unreachable
        );

        let wrong = entra_body(
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
        assert_eq!(
            entra_kind(401, &none, &wrong),
            CredentialFailureKind::Refused
        );
        let failure = EntraAnswer::read(401, &none, &wrong)
            .failure("https://login.example", "client secret credential");
        assert_eq!(
            failure.message,
            "Entra ID (https://login.example) refused the client secret credential: 401 \
             invalid_client: AADSTS7000215: Invalid client secret provided. (trace id t-1)"
        );
    }

    fn imds_kind(imds: bool, status: u16, headers: &Headers) -> CredentialFailureKind {
        let body = br#"{"error":"e","error_description":"d"}"#;
        managed_identity_failure(imds, status, headers, body).kind
    }

    #[test]
    fn imds_statuses_follow_microsofts_retry_guidance() {
        let none = Headers::new();
        let mut retry_after = Headers::new();
        retry_after.insert("retry-after", "9");
        assert_eq!(
            imds_kind(true, 404, &none),
            CredentialFailureKind::Unreachable
        );
        assert_eq!(
            imds_kind(true, 410, &none),
            CredentialFailureKind::Unreachable
        );
        assert!(
            managed_identity_failure(true, 410, &none, b"")
                .message
                .contains("within 70 s")
        );
        assert_eq!(
            imds_kind(true, 429, &retry_after),
            CredentialFailureKind::Throttled(Some(Duration::from_secs(9)))
        );
        assert_eq!(
            imds_kind(true, 500, &none),
            CredentialFailureKind::Unreachable
        );
        assert_eq!(imds_kind(true, 400, &none), CredentialFailureKind::Refused);
        assert!(
            managed_identity_failure(true, 400, &none, br#"{"error":"invalid_request","error_description":"Identity not found"}"#)
                .message
                .contains("no such identity is assigned to this machine (the endpoint answered 400: Identity not found)")
        );
        // App Service's endpoint is not IMDS: its 404 is still an unknown identity.
        assert_eq!(imds_kind(false, 404, &none), CredentialFailureKind::Refused);
        assert_eq!(
            imds_kind(false, 429, &retry_after),
            CredentialFailureKind::Throttled(Some(Duration::from_secs(9)))
        );
    }
}
