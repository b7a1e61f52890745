//! Bearer tokens: each has a name (who, in the audit log) and a role. Only the SHA-256
//! of each token is kept; a presented token is hashed and compared with every configured
//! hash in constant time. Failures are counted (`fleetscale_api_auth_failures_total`)
//! and logged without the token.

use std::path::Path;

use anyhow::Context;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::TokenConfig;

/// What a token may do: `read` the fleets, or also `operate` them (pause, override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }

    /// Whether this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Operate || needed == Role::Read
    }
}

/// Who made a call: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug)]
struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The configured tokens, as hashes.
#[derive(Debug, Default)]
pub struct Tokens(Vec<Token>);

/// The SHA-256 of `token`.
pub fn hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// 64 hex digits as 32 bytes.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// A token that matches none configured.
    Unknown,
    /// A known token whose role does not allow the call.
    Forbidden,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown_token",
            Refusal::Forbidden => "forbidden",
        }
    }
}

impl Tokens {
    /// Hashes of the configured tokens; token files are read and hashed now. Errors name
    /// the field and the file (never the token).
    pub fn load(configs: &[TokenConfig]) -> anyhow::Result<Tokens> {
        let mut tokens = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let at = format!("agent.api.tokens[{i}]");
            let hash = match (&config.sha256, &config.token_file) {
                (Some(hex), None) => parse_hash(hex)
                    .with_context(|| format!("{at}.sha256: must be 64 hex digits"))?,
                (None, Some(file)) => hash(&read_token(file, &at)?),
                _ => anyhow::bail!("{at}: give exactly one of sha256 and token_file"),
            };
            tokens.push(Token {
                name: config.name.clone(),
                role: config.role,
                hash,
            });
        }
        Ok(Tokens(tokens))
    }

    /// Tokens given as `(name, role, token)`, for tests and tools.
    pub fn from_plain(tokens: &[(&str, Role, &str)]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|(name, role, token)| Token {
                    name: (*name).into(),
                    role: *role,
                    hash: hash(token),
                })
                .collect(),
        )
    }

    /// Who holds the token in `authorization` (the header's value), if it may do what
    /// `needed` allows.
    pub fn check(&self, authorization: Option<&[u8]>, needed: Role) -> Result<Caller, Refusal> {
        let header = authorization.ok_or(Refusal::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Malformed)?;
        let presented = ring::digest::digest(&ring::digest::SHA256, token);
        // Every hash is compared, so that the time taken says nothing of which matched.
        let mut found: Option<&Token> = None;
        for candidate in &self.0 {
            if bool::from(candidate.hash.ct_eq(presented.as_ref())) {
                found = Some(candidate);
            }
        }
        let token = found.ok_or(Refusal::Unknown)?;
        if !token.role.allows(needed) {
            return Err(Refusal::Forbidden);
        }
        Ok(Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }
}

fn read_token(file: &Path, at: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{at}.token_file: cannot read {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("{at}.token_file: {} is empty", file.display());
    }
    Ok(token.to_string())
}

/// The API's metrics, in the agent's registry.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub auth_failures: IntCounterVec,
}

impl ApiMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "fleetscale_api_auth_failures_total",
                "Management API calls refused, by reason (missing, malformed, unknown_token, forbidden).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(ApiMetrics { auth_failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_and_role() {
        let tokens = Tokens::from_plain(&[
            ("viewer", Role::Read, "read-secret"),
            ("alice", Role::Operate, "operate-secret"),
        ]);
        let caller = tokens.check(Some(b"Bearer operate-secret"), Role::Operate);
        assert_eq!(caller.map(|c| c.name), Ok("alice".to_string()));
        assert_eq!(
            tokens
                .check(Some(b"Bearer read-secret"), Role::Read)
                .map(|c| c.name),
            Ok("viewer".to_string())
        );
        assert_eq!(
            tokens.check(Some(b"Bearer read-secret"), Role::Operate),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            tokens.check(Some(b"Bearer nope"), Role::Read),
            Err(Refusal::Unknown)
        );
        assert_eq!(tokens.check(None, Role::Read), Err(Refusal::Missing));
        assert_eq!(
            tokens.check(Some(b"Basic abc"), Role::Read),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn a_hash_is_sha256_hex_as_sha256sum_prints_it() {
        // printf %s secret | sha256sum
        let hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        assert_eq!(parse_hash(hex), Some(hash("secret")));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(parse_hash(&"zz".repeat(32)), None);
    }
}
