//! What every bridge endpoint checks before it serves: the `Origin` (CORS allow-list, and
//! cross-site WebSocket refusal), the credentials (HTTP Basic, `Authorization: Bearer` with
//! a JSON Web Token or `user:password`, `?access_token=` for `EventSource`, or
//! `?token=user:password` unless passwords in URLs are off; checked like a CONNECT by the
//! sources of `[auth]`), the read ACL of each filter; plus query-string parsing and the WebSocket upgrade
//! handshake.
//!
//! Bridge clients have no MQTT client identifier: ACL `pattern` lines see the client id
//! [`BRIDGE_CLIENT_ID`].
//!
//! An [`Identity`] is checked against the auth state in force when the request comes; a
//! long-lived client (`/ws`) refreshes its ACL after a reload ([`Identity::refresh`]) before
//! each op. What reaches a client's ring is governed by the ring's own read ACL
//! ([`super::read_acl`]), which a reload updates in place.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tern_codec::ByteStr;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::{self, Access, ClientAcl, SubscribeVerdict};
use crate::broker::Broker;
use crate::http::{full, json_error, Body};
use crate::metrics::Metrics;

/// The client identifier ACL patterns (`%c`) see for bridge clients.
pub const BRIDGE_CLIENT_ID: &str = "tern-http-bridge";

/// Who a bridge request authenticated as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name; `None` for anonymous.
    pub username: Option<String>,
    /// The client's ACL; `None` when no ACL file is configured.
    pub acl: Option<Arc<ClientAcl>>,
    /// The auth generation `acl` was derived under ([`crate::auth::Auth::generation`]).
    generation: u64,
    /// When the credentials expire (a token's `exp`): the stream is ended then.
    pub expires_at: Option<std::time::SystemTime>,
}

impl Identity {
    /// When the credentials expire, on the runtime's clock.
    pub fn expiry_instant(&self) -> Option<tokio::time::Instant> {
        let left = auth::login::time_left(self.expires_at?);
        Some(tokio::time::Instant::now() + left)
    }

    /// Re-derives the ACL when the auth files were reloaded since it was derived (one atomic
    /// load otherwise). The user stays authenticated: as for MQTT connections, a reload does
    /// not log clients out.
    pub fn refresh(&mut self, broker: &Broker) {
        let generation = broker.auth().generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.acl = broker
            .auth()
            .current()
            .client_acl(BRIDGE_CLIENT_ID, self.username.as_deref());
    }

    /// Checks that the client may read something of every filter in `filters` (a 403, or an
    /// `error` reply, otherwise). Which messages then reach it is the ring's business.
    ///
    /// # Errors
    /// The first filter the client may not read at all.
    pub fn check_readable(&self, broker: &Broker, filters: &[Box<str>]) -> Result<(), String> {
        let Some(acl) = &self.acl else {
            return Ok(());
        };
        for filter in filters {
            if acl.check_subscribe(filter) == SubscribeVerdict::Denied {
                Metrics::add(&broker.metrics().acl_denied, 1);
                return Err(format!("not authorised to read {filter:?}"));
            }
        }
        Ok(())
    }

    /// Whether the client may read `topic` (retained messages sent on subscribe).
    pub fn may_read(&self, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| acl.allows_read(topic))
    }

    /// Whether the client may publish to `topic` (call [`Identity::refresh`] first on a
    /// long-lived client).
    pub fn may_write(&self, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.check(topic, Access::Write))
    }
}

/// Authenticates a request against the `[auth]` state in force.
///
/// # Errors
/// A 401 response (counted in `auth_failures`).
pub async fn authenticate<B>(
    broker: &Broker,
    request: &Request<B>,
) -> Result<Identity, Box<Response<Body>>> {
    // The generation before the state: a reload in between makes the first refresh redo it.
    let generation = broker.auth().generation();
    let state = broker.auth().current();
    let refused = |message: &str| {
        Metrics::add(&broker.metrics().auth_failures, 1);
        let mut response = json_error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tern\""),
        );
        Box::new(response)
    };
    let (username, password) = match credentials(&state, request) {
        Ok(Some((user, password))) => (user, Some(password)),
        Ok(None) => (None, None),
        Err(InUrl) => {
            Metrics::add(&broker.metrics().bridge_password_in_url_refused, 1);
            return Err(refused(
                "passwords in URLs are turned off: use the Authorization header",
            ));
        }
    };
    let credentials = auth::Credentials {
        client_id: BRIDGE_CLIENT_ID.to_string(),
        username: username.map(ByteStr::from),
        password: password.map(Bytes::from),
        peer: None,
        protocol: if request.uri().path() == "/sse" {
            "sse"
        } else {
            "ws"
        },
    };
    let granted = auth::authenticate(state.clone(), credentials, broker.metrics())
        .await
        .map_err(|_| refused("authentication required"))?;
    let username = granted.username;
    let acl = state.client_acl(BRIDGE_CLIENT_ID, username.as_deref());
    Ok(Identity {
        username,
        acl,
        generation,
        expires_at: granted.expires_at,
    })
}

/// A password in the URL while `allow_password_in_url` is off.
struct InUrl;

/// The user name (none for a token) and password or token, from `Authorization: Basic`,
/// `Authorization: Bearer` (a JSON Web Token, or `user:password`), `?access_token=` (a
/// token, when `[auth.jwt] access_token_in_url`) or `?token=user:password` (when
/// `allow_password_in_url`).
fn credentials<B>(
    state: &auth::AuthState,
    request: &Request<B>,
) -> Result<Option<(Option<String>, String)>, InUrl> {
    let jwt_on = state.jwt.is_some();
    let split = |text: String| -> Option<(Option<String>, String)> {
        let (user, password) = text.split_once(':')?;
        Some((Some(user.to_string()), password.to_string()))
    };
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '));
    if let Some((scheme, value)) = header {
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            return Ok(decoded.and_then(split));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            if jwt_on && auth::jwt::looks_like_token(value) {
                return Ok(Some((None, value.to_string())));
            }
            return Ok(split(value.to_string()));
        }
        return Ok(None);
    }
    let params = query_params(request.uri().query().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(token) = param("access_token") {
        let allowed = state.jwt.as_ref().is_some_and(|j| j.access_token_in_url());
        return if allowed {
            Ok(Some((None, token)))
        } else {
            Err(InUrl)
        };
    }
    match param("token") {
        Some(_) if !state.allow_password_in_url => Err(InUrl),
        Some(token) => Ok(split(token)),
        None => Ok(None),
    }
}

/// Checks the `Origin` header. Returns the origin to echo in CORS headers when it is on the
/// allow-list. A WebSocket upgrade from an origin that is neither the listener's own host
/// nor allow-listed is refused (403): browsers do not apply CORS to WebSockets.
///
/// # Errors
/// The 403 response.
pub fn check_origin<B>(
    broker: &Broker,
    request: &Request<B>,
) -> Result<Option<HeaderValue>, Box<Response<Body>>> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = origin.to_str().unwrap_or("");
    let allowed = &broker.http_config().cors_allowed_origins;
    if allowed.iter().any(|a| a == "*" || a == text) {
        return Ok(Some(origin.clone()));
    }
    let is_upgrade = request.headers().contains_key(header::UPGRADE);
    if is_upgrade && !same_origin(request, text) {
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "origin not allowed",
        )));
    }
    Ok(None)
}

fn same_origin<B>(request: &Request<B>, origin: &str) -> bool {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Adds the CORS headers for an allow-listed `origin`.
pub fn add_cors_headers(response: &mut Response<Body>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Last-Event-ID"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
}

/// The answer to a CORS preflight (the headers are added by the caller when the origin is
/// allowed).
pub fn preflight() -> Response<Body> {
    full(StatusCode::NO_CONTENT, "text/plain", "")
}

/// The `key=value` pairs of a query string, percent-decoded. `+` stays a plus sign (it is an
/// MQTT wildcard; send a space as `%20`). Pairs that do not decode to UTF-8 are skipped.
pub fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `text` percent-decoded (`+` stays a plus sign); `None` when it is not valid UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a WebSocket upgrade request (RFC 6455 section 4.2.1) and builds the 101 answer,
/// selecting `protocol` when given (the client must offer it).
///
/// # Errors
/// A 400 (426 without `Upgrade: websocket`) response.
pub fn websocket_accept(
    request: &Request<Incoming>,
    protocol: Option<&'static str>,
) -> Result<Response<Body>, Box<Response<Body>>> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(Box::new(json_error(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket upgrade required",
        )));
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::SEC_WEBSOCKET_VERSION, "13")
    {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad WebSocket upgrade request",
        )));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key missing",
        )));
    };
    if let Some(protocol) = protocol {
        if !has_token(header::SEC_WEBSOCKET_PROTOCOL, protocol) {
            return Err(Box::new(json_error(
                StatusCode::BAD_REQUEST,
                "the WebSocket subprotocol \"mqtt\" is required",
            )));
        }
    }
    let mut response = full(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    let out = response.headers_mut();
    out.remove(header::CONTENT_TYPE);
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        out.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_keeps_plus() {
        let params = query_params("filter=a/+/b&filter=c%2F%23&retained=1&x=%zz&last_event_id=5");
        assert_eq!(
            params,
            vec![
                ("filter".to_string(), "a/+/b".to_string()),
                ("filter".to_string(), "c/#".to_string()),
                ("retained".to_string(), "1".to_string()),
                ("last_event_id".to_string(), "5".to_string()),
            ]
        );
    }
}
