//! How `tern ctl` prints the admin API's answers: aligned tables and `key value` lines
//! (`--json` prints them as they are). Knows JSON, not the commands ([`crate::ctl`]).

use std::fmt::Write as _;

use serde_json::Value;

/// A value as a table cell: strings bare, null as `-`, long text cut.
pub fn cell(value: &Value) -> String {
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

/// `rows` (a JSON array of objects) as a table of `columns` (title, key), with a count.
pub fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
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

/// One client's details, one `key value` line each, then its subscriptions.
pub fn client(answer: &Value) -> String {
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
        let text = table(
            &answer["retained"],
            &[
                ("TOPIC", "topic"),
                ("QOS", "qos"),
                ("BYTES", "payload_bytes"),
                ("PAYLOAD", "payload"),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "TOPIC            QOS  BYTES  PAYLOAD");
        assert_eq!(lines[1], "a/b              1    2      hi");
        assert_eq!(lines[2], "long/topic/name  0    0      -");
        assert_eq!(lines[3], "(2 total)");
    }
}
