//! The HTTP authentication callout (`[auth.http]`): POST a client's credentials to a
//! service and take its answer (allow or deny, optional ACL rules, superuser), with a
//! timeout and a bounded cache of recent answers.
//!
//! Request body (JSON): `{"client_id", "username", "password", "peer", "protocol"}`.
//! Answer: status 200 and `{"result": "allow" | "deny", "superuser": bool, "acl":
//! {"publish": [..], "subscribe": [..]}}`; anything else is a failure, which
//! `on_error` turns into a refusal or a pass to the next source ([`super::login`]).
//!
//! The cache is keyed by a SHA-256 of the credentials and the peer address, so no password
//! is kept in memory; it lives as long as one load of `[auth]` (a reload empties it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::claims::{self, Carried};
use super::login::Credentials;
use crate::config::HttpAuthConfig;
use crate::http_client::{self, HttpClientError};

/// What the service decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The client may connect, with what the answer carried (ACL rules, superuser).
    Allow(Option<Carried>),
    /// The client is refused.
    Deny,
}

/// Why the service gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    /// The request failed (connect, timeout, HTTP).
    #[error(transparent)]
    Request(#[from] HttpClientError),
    /// A status other than 200.
    #[error("status {0}")]
    Status(u16),
    /// The body is not the expected JSON.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

type CacheKey = [u8; 32];

/// A loaded `[auth.http]`.
#[derive(Debug)]
pub struct HttpCallout {
    config: HttpAuthConfig,
    cache: Mutex<HashMap<CacheKey, (Instant, Decision)>>,
}

impl HttpCallout {
    /// The callout `config` describes (nothing is contacted yet).
    pub fn new(config: &HttpAuthConfig) -> HttpCallout {
        HttpCallout {
            config: config.clone(),
            cache: Mutex::default(),
        }
    }

    /// What a failed callout means.
    pub fn on_error(&self) -> crate::config::CalloutFailure {
        self.config.on_error
    }

    /// Asks the service (or the cache) about `credentials`. Returns the decision and
    /// whether it came from the cache.
    ///
    /// # Errors
    /// [`CalloutError`] when the service gave no usable answer in time.
    pub async fn check(&self, credentials: &Credentials) -> Result<(Decision, bool), CalloutError> {
        let key = cache_key(credentials);
        let ttl = Duration::from_millis(self.config.cache_ttl_ms);
        if !ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, decision)) = cache.get(&key) {
                if at.elapsed() < ttl {
                    return Ok((decision.clone(), true));
                }
            }
        }
        let decision = self.ask(credentials).await?;
        if !ttl.is_zero() && self.config.cache_max_entries > 0 {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= self.config.cache_max_entries {
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if cache.len() < self.config.cache_max_entries {
                cache.insert(key, (Instant::now(), decision.clone()));
            }
        }
        Ok((decision, false))
    }

    async fn ask(&self, credentials: &Credentials) -> Result<Decision, CalloutError> {
        let body = serde_json::json!({
            "client_id": credentials.client_id,
            "username": credentials.username.as_deref(),
            "password": credentials.password.as_deref().map(String::from_utf8_lossy),
            "peer": credentials.peer.map(|p| p.to_string()),
            "protocol": credentials.protocol,
        });
        let answer = http_client::send(
            hyper::Method::POST,
            &self.config.url,
            &[("content-type", "application/json")],
            Some(Bytes::from(body.to_string())),
            Duration::from_millis(self.config.timeout_ms),
        )
        .await?;
        if answer.status != hyper::StatusCode::OK {
            return Err(CalloutError::Status(answer.status.as_u16()));
        }
        self.parse(&answer.body)
    }

    fn parse(&self, body: &[u8]) -> Result<Decision, CalloutError> {
        let bad = |m: &str| CalloutError::BadAnswer(m.to_string());
        let value: Value = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
        match value.get("result").and_then(Value::as_str) {
            Some("deny") => return Ok(Decision::Deny),
            Some("allow") => {}
            _ => return Err(bad("result must be \"allow\" or \"deny\"")),
        }
        if value.get("superuser").and_then(Value::as_bool) == Some(true) {
            return Ok(Decision::Allow(Some(Carried::Superuser)));
        }
        let carried = match value.get("acl") {
            None | Some(Value::Null) => None,
            Some(acl) => Some(Carried::Rules(
                claims::parse_acl(acl).map_err(|e| bad(&e))?,
                self.config.acl_mode,
            )),
        };
        Ok(Decision::Allow(carried))
    }
}

fn cache_key(credentials: &Credentials) -> CacheKey {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(credentials.client_id.as_bytes());
    field(credentials.username.as_deref().unwrap_or("").as_bytes());
    field(credentials.password.as_deref().unwrap_or(b""));
    field(
        credentials
            .peer
            .map(|p| p.ip().to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    field(credentials.protocol.as_bytes());
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let callout = HttpCallout::new(&HttpAuthConfig::default());
        assert_eq!(
            callout.parse(br#"{"result":"deny"}"#).ok(),
            Some(Decision::Deny)
        );
        assert_eq!(
            callout
                .parse(br#"{"result":"allow","superuser":true}"#)
                .ok(),
            Some(Decision::Allow(Some(Carried::Superuser)))
        );
        assert!(matches!(
            callout.parse(br#"{"result":"allow","acl":{"publish":["a/%c"]}}"#),
            Ok(Decision::Allow(Some(Carried::Rules(..))))
        ));
        assert!(callout.parse(br#"{"result":"maybe"}"#).is_err());
        assert!(callout.parse(b"not json").is_err());
    }
}
