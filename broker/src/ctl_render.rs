//! How `tern ctl` prints the admin API's answers as readable tables and lines (`--json`
//! prints them as they are).

use std::fmt::Write as _;

use serde_json::Value;

use crate::ctl::CtlCommand;

/// The text for `command`'s `answer`.
pub fn render(command: &CtlCommand, answer: &Value) -> String {
    match command {
        CtlCommand::Clients { .. } => table(
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
        CtlCommand::Sessions => table(
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
        CtlCommand::Retained { .. } => table(
            &answer["retained"],
            &[
                ("TOPIC", "topic"),
                ("QOS", "qos"),
                ("BYTES", "payload_bytes"),
                ("PAYLOAD", "payload"),
            ],
        ),
        CtlCommand::Client { .. } => client(answer),
        CtlCommand::Kick { id } => format!("kicked {id}"),
        CtlCommand::Publish { topic, .. } => format!(
            "published to {topic} (delivered to {})",
            cell(&answer["delivered"])
        ),
        CtlCommand::Reload => format!("reloaded: {}", cell(&answer["summary"])),
    }
}

/// A value as a table cell: strings bare, null as `-`, long text cut.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 48 {
        format!("{}...", text.chars().take(45).collect::<String>())
    } else {
        text
    }
}

fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
    let rows: &[Value] = rows.as_array().map_or(&[], Vec::as_slice);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, key)| cell(&row[*key])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |fields: Vec<&str>| {
        let padded: Vec<String> = fields
            .iter()
            .zip(&widths)
            .map(|(f, w)| format!("{f:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(title, _)| *title).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out.push_str(&format!("({} total)", rows.len()));
    out
}

fn client(answer: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(map) = answer {
        for (key, value) in map.iter().filter(|(k, _)| *k != "subscriptions") {
            let _ = writeln!(out, "{key:<22} {}", cell(value));
        }
    }
    let subs = answer["subscriptions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let _ = write!(out, "subscriptions          {}", subs.len());
    for sub in subs {
        let _ = write!(
            out,
            "\n  {} (qos {})",
            cell(&sub["filter"]),
            cell(&sub["qos"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_count() {
        let answer = serde_json::json!({"retained": [
            {"topic": "a/b", "qos": 1, "payload_bytes": 2, "payload": "hi"},
            {"topic": "long/topic/name", "qos": 0, "payload_bytes": 0, "payload": null}
        ]});
        let text = render(&CtlCommand::Retained { filter: None }, &answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "TOPIC            QOS  BYTES  PAYLOAD");
        assert_eq!(lines[1], "a/b              1    2      hi");
        assert_eq!(lines[2], "long/topic/name  0    0      -");
        assert_eq!(lines[3], "(2 total)");
    }
}
