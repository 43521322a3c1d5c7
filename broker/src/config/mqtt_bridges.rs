//! `[[mqtt_bridges]]`: bridges to other MQTT brokers (issue #14), their schema and
//! validation. Running them is [`crate::mqtt_bridge`]'s job; this module only says what a
//! valid definition is, and names the bridge and the key of an invalid one.
//!
//! Each definition is read in two steps: first as a generic table (so that its `name` is
//! known), then into [`MqttBridgeConfig`]; a schema error then reads
//! ``mqtt_bridges `cloud`: unknown field `remots` ...`` instead of a bare serde message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, serde_json::Value>")]
pub struct MqttBridgeConfig {
    /// The bridge's name: in logs, metrics and `$SYS/broker/bridge/<name>/...`.
    pub name: String,
    /// The remote broker's addresses (`host:port`), tried in this order on every connect.
    pub remotes: Vec<String>,
    /// The protocol spoken to the remote.
    pub protocol: BridgeProtocol,
    /// Client identifier on the remote.
    pub client_id: String,
    /// Clean Start (5.0) / Clean Session (3.1.1) towards the remote. Off by default: the
    /// remote keeps the bridge's session, so what it had in flight survives a reconnect.
    pub clean_start: bool,
    /// Session Expiry Interval asked of a 5.0 remote.
    pub session_expiry_secs: u32,
    /// Keep Alive towards the remote; 0 turns pings off.
    pub keep_alive_secs: u16,
    /// User name on the remote.
    pub username: Option<String>,
    /// The password, if any: given inline, from a file, or from an environment variable.
    pub password: Option<Secret>,
    /// TLS to the remote; absent: plain TCP.
    pub tls: Option<BridgeTls>,
    /// 3.1.1 only: announce the bridge to the remote with Mosquitto's bridge bit (protocol
    /// level 0x84), so that it does not send our own messages back; falls back to a plain
    /// 3.1.1 CONNECT when the remote refuses it.
    pub try_private: bool,
    /// Client identifier of the bridge's local session (its queue towards the remote).
    pub local_client_id: String,
    /// The user name the bridge's local client has for the ACL.
    pub local_username: String,
    /// Most QoS 1/2 messages sent to the remote and not yet acknowledged (also the
    /// window the local broker gives the bridge).
    pub max_inflight: u16,
    /// First reconnect delay (doubled after every failure, with jitter).
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// How long a connect (TCP, TLS, CONNECT/CONNACK) may take.
    pub connect_timeout_ms: u64,
    /// Topic rules.
    pub topics: Vec<TopicRule>,
}

/// The protocol version towards the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 5.0.
    #[serde(rename = "5.0", alias = "5")]
    V5,
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
}

/// A password, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// TLS settings of a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// PEM CA certificates the remote's certificate must chain to; absent: the system's
    /// roots are not loaded (no webpki roots are bundled), so give one unless `insecure`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate; absent: the host of the
    /// remote address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skip verifying the remote's certificate. Only when said so: the link is then open
    /// to anyone in the middle.
    #[serde(default)]
    pub insecure: bool,
}

/// One topic rule, Mosquitto's `topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// The topic filter (wildcards allowed), between the prefixes.
    pub pattern: String,
    /// Which way messages go.
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// The highest QoS on this rule (each hop: min(this, the message's)).
    #[serde(default)]
    pub qos: u8,
    /// Prepended to the pattern on this broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Prepended to the pattern on the remote.
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_direction() -> Direction {
    Direction::Out
}

/// Which way a rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Remote to local.
    In,
    /// Local to remote.
    Out,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether local messages go out on this rule.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Whether remote messages come in on this rule.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// The definition as written, before the password is resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    remotes: Vec<String>,
    #[serde(default = "default_protocol")]
    protocol: String,
    client_id: String,
    #[serde(default)]
    clean_start: bool,
    #[serde(default = "default_session_expiry")]
    session_expiry_secs: u32,
    #[serde(default = "default_keep_alive")]
    keep_alive_secs: u16,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    tls: Option<BridgeTls>,
    #[serde(default = "default_true")]
    try_private: bool,
    #[serde(default)]
    local_client_id: Option<String>,
    #[serde(default)]
    local_username: Option<String>,
    #[serde(default = "default_inflight")]
    max_inflight: u16,
    #[serde(default = "default_reconnect_min")]
    reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    reconnect_max_ms: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    topics: Vec<TopicRule>,
}

fn default_protocol() -> String {
    "5.0".into()
}
fn default_session_expiry() -> u32 {
    3600
}
fn default_keep_alive() -> u16 {
    60
}
fn default_true() -> bool {
    true
}
fn default_inflight() -> u16 {
    100
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_connect_timeout() -> u64 {
    10_000
}

impl TryFrom<BTreeMap<String, serde_json::Value>> for MqttBridgeConfig {
    type Error = String;

    fn try_from(table: BTreeMap<String, serde_json::Value>) -> Result<Self, String> {
        let name = match table.get("name") {
            Some(serde_json::Value::String(name)) => name.clone(),
            _ => return Err("mqtt_bridges: a bridge without `name` (a string)".into()),
        };
        let object: serde_json::Map<String, serde_json::Value> = table.into_iter().collect();
        let raw: Raw = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("mqtt_bridges `{name}`: {e}"))?;
        let bridge = raw.resolve()?;
        bridge
            .check()
            .map_err(|(key, what)| format!("mqtt_bridges `{name}`: key `{key}`: {what}"))?;
        Ok(bridge)
    }
}

impl Raw {
    fn resolve(self) -> Result<MqttBridgeConfig, String> {
        let name = self.name;
        let bad = |key: &str, what: String| format!("mqtt_bridges `{name}`: key `{key}`: {what}");
        let given = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(bad(
                "password",
                "give one of password, password_file, password_env".into(),
            ));
        }
        let password = if let Some(p) = self.password {
            Some(p)
        } else if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        } else if let Some(var) = &self.password_env {
            Some(std::env::var(var).map_err(|_| {
                bad(
                    "password_env",
                    format!("environment variable {var} is not set"),
                )
            })?)
        } else {
            None
        };
        let protocol = match self.protocol.as_str() {
            "5.0" | "5" => BridgeProtocol::V5,
            "3.1.1" => BridgeProtocol::V311,
            other => return Err(bad("protocol", format!("{other:?}: \"5.0\" or \"3.1.1\""))),
        };
        Ok(MqttBridgeConfig {
            local_client_id: self
                .local_client_id
                .unwrap_or_else(|| format!("tern-bridge-{name}")),
            local_username: self.local_username.unwrap_or_else(|| name.clone()),
            name,
            remotes: self.remotes,
            protocol,
            client_id: self.client_id,
            clean_start: self.clean_start,
            session_expiry_secs: self.session_expiry_secs,
            keep_alive_secs: self.keep_alive_secs,
            username: self.username,
            password: password.map(Secret),
            tls: self.tls,
            try_private: self.try_private,
            max_inflight: self.max_inflight,
            reconnect_min_ms: self.reconnect_min_ms,
            reconnect_max_ms: self.reconnect_max_ms,
            connect_timeout_ms: self.connect_timeout_ms,
            topics: self.topics,
        })
    }
}

impl MqttBridgeConfig {
    /// What is wrong with this definition, as (key, what is allowed).
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.contains(['/', '+', '#']) {
            return Err((
                "name",
                "a non-empty name without '/', '+' or '#' (it is a $SYS topic level)".into(),
            ));
        }
        if self.remotes.is_empty() {
            return Err(("remotes", "at least one host:port".into()));
        }
        for remote in &self.remotes {
            split_host_port(remote).ok_or(("remotes", format!("{remote:?} is not host:port")))?;
        }
        if self.client_id.is_empty() {
            return Err(("client_id", "a non-empty client identifier".into()));
        }
        if self.max_inflight == 0 {
            return Err(("max_inflight", "1 to 65535".into()));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err((
                "reconnect_min_ms",
                "at least 1, and reconnect_max_ms at least reconnect_min_ms".into(),
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "at least 1".into()));
        }
        if self.topics.is_empty() {
            return Err(("topics", "at least one [[mqtt_bridges.topics]] rule".into()));
        }
        for rule in &self.topics {
            check_rule(rule)?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(("tls.cert_file", "cert_file and key_file go together".into()));
            }
            if tls.ca_file.is_none() && !tls.insecure {
                return Err((
                    "tls.ca_file",
                    "a PEM CA file (or insecure = true, which skips verification)".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_rule(rule: &TopicRule) -> Result<(), (&'static str, String)> {
    if rule.qos > 2 {
        return Err(("topics.qos", format!("{} (0, 1 or 2)", rule.qos)));
    }
    check_rule_topics(&rule.pattern, &rule.local_prefix, &rule.remote_prefix)
}

/// What is wrong with a rule's pattern and prefixes, as (key, what is allowed): each prefix
/// and the pattern must make a valid, non-shared topic filter (`tern convert` checks
/// Mosquitto's rules with it too).
pub fn check_rule_topics(
    pattern: &str,
    local_prefix: &str,
    remote_prefix: &str,
) -> Result<(), (&'static str, String)> {
    if pattern.is_empty() {
        return Err(("topics.pattern", "a topic filter".into()));
    }
    for (key, prefix) in [
        ("topics.local_prefix", local_prefix),
        ("topics.remote_prefix", remote_prefix),
    ] {
        if prefix.contains(['+', '#']) {
            return Err((key, format!("{prefix:?} has a wildcard (prefixes may not)")));
        }
    }
    for filter in [
        format!("{local_prefix}{pattern}"),
        format!("{remote_prefix}{pattern}"),
    ] {
        if tern_codec::topic::validate_filter(&filter).is_err()
            || tern_codec::topic::split_shared(&filter).is_some()
        {
            return Err((
                "topics.pattern",
                format!("{filter:?} is not a valid topic filter"),
            ));
        }
    }
    Ok(())
}

/// `host:port` split at the last colon (`[v6]:port` keeps its brackets off).
pub fn split_host_port(remote: &str) -> Option<(&str, u16)> {
    let (host, port) = remote.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

/// Checks the bridges together: names unique.
pub(super) fn check_all(bridges: &[MqttBridgeConfig]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for bridge in bridges {
        if !names.insert(bridge.name.as_str()) {
            return Err(format!(
                "mqtt_bridges `{}`: key `name`: used by two bridges (names must be unique)",
                bridge.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(name: &str, text: &str) -> Result<Config, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tern-bridge-cfg-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tern.toml");
        std::fs::write(&path, text).expect("write");
        let result = Config::load(Some(&path)).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    const GOOD: &str = r#"
[[mqtt_bridges]]
name = "cloud"
remotes = ["127.0.0.1:1884"]
protocol = "5.0"
client_id = "tern-edge-1"
[[mqtt_bridges.topics]]
pattern = "sensors/#"
direction = "out"
qos = 1
local_prefix = ""
remote_prefix = "site1/"
"#;

    #[test]
    fn the_issue_example_loads() {
        let config = load("good", GOOD).expect("loads");
        let bridge = &config.mqtt_bridges[0];
        assert_eq!(bridge.name, "cloud");
        assert_eq!(bridge.topics[0].remote_prefix, "site1/");
        assert_eq!(bridge.local_client_id, "tern-bridge-cloud");
    }

    #[test]
    fn bad_keys_name_the_bridge_and_the_key() {
        let e = load("unknown", &GOOD.replace("remotes", "remots")).expect_err("unknown");
        assert!(
            e.contains("mqtt_bridges `cloud`") && e.contains("remots"),
            "{e}"
        );
        let e = load("qos", &GOOD.replace("qos = 1", "qos = 3")).expect_err("qos");
        assert!(e.contains("`cloud`") && e.contains("topics.qos"), "{e}");
        let e = load("addr", &GOOD.replace("127.0.0.1:1884", "nowhere")).expect_err("addr");
        assert!(e.contains("`cloud`") && e.contains("remotes"), "{e}");
        let e = load("proto", &GOOD.replace("\"5.0\"", "\"4\"")).expect_err("proto");
        assert!(e.contains("`cloud`") && e.contains("protocol"), "{e}");
        let e = load(
            "env",
            &GOOD.replace("qos = 1", "qos = 1\n").replace(
                "client_id = \"tern-edge-1\"",
                "client_id = \"x\"\npassword_env = \"TERN_TEST_SURELY_UNSET_VAR\"",
            ),
        )
        .expect_err("env");
        assert!(e.contains("password_env"), "{e}");
        let twice = format!("{GOOD}{GOOD}");
        let e = load("twice", &twice).expect_err("twice");
        assert!(e.contains("`cloud`") && e.contains("unique"), "{e}");
    }

    #[test]
    fn passwords_are_never_printed() {
        let text = GOOD.replace(
            "client_id = \"tern-edge-1\"",
            "client_id = \"x\"\npassword = \"hunter2\"",
        );
        let config = load("secret", &text).expect("loads");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
