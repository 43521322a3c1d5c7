//! The admin API: JSON under `/api/v1` on the HTTP listener, for operators, `tern ctl` and
//! the dashboard's clients table. Off unless `[admin] enabled`; every request needs
//! `Authorization: Bearer <token>` with the token of `[admin] token_file` (compared in
//! constant time, never logged, never taken from the URL).
//!
//! - [`clients`]: connected clients (list, details, kick), sessions (list, details,
//!   delete), subscriptions and trie statistics.
//! - [`retained`]: retained messages (list, read, delete) and publishing as an operator.
//! - `openapi.json`: the description of all of it, served at `/api/v1/openapi.json`.
//!
//! This module owns the admin credentials, the dispatch of `/api/v1` paths and the JSON
//! conventions (errors are `{"error": "..."}` with 400, 401, 404, 405 or 503).

pub mod clients;
pub mod retained;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::config::AdminConfig;
use crate::http::bridge::access::query_params;
use crate::http::bridge::Bridges;
use crate::http::{full, json_error, Body};
use crate::metrics::Metrics;

/// The API's description.
const OPENAPI: &str = include_str!("openapi.json");

/// The largest request body accepted.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The answer to a reload request: a summary, or why it failed.
pub type ReloadReply = Result<String, String>;

/// Why the admin token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file could not be read.
    #[error("admin.token_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token is shorter than 16 bytes.
    #[error("admin.token_file {0}: token shorter than 16 bytes")]
    TooShort(String),
}

/// The admin credentials and the way to ask the process for a reload.
#[derive(Debug, Default)]
pub struct Admin {
    /// The token in force; `None`: the API is off (or its token could not be loaded).
    token: RwLock<Option<Arc<[u8]>>>,
    /// Where `POST /api/v1/reload` sends its request (installed by `main`, which owns the
    /// configuration path and the log handle).
    reload: OnceLock<mpsc::Sender<oneshot::Sender<ReloadReply>>>,
}

/// Reads the token of `config` (`None` when the API is off).
///
/// # Errors
/// [`AdminError`] when the file cannot be read or the token is too short.
pub fn load_token(config: &AdminConfig) -> Result<Option<Arc<[u8]>>, AdminError> {
    if !config.enabled {
        return Ok(None);
    }
    let path: &Path = &config.token_file;
    let text = std::fs::read_to_string(path).map_err(|source| AdminError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(AdminError::TooShort(path.display().to_string()));
    }
    Ok(Some(Arc::from(token.as_bytes())))
}

impl Admin {
    /// The admin state of `config`; a token that cannot be loaded is logged and the API
    /// stays closed (fail closed).
    pub fn new(config: &AdminConfig) -> Admin {
        let token = load_token(config).unwrap_or_else(|e| {
            tracing::error!(error = %e, "admin API closed");
            None
        });
        Admin {
            token: RwLock::new(token),
            reload: OnceLock::new(),
        }
    }

    /// Puts the token of `config` in force (reload).
    ///
    /// # Errors
    /// [`AdminError`]; the old token stays in force.
    pub fn reload_token(&self, config: &AdminConfig) -> Result<(), AdminError> {
        let token = load_token(config)?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
        Ok(())
    }

    /// Installs where reload requests go (once).
    pub fn set_reload_hook(&self, hook: mpsc::Sender<oneshot::Sender<ReloadReply>>) {
        let _ = self.reload.set(hook);
    }

    fn token(&self) -> Option<Arc<[u8]>> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `request` carries the admin token.
    fn authorized<B>(&self, request: &Request<B>) -> bool {
        let Some(token) = self.token() else {
            return false;
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, value)| value.trim().as_bytes());
        presented.is_some_and(|p| bool::from(p.ct_eq(&token)))
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = full(status, "application/json", value.to_string());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A 400 with a JSON error, counted.
pub(crate) fn bad_request(bridges: &Bridges, message: &str) -> Response<Body> {
    Metrics::add(&bridges.broker().metrics().admin_bad_requests, 1);
    json_error(StatusCode::BAD_REQUEST, message)
}

/// The query string's parameters.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn of<B>(request: &Request<B>) -> Query {
        Query(query_params(request.uri().query().unwrap_or("")))
    }

    /// The value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `offset` and `limit` (default 0 and 100, limit at most 1000).
    ///
    /// # Errors
    /// What is wrong, for a 400.
    pub(crate) fn page(&self) -> Result<(usize, usize), String> {
        let number = |name: &str, default: usize| -> Result<usize, String> {
            self.get(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{name} must be a non-negative integer"))
            })
        };
        let limit = number("limit", 100)?;
        if limit == 0 || limit > 1000 {
            return Err("limit must be 1 to 1000".into());
        }
        Ok((number("offset", 0)?, limit))
    }
}

/// Reads a JSON request body.
///
/// # Errors
/// What is wrong, for a 400.
pub(crate) async fn read_json(request: Request<Incoming>) -> Result<Value, String> {
    let body: Bytes = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("the body is not JSON: {e}"))
}

/// Serves a request under `/api/v1`.
pub async fn route(
    bridges: &Arc<Bridges>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let broker = bridges.broker();
    Metrics::add(&broker.metrics().admin_requests, 1);
    let admin = bridges.admin();
    if admin.token().is_none() {
        Metrics::add(&broker.metrics().admin_unauthorized, 1);
        return json_error(StatusCode::NOT_FOUND, "the admin API is not enabled");
    }
    if !admin.authorized(&request) {
        Metrics::add(&broker.metrics().admin_unauthorized, 1);
        tracing::debug!(%peer, path = request.uri().path(), "admin API: missing or wrong token");
        let mut response = json_error(StatusCode::UNAUTHORIZED, "admin token required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tern-admin\""),
        );
        return response;
    }
    let path = request.uri().path().to_string();
    let rest = path.strip_prefix("/api/v1").unwrap_or("");
    let method = request.method().clone();
    let query = Query::of(&request);
    tracing::debug!(%peer, %method, path = %path, "admin API request");
    let segments: Vec<&str> = rest.trim_start_matches('/').splitn(2, '/').collect();
    match (
        segments.first().copied().unwrap_or(""),
        segments.get(1).copied(),
    ) {
        ("openapi.json", None) if method == Method::GET => {
            full(StatusCode::OK, "application/json", OPENAPI)
        }
        ("clients" | "sessions" | "subscriptions", _) => {
            clients::route(bridges, &method, rest, &query)
        }
        ("retained", _) => retained::route(bridges, &method, rest, &query),
        ("publish", None) if method == Method::POST => match read_json(request).await {
            Ok(body) => retained::publish(bridges, &body),
            Err(e) => bad_request(bridges, &e),
        },
        ("reload", None) if method == Method::POST => reload(admin).await,
        // Issue #13: move every client elsewhere, as SIGUSR1 does.
        ("drain", None) if method == Method::POST => json(
            StatusCode::OK,
            &serde_json::json!({"redirected": bridges.broker().drain()}),
        ),
        ("openapi.json" | "publish" | "reload" | "drain", None) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => json_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `POST /api/v1/reload`: asks the process to reload its configuration, as SIGHUP does.
async fn reload(admin: &Admin) -> Response<Body> {
    let Some(hook) = admin.reload.get() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload is not available in this process",
        );
    };
    let (reply, answer) = oneshot::channel();
    if hook.send(reply).await.is_err() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "reload is not available");
    }
    match answer.await {
        Ok(Ok(summary)) => json(
            StatusCode::OK,
            &serde_json::json!({"reloaded": true, "summary": summary}),
        ),
        Ok(Err(error)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({"reloaded": false, "error": error}),
        ),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "reload did not answer"),
    }
}
