//! A service principal's certificate: a signed client assertion (RFC 7523) exchanged for
//! a token. azure_identity 0.21 signs assertions only with OpenSSL; this signs with ring,
//! which the TLS stack already carries, and sends the assertion through azure_identity's
//! own client-assertion flow.
//!
//! The assertion is the one "Microsoft identity platform application authentication
//! certificate credentials" (https://learn.microsoft.com/entra/identity-platform/certificate-credentials,
//! "Assertion format") describes: a header with `alg` "PS256", `typ` "JWT" and
//! `x5t#S256`, the "Base64url-encoded SHA-256 thumbprint of the X.509 certificate's DER
//! encoding"; claims `aud` (the tenant's token endpoint), `iss` and `sub` (the client id),
//! `jti`, `nbf`, `iat`, `exp`; a signature with PSS padding (RSASSA-PSS, SHA-256).

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::ErrorKind as AzureErrorKind;
use azure_core::{HttpClient, Url};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PSS_SHA256, RsaKeyPair};
use time::OffsetDateTime;

use super::errors::{CredentialFailure, CredentialFailureKind};

/// How long a signed assertion is valid.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// A certificate credential: a PEM file with the certificate and its RSA private key
/// (PKCS #8 `PRIVATE KEY` or PKCS #1 `RSA PRIVATE KEY`, unencrypted).
pub(crate) struct ClientCertificateCredential {
    http: std::sync::Arc<dyn HttpClient>,
    authority: Url,
    tenant_id: String,
    client_id: String,
    key: RsaKeyPair,
    /// The certificate's SHA-256 thumbprint, base64url: the `x5t#S256` Entra ID matches.
    thumbprint: String,
    cache: Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("client_id", &self.client_id)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ClientCertificateCredential {
    /// Reads the PEM file; the error says what is wrong with it, never its contents.
    pub(crate) fn from_file(
        http: std::sync::Arc<dyn HttpClient>,
        authority: Url,
        tenant_id: &str,
        client_id: &str,
        path: &Path,
    ) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the certificate file {}: {e}", path.display()))?;
        let certificate = pem_block(&pem, "CERTIFICATE")
            .ok_or_else(|| format!("{} holds no CERTIFICATE block", path.display()))?;
        let key = if let Some(der) = pem_block(&pem, "PRIVATE KEY") {
            RsaKeyPair::from_pkcs8(&der)
        } else if let Some(der) = pem_block(&pem, "RSA PRIVATE KEY") {
            RsaKeyPair::from_der(&der)
        } else {
            return Err(format!(
                "{} holds no unencrypted PRIVATE KEY or RSA PRIVATE KEY block",
                path.display()
            ));
        }
        .map_err(|e| {
            format!(
                "the private key in {} is not a usable RSA key: {e}",
                path.display()
            )
        })?;
        Ok(ClientCertificateCredential {
            http,
            authority,
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            key,
            thumbprint: sha256_thumbprint(&certificate),
            cache: Mutex::new(None),
        })
    }

    /// A JWT signed with the certificate's key, for Entra ID's token endpoint.
    fn assertion(&self) -> Result<String, String> {
        let audience = self
            .authority
            .join(&format!("/{}/oauth2/v2.0/token", self.tenant_id))
            .map_err(|e| format!("token endpoint: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = serde_json::json!({
            "aud": audience.as_str(),
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": format!("{:032x}", rand::random::<u128>()),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            azure_core::base64::encode_url_safe(header.to_string()),
            azure_core::base64::encode_url_safe(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PSS_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the client assertion failed".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            azure_core::base64::encode_url_safe(signature)
        ))
    }
}

#[async_trait]
impl TokenCredential for ClientCertificateCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        if let Some(token) = &*self.cache.lock().unwrap_or_else(PoisonError::into_inner)
            && token.expires_on > OffsetDateTime::now_utc() + Duration::from_secs(300)
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion().map_err(|message| {
            azure_core::Error::new(
                AzureErrorKind::Credential,
                CredentialFailure {
                    kind: CredentialFailureKind::Refused,
                    message,
                },
            )
        })?;
        let response = azure_identity::federated_credentials_flow::perform(
            self.http.clone(),
            &self.client_id,
            &assertion,
            scopes,
            &self.tenant_id,
            &self.authority,
        )
        .await?;
        let token = AccessToken::new(
            response.access_token().clone(),
            OffsetDateTime::now_utc() + Duration::from_secs(response.expires_in),
        );
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

/// The `x5t#S256` of a certificate: the base64url SHA-256 digest of its DER encoding.
fn sha256_thumbprint(der: &[u8]) -> String {
    azure_core::base64::encode_url_safe(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The DER bytes of the first `-----BEGIN {label}-----` block.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    azure_core::base64::decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_by_label() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(pem, "CERTIFICATE"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block(pem, "PRIVATE KEY"), None);
    }

    #[test]
    fn the_thumbprint_is_the_base64url_sha256_of_the_der() {
        // SHA-256("abc") = ba7816bf…f20015ad (FIPS 180-2's first example), unpadded.
        assert_eq!(
            sha256_thumbprint(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
