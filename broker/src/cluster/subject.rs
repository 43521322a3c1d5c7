//! MQTT topics and filters as NATS subjects, losslessly.
//!
//! A topic `a/b` of the cluster with prefix `tern` travels on `tern.m.t.a.b`; a topic whose
//! first level starts with `$` on `tern.m.d.…` instead, so that no filter with a wildcard in
//! its first level (`+`, `#`, which map into the `t` space only) ever matches it
//! ([MQTT-4.7.2-1]). Each level becomes one subject token, escaped with `~`:
//!
//! | in a level       | token    |
//! |------------------|----------|
//! | `~`              | `~~`     |
//! | `.`              | `~d`     |
//! | `*`              | `~s`     |
//! | `>`              | `~g`     |
//! | space            | `~_`     |
//! | other ASCII control or whitespace byte `HH` | `~xHH` |
//! | the empty level  | `~e`     |
//!
//! so no token is empty, contains a dot or whitespace, or is a NATS wildcard, and two levels
//! map to the same token only if they are equal. Other UTF-8 passes unchanged (NATS subjects
//! are bytes). In a filter, `+` becomes `*`, and `F/#` becomes the two subjects `F` and
//! `F.>` (`#` also matches the parent level); a lone `#` is `….t.>`.
//!
//! This module owns the mapping only; which subjects a node subscribes to is
//! [`super::interest`]'s.

use std::fmt::Write as _;

/// The subject space of ordinary topics.
const PLAIN: &str = "t";
/// The subject space of topics whose first level starts with `$`.
const DOLLAR: &str = "d";

/// The subject `topic` (a valid topic name, no wildcards) is published on.
pub(crate) fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + topic.len() + 8);
    subject.push_str(prefix);
    subject.push_str(".m.");
    subject.push_str(if topic.starts_with('$') {
        DOLLAR
    } else {
        PLAIN
    });
    for level in topic.split('/') {
        subject.push('.');
        push_token(&mut subject, level);
    }
    subject
}

/// The subjects a node subscribes to for `filter` (a valid filter, not `$share/…`): one, or
/// two for a filter ending in `/#`.
pub(crate) fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let first = filter.split('/').next().unwrap_or("");
    let space = if first.starts_with('$') {
        DOLLAR
    } else {
        PLAIN
    };
    let mut base = format!("{prefix}.m.{space}");
    if filter == "#" {
        base.push_str(".>");
        return vec![base];
    }
    let (levels, multi) = match filter.strip_suffix("/#") {
        Some(parent) => (parent, true),
        None => (filter, false),
    };
    for level in levels.split('/') {
        base.push('.');
        if level == "+" {
            base.push('*');
        } else {
            push_token(&mut base, level);
        }
    }
    if multi {
        let all_below = format!("{base}.>");
        vec![base, all_below]
    } else {
        vec![base]
    }
}

/// The NATS queue group of MQTT shared subscription group `group`: escaped like a level,
/// so that any group name is one valid token.
pub(crate) fn queue_name(group: &str) -> String {
    let mut name = String::with_capacity(group.len() + 2);
    push_token(&mut name, group);
    name
}

fn push_token(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str("~e");
        return;
    }
    for c in level.chars() {
        match c {
            '~' => out.push_str("~~"),
            '.' => out.push_str("~d"),
            '*' => out.push_str("~s"),
            '>' => out.push_str("~g"),
            ' ' => out.push_str("~_"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "~x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic a subject made by [`topic_subject`] carries; `None` for anything else.
    fn subject_topic(prefix: &str, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix(".m.")?;
        let (space, tokens) = rest.split_once('.')?;
        if space != PLAIN && space != DOLLAR {
            return None;
        }
        let mut topic = String::with_capacity(tokens.len());
        for (i, token) in tokens.split('.').enumerate() {
            if i > 0 {
                topic.push('/');
            }
            unescape(token, &mut topic)?;
        }
        (topic.starts_with('$') == (space == DOLLAR)).then_some(topic)
    }

    fn unescape(token: &str, out: &mut String) -> Option<()> {
        if token == "~e" {
            return Some(());
        }
        let mut chars = token.chars();
        while let Some(c) = chars.next() {
            if c != '~' {
                out.push(c);
                continue;
            }
            match chars.next()? {
                '~' => out.push('~'),
                'd' => out.push('.'),
                's' => out.push('*'),
                'g' => out.push('>'),
                '_' => out.push(' '),
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                }
                _ => return None,
            }
        }
        Some(())
    }

    /// NATS's matching of a subscription subject against a published one.
    fn nats_matches(sub: &str, subject: &str) -> bool {
        let s: Vec<&str> = sub.split('.').collect();
        let t: Vec<&str> = subject.split('.').collect();
        for (i, token) in s.iter().enumerate() {
            match *token {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                tok if t.get(i) == Some(&tok) => {}
                _ => return false,
            }
        }
        s.len() == t.len()
    }

    fn valid_token(token: &str) -> bool {
        !token.is_empty() && !token.chars().any(|c| c.is_ascii_whitespace() || c == '.')
    }

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "/",
        "a/",
        "/a",
        "//",
        "a//b",
        "a.b",
        "a*b",
        "*",
        ">",
        "a/>",
        "a b/c",
        "~",
        "~e",
        "~~d",
        "ünï/cödé",
        "$SYS/x",
        "$SYS",
        "$x/a",
        "a/$x",
        "t\tab",
        "+x",
        "x#",
    ];
    const FILTERS: &[&str] = &[
        "#", "+", "a/#", "a/+", "+/b", "+/+", "/#", "+/#", "a/+/c", "a//b", "a.b", "$SYS/#",
        "$SYS/+", "+/x", "*", ">", "~", "a b/c", "ünï/+", "a/b/#", "$x/a",
    ];

    #[test]
    fn topics_round_trip_and_make_valid_subjects() {
        for topic in TOPICS {
            let subject = topic_subject("tern", topic);
            assert!(
                subject.split('.').all(valid_token),
                "{topic:?} -> {subject}"
            );
            assert!(
                !subject.split('.').any(|t| t == "*" || t == ">"),
                "{subject}"
            );
            assert_eq!(subject_topic("tern", &subject).as_deref(), Some(*topic));
        }
    }

    #[test]
    fn distinct_topics_get_distinct_subjects() {
        let mut seen = std::collections::HashMap::new();
        for topic in TOPICS {
            if let Some(other) = seen.insert(topic_subject("p", topic), topic) {
                panic!("{topic:?} and {other:?} share a subject");
            }
        }
    }

    /// NATS matching on the mapped subjects agrees with MQTT matching, `$` rule included.
    #[test]
    fn nats_matching_agrees_with_mqtt_matching() {
        for filter in FILTERS {
            let subjects = filter_subjects("tern", filter);
            for topic in TOPICS {
                let subject = topic_subject("tern", topic);
                let nats = subjects
                    .iter()
                    .filter(|s| nats_matches(s, &subject))
                    .count();
                let mqtt = tern_codec::topic::matches(filter, topic);
                assert_eq!(
                    nats > 0,
                    mqtt,
                    "filter {filter:?} topic {topic:?} ({subjects:?})"
                );
                assert!(nats <= 1, "{filter:?} matches {topic:?} twice");
            }
        }
    }

    #[test]
    fn queue_names_are_single_tokens() {
        for group in ["g", "a.b", "x y", "~", "*", ">"] {
            let name = queue_name(group);
            assert!(
                valid_token(&name) && name != "*" && name != ">",
                "{group:?}"
            );
        }
    }
}
