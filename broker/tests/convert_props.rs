//! `tern convert` on arbitrary input: whatever the text (or bytes), it does not panic, and
//! what it writes is TOML that Tern's own loader accepts, with every finding listed at the
//! top. Inputs mix Mosquitto option names with arbitrary values, so that the mappers (not
//! only the parser) see garbage.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use tern_broker::config::Config;
use tern_broker::convert::{convert_bytes, Conversion};

/// Option names that reach every mapper (`include_dir` is left out: it reads directories).
const KEYS: &[&str] = &[
    "listener",
    "port",
    "bind_address",
    "per_listener_settings",
    "protocol",
    "socket_domain",
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "require_certificate",
    "use_identity_as_username",
    "use_subject_as_username",
    "use_username_as_clientid",
    "tls_keyform",
    "crlfile",
    "mount_point",
    "max_connections",
    "max_topic_alias",
    "allow_anonymous",
    "password_file",
    "acl_file",
    "allow_zero_length_clientid",
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "max_packet_size",
    "message_size_limit",
    "max_keepalive",
    "persistence",
    "persistence_location",
    "autosave_interval",
    "autosave_on_changes",
    "persistent_client_expiration",
    "sys_interval",
    "log_type",
    "log_dest",
    "connection_messages",
    "global_max_connections",
    "connection",
    "address",
    "topic",
    "remote_password",
    "pid_file",
    "auth_opt_x",
    "plugin",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..70000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "true",
            "false",
            "0",
            "1",
            "-1",
            "websockets",
            "mqtt",
            "ipv4",
            "ipv6",
            "engine",
            "none",
            "all",
            "debug",
            "file /var/log/m.log",
            "14d",
            "1883 127.0.0.1",
            "0 /tmp/s",
            "8883 ::1",
            "1883 localhost",
            "1883 example.com",
            "# comment",
        ])
        .prop_map(str::to_string),
        "\\PC{0,24}",
        "[ -~]{0,40}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} {v}")),
        1 => "[a-z_]{1,16}( [ -~]{0,20})?",
        1 => "\\PC{0,40}",
        1 => Just("# a comment".to_string()),
    ]
}

/// A file of its own for each check (the two properties run in parallel).
fn temp_file() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("tern-convert-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{}.toml", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// The output loads in Tern and lists every finding.
fn check(conversion: &Conversion) {
    let path = temp_file();
    std::fs::write(&path, &conversion.toml).expect("write");
    let loaded = Config::load(Some(&path));
    let _ = std::fs::remove_file(&path);
    if let Err(e) = loaded {
        panic!("Tern refuses the output: {e}\n{}", conversion.toml);
    }
    for finding in &conversion.findings {
        let listed = format!("#   {finding}");
        assert!(
            conversion.toml.lines().any(|l| l.starts_with(&listed)),
            "finding not listed: {finding}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn option_lines_with_any_values(lines in prop::collection::vec(line(), 0..40)) {
        let text = lines.join("\n");
        check(&convert_bytes(Path::new("fuzz.conf"), text.as_bytes()));
    }

    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&convert_bytes(Path::new("fuzz.conf"), &bytes));
    }
}
