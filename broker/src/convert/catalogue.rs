//! Every option of Mosquitto 2.x's `mosquitto.conf` (2.0, and the 2.1 additions), with the
//! scope it applies to and what becomes of it in Tern: converted by a mapper, or listed
//! with the reason it is not. A key missing here is an unknown option.
//!
//! This module is data, plus [`report`], the finding for an option that is not converted:
//! the parser uses the scope to file each line, the mappers convert the
//! [`Support::Mapped`] options and report the others with these reasons.

use super::finding::{Finding, FindingKind};
use super::model::Line;

/// Where an option applies, which decides where the parser files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// The whole broker.
    Global,
    /// Authentication and access: the whole broker, or the current listener under
    /// `per_listener_settings true`.
    Security,
    /// The current listener (before any `listener` line: the default listener).
    Listener,
    /// The current bridge (`connection` block).
    Bridge,
    /// Handled by the parser itself: `listener`, `port`, `bind_address`, `connection`,
    /// `include_dir`, `per_listener_settings`.
    Structure,
}

/// What becomes of an option in Tern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// Converted by the mappers.
    Mapped,
    /// No equivalent; listed with this reason. Nothing else changes.
    NotSupported(&'static str),
    /// Tern does this in another way, described by the reason.
    Different(&'static str),
    /// A listener option whose loss would let in clients (or expose topics) that Mosquitto
    /// kept out: the listener is written commented out, with this reason.
    ClosesListener(&'static str),
}

/// One known option.
#[derive(Debug, Clone, Copy)]
pub(super) struct OptionInfo {
    /// Its name in `mosquitto.conf`.
    pub(super) key: &'static str,
    /// Where it applies.
    pub(super) scope: Scope,
    /// What Tern does with it.
    pub(super) support: Support,
    /// Whether it may appear more than once in one scope (each line adds, as `log_dest`).
    pub(super) repeatable: bool,
}

const PLUGIN: &str = "Tern does not load Mosquitto plugins (Dynamic Security included): \
    clients the plugin let in must be in the password file, and its rules in the ACL file";
const TLS_SUITES: &str = "Tern uses rustls with its default cipher suites (TLS 1.2 and 1.3, \
    forward secrecy only)";

use Scope::{Bridge, Global, Listener, Security, Structure};
use Support::{ClosesListener, Different, Mapped, NotSupported};

const fn opt(key: &'static str, scope: Scope, support: Support) -> OptionInfo {
    OptionInfo {
        key,
        scope,
        support,
        repeatable: false,
    }
}

const fn many(key: &'static str, scope: Scope, support: Support) -> OptionInfo {
    OptionInfo {
        key,
        scope,
        support,
        repeatable: true,
    }
}

/// A bridge option that converts.
const fn bridge(key: &'static str) -> OptionInfo {
    opt(key, Bridge, Mapped)
}

/// A bridge option with no equivalent.
const fn bridge_no(key: &'static str, reason: &'static str) -> OptionInfo {
    opt(key, Bridge, NotSupported(reason))
}

/// A bridge option Tern's bridge covers in another way.
const fn bridge_diff(key: &'static str, reason: &'static str) -> OptionInfo {
    opt(key, Bridge, Different(reason))
}

/// The options, by name. Aliases Mosquitto accepts are entries of their own.
pub(super) const OPTIONS: &[OptionInfo] = &[
    // Structure.
    opt("per_listener_settings", Structure, Mapped),
    many("listener", Structure, Mapped),
    opt("port", Structure, Mapped),
    opt("bind_address", Structure, Mapped),
    many("connection", Structure, Mapped),
    many("include_dir", Structure, Mapped),
    // Security (global, or per listener under per_listener_settings).
    opt("acl_file", Security, Mapped),
    opt("allow_anonymous", Security, Mapped),
    opt("allow_zero_length_clientid", Security, Mapped),
    opt("password_file", Security, Mapped),
    opt(
        "auto_id_prefix",
        Security,
        NotSupported("Tern assigns identifiers of its own form to clients that send an empty one"),
    ),
    opt("psk_file", Security, NotSupported("Tern has no TLS-PSK")),
    many("auth_plugin", Security, NotSupported(PLUGIN)),
    many("plugin", Security, NotSupported(PLUGIN)),
    many("global_plugin", Global, NotSupported(PLUGIN)),
    many("auth_plugin_deny_special_chars", Global, NotSupported(PLUGIN)),
    // Global.
    opt(
        "allow_duplicate_messages",
        Global,
        Different("Tern delivers one copy to a client whose subscriptions overlap, as MQTT requires"),
    ),
    opt("autosave_interval", Global, Mapped),
    opt("autosave_on_changes", Global, Mapped),
    opt(
        "check_retain_source",
        Global,
        NotSupported("Tern checks that the subscriber may read a retained message, not that its publisher may still write it"),
    ),
    opt(
        "clientid_prefixes",
        Global,
        NotSupported("Tern accepts any client identifier; tie topics to identifiers with ACL `pattern` lines and %c instead"),
    ),
    opt("connection_messages", Global, Mapped),
    many("log_dest", Global, Mapped),
    many("log_type", Global, Mapped),
    opt(
        "log_facility",
        Global,
        Different("Tern logs to stderr; under systemd the journal records it (SyslogFacility= in the unit)"),
    ),
    opt(
        "log_timestamp",
        Global,
        Different("Tern's text logs always start with an RFC 3339 timestamp"),
    ),
    opt(
        "log_timestamp_format",
        Global,
        Different("Tern's text logs always start with an RFC 3339 timestamp"),
    ),
    opt(
        "max_inflight_bytes",
        Global,
        NotSupported("Tern's outbound window counts messages (max_inflight_messages), not bytes"),
    ),
    opt("max_inflight_messages", Global, Mapped),
    opt("max_keepalive", Global, Mapped),
    opt("max_packet_size", Global, Mapped),
    opt("max_queued_bytes", Global, Mapped),
    opt("max_queued_messages", Global, Mapped),
    opt(
        "memory_limit",
        Global,
        NotSupported("Tern bounds memory per client instead: the session queue (limits.max_queued_*) and the output buffer (limits.writer_cap_bytes)"),
    ),
    opt("message_size_limit", Global, Mapped),
    opt("persistence", Global, Mapped),
    opt("retained_persistence", Global, Mapped),
    opt(
        "persistence_file",
        Global,
        Different("Tern keeps its own files (log segments and a checkpoint) in [persistence] dir"),
    ),
    opt("persistence_location", Global, Mapped),
    opt("persistent_client_expiration", Global, Mapped),
    opt(
        "pid_file",
        Global,
        NotSupported("Tern writes no pid file; run it under a supervisor such as systemd (deploy/tern.service)"),
    ),
    opt(
        "queue_qos0_messages",
        Global,
        NotSupported("Tern queues only QoS 1 and 2 messages for offline clients, as MQTT specifies"),
    ),
    opt(
        "retain_available",
        Global,
        NotSupported("Tern always supports retained messages"),
    ),
    opt(
        "set_tcp_nodelay",
        Global,
        Different("Tern always sets TCP_NODELAY on client connections"),
    ),
    opt("sys_interval", Global, Mapped),
    opt(
        "upgrade_outgoing_qos",
        Global,
        NotSupported("Tern delivers at the lower of the message's and the subscription's QoS, as MQTT requires"),
    ),
    opt(
        "user",
        Global,
        NotSupported("Tern does not switch users; start it as the user it should run as (deploy/tern.service runs it as a systemd DynamicUser)"),
    ),
    opt(
        "websockets_log_level",
        Global,
        NotSupported("WebSocket handling logs through [log] level like the rest of Tern"),
    ),
    opt(
        "websockets_headers_size",
        Global,
        NotSupported("no equivalent setting in Tern"),
    ),
    opt(
        "retry_interval",
        Global,
        NotSupported("removed in Mosquitto 2; Tern resends unacknowledged messages when a session resumes, as MQTT requires"),
    ),
    opt("global_max_clients", Global, Mapped),
    opt("global_max_connections", Global, Mapped),
    opt(
        "enable_control_api",
        Global,
        NotSupported("Tern has no $CONTROL API"),
    ),
    opt("quic_log_level", Global, NotSupported("Tern has no QUIC listener")),
    // Listener.
    opt(
        "bind_interface",
        Listener,
        ClosesListener("Tern binds addresses, not interfaces: set bind to the interface's address"),
    ),
    opt(
        "http_dir",
        Listener,
        NotSupported("Tern's MQTT WebSocket listeners serve no files (its [http] listener serves a dashboard)"),
    ),
    opt("max_connections", Listener, Mapped),
    opt(
        "max_qos",
        Listener,
        NotSupported("Tern accepts QoS 0, 1 and 2 on every listener"),
    ),
    opt(
        "maximum_qos",
        Listener,
        NotSupported("Tern accepts QoS 0, 1 and 2 on every listener"),
    ),
    opt("max_topic_alias", Listener, Mapped),
    opt(
        "max_topic_alias_broker",
        Listener,
        Different("Tern's outbound topic aliases are bounded by each client's Topic Alias Maximum"),
    ),
    opt(
        "mount_point",
        Listener,
        ClosesListener("Tern has no mount points: these clients would see the whole topic tree"),
    ),
    opt("protocol", Listener, Mapped),
    opt("socket_domain", Listener, Mapped),
    opt("use_username_as_clientid", Listener, Mapped),
    opt("cafile", Listener, Mapped),
    opt("capath", Listener, Mapped),
    opt("certfile", Listener, Mapped),
    opt("keyfile", Listener, Mapped),
    opt("ciphers", Listener, Different(TLS_SUITES)),
    opt("ciphers_tls1.3", Listener, Different(TLS_SUITES)),
    opt(
        "crlfile",
        Listener,
        ClosesListener("Tern does not check certificate revocation lists: revoked client certificates would be accepted"),
    ),
    opt(
        "dhparamfile",
        Listener,
        Different("rustls uses ECDHE key exchange and needs no DH parameters"),
    ),
    opt("require_certificate", Listener, Mapped),
    opt(
        "tls_engine",
        Listener,
        ClosesListener("Tern reads keys from PEM files only, not from an OpenSSL engine"),
    ),
    opt(
        "tls_engine_kpass_sha1",
        Listener,
        ClosesListener("Tern reads keys from PEM files only, not from an OpenSSL engine"),
    ),
    opt("tls_keyform", Listener, Mapped),
    opt(
        "tls_version",
        Listener,
        Different("Tern accepts TLS 1.2 and 1.3; it cannot be narrowed to 1.3 only"),
    ),
    opt("use_identity_as_username", Listener, Mapped),
    opt("use_subject_as_username", Listener, Mapped),
    opt(
        "psk_hint",
        Listener,
        ClosesListener("Tern has no TLS-PSK: these clients could not connect"),
    ),
    opt(
        "accept_protocol_versions",
        Listener,
        NotSupported("Tern accepts MQTT 3.1, 3.1.1 and 5.0 on every listener"),
    ),
    many(
        "websockets_origin",
        Listener,
        ClosesListener("Tern's MQTT WebSocket listeners do not check the Origin header"),
    ),
    opt(
        "disable_client_cert_date_checks",
        Listener,
        NotSupported("Tern always checks the dates of client certificates"),
    ),
    // Bridges: converted to [[mqtt_bridges]] (convert/bridges.rs), except these.
    many("address", Bridge, Mapped),
    many("addresses", Bridge, Mapped),
    many("topic", Bridge, Mapped),
    bridge_no("bridge_alpn", "Tern's bridge sends no ALPN"),
    bridge_diff(
        "bridge_attempt_unsubscribe",
        "Tern's bridge keeps its remote subscriptions in its session and subscribes again on every connect",
    ),
    bridge_no("bridge_bind_address", "Tern's bridge lets the system choose the local address"),
    bridge("bridge_cafile"),
    bridge_no("bridge_capath", "give the CA certificates as one PEM file (bridge_cafile)"),
    bridge("bridge_certfile"),
    bridge_no("bridge_ciphers", TLS_SUITES),
    bridge_no("bridge_ciphers_tls1.3", TLS_SUITES),
    bridge_no("bridge_identity", "Tern's bridge has no TLS-PSK; use certificates"),
    bridge_diff(
        "bridge_insecure",
        "not converted: Tern's bridge checks the remote's name (set server_name to the name \
         in its certificate); its `insecure = true` would skip the whole verification",
    ),
    bridge("bridge_keyfile"),
    bridge_no("bridge_max_packet_size", "Tern's bridge accepts packets up to 16 MiB"),
    bridge_no("bridge_max_topic_alias", "Tern's bridge uses no topic aliases"),
    bridge_diff("bridge_outgoing_retain", "Tern's bridge always carries the RETAIN flag"),
    bridge("bridge_protocol_version"),
    bridge_no("bridge_psk", "Tern's bridge has no TLS-PSK; use certificates"),
    bridge_diff(
        "bridge_receive_maximum",
        "Tern's bridge asks the remote for its local window (max_inflight)",
    ),
    bridge_no("bridge_reload_type", "a reload restarts a bridge only when its definition changed"),
    bridge_no("bridge_require_ocsp", "Tern's bridge does not check OCSP"),
    bridge("bridge_session_expiry_interval"),
    bridge_no("bridge_tcp_keepalive", "Tern's bridge uses MQTT keep alive (keep_alive_secs)"),
    bridge_no("bridge_tcp_user_timeout", "Tern's bridge uses MQTT keep alive (keep_alive_secs)"),
    bridge_diff("bridge_tls_version", "Tern's bridge uses TLS 1.2 or 1.3"),
    bridge("cleansession"),
    bridge_diff(
        "local_cleansession",
        "the bridge's local session is always kept (it is the queue towards the remote)",
    ),
    bridge("clientid"),
    bridge("remote_clientid"),
    bridge_no("idle_timeout", "Tern's bridges always start at once (start_type automatic)"),
    bridge("keepalive_interval"),
    bridge("local_clientid"),
    bridge_diff(
        "local_password",
        "the bridge's local client needs no password (its user name is local_username)",
    ),
    bridge("local_username"),
    bridge_diff(
        "notifications",
        "the bridge's state is in $SYS/broker/bridge/<name>/state and /metrics",
    ),
    bridge_diff(
        "notifications_local_only",
        "the bridge's state is in $SYS/broker/bridge/<name>/state and /metrics",
    ),
    bridge_diff(
        "notification_topic",
        "the bridge's state is in $SYS/broker/bridge/<name>/state and /metrics",
    ),
    bridge("password"),
    bridge("remote_password"),
    bridge("username"),
    bridge("remote_username"),
    bridge("restart_timeout"),
    bridge_diff(
        "round_robin",
        "Tern's bridge tries the remotes in order from the first on every connect",
    ),
    bridge_no("start_type", "Tern's bridges always start at once (start_type automatic)"),
    bridge_no("threshold", "Tern's bridge has no notification messages"),
    bridge("try_private"),
];

/// Plugin options: `auth_opt_NAME` and `plugin_opt_NAME`, any name.
const PLUGIN_OPTION: OptionInfo = many("plugin_opt_*", Global, NotSupported(PLUGIN));

/// The option named `key`, if Mosquitto 2.x knows it.
pub(super) fn lookup(key: &str) -> Option<&'static OptionInfo> {
    if key.starts_with("auth_opt_") || key.starts_with("plugin_opt_") {
        return Some(&PLUGIN_OPTION);
    }
    OPTIONS.iter().find(|o| o.key == key)
}

/// What becomes of an option that is not [`Support::Mapped`]: its finding (the reason
/// prefixed with `context`, the listener, when given), and for a
/// [`Support::ClosesListener`] option the reason the listener is written commented out.
/// `None` for mapped and unknown options.
pub(super) fn report(
    line: &Line,
    context: Option<&str>,
) -> Option<(Finding, Option<&'static str>)> {
    let support = lookup(&line.key)?.support;
    let prefix = context.map(|c| format!("{c}: ")).unwrap_or_default();
    let (kind, reason, closes) = match support {
        Mapped => return None,
        NotSupported(reason) => (FindingKind::NotSupported, reason.to_string(), None),
        Different(reason) => (FindingKind::HandledDifferently, reason.to_string(), None),
        ClosesListener(reason) => (
            FindingKind::NotSupported,
            format!("{reason}; the listener is written commented out"),
            Some(reason),
        ),
    };
    Some((line.finding(kind, format!("{prefix}{reason}")), closes))
}

/// Whether the value of `key` is a secret that must not be echoed.
pub(super) fn is_secret(key: &str) -> bool {
    key.contains("password") || key == "bridge_psk"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = OPTIONS.iter().map(|o| o.key).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "an option is listed twice");
    }

    #[test]
    fn every_option_of_mosquittos_example_file_is_known() {
        // The options of /usr/share/doc/mosquitto/examples/mosquitto.conf (2.0.11).
        for key in "acl_file address allow_anonymous allow_zero_length_clientid auth_plugin \
            auto_id_prefix autosave_interval autosave_on_changes bind_interface bridge_alpn \
            bridge_attempt_unsubscribe bridge_bind_address bridge_cafile bridge_capath \
            bridge_certfile bridge_identity bridge_insecure bridge_keyfile \
            bridge_max_packet_size bridge_outgoing_retain bridge_protocol_version bridge_psk \
            cafile capath certfile check_retain_source ciphers cleansession clientid_prefixes \
            connection connection_messages crlfile dhparamfile http_dir idle_timeout \
            include_dir keepalive_interval keyfile listener local_clientid log_dest \
            log_facility log_timestamp log_timestamp_format log_type max_connections \
            max_inflight_bytes max_inflight_messages max_keepalive max_packet_size max_qos \
            max_queued_bytes max_queued_messages memory_limit message_size_limit mount_point \
            notification_topic notifications password_file per_listener_settings persistence \
            persistence_file persistence_location persistent_client_expiration pid_file \
            protocol psk_file psk_hint remote_clientid remote_password remote_username \
            require_certificate restart_timeout retain_available round_robin set_tcp_nodelay \
            socket_domain start_type sys_interval threshold topic try_private \
            upgrade_outgoing_qos use_identity_as_username use_username_as_clientid user \
            websockets_headers_size websockets_log_level"
            .split_whitespace()
        {
            assert!(lookup(key).is_some(), "{key} missing from the catalogue");
        }
        assert!(lookup("auth_opt_backend").is_some());
        assert!(lookup("allow_anonymus").is_none());
    }
}
