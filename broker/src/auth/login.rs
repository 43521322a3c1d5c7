//! Checking one client's credentials against the sources of `[auth]`, in the configured
//! order: the password file, JSON Web Tokens, the HTTP callout. The first source that
//! accepts decides; a source that refuses (or cannot judge: no password, no user name)
//! passes the client to the next; when none accepts, the client is refused. Every decision
//! is logged at debug level with the source that made it, and counted.
//!
//! What the accepting source carried (token or callout ACL rules, superuser) is recorded
//! per user name in the [`super::claims::ClaimRegistry`], where ACL derivation finds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tern_codec::ByteStr;

use super::callout::Decision;
use super::claims::Carried;
use super::jwt::JwtError;
use super::{AuthState, LoginError};
use crate::config::{AuthSource, CalloutFailure};
use crate::metrics::Metrics;

/// What a client presented. `Debug` leaves the password (or token) out.
#[derive(Clone)]
pub struct Credentials {
    /// The MQTT client identifier (bridges: [`crate::auth::BRIDGE_CLIENT_ID`]).
    pub client_id: String,
    /// The user name, if any.
    pub username: Option<ByteStr>,
    /// The password (or token), if any.
    pub password: Option<Bytes>,
    /// The peer's address, when known.
    pub peer: Option<SocketAddr>,
    /// `mqtt3.1`, `mqtt3.1.1`, `mqtt5`, `sse`, `ws`.
    pub protocol: &'static str,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// A client that was let in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// The source that accepted it (`None`: anonymous, or no source configured).
    pub source: Option<AuthSource>,
    /// The user name it is known by: a token's user name claim replaces the given one.
    pub username: Option<String>,
    /// When its credentials expire (a token's `exp`): the connection is closed then.
    pub expires_at: Option<SystemTime>,
}

/// How long until `expires_at` (a token's `exp`); zero once it has passed.
pub fn time_left(expires_at: SystemTime) -> std::time::Duration {
    expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// What one source said.
enum Verdict {
    Accepted(Granted, Option<Carried>),
    /// Refused or could not judge: try the next source.
    Next,
    /// Refused for good (a callout that failed with `on_error = "deny"`).
    Stop(LoginError),
}

/// Checks `credentials` against `state`'s sources.
///
/// # Errors
/// The [`LoginError`] to answer with.
pub async fn authenticate(
    state: Arc<AuthState>,
    credentials: Credentials,
    metrics: &Metrics,
) -> Result<Granted, LoginError> {
    if let Some(decided) = without_sources(
        &state,
        credentials.username.as_deref(),
        credentials.password.is_some(),
    ) {
        return decided;
    }
    for &source in &state.order {
        let verdict = match source {
            AuthSource::PasswordFile => password_file(&state, &credentials).await,
            AuthSource::Jwt => jwt(&state, &credentials, metrics),
            AuthSource::Http => callout(&state, &credentials, metrics).await,
        };
        match verdict {
            Verdict::Accepted(granted, carried) => {
                if let Some(user) = &granted.username {
                    state.claims.set(user, carried);
                }
                tracing::debug!(client_id = %credentials.client_id, source = source.name(), username = ?granted.username, "authenticated");
                return Ok(granted);
            }
            Verdict::Stop(error) => return Err(error),
            Verdict::Next => {}
        }
    }
    Err(LoginError::BadCredentials)
}

/// The decision when no source has to run: no credentials presented (or only a password
/// with nothing to check it as a token), or no source configured. `None`: ask the sources.
/// A connection's handshake calls this first, so a broker without sources never builds the
/// (larger) [`authenticate`] future.
pub fn without_sources(
    state: &AuthState,
    username: Option<&str>,
    has_password: bool,
) -> Option<Result<Granted, LoginError>> {
    let token_sources = state.jwt.is_some() || state.callout.is_some();
    if username.is_none() && (!has_password || !token_sources) {
        return Some(if state.allow_anonymous {
            Ok(Granted::default())
        } else {
            Err(LoginError::AnonymousRefused)
        });
    }
    if state.has_sources() {
        return None;
    }
    // No source to check the name against: it only selects an ACL section (Mosquitto).
    Some(if state.allow_anonymous {
        Ok(Granted {
            username: username.map(str::to_string),
            ..Granted::default()
        })
    } else {
        Err(LoginError::BadCredentials)
    })
}

async fn password_file(state: &Arc<AuthState>, credentials: &Credentials) -> Verdict {
    let (Some(file), Some(user), Some(password)) = (
        &state.passwords,
        credentials.username.clone(),
        credentials.password.clone(),
    ) else {
        return Verdict::Next;
    };
    let ok = if file
        .get(&user)
        .is_some_and(super::PasswordHash::is_expensive)
    {
        // Argon2id and many PBKDF2 rounds run on the blocking pool.
        let state = state.clone();
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            state
                .passwords
                .as_ref()
                .is_some_and(|f| f.verify(&user, &password))
        })
        .await
        .unwrap_or(false)
    } else {
        file.verify(&user, &password)
    };
    if !ok {
        tracing::debug!(client_id = %credentials.client_id, source = "password_file", "refused");
        return Verdict::Next;
    }
    let granted = Granted {
        source: Some(AuthSource::PasswordFile),
        username: Some(user.to_string()),
        expires_at: None,
    };
    Verdict::Accepted(granted, None)
}

fn jwt(state: &AuthState, credentials: &Credentials, metrics: &Metrics) -> Verdict {
    let (Some(verifier), Some(token)) = (&state.jwt, &credentials.password) else {
        return Verdict::Next;
    };
    match verifier.verify(token, credentials.username.as_deref()) {
        Ok(verified) => {
            Metrics::add(&metrics.auth_jwt_accepted, 1);
            let carried = verified
                .acl
                .map(|rules| Carried::Rules(rules, verifier.acl_mode()));
            let granted = Granted {
                source: Some(AuthSource::Jwt),
                username: Some(verified.username),
                expires_at: Some(verified.expires_at),
            };
            Verdict::Accepted(granted, carried)
        }
        Err(error) => {
            let counter = match error {
                JwtError::Expired => &metrics.auth_jwt_refused_expired,
                JwtError::NotYetValid => &metrics.auth_jwt_refused_not_yet_valid,
                JwtError::BadSignature | JwtError::UnknownKey => {
                    &metrics.auth_jwt_refused_signature
                }
                JwtError::WrongAlgorithm => &metrics.auth_jwt_refused_algorithm,
                JwtError::Malformed | JwtError::BadClaims | JwtError::UsernameMismatch => {
                    &metrics.auth_jwt_refused_claims
                }
            };
            Metrics::add(counter, 1);
            tracing::debug!(client_id = %credentials.client_id, source = "jwt", %error, "refused");
            Verdict::Next
        }
    }
}

async fn callout(state: &AuthState, credentials: &Credentials, metrics: &Metrics) -> Verdict {
    let Some(callout) = &state.callout else {
        return Verdict::Next;
    };
    match callout.check(credentials).await {
        Ok((decision, cached)) => {
            if cached {
                Metrics::add(&metrics.auth_http_cache_hits, 1);
            }
            match decision {
                Decision::Allow(carried) => {
                    Metrics::add(&metrics.auth_http_accepted, 1);
                    let granted = Granted {
                        source: Some(AuthSource::Http),
                        username: credentials.username.as_deref().map(str::to_string),
                        expires_at: None,
                    };
                    Verdict::Accepted(granted, carried)
                }
                Decision::Deny => {
                    Metrics::add(&metrics.auth_http_denied, 1);
                    tracing::debug!(client_id = %credentials.client_id, source = "http", cached, "refused");
                    Verdict::Next
                }
            }
        }
        Err(error) => {
            Metrics::add(&metrics.auth_http_errors, 1);
            tracing::debug!(client_id = %credentials.client_id, source = "http", %error, "callout failed");
            match callout.on_error() {
                CalloutFailure::Deny => Verdict::Stop(LoginError::ServiceUnavailable),
                CalloutFailure::Next => Verdict::Next,
            }
        }
    }
}
