//! Broker configuration: the documented `config.toml` (embedded as the defaults), an
//! optional file given with `--config`, and `TERN__SECTION__KEY` environment overrides.
//!
//! Unknown keys and bad values stop the start with a message naming the source, the key and
//! what is allowed. This module owns parsing and validation, not applying the values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod cluster;
mod limits;
pub mod mqtt_bridges;
pub mod sources;

pub use self::cluster::ClusterConfig;
pub use self::mqtt_bridges::{MqttBridgeConfig, TopicRule};
pub use self::sources::{
    AdminConfig, AuthSource, CalloutFailure, ClaimAclMode, HttpAuthConfig, JwtAlgorithm, JwtConfig,
};
pub use crate::features::{ListenerRedirect, MqttFeatures, Redirect};

/// The defaults, documented: the repository's `config.toml`, compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// MQTT listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The HTTP listener.
    pub http: HttpConfig,
    /// Authentication and authorisation.
    pub auth: AuthConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Session policy.
    pub session: SessionConfig,
    /// `$SYS` topics.
    pub sys: SysConfig,
    /// Logging.
    pub log: LogConfig,
    /// Persistence of sessions and retained messages.
    pub persistence: PersistenceConfig,
    /// The admin API (`/api/v1`) and `tern ctl`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// MQTT 5 capabilities, response information and redirection.
    pub mqtt: MqttFeatures,
    /// Bridges to other MQTT brokers ([`crate::config::mqtt_bridges`]).
    #[serde(default)]
    pub mqtt_bridges: Vec<MqttBridgeConfig>,
    /// Clustering over NATS (off by default).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// One MQTT listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Transport kind.
    pub kind: ListenerKind,
    /// Address to bind.
    pub bind: SocketAddr,
    /// PEM certificate chain (tls, wss).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (tls, wss).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Use the Common Name of the client certificate as the user name (mTLS only).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Redirect the connections of this listener elsewhere (overrides `[mqtt] redirect`).
    #[serde(default)]
    pub redirect: Option<ListenerRedirect>,
}

/// Listener transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// Whether the transport is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }
}

/// The HTTP listener (`/health`, `/metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Origins allowed to read the bridge endpoints from another site (CORS); `"*"` for any.
    pub cors_allowed_origins: Vec<String>,
    /// Most bridge clients (SSE and WebSocket JSON) at once.
    pub max_bridge_clients: usize,
    /// Most filters one bridge client may subscribe to.
    pub max_filters_per_client: usize,
    /// Most messages a bridge ring keeps for its clients.
    pub ring_max_messages: usize,
    /// Most bytes a bridge ring keeps (both encodings).
    pub ring_max_bytes: usize,
    /// How long a ring outlives its last client, so a reconnecting client can resume.
    pub ring_linger_ms: u64,
    /// Keep-alive comment on an SSE stream after this long without an event.
    pub sse_keepalive_ms: u64,
    /// Largest WebSocket message accepted from a `/ws` client.
    pub ws_max_frame_bytes: usize,
    /// Publishes per second allowed to one `/ws` client (as many may be saved up); 0: none.
    pub ws_publish_rate_per_sec: u32,
}

/// Limits; see `config.toml` for what each one does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    pub max_connect_rate_per_ip: u32,
    pub max_packet_size_bytes: u32,
    pub connect_timeout_ms: u64,
    pub max_keep_alive_secs: u16,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_inflight_messages: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub writer_cap_bytes: usize,
    pub writer_soft_cap_bytes: usize,
    pub socket_send_buffer_bytes: usize,
    pub backpressure_max_wait_ms: u64,
    pub backpressure_queued_messages: usize,
    pub slow_consumer_timeout_ms: u64,
    /// A plain TCP connection with nothing to do for this long parks: its task ends until
    /// input or output wakes it ([`crate::connection`], `park.rs`); 0: never.
    #[serde(default = "limits::default_park_idle_after_ms")]
    pub park_idle_after_ms: u64,
    /// Broker-wide bound on bytes held for clients (queued and inflight QoS 1/2); unset:
    /// an eighth of the machine's memory; 0: none.
    #[serde(default)]
    pub max_total_queued_bytes: Option<usize>,
    pub max_topic_levels: usize,
    pub max_topic_length_bytes: usize,
    pub max_subscriptions_per_client: usize,
    pub max_publish_rate_per_client: u32,
    pub max_session_expiry_secs: u32,
}

impl Limits {
    /// Whether a topic name or filter is within `max_topic_levels` and
    /// `max_topic_length_bytes` (MQTT clients and the HTTP bridges alike).
    pub fn topic_within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_length_bytes
            && topic.bytes().filter(|&b| b == b'/').count() < self.max_topic_levels
    }

    /// `max_total_queued_bytes` in force: as configured, or the default (a fraction of the
    /// machine's memory) when unset; 0: no limit.
    pub fn total_queued_bytes(&self) -> usize {
        self.max_total_queued_bytes
            .unwrap_or_else(limits::default_max_total_queued_bytes)
    }
}

/// Whether `topic` is one of the broker's own `$SYS` topics, which clients may not publish.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// `[auth]`: who may connect and what they may do; see [`crate::auth`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// A `mosquitto_passwd` password file; empty for none.
    pub password_file: PathBuf,
    /// A Mosquitto `acl_file`; empty for none (every client may do everything).
    pub acl_file: PathBuf,
    /// The order the enabled sources are tried in; the first that accepts decides.
    #[serde(default = "sources::default_order")]
    pub order: Vec<AuthSource>,
    /// Whether the HTTP bridges accept `?token=user:password` (always off when JWT is on).
    #[serde(default = "default_true")]
    pub allow_password_in_url: bool,
    /// JSON Web Tokens.
    #[serde(default)]
    pub jwt: JwtConfig,
    /// The HTTP callout.
    #[serde(default)]
    pub http: HttpAuthConfig,
}

fn default_true() -> bool {
    true
}

/// Session policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Whether an empty client identifier gets an assigned one (else CONNACK 0x85).
    pub allow_empty_client_id: bool,
}

/// `$SYS` publishing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    /// Period of `$SYS/broker/...` updates in seconds; 0 turns them off.
    pub interval_secs: u64,
}

/// `[persistence]`: what the broker acknowledged survives a restart, a crash or kill -9.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Whether sessions, subscriptions, queued QoS 1/2 messages and retained messages are
    /// kept on disk.
    pub enabled: bool,
    /// The data directory (log segments, checkpoint, lock file); created if missing.
    pub dir: PathBuf,
    /// When an acknowledgement that depends on a record may leave.
    pub durability: Durability,
    /// `durability = "write"`: how often the log is fsynced.
    pub fsync_interval_ms: u64,
    /// How often the state is checkpointed and the log recycled.
    pub checkpoint_interval_secs: u64,
    /// Size of one log segment; a checkpoint is also taken when the log grows past four.
    pub segment_bytes: u64,
    /// Disk budget of the data directory; over it QoS 1/2 publishes get 0x97 rather than
    /// an acknowledgement. 0: no budget.
    pub max_disk_bytes: u64,
}

/// When an acknowledgement that depends on a logged record may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the record is fsynced: survives power loss.
    Sync,
    /// After the record is written to the kernel: survives a crash of the broker process;
    /// fsynced every `fsync_interval_ms`.
    Write,
    /// No log: only checkpoints (and a clean shutdown) keep state.
    None,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An env-filter directive; `RUST_LOG` takes precedence.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment did not parse or did not fit the schema.
    #[error("{source_name}: {message}")]
    Invalid {
        /// Which file (or "environment") was being read.
        source_name: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value parsed but is out of range.
    #[error("{source_name}: key `{key}` = {value}: {allowed}")]
    OutOfRange {
        /// Which file was being read.
        source_name: String,
        /// The offending key, as `section.key`.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
}

impl Config {
    /// The embedded defaults.
    pub fn default_config() -> Config {
        // The embedded file is checked by a unit test, so this cannot fail at run time.
        Config::load(None).unwrap_or_else(|e| panic!("embedded config.toml is invalid: {e}"))
    }

    /// Loads the defaults, then `path` if given, then `TERN__SECTION__KEY` variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and what is allowed.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        use config::{Environment, File, FileFormat};
        let source_name = path.map_or_else(
            || "embedded config.toml".to_string(),
            |p| p.display().to_string(),
        );
        let mut builder = config::Config::builder();
        match path {
            // A given file replaces the defaults whole (so its [[listeners]] are the only
            // ones); missing sections still come from the defaults.
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    source_name: source_name.clone(),
                    message: format!("cannot read: {e}"),
                })?;
                let given: toml_value::Table = parse_table(&text, &source_name)?;
                let mut defaults: toml_value::Table =
                    parse_table(DEFAULT_CONFIG_TOML, "embedded config.toml")?;
                for (key, value) in given {
                    match (defaults.get_mut(&key), value) {
                        (Some(toml_value::Value::Table(d)), toml_value::Value::Table(g)) => {
                            for (k, v) in g {
                                d.insert(k, v);
                            }
                        }
                        (_, value) => {
                            defaults.insert(key, value);
                        }
                    }
                }
                let merged = toml_value::to_string(&defaults);
                builder = builder.add_source(File::from_str(&merged, FileFormat::Toml));
            }
            None => {
                builder = builder.add_source(File::from_str(DEFAULT_CONFIG_TOML, FileFormat::Toml))
            }
        }
        builder = builder.add_source(
            Environment::with_prefix("TERN")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = builder.build().map_err(|e| ConfigError::Invalid {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        let config: Config = raw.try_deserialize().map_err(|e| ConfigError::Invalid {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        config.validate(&source_name)?;
        Ok(config)
    }

    fn validate_listener(
        &self,
        listener: &ListenerConfig,
        source_name: &str,
    ) -> Result<(), ConfigError> {
        let error = |key, value: String, allowed| ConfigError::OutOfRange {
            source_name: source_name.to_string(),
            key,
            value,
            allowed,
        };
        let has_cert = listener.cert_file.is_some() && listener.key_file.is_some();
        if listener.kind.is_tls() && !has_cert {
            return Err(error(
                "listeners.cert_file",
                format!(
                    "missing on the {:?} listener at {}",
                    listener.kind, listener.bind
                ),
                "tls and wss listeners need cert_file and key_file (PEM)",
            ));
        }
        let tls_settings = listener.cert_file.is_some()
            || listener.key_file.is_some()
            || listener.client_ca_file.is_some()
            || listener.use_identity_as_username;
        if !listener.kind.is_tls() && tls_settings {
            return Err(error(
                "listeners.cert_file",
                format!(
                    "set on the {:?} listener at {}",
                    listener.kind, listener.bind
                ),
                "certificate settings apply to tls and wss listeners only",
            ));
        }
        if listener.use_identity_as_username && listener.client_ca_file.is_none() {
            return Err(error(
                "listeners.use_identity_as_username",
                "true".into(),
                "needs client_ca_file (client certificates are only requested with mTLS)",
            ));
        }
        Ok(())
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let out_of_range = |key, value: String, allowed| ConfigError::OutOfRange {
            source_name: source_name.to_string(),
            key,
            value,
            allowed,
        };
        let l = &self.limits;
        if self.listeners.is_empty() {
            return Err(out_of_range(
                "listeners",
                "[]".into(),
                "at least one listener",
            ));
        }
        for listener in &self.listeners {
            self.validate_listener(listener, source_name)?;
        }
        limits::check(l, &out_of_range)?;
        self.validate_sections(source_name)
    }

    /// The sections with checks of their own: `[persistence]`, `[auth.*]` and `[admin]`,
    /// `[mqtt]`.
    fn validate_sections(&self, source_name: &str) -> Result<(), ConfigError> {
        self.validate_persistence(source_name)?;
        mqtt_bridges::check_all(&self.mqtt_bridges).map_err(|message| ConfigError::Invalid {
            source_name: source_name.to_string(),
            message,
        })?;
        sources::check(&self.auth.jwt, &self.auth.http, &self.admin).map_err(
            |(key, value, allowed)| ConfigError::OutOfRange {
                source_name: source_name.to_string(),
                key,
                value,
                allowed,
            },
        )?;
        cluster::validate(&self.cluster, source_name)?;
        self.validate_mqtt(source_name)
    }

    fn validate_mqtt(&self, source_name: &str) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        let out_of_range = |key, value: String, allowed| ConfigError::OutOfRange {
            source_name: source_name.to_string(),
            key,
            value,
            allowed,
        };
        if m.maximum_qos > 2 {
            return Err(out_of_range(
                "mqtt.maximum_qos",
                m.maximum_qos.to_string(),
                "0, 1 or 2",
            ));
        }
        if m.redirect != Redirect::None && m.server_reference.is_empty() {
            return Err(out_of_range(
                "mqtt.server_reference",
                "\"\"".into(),
                "a server reference when mqtt.redirect is set",
            ));
        }
        for listener in &self.listeners {
            if let Some(r) = &listener.redirect {
                if r.redirect != Redirect::None && r.server_reference.is_empty() {
                    return Err(out_of_range(
                        "listeners.redirect.server_reference",
                        format!("\"\" on the listener at {}", listener.bind),
                        "a server reference when redirect is set",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_persistence(&self, source_name: &str) -> Result<(), ConfigError> {
        let p = &self.persistence;
        let out_of_range = |key, value: String, allowed| ConfigError::OutOfRange {
            source_name: source_name.to_string(),
            key,
            value,
            allowed,
        };
        if p.enabled && p.dir.as_os_str().is_empty() {
            return Err(out_of_range(
                "persistence.dir",
                "\"\"".into(),
                "a directory when persistence.enabled",
            ));
        }
        if p.segment_bytes < 1 << 20 || p.segment_bytes > 1 << 32 {
            return Err(out_of_range(
                "persistence.segment_bytes",
                p.segment_bytes.to_string(),
                "1048576 (1 MiB) to 4294967296 (4 GiB)",
            ));
        }
        if p.checkpoint_interval_secs == 0 {
            return Err(out_of_range(
                "persistence.checkpoint_interval_secs",
                "0".into(),
                "at least 1",
            ));
        }
        if p.durability == Durability::Write && p.fsync_interval_ms == 0 {
            return Err(out_of_range(
                "persistence.fsync_interval_ms",
                "0".into(),
                "at least 1 with durability = \"write\"",
            ));
        }
        Ok(())
    }
}

fn parse_table(text: &str, source_name: &str) -> Result<toml_value::Table, ConfigError> {
    toml_value::parse(text).map_err(|message| ConfigError::Invalid {
        source_name: source_name.to_string(),
        message,
    })
}

/// Thin wrapper over the `toml` crate that `config` already depends on.
mod toml_value {
    pub(super) use toml::value::{Table, Value};

    pub(super) fn parse(text: &str) -> Result<Table, String> {
        text.parse::<Table>().map_err(|e| e.to_string())
    }

    pub(super) fn to_string(table: &Table) -> String {
        toml::to_string(table).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let config = Config::load(None).expect("defaults");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].bind.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("tern-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[limits]\nmax_conections = 5\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let dir = std::env::temp_dir().join(format!("tern-config-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("range.toml");
        std::fs::write(&path, "[limits]\nreceive_maximum = 0\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("limits.receive_maximum"), "{err}");
    }

    /// `max_total_queued_bytes`: unset is a fraction of memory, 0 is no limit, and a value
    /// below one session's `max_queued_bytes` is refused by name (`tern check-config`).
    #[test]
    fn max_total_queued_bytes_checked() {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tern-config-t-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = Config::load(None).expect("defaults");
        assert!(
            config.limits.total_queued_bytes() >= 256 << 20,
            "on by default"
        );
        let path = dir.join("total.toml");
        std::fs::write(&path, "[limits]\nmax_total_queued_bytes = 0\n").expect("write");
        let config = Config::load(Some(&path)).expect("0: no limit");
        assert_eq!(config.limits.total_queued_bytes(), 0);
        std::fs::write(&path, "[limits]\nmax_total_queued_bytes = 1000\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("limits.max_total_queued_bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
