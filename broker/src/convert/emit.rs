//! Writes the converted configuration as commented TOML: a header listing the files read
//! and everything not converted, then the listeners, the tables, and the bridges
//! (`[[mqtt_bridges]]`, written by the bridge mapper). Every key written is one Tern's `config.rs` knows.
//!
//! This module owns the text format only (quoting, comments, commented-out listeners);
//! what goes in is decided by the mappers.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::finding::{printable, Finding};

/// A TOML value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Str(s) => quote(s),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// One key with its comment lines.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: &'static str,
    pub(super) value: Value,
    pub(super) comment: Vec<String>,
}

impl Entry {
    pub(super) fn new(key: &'static str, value: Value, comment: impl Into<String>) -> Entry {
        let comment: String = comment.into();
        Entry {
            key,
            value,
            comment: if comment.is_empty() {
                Vec::new()
            } else {
                vec![comment]
            },
        }
    }
}

/// A `[table]`.
#[derive(Debug, Clone, Default)]
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) comment: Vec<String>,
    pub(super) entries: Vec<Entry>,
}

/// One `[[listeners]]` entry, written commented out when `closed` says why.
#[derive(Debug, Clone, Default)]
pub(super) struct ListenerOut {
    pub(super) comment: Vec<String>,
    pub(super) entries: Vec<Entry>,
    pub(super) closed: Vec<String>,
}

/// The whole output.
#[derive(Debug, Clone, Default)]
pub(super) struct Document {
    /// The files read, main file first.
    pub(super) files: Vec<PathBuf>,
    /// Everything not converted.
    pub(super) findings: Vec<Finding>,
    /// Mosquitto defaults (of options the file does not set) that Tern does not share.
    pub(super) defaults: Vec<String>,
    pub(super) listeners: Vec<ListenerOut>,
    pub(super) tables: Vec<Table>,
    /// The bridges: `[[mqtt_bridges]]` tables (or comments), as TOML text.
    pub(super) bridges: Vec<String>,
}

/// The TOML text of `doc`.
pub(super) fn render(doc: &Document) -> String {
    let mut out = String::new();
    header(&mut out, doc);
    for listener in &doc.listeners {
        render_listener(&mut out, listener);
    }
    for table in doc.tables.iter().filter(|t| !t.entries.is_empty()) {
        out.push('\n');
        comments(&mut out, &table.comment);
        let _ = writeln!(out, "[{}]", table.name);
        for entry in &table.entries {
            comments(&mut out, &entry.comment);
            let _ = writeln!(out, "{} = {}", entry.key, entry.value.render());
        }
    }
    for bridge in &doc.bridges {
        out.push('\n');
        out.push_str(bridge);
    }
    out
}

fn header(out: &mut String, doc: &Document) {
    let mut lines = vec!["Tern configuration written by `tern convert` from:".to_string()];
    lines.extend(doc.files.iter().map(|f| format!("  {}", f.display())));
    lines.push("Check it with `tern check-config FILE` before starting Tern with it.".into());
    lines.push(String::new());
    if doc.findings.is_empty() {
        lines.push("Every option was converted.".into());
    } else {
        lines.push(format!(
            "Not converted as written ({}); each was also printed as a warning:",
            doc.findings.len()
        ));
        lines.extend(doc.findings.iter().map(|f| format!("  {f}")));
    }
    if !doc.defaults.is_empty() {
        lines.push(String::new());
        lines.push(
            "Mosquitto defaults that Tern does not share, for options the file does not set \
             (Tern's apply; set the key to keep Mosquitto's):"
                .into(),
        );
        lines.extend(doc.defaults.iter().map(|d| format!("  {d}")));
    }
    lines.push(String::new());
    lines.push(
        "Keys not written here keep Tern's defaults (config.toml in Tern's repository \
         documents every key)."
            .into(),
    );
    comments(out, &lines);
}

fn render_listener(out: &mut String, listener: &ListenerOut) {
    out.push('\n');
    comments(out, &listener.comment);
    if listener.closed.is_empty() {
        out.push_str("[[listeners]]\n");
        for entry in &listener.entries {
            comments(out, &entry.comment);
            let _ = writeln!(out, "{} = {}", entry.key, entry.value.render());
        }
        return;
    }
    let mut lines = vec!["Not converted, so written commented out:".to_string()];
    lines.extend(listener.closed.iter().map(|r| format!("  - {r}")));
    lines.push("[[listeners]]".into());
    lines.extend(
        listener
            .entries
            .iter()
            .map(|e| format!("{} = {}", e.key, e.value.render())),
    );
    comments(out, &lines);
}

/// Writes each line as a `#` comment, made safe for TOML (no control characters).
fn comments(out: &mut String, lines: &[String]) {
    for line in lines.iter().flat_map(|l| l.split('\n')) {
        let line = printable(line);
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
}

/// A TOML basic string.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_for_toml() {
        let text = quote("C:\\dir\\\"x\"\u{7}\tend");
        let parsed: toml::Table = format!("k = {text}").parse().expect("valid toml");
        assert_eq!(parsed["k"].as_str(), Some("C:\\dir\\\"x\"\u{7}\tend"));
    }

    #[test]
    fn a_closed_listener_is_all_comments() {
        let doc = Document {
            listeners: vec![ListenerOut {
                comment: vec!["listener 8883 (m.conf:1)".into()],
                entries: vec![Entry::new("kind", Value::Str("tls".into()), "")],
                closed: vec!["crlfile: no revocation lists".into()],
            }],
            ..Document::default()
        };
        let text = render(&doc);
        assert!(
            text.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{text}"
        );
        let parsed: toml::Table = text.parse().expect("valid toml");
        assert!(parsed.is_empty());
    }
}
