//! `tern ctl`: the admin API from the command line. Readable tables by default, the API's
//! JSON with `--json`; the URL and token from `--url`/`--token` or `TERN_ADMIN_URL`/
//! `TERN_ADMIN_TOKEN` (the token is sent in the `Authorization` header, never in the URL).
//!
//! This module owns the command line of `tern ctl` and the rendering of answers; the API
//! itself is [`crate::http::admin`].

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::ctl_render;
use crate::http_client::{self, HttpClientError};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `tern ctl` options.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The HTTP listener's base URL.
    #[arg(long, env = "TERN_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The admin token (`[admin] token_file`).
    #[arg(long, env = "TERN_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `tern ctl` commands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// List connected clients.
    Clients {
        /// Only client identifiers starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// Show one connected client.
    Client {
        /// The client identifier.
        id: String,
    },
    /// Disconnect a client (5.0: DISCONNECT 0x98 Administrative action).
    Kick {
        /// The client identifier.
        id: String,
    },
    /// List sessions, online and offline.
    Sessions,
    /// List retained messages.
    Retained {
        /// A topic filter (default `#`).
        filter: Option<String>,
    },
    /// Publish a message.
    Publish {
        /// The topic.
        topic: String,
        /// The payload (UTF-8).
        message: String,
        /// QoS 0, 1 or 2.
        #[arg(short, long, default_value_t = 0)]
        qos: u8,
        /// Retain the message.
        #[arg(short, long)]
        retain: bool,
    },
    /// Reload the broker's configuration (as SIGHUP).
    Reload,
    /// Drain the broker (as SIGUSR1): clients are sent to `[mqtt] server_reference`.
    Drain,
}

/// Why a `tern ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The request failed.
    #[error("{url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        source: HttpClientError,
    },
    /// The API answered with an error.
    #[error("HTTP {status}: {message}")]
    Api {
        /// The status code.
        status: u16,
        /// The API's error message.
        message: String,
    },
    /// The answer was not JSON.
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
}

/// Percent-encodes a path segment (a client identifier or a topic's levels).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Runs one command; returns what to print.
///
/// # Errors
/// [`CtlError`].
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let (method, path, body) = request_of(&args.command);
    let answer = call(args, method, &path, body).await?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&answer).unwrap_or_default());
    }
    Ok(render(&args.command, &answer))
}

fn request_of(command: &CtlCommand) -> (Method, String, Option<Value>) {
    match command {
        CtlCommand::Clients { prefix, user } => {
            let mut path = "/clients?limit=1000".to_string();
            if let Some(p) = prefix {
                path.push_str(&format!("&prefix={}", encode(p, false)));
            }
            if let Some(u) = user {
                path.push_str(&format!("&user={}", encode(u, false)));
            }
            (Method::GET, path, None)
        }
        CtlCommand::Client { id } => (Method::GET, format!("/clients/{}", encode(id, false)), None),
        CtlCommand::Kick { id } => (
            Method::POST,
            format!("/clients/{}/kick", encode(id, false)),
            None,
        ),
        CtlCommand::Sessions => (Method::GET, "/sessions?limit=1000".into(), None),
        CtlCommand::Retained { filter } => (
            Method::GET,
            format!(
                "/retained?limit=1000&filter={}",
                encode(filter.as_deref().unwrap_or("#"), true)
            ),
            None,
        ),
        CtlCommand::Publish {
            topic,
            message,
            qos,
            retain,
        } => (
            Method::POST,
            "/publish".into(),
            Some(json!({"topic": topic, "payload": message, "qos": qos, "retain": retain})),
        ),
        CtlCommand::Reload => (Method::POST, "/reload".into(), None),
        CtlCommand::Drain => (Method::POST, "/drain".into(), None),
    }
}

async fn call(
    args: &CtlArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CtlError> {
    let url = format!("{}/api/v1{path}", args.url.trim_end_matches('/'));
    let authorization = format!("Bearer {}", args.token.trim());
    let answer = http_client::send(
        method,
        &url,
        &[
            ("authorization", authorization.as_str()),
            ("content-type", "application/json"),
        ],
        body.map(|b| Bytes::from(b.to_string())),
        TIMEOUT,
    )
    .await
    .map_err(|source| CtlError::Request {
        url: url.clone(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&answer.body)
        .map_err(|_| CtlError::NotJson(String::from_utf8_lossy(&answer.body).into_owned()))?;
    if !answer.status.is_success() {
        return Err(CtlError::Api {
            status: answer.status.as_u16(),
            message: value["error"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(value)
}

/// The text for `command`'s `answer`.
fn render(command: &CtlCommand, answer: &Value) -> String {
    match command {
        CtlCommand::Clients { .. } => ctl_render::table(
            &answer["clients"],
            &[
                ("CLIENT ID", "client_id"),
                ("USER", "username"),
                ("PEER", "peer"),
                ("PROTO", "protocol"),
                ("KEEPALIVE", "keep_alive_secs"),
                ("INFLIGHT", "inflight"),
                ("QUEUED", "queued"),
                ("SUBS", "subscriptions"),
            ],
        ),
        CtlCommand::Sessions => ctl_render::table(
            &answer["sessions"],
            &[
                ("CLIENT ID", "client_id"),
                ("ONLINE", "online"),
                ("EXPIRY", "session_expiry_secs"),
                ("QUEUED", "queued"),
                ("INFLIGHT", "inflight"),
                ("SUBS", "subscriptions"),
            ],
        ),
        CtlCommand::Retained { .. } => ctl_render::table(
            &answer["retained"],
            &[
                ("TOPIC", "topic"),
                ("QOS", "qos"),
                ("BYTES", "payload_bytes"),
                ("PAYLOAD", "payload"),
            ],
        ),
        CtlCommand::Client { .. } => ctl_render::client(answer),
        CtlCommand::Kick { id } => format!("kicked {id}"),
        CtlCommand::Publish { topic, .. } => format!(
            "published to {topic} (delivered to {})",
            ctl_render::cell(&answer["delivered"])
        ),
        CtlCommand::Reload => format!("reloaded: {}", ctl_render::cell(&answer["summary"])),
        CtlCommand::Drain => format!(
            "draining: {} connections redirected",
            ctl_render::cell(&answer["redirected"])
        ),
    }
}
