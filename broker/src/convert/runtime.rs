//! Mosquitto's run-time options to Tern's `[persistence]`, `[sys]` and `[log]`:
//! `persistence`, `persistence_location`, `autosave_interval`; `sys_interval`; `log_type`
//! and `log_dest` where Tern has an equivalent (a level threshold on stderr).
//!
//! Persistence is always written, `enabled = false` included: Mosquitto keeps nothing on
//! disk unless told to, and Tern's default is the opposite.

use crate::config::Config;

use super::emit::{Entry, Table, Value};
use super::finding::{Finding, FindingKind};
use super::model::{last, Line};

/// `[persistence]`, and a defaults note when it is on.
pub(super) fn map_persistence(
    globals: &[Line],
    findings: &mut Vec<Finding>,
    defaults: &mut Vec<String>,
) -> Table {
    let tern = Config::default_config().persistence;
    let switch = globals
        .iter()
        .rev()
        .find(|l| l.key == "persistence" || l.key == "retained_persistence");
    let enabled = match switch.map(|l| (l, l.boolean())) {
        Some((line, Ok(b))) => Some((b, line)),
        Some((_, Err(f))) => {
            findings.push(f);
            None
        }
        None => None,
    };
    let mut entries = vec![match enabled {
        Some((b, line)) => Entry::new(
            "enabled",
            Value::Bool(b),
            format!("{} ({})", line.key, line.at),
        ),
        None => Entry::new(
            "enabled",
            Value::Bool(false),
            "not set: Mosquitto keeps nothing on disk unless `persistence true`",
        ),
    }];
    if let Some((true, line)) = enabled {
        if tern.max_disk_bytes > 0 {
            defaults.push(format!(
                "disk: Mosquitto has no budget; over Tern's max_disk_bytes ({}) QoS 1/2 \
                 publishes get 0x97",
                tern.max_disk_bytes
            ));
        }
        findings.push(line.finding(
            FindingKind::HandledDifferently,
            "Tern keeps its own write-ahead log and checkpoints in [persistence] dir and does \
             not read mosquitto.db: retained messages and persistent sessions start empty",
        ));
    }
    match last(globals, "persistence_location").map(|l| (l, l.text())) {
        Some((line, Ok(dir))) => entries.push(Entry::new(
            "dir",
            Value::Str(dir.to_string()),
            format!(
                "persistence_location ({}); Tern's files go beside mosquitto.db, so the user \
                 Tern runs as must be able to write here",
                line.at
            ),
        )),
        Some((_, Err(f))) => findings.push(f),
        None => {}
    }
    autosave(
        globals,
        tern.checkpoint_interval_secs,
        &mut entries,
        findings,
    );
    Table {
        name: "persistence",
        comment: Vec::new(),
        entries,
    }
}

/// `autosave_interval` as `checkpoint_interval_secs`; `autosave_on_changes`.
fn autosave(
    globals: &[Line],
    tern_interval_secs: u64,
    entries: &mut Vec<Entry>,
    findings: &mut Vec<Finding>,
) {
    if let Some(line) = last(globals, "autosave_interval") {
        match line.integer() {
            Ok(n) if n > 0 => entries.push(Entry::new(
                "checkpoint_interval_secs",
                Value::Int(n),
                format!(
                    "autosave_interval ({}); every change is also logged as it happens",
                    line.at
                ),
            )),
            Ok(n) => findings.push(line.finding(
                FindingKind::HandledDifferently,
                format!(
                    "{n}: Tern cannot checkpoint only at exit; it checkpoints every {} s and \
                     logs every change in between",
                    tern_interval_secs
                ),
            )),
            Err(f) => findings.push(f),
        }
    }
    if let Some(line) = last(globals, "autosave_on_changes") {
        match line.boolean() {
            Ok(true) => findings.push(line.finding(
                FindingKind::HandledDifferently,
                "Tern logs every change as it happens; checkpoints follow time \
                 (checkpoint_interval_secs) and the size of the log",
            )),
            Ok(false) => {}
            Err(f) => findings.push(f),
        }
    }
}

/// `[sys]`.
pub(super) fn map_sys(globals: &[Line], findings: &mut Vec<Finding>) -> Table {
    let mut entries = Vec::new();
    if let Some(line) = last(globals, "sys_interval") {
        match line.integer() {
            Ok(n) if (0..=65535).contains(&n) => entries.push(Entry::new(
                "interval_secs",
                Value::Int(n),
                format!(
                    "sys_interval ({}); the same $SYS/broker/... topic names. 0 also stops \
                     Tern's purge of expired retained messages from memory",
                    line.at
                ),
            )),
            Ok(n) => findings
                .push(line.malformed(format!("{n} is not 0 to 65535 (Mosquitto refuses it)"))),
            Err(f) => findings.push(f),
        }
    }
    Table {
        name: "sys",
        comment: Vec::new(),
        entries,
    }
}

/// The severity types of `log_type`, least to most verbose, with Tern's level for each.
const SEVERITIES: [(&str, &str); 5] = [
    ("error", "error"),
    ("warning", "warn"),
    ("notice", "info"),
    ("information", "info"),
    ("debug", "debug"),
];

/// `[log]`: a level from `log_type` (Tern's level is a threshold), or `off` for
/// `log_dest none`; the destinations other than stderr are findings.
pub(super) fn map_log(globals: &[Line], findings: &mut Vec<Finding>) -> Table {
    let dest_none = log_dest(globals, findings);
    let mut entries = Vec::new();
    if let Some(line) = dest_none {
        entries.push(Entry::new(
            "level",
            Value::Str("off".into()),
            format!("log_dest none ({})", line.at),
        ));
    } else if let Some(entry) = log_type(globals, findings) {
        entries.push(entry);
    }
    if let Some(line) = last(globals, "connection_messages") {
        match line.boolean() {
            Ok(true) => findings.push(line.finding(
                FindingKind::HandledDifferently,
                "Tern logs connections and disconnections at level debug",
            )),
            Ok(false) => {}
            Err(f) => findings.push(f),
        }
    }
    Table {
        name: "log",
        comment: Vec::new(),
        entries,
    }
}

/// Reports the destinations Tern does not have; the `log_dest none` line if nothing
/// followed it.
fn log_dest<'a>(globals: &'a [Line], findings: &mut Vec<Finding>) -> Option<&'a Line> {
    let mut none = None;
    for line in globals.iter().filter(|l| l.key == "log_dest") {
        let reason = match line.word() {
            Some("none") => {
                none = Some(line);
                continue;
            }
            Some("stderr") => None,
            Some("stdout") => Some((FindingKind::HandledDifferently, "Tern logs to stderr")),
            Some("file") => Some((
                FindingKind::HandledDifferently,
                "Tern logs to stderr only: under systemd set StandardError=append:PATH (or \
                 read the journal), from a shell redirect 2>>PATH",
            )),
            Some("syslog") => Some((
                FindingKind::HandledDifferently,
                "Tern logs to stderr; under systemd the journal takes it and can forward it \
                 to syslog",
            )),
            Some("topic") => Some((
                FindingKind::NotSupported,
                "Tern does not publish its log on $SYS/broker/log",
            )),
            Some("dlt") => Some((FindingKind::NotSupported, "Tern has no DLT output")),
            _ => {
                findings
                    .push(line.malformed("not a Mosquitto log destination (Mosquitto refuses it)"));
                continue;
            }
        };
        none = None;
        if let Some((kind, reason)) = reason {
            findings.push(line.finding(kind, reason));
        }
    }
    none
}

fn log_type(globals: &[Line], findings: &mut Vec<Finding>) -> Option<Entry> {
    let lines: Vec<&Line> = globals.iter().filter(|l| l.key == "log_type").collect();
    let first = *lines.first()?;
    let mut types: Vec<&str> = Vec::new();
    for line in &lines {
        match line.word() {
            Some("none") => types.clear(),
            Some("all") => types.extend(SEVERITIES.iter().map(|s| s.0)),
            Some(t) if SEVERITIES.iter().any(|s| s.0 == t) => types.push(t),
            Some(t @ ("subscribe" | "unsubscribe" | "websockets" | "internal")) => {
                findings.push(line.finding(
                    FindingKind::NotSupported,
                    format!("Tern has no `{t}` category; its levels are error, warn, info, debug, trace"),
                ));
            }
            _ => findings.push(line.malformed("not a Mosquitto log type (Mosquitto refuses it)")),
        }
    }
    let most = SEVERITIES.iter().rposition(|s| types.contains(&s.0));
    let level = most.map_or("off", |i| SEVERITIES[i].1);
    if let Some(most) = most {
        let missing: Vec<&str> = SEVERITIES[..most]
            .iter()
            .map(|s| s.0)
            .filter(|t| !types.contains(t))
            .collect();
        if !missing.is_empty() {
            findings.push(first.finding(
                FindingKind::HandledDifferently,
                format!(
                    "Tern's level is a threshold: level {level} also logs {}",
                    missing.join(", ")
                ),
            ));
        }
    }
    Some(Entry::new(
        "level",
        Value::Str(level.into()),
        format!("log_type ({})", first.at),
    ))
}
