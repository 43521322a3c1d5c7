//! Live reload (SIGHUP, or `systemctl reload`): re-read the configuration file and put in
//! force what can change without a restart:
//! - the password and ACL files (`[auth]`): new connections authenticate against the new
//!   files; connected clients get their ACL re-derived (their subscriptions are re-checked
//!   before the new rules are in force and again after, their PUBLISH packets from their
//!   next one); bridge readers (SSE, WebSocket
//!   JSON) read under the new rules from the moment they are in force, including what their
//!   rings already hold ([`crate::http::bridge::Bridges::reapply_acl`]), and WebSocket JSON
//!   clients publish under them from their next op;
//! - `[limits]`: for new connections and the broker-wide checks (per-IP limits, connect
//!   timeout, slow-consumer timeout) and the HTTP bridges, which read the limits in force
//!   on every request; connected MQTT clients keep the limits they connected under;
//!   `max_connections` needs a restart;
//! - `[mqtt]`: capabilities, response information and redirection, for new connections;
//!   turning redirection on drains the connected clients ([`crate::Broker::drain`]);
//! - `[log] level`;
//! - `[[mqtt_bridges]]`: new bridges start, removed ones stop, changed ones restart
//!   (keeping their queue); unchanged ones are not touched;
//! - the JWT keys (secret, PEM or JWKS file: keys can be rotated), the HTTP callout
//!   settings (its cache starts empty), and the admin token.
//!
//! An invalid new configuration changes nothing: the old one stays in force and the error
//! says why. Changes that need a restart (listeners, `[http]`, `[session]`, `[sys]`,
//! `max_connections`, the log format) are reported, not applied.

use std::path::Path;

use crate::auth::AuthState;
use crate::config::Config;
use crate::http::bridge::Bridges;

/// Why a reload was refused (the old configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The password or ACL file did not load.
    #[error("[auth]: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The admin token file did not load.
    #[error(transparent)]
    Admin(#[from] crate::http::admin::AdminError),
    /// A bridge's TLS files did not load.
    #[error(transparent)]
    Bridge(#[from] crate::mqtt_bridge::BridgeError),
    /// The new log level is not a valid filter.
    #[error("log.level: {0}")]
    LogLevel(String),
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Settings that changed but need a restart to take effect.
    pub needs_restart: Vec<&'static str>,
    /// Connected sessions whose subscriptions were re-checked against the new ACL.
    pub sessions_rechecked: usize,
    /// What re-deriving the bridge rings' read ACL did.
    pub bridges: crate::http::bridge::read_acl::Reapplied,
    /// Connections asked to move elsewhere because the reload turned redirection on.
    pub redirected: usize,
    /// MQTT bridges restarted, stopped and started (unchanged ones keep running).
    pub mqtt_bridges: crate::mqtt_bridge::ReloadedBridges,
}

/// Reloads from `path` (or the embedded defaults), applying the log level with `set_log_level`.
///
/// # Errors
/// [`ReloadError`]; nothing was changed then.
pub fn reload(
    bridges: &Bridges,
    path: Option<&Path>,
    set_log_level: &dyn Fn(&str) -> Result<(), String>,
) -> Result<ReloadReport, ReloadError> {
    let broker = bridges.broker();
    let new = Config::load(path)?;
    let mut auth = AuthState::load(&new.auth)?;
    // Rules carried by tokens and callout answers stay with the clients that logged in.
    auth.keep_claims_of(&broker.auth().current());
    crate::http::admin::load_token(&new.admin)?;
    set_log_level(&new.log.level).map_err(ReloadError::LogLevel)?;
    let mqtt_bridges = match bridges.mqtt_bridges() {
        Some(running) => running.reload(&new.mqtt_bridges)?,
        None => Default::default(),
    };
    bridges.admin().reload_token(&new.admin)?;
    let mut report = ReloadReport {
        needs_restart: broker.restart_only_changes(&new),
        mqtt_bridges,
        ..Default::default()
    };
    broker.set_limits(new.limits.clone());
    report.redirected = broker.set_features(new.mqtt.clone());
    // Connected MQTT sessions are re-checked under the new rules before they are in force,
    // so that no message routed meanwhile reaches a subscription the new ACL narrows; and
    // again after, for a SUBSCRIBE that raced the first pass under the old rules.
    broker.recheck_subscriptions(&auth);
    // Puts `auth` in force once every bridge ring reads under it.
    report.bridges = bridges.reapply_acl(auth);
    report.sessions_rechecked = broker.recheck_subscriptions(&broker.auth().current());
    Ok(report)
}
