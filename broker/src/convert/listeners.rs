//! Mosquitto listeners to Tern `[[listeners]]`: the bind address, `protocol mqtt` or
//! `websockets`, and TLS (`certfile`, `keyfile`, `cafile` with `require_certificate`,
//! `use_identity_as_username`). A listener whose options Tern cannot honour without letting
//! in clients Mosquitto kept out (a revocation list, a mount point, PSK...) is written
//! commented out, with the reasons.
//!
//! Per-listener limits (`max_connections`, `max_topic_alias`) are read here and handed to
//! the limits mapper; per-listener security options are the auth mapper's.

use std::net::{IpAddr, SocketAddr};

use super::catalogue;
use super::emit::{Entry, ListenerOut, Value};
use super::finding::{Finding, FindingKind, Origin};
use super::model::{last, Line, ListenerDef};

/// A converted listener and what the other mappers need from it.
#[derive(Debug, Clone)]
pub(super) struct MappedListener {
    pub(super) out: ListenerOut,
    /// Written as a working listener (not commented out).
    pub(super) open: bool,
    /// `max_connections` and its line: `None` for no limit (Mosquitto's -1, the default).
    pub(super) max_connections: Option<(i64, Line)>,
    /// `max_topic_alias`, when set.
    pub(super) max_topic_alias: Option<(u16, Line)>,
}

/// Converts one listener. `local_only`: the listener Mosquitto 2 opens when the file has
/// none.
pub(super) fn map_listener(
    def: &ListenerDef,
    local_only: bool,
    findings: &mut Vec<Finding>,
) -> MappedListener {
    let label = def.label();
    let mut out = ListenerOut::default();
    out.comment.push(if local_only {
        "No listener in the file: Mosquitto 2 then listens on port 1883 of the loopback \
         interface only (127.0.0.1 and ::1)."
            .to_string()
    } else if def.is_default {
        format!(
            "The default listener, made by options before any `listener` line ({})",
            def.at
        )
    } else {
        format!("{label} ({})", def.at)
    });
    if let Some(broken) = &def.broken {
        out.closed.push(format!("{broken} (Mosquitto refuses it)"));
    }
    if let Some(path) = &def.unix_path {
        let reason = format!("a Unix socket ({path}): Tern listens on TCP only");
        close(&mut out, findings, &def.at, "listener", &label, reason);
    }
    for line in &def.options {
        if let Some((finding, closes)) = catalogue::report(line, Some(&label)) {
            findings.push(finding);
            out.closed
                .extend(closes.map(|r| format!("{}: {r}", line.key)));
        }
    }
    let o = &def.options;
    let websockets = match last(o, "protocol").map(|l| (l, l.word())) {
        None | Some((_, Some("mqtt"))) => false,
        Some((_, Some("websockets"))) => true,
        Some((line, word)) => {
            let word = word.unwrap_or("");
            findings.push(line.malformed(format!(
                "{label}: protocol `{word}` is not mqtt or websockets (Mosquitto refuses it)"
            )));
            out.closed.push(format!("protocol `{word}`"));
            false
        }
    };
    let tls = tls(def, &label, &mut out, findings);
    let kind = match (websockets, tls.is_some()) {
        (false, false) => "tcp",
        (false, true) => "tls",
        (true, false) => "ws",
        (true, true) => "wss",
    };
    out.entries
        .push(Entry::new("kind", Value::Str(kind.into()), ""));
    bind(def, &label, &mut out, findings);
    out.entries.extend(tls.unwrap_or_default());
    refused_identities(o, &label, &mut out, findings);
    MappedListener {
        open: out.closed.is_empty(),
        max_connections: read(o, "max_connections", findings)
            .filter(|&n| n >= 0)
            .zip(last(o, "max_connections").cloned()),
        max_topic_alias: max_topic_alias(o, &label, findings),
        out,
    }
}

/// The `bind` entry: Mosquitto's port and host; no host means every interface.
fn bind(def: &ListenerDef, label: &str, out: &mut ListenerOut, findings: &mut Vec<Finding>) {
    let port = def.port.unwrap_or(1883);
    let domain = last(&def.options, "socket_domain").and_then(Line::word);
    let (addr, note) = match def.host.as_deref() {
        None if domain == Some("ipv6") => (
            format!("[::]:{port}"),
            "every interface (socket_domain ipv6)".to_string(),
        ),
        None if domain == Some("ipv4") => (format!("0.0.0.0:{port}"), String::new()),
        None => (
            format!("0.0.0.0:{port}"),
            format!(
                "every interface: Mosquitto also listened on IPv6 here; \
                 bind = \"[::]:{port}\" takes IPv6 and IPv4 on a dual-stack system"
            ),
        ),
        Some("localhost") => (
            format!("127.0.0.1:{port}"),
            "localhost (Mosquitto also listened on ::1)".to_string(),
        ),
        Some(host) => match host.parse::<IpAddr>() {
            Ok(ip) => (SocketAddr::new(ip, port).to_string(), String::new()),
            Err(_) => {
                let reason = format!(
                    "Tern binds IP addresses; replace the host name `{host}` with its address"
                );
                close(out, findings, &def.at, "listener", label, reason);
                (format!("0.0.0.0:{port}"), String::new())
            }
        },
    };
    out.entries.push(Entry::new("bind", Value::Str(addr), note));
}

/// A listener's TLS options, read once.
struct TlsOptions<'a> {
    cert: Option<(String, &'a Line)>,
    key: Option<(String, &'a Line)>,
    cafile: Option<(String, &'a Line)>,
    capath: Option<(String, &'a Line)>,
    require: Option<&'a Line>,
    identity: Option<&'a Line>,
    subject: Option<&'a Line>,
}

impl<'a> TlsOptions<'a> {
    fn read(o: &'a [Line], findings: &mut Vec<Finding>) -> TlsOptions<'a> {
        let text =
            |key| last(o, key).and_then(|l: &'a Line| l.text().ok().map(|t| (t.to_string(), l)));
        TlsOptions {
            cert: text("certfile"),
            key: text("keyfile"),
            cafile: text("cafile"),
            capath: text("capath"),
            require: flag_line(o, "require_certificate", findings),
            identity: flag_line(o, "use_identity_as_username", findings),
            subject: flag_line(o, "use_subject_as_username", findings),
        }
    }
}

/// The TLS entries, `None` for a plain listener. Closes the listener where Tern would
/// accept clients Mosquitto refused.
fn tls(
    def: &ListenerDef,
    label: &str,
    out: &mut ListenerOut,
    findings: &mut Vec<Finding>,
) -> Option<Vec<Entry>> {
    let o = &def.options;
    let t = TlsOptions::read(o, findings);
    if let Some(keyform) = last(o, "tls_keyform").filter(|l| l.word() != Some("pem")) {
        let reason = format!(
            "tls_keyform {}: Tern reads keys from PEM files only",
            keyform.value
        );
        close(out, findings, &keyform.at, "tls_keyform", label, reason);
    }
    let ((cert, cert_line), (key, key_line)) = match (t.cert.clone(), t.key.clone()) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            without_certificate(o, &t, label, out, findings);
            return None;
        }
        (Some((_, line)), None) | (None, Some((_, line))) => {
            findings.push(line.malformed(format!(
                "{label}: certfile and keyfile go together (Mosquitto refuses one alone)"
            )));
            out.closed
                .push("certfile without keyfile, or keyfile without certfile".into());
            return None;
        }
    };
    let mut entries = vec![
        Entry::new(
            "cert_file",
            Value::Str(cert),
            format!("certfile ({})", cert_line.at),
        ),
        Entry::new(
            "key_file",
            Value::Str(key),
            format!("keyfile ({})", key_line.at),
        ),
    ];
    if let Some(require) = t.require {
        client_certificates(&t, require, label, out, findings, &mut entries);
    } else {
        if t.cafile.is_some() || t.capath.is_some() {
            out.comment.push(
                "cafile/capath not written: without require_certificate Mosquitto does not \
                 ask clients for certificates, and neither does Tern."
                    .into(),
            );
        }
        if let Some(line) = t.identity.or(t.subject) {
            let reason = format!(
                "{} without require_certificate: Mosquitto refused every client here",
                line.key
            );
            close(out, findings, &line.at, &line.key, label, reason);
        }
    }
    Some(entries)
}

/// Certificate options on a listener without `certfile` and `keyfile`.
fn without_certificate(
    o: &[Line],
    t: &TlsOptions<'_>,
    label: &str,
    out: &mut ListenerOut,
    findings: &mut Vec<Finding>,
) {
    for (set, key) in [
        (t.cafile.is_some(), "cafile"),
        (t.capath.is_some(), "capath"),
        (t.require.is_some(), "require_certificate"),
    ] {
        if let Some(line) = last(o, key).filter(|_| set) {
            findings.push(line.malformed(format!(
                "{label}: no effect without certfile and keyfile; not converted"
            )));
        }
    }
    if let Some(line) = t.identity.or(t.subject) {
        let reason = format!(
            "{} without TLS: Mosquitto refused every client here",
            line.key
        );
        close(out, findings, &line.at, &line.key, label, reason);
    }
}

/// `require_certificate true`: the client CA file, and the user name from the
/// certificate.
fn client_certificates(
    t: &TlsOptions<'_>,
    require: &Line,
    label: &str,
    out: &mut ListenerOut,
    findings: &mut Vec<Finding>,
    entries: &mut Vec<Entry>,
) {
    match (&t.cafile, &t.capath) {
        (Some((ca, line)), capath) => {
            entries.push(Entry::new(
                "client_ca_file",
                Value::Str(ca.clone()),
                format!(
                    "cafile with require_certificate true ({}): clients must present a \
                     certificate it signed",
                    line.at
                ),
            ));
            if let Some((dir, line)) = capath {
                findings.push(line.finding(
                    FindingKind::NotSupported,
                    format!(
                        "{label}: Tern trusts only the client CAs of cafile; append the \
                         certificates in {dir} to it"
                    ),
                ));
            }
        }
        (None, Some((dir, line))) => {
            let reason = format!(
                "require_certificate with capath only: Tern reads client CAs from one PEM \
                 file (cat {dir}/*.pem > ca.pem, then cafile ca.pem)"
            );
            close(out, findings, &line.at, "capath", label, reason);
        }
        (None, None) => {
            let reason = "require_certificate without cafile: no client certificate could be \
                          verified";
            close(
                out,
                findings,
                &require.at,
                &require.key,
                label,
                reason.into(),
            );
        }
    }
    if let Some(line) = t.subject {
        let reason = "use_subject_as_username: Tern can use the certificate's Common Name \
                      (use_identity_as_username), not its whole subject";
        close(out, findings, &line.at, &line.key, label, reason.into());
    } else if t.identity.is_some() {
        entries.push(Entry::new(
            "use_identity_as_username",
            Value::Bool(true),
            "the certificate's Common Name is the user name; the password file is not used",
        ));
    }
}

/// `use_username_as_clientid true` closes the listener: in Tern a client keeps the
/// identifier it sent, which ACL `%c` patterns and session takeover would then follow.
fn refused_identities(o: &[Line], label: &str, out: &mut ListenerOut, findings: &mut Vec<Finding>) {
    if flag(o, "use_username_as_clientid", findings) {
        let reason = "use_username_as_clientid: Tern keeps the identifier the client sends, \
                      which ACL %c patterns and session takeover would then follow";
        if let Some(line) = last(o, "use_username_as_clientid") {
            findings.push(line.finding(
                FindingKind::NotSupported,
                format!("{label}: {reason}; the listener is written commented out"),
            ));
        }
        out.closed.push(reason.into());
    }
}

/// Writes the listener commented out for `reason`, and lists that as a finding.
fn close(
    out: &mut ListenerOut,
    findings: &mut Vec<Finding>,
    at: &Origin,
    option: &str,
    label: &str,
    reason: String,
) {
    findings.push(Finding::at(
        at,
        option,
        FindingKind::NotSupported,
        format!("{label}: {reason}; the listener is written commented out"),
    ));
    out.closed.push(reason);
}

/// The line of `key` when it says true.
fn flag_line<'a>(o: &'a [Line], key: &str, findings: &mut Vec<Finding>) -> Option<&'a Line> {
    flag(o, key, findings).then(|| last(o, key)).flatten()
}

fn flag(o: &[Line], key: &str, findings: &mut Vec<Finding>) -> bool {
    match last(o, key).map(Line::boolean) {
        Some(Ok(b)) => b,
        Some(Err(f)) => {
            findings.push(f);
            false
        }
        None => false,
    }
}

fn read(o: &[Line], key: &str, findings: &mut Vec<Finding>) -> Option<i64> {
    match last(o, key).map(Line::integer)? {
        Ok(n) => Some(n),
        Err(f) => {
            findings.push(f);
            None
        }
    }
}

fn max_topic_alias(o: &[Line], label: &str, findings: &mut Vec<Finding>) -> Option<(u16, Line)> {
    let line = last(o, "max_topic_alias")?;
    let n = read(o, "max_topic_alias", findings)?;
    match u16::try_from(n) {
        Ok(n) => Some((n, line.clone())),
        Err(_) => {
            findings.push(line.malformed(format!(
                "{label}: {n} is not 0 to 65535 (Mosquitto refuses it)"
            )));
            None
        }
    }
}
