//! JSON Web Tokens (`[auth.jwt]`): the key (a shared secret, a PEM public key or a JWKS
//! file), and the check of one token: algorithm, signature, `exp`/`nbf` with leeway, `aud`,
//! `iss`, the user name claim and the ACL claim.
//!
//! Exactly one algorithm is accepted, the configured one, compared with the token's header
//! before anything else: `none`, and a token signed with an HMAC over an RSA public key
//! (HS/RS confusion), are refused. This module owns checking tokens, not where they come
//! from (the MQTT password field, the bridges' `Authorization` header).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::acl::AclFile;
use super::AuthError;
use crate::config::{JwtAlgorithm, JwtConfig};

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// Signed with another algorithm than the configured one (or `none`).
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    /// No key with the token's `kid` (JWKS).
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (or is missing).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `aud`, `iss`, the user name claim or the ACL claim is wrong or missing.
    #[error("claims not accepted")]
    BadClaims,
    /// The MQTT user name differs from the token's user name claim.
    #[error("user name does not match the token")]
    UsernameMismatch,
}

/// A token that passed.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The user name claim.
    pub username: String,
    /// When the token stops being accepted (`exp` plus the leeway).
    pub expires_at: SystemTime,
    /// ACL rules carried in the ACL claim.
    pub acl: Option<AclFile>,
}

/// The verification keys.
#[derive(Clone)]
enum Keys {
    /// One key (a secret or a PEM public key).
    Single(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (without one, the only key).
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// A loaded `[auth.jwt]`.
#[derive(Clone)]
pub struct JwtVerifier {
    config: JwtConfig,
    keys: Keys,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.config.algorithm)
            .finish_non_exhaustive()
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl JwtVerifier {
    /// Loads the secret or the public keys `config` names.
    ///
    /// # Errors
    /// [`AuthError`] naming the key file and what is wrong with it.
    pub fn load(config: &JwtConfig) -> Result<JwtVerifier, AuthError> {
        let keys = if config.algorithm.is_hmac() {
            let path = &config.secret_file;
            let text = read(path)?;
            let secret = text.trim_end();
            if secret.len() < 16 {
                return Err(AuthError::new(
                    path,
                    None,
                    "secret shorter than 16 bytes".into(),
                ));
            }
            Keys::Single(DecodingKey::from_secret(secret.as_bytes()))
        } else {
            load_public(config.algorithm, &config.public_key_file)?
        };
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = !config.audience.is_empty();
        if !config.audience.is_empty() {
            validation.set_audience(&[&config.audience]);
        }
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
        }
        validation.set_required_spec_claims(&["exp"]);
        Ok(JwtVerifier {
            config: config.clone(),
            keys,
            validation,
        })
    }

    /// Checks `token` (the MQTT password, or a bridge's Bearer token); a given `username`
    /// must equal the token's user name claim.
    ///
    /// # Errors
    /// The [`JwtError`] that refused it.
    pub fn verify(&self, token: &[u8], username: Option<&str>) -> Result<Verified, JwtError> {
        let token = std::str::from_utf8(token).map_err(|_| JwtError::Malformed)?;
        let header = header_of(token)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        if alg != format!("{:?}", self.config.algorithm) {
            return Err(JwtError::WrongAlgorithm);
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let key = match &self.keys {
            Keys::Single(key) => key,
            Keys::Set(keys) => match kid {
                Some(kid) => keys
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid))
                    .map(|(_, key)| key)
                    .ok_or(JwtError::UnknownKey)?,
                None if keys.len() == 1 => &keys[0].1,
                None => return Err(JwtError::UnknownKey),
            },
        };
        let data = jsonwebtoken::decode::<Value>(token, key, &self.validation)
            .map_err(|e| map_error(e.kind()))?;
        self.accept(&data.claims, username)
    }

    /// The user name, expiry and ACL of verified `claims`.
    fn accept(&self, claims: &Value, username: Option<&str>) -> Result<Verified, JwtError> {
        let name = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(JwtError::BadClaims)?;
        if username.is_some_and(|given| !given.is_empty() && given != name) {
            return Err(JwtError::UsernameMismatch);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtError::BadClaims)?;
        let acl = match claims.get(&self.config.acl_claim) {
            None | Some(Value::Null) => None,
            Some(value) => Some(super::claims::parse_acl(value).map_err(|_| JwtError::BadClaims)?),
        };
        Ok(Verified {
            username: name.to_string(),
            expires_at: UNIX_EPOCH
                + Duration::from_secs(exp.saturating_add(self.config.leeway_secs)),
            acl,
        })
    }

    /// How carried ACL rules combine with the ACL file.
    pub fn acl_mode(&self) -> crate::config::ClaimAclMode {
        self.config.acl_mode
    }

    /// Whether the bridges accept `?access_token=`.
    pub fn access_token_in_url(&self) -> bool {
        self.config.access_token_in_url
    }
}

/// Whether `text` looks like a JWT (three dot-separated parts), so a bridge's Bearer value
/// is taken as a token rather than as `user:password`.
pub fn looks_like_token(text: &str) -> bool {
    text.split('.').count() == 3 && !text.contains(':')
}

fn header_of(token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    let first = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::Crypto(_) => {
            JwtError::BadSignature
        }
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            JwtError::WrongAlgorithm
        }
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience | K::InvalidIssuer | K::InvalidSubject | K::MissingRequiredClaim(_) => {
            JwtError::BadClaims
        }
        _ => JwtError::Malformed,
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path)
        .map_err(|e| AuthError::new(path, None, format!("cannot read: {e}")))
}

/// A PEM public key, or a JWKS with at least one key usable for `alg`.
fn load_public(alg: JwtAlgorithm, path: &Path) -> Result<Keys, AuthError> {
    let text = read(path)?;
    let bad = |message: String| AuthError::new(path, None, message);
    if text.trim_start().starts_with('{') {
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
        let keys: Vec<(Option<String>, DecodingKey)> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone(), key))
            })
            .collect();
        if keys.is_empty() {
            return Err(bad("the JWKS holds no usable key".into()));
        }
        return Ok(Keys::Set(keys));
    }
    let key = match alg {
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(text.as_bytes()),
        _ => DecodingKey::from_rsa_pem(text.as_bytes()),
    }
    .map_err(|e| bad(format!("not a PEM public key for {alg:?}: {e}")))?;
    Ok(Keys::Single(key))
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
