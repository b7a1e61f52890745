//! How a fleet names its scale set and the identity that manages it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The public cloud's Resource Manager endpoint.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com";
/// The public cloud's Entra ID authority.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// One Azure VM Scale Set managed as a fleet.
///
/// In the agent's TOML it is the fleet's `[fleets.adapter]` table (with `kind = "azure"`):
///
/// ```toml
/// [fleets.adapter]
/// kind = "azure"
/// subscription_id = "00000000-0000-0000-0000-000000000000"
/// resource_group = "web-rg"
/// scale_set = "web-vmss"
/// operation_timeout = "90s"
///
/// [fleets.adapter.credential]
/// kind = "client-secret"
/// tenant_id = "11111111-1111-1111-1111-111111111111"
/// client_id = "22222222-2222-2222-2222-222222222222"
/// secret_env = "FLEETSCALE_AZURE_SECRET"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The subscription that holds the scale set (a GUID).
    pub subscription_id: String,
    /// The resource group that holds the scale set.
    pub resource_group: String,
    /// The scale set's name.
    pub scale_set: String,
    /// The Resource Manager endpoint. Default `https://management.azure.com` (the public
    /// cloud); e.g. `https://management.usgovcloudapi.net` or
    /// `https://management.chinacloudapi.cn` for sovereign clouds. Plain `http` is accepted
    /// only for a loopback address (tests).
    #[serde(default = "default_arm_endpoint")]
    pub arm_endpoint: String,
    /// The Entra ID authority that issues tokens. Default `https://login.microsoftonline.com`;
    /// e.g. `https://login.microsoftonline.us` or `https://login.chinacloudapi.cn`.
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
    /// Which credential to use. Default: the chain `environment`, `workload identity`,
    /// `managed identity`, `Azure CLI` (see [`CredentialConfig`]).
    #[serde(default)]
    pub credential: CredentialConfig,
    /// How long a grow or shrink follows Azure's operation before it returns anyway. A
    /// failure reported within it is the call's error; after it, the call returns what it
    /// started (new VMs read as pending, deleted ones as stopping) and Azure goes on. Keep
    /// it below the retry decorator's attempt timeout (2 minutes by default). Default 90 s.
    #[serde(default = "default_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Pause between polls of a long-running operation when Azure names none
    /// (`Retry-After`). Default 5 s.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time limit of one HTTP request to Resource Manager or Entra ID. Default 30 s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// The identity fleetscale acts as. Written as a table with a `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// The first credential found, in this order: the environment (`AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, or `AZURE_CLIENT_CERTIFICATE_PATH` naming a
    /// PEM file with the certificate and its unencrypted key);
    /// workload identity (`AZURE_FEDERATED_TOKEN_FILE`, set by AKS); the managed
    /// identity of the VM, App Service or container the agent runs on (user-assigned when
    /// `AZURE_CLIENT_ID` is set); the Azure CLI's signed-in account. Once one has issued a
    /// token it is used alone; a configured source that is refused ends the search rather
    /// than falling through to another identity.
    #[default]
    Default,
    /// A service principal's client secret.
    ClientSecret {
        /// The directory (tenant) id or domain.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The environment variable holding the secret (exactly one of `secret_env` and
        /// `secret_file`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        /// A file holding the secret (surrounding white space is ignored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
    /// A service principal's certificate.
    ClientCertificate {
        /// The directory (tenant) id or domain.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// A PEM file holding the certificate and its unencrypted RSA private key.
        certificate_file: PathBuf,
    },
    /// The managed identity of the machine the agent runs on.
    ManagedIdentity {
        /// A user-assigned identity's client id; the system-assigned identity when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Workload identity federation (AKS): a projected service-account token exchanged
    /// for an Entra ID token. Each field defaults to the variable AKS sets.
    WorkloadIdentity {
        /// Default: `AZURE_TENANT_ID`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_id: Option<String>,
        /// Default: `AZURE_CLIENT_ID`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Default: `AZURE_FEDERATED_TOKEN_FILE`. Read again whenever a token is needed,
        /// so a rotated file is picked up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    /// The account the Azure CLI (`az login`) is signed in with.
    AzureCli,
}

impl CredentialConfig {
    /// The name used in the config file and in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::Default => "default",
            CredentialConfig::ClientSecret { .. } => "client-secret",
            CredentialConfig::ClientCertificate { .. } => "client-certificate",
            CredentialConfig::ManagedIdentity { .. } => "managed-identity",
            CredentialConfig::WorkloadIdentity { .. } => "workload-identity",
            CredentialConfig::AzureCli => "azure-cli",
        }
    }
}

fn default_arm_endpoint() -> String {
    PUBLIC_ARM_ENDPOINT.to_owned()
}
fn default_authority_host() -> String {
    PUBLIC_AUTHORITY_HOST.to_owned()
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl AzureConfig {
    /// A config for a scale set with every other setting at its default.
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        scale_set: impl Into<String>,
    ) -> Self {
        AzureConfig {
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            scale_set: scale_set.into(),
            arm_endpoint: default_arm_endpoint(),
            authority_host: default_authority_host(),
            credential: CredentialConfig::default(),
            operation_timeout: default_operation_timeout(),
            poll_interval: default_poll_interval(),
            request_timeout: default_request_timeout(),
        }
    }

    /// Every problem in the config at once, each naming its field (relative to this
    /// table, e.g. `credential.client_id`).
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(ConfigProblem {
                field: field.to_owned(),
                message,
            })
        };

        if !is_guid(&self.subscription_id) {
            problem(
                "subscription_id",
                format!(
                    "`{}` is not a subscription id (a GUID such as 00000000-0000-0000-0000-000000000000)",
                    self.subscription_id
                ),
            );
        }
        if let Err(why) = check_resource_group(&self.resource_group) {
            problem("resource_group", why);
        }
        if let Err(why) = check_scale_set_name(&self.scale_set) {
            problem("scale_set", why);
        }
        if let Err(why) = check_endpoint(&self.arm_endpoint) {
            problem("arm_endpoint", why);
        }
        if let Err(why) = check_endpoint(&self.authority_host) {
            problem("authority_host", why);
        }
        if self.operation_timeout.is_zero() {
            problem("operation_timeout", "must be longer than zero".to_owned());
        }
        if self.poll_interval.is_zero() {
            problem("poll_interval", "must be longer than zero".to_owned());
        } else if !self.operation_timeout.is_zero() && self.poll_interval > self.operation_timeout {
            problem(
                "poll_interval",
                format!(
                    "{} is longer than operation_timeout ({}), so no operation would be polled twice",
                    humantime::format_duration(self.poll_interval),
                    humantime::format_duration(self.operation_timeout)
                ),
            );
        }
        if self.request_timeout.is_zero() {
            problem("request_timeout", "must be longer than zero".to_owned());
        }

        match &self.credential {
            CredentialConfig::Default | CredentialConfig::AzureCli => {}
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                secret_env,
                secret_file,
            } => {
                if !is_tenant(tenant_id) {
                    problem(
                        "credential.tenant_id",
                        format!("`{tenant_id}` is not a tenant id (a GUID) or domain"),
                    );
                }
                if !is_guid(client_id) {
                    problem(
                        "credential.client_id",
                        format!("`{client_id}` is not an application (client) id (a GUID)"),
                    );
                }
                match (secret_env, secret_file) {
                    (Some(_), Some(_)) => problem(
                        "credential.secret_env",
                        "give either secret_env or secret_file, not both".to_owned(),
                    ),
                    (None, None) => problem(
                        "credential.secret_env",
                        "name where the client secret is: secret_env (an environment variable) or secret_file".to_owned(),
                    ),
                    (Some(var), None) if !is_env_var_name(var) => problem(
                        "credential.secret_env",
                        format!("`{var}` is not an environment variable name"),
                    ),
                    (None, Some(path)) if path.as_os_str().is_empty() => {
                        problem("credential.secret_file", "is empty".to_owned())
                    }
                    _ => {}
                }
            }
            CredentialConfig::ClientCertificate {
                tenant_id,
                client_id,
                certificate_file,
            } => {
                if !is_tenant(tenant_id) {
                    problem(
                        "credential.tenant_id",
                        format!("`{tenant_id}` is not a tenant id (a GUID) or domain"),
                    );
                }
                if !is_guid(client_id) {
                    problem(
                        "credential.client_id",
                        format!("`{client_id}` is not an application (client) id (a GUID)"),
                    );
                }
                if certificate_file.as_os_str().is_empty() {
                    problem("credential.certificate_file", "is empty".to_owned());
                }
            }
            CredentialConfig::ManagedIdentity { client_id } => {
                if let Some(id) = client_id.as_deref().filter(|id| !is_guid(id)) {
                    problem(
                        "credential.client_id",
                        format!("`{id}` is not a managed identity's client id (a GUID)"),
                    );
                }
            }
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                if let Some(id) = tenant_id.as_deref().filter(|id| !is_tenant(id)) {
                    problem(
                        "credential.tenant_id",
                        format!("`{id}` is not a tenant id (a GUID) or domain"),
                    );
                }
                if let Some(id) = client_id.as_deref().filter(|id| !is_guid(id)) {
                    problem(
                        "credential.client_id",
                        format!("`{id}` is not an application (client) id (a GUID)"),
                    );
                }
                if token_file
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty())
                {
                    problem("credential.token_file", "is empty".to_owned());
                }
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The scale set's ARM resource id.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.subscription_id, self.resource_group, self.scale_set
        )
    }
}

/// One thing wrong in an [`AzureConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field at fault, relative to the adapter's table (`scale_set`,
    /// `credential.client_id`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigProblem {}

pub(crate) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_tenant(s: &str) -> bool {
    is_guid(s)
        || (s.contains('.')
            && s.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }))
}

fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// Azure's rules: 1-90 characters; letters, digits, `_`, `-`, `.`, `(`, `)`; not ending in `.`.
fn check_resource_group(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 90 {
        return Err(format!("`{name}` must have 1 to 90 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')')))
    {
        return Err(format!(
            "`{name}` contains `{c}`, which a resource group name may not"
        ));
    }
    if name.ends_with('.') {
        return Err(format!("`{name}` may not end with `.`"));
    }
    Ok(())
}

// Azure's rules for scale sets: 1-64 characters; letters, digits, `-`, `_`, `.`; starting
// with a letter, digit or `_`; not ending in `.` or `-`.
fn check_scale_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must have 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{name}` contains `{c}`, which a scale set name may not"
        ));
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return Err(format!(
            "`{name}` must start with a letter, digit or `_` and end with a letter, digit or `_`"
        ));
    }
    Ok(())
}

/// An https URL, or http to a loopback address (a bearer token must never cross a
/// network in clear text).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url =
        azure_core::Url::parse(endpoint).map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{endpoint}` may not carry a query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!(
            "`{endpoint}` uses plain http, which would send tokens in clear text; use https (http is accepted only for loopback addresses)"
        )),
        other => Err(format!("`{endpoint}` has scheme `{other}`; use https")),
    }
}

fn is_loopback(url: &azure_core::Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_and_names() {
        assert!(is_guid("00000000-0000-0000-0000-00000000000a"));
        assert!(!is_guid("00000000-0000-0000-0000-00000000000"));
        assert!(!is_guid("not-a-guid"));
        assert!(is_tenant("contoso.onmicrosoft.com"));
        assert!(check_scale_set_name("web-vmss_1").is_ok());
        assert!(check_scale_set_name("-web").is_err());
        assert!(check_resource_group("rg(prod)_1.a").is_ok());
        assert!(check_resource_group("rg.").is_err());
        assert!(check_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(check_endpoint("http://management.azure.com").is_err());
        assert!(check_endpoint("https://management.usgovcloudapi.net").is_ok());
    }
}
