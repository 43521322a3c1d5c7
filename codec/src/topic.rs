//! Topic names and topic filters (section 4.7): wildcard placement, `$share/{group}/{filter}`
//! shared subscriptions (section 4.8.2), and a matcher used by tests and small callers.
//!
//! The broker's trie has its own matcher; this module only says what is *valid*.

use crate::error::DecodeError;

/// The largest topic name or filter: strings are at most 65,535 bytes ([MQTT-4.7.3-3]).
pub const TOPIC_MAX_BYTES: usize = 65_535;

/// Checks a topic name: no `+` or `#` anywhere ([MQTT-3.3.2-2], [MQTT-4.7.0-1]).
/// An empty name is checked by the PUBLISH decoder, where a topic alias may stand in for it.
pub fn validate_name(name: &str) -> Result<(), DecodeError> {
    if crate::types::has_wildcard(name.as_bytes()) {
        return Err(DecodeError::InvalidTopicName);
    }
    Ok(())
}

/// Checks a topic filter: at least one character ([MQTT-4.7.3-1]); `#` only as the whole last
/// level ([MQTT-4.7.1-1]); `+` only as a whole level ([MQTT-4.7.1-2]); and for
/// `$share/{group}/{filter}` a non-empty group without wildcards and a valid, non-empty
/// filter ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub fn validate_filter(filter: &str) -> Result<(), DecodeError> {
    match split_shared(filter) {
        Some(Ok((_group, inner))) => validate_plain_filter(inner),
        Some(Err(e)) => Err(e),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::InvalidTopicFilter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return Err(DecodeError::InvalidTopicFilter),
            _ => {}
        }
        if level == "#" && !last {
            return Err(DecodeError::InvalidTopicFilter);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into its group and filter. `None` when `filter` is not a
/// shared subscription; an error when it starts with `$share/` but is malformed.
pub fn split_shared(filter: &str) -> Option<Result<(&str, &str), DecodeError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            Ok((group, inner))
        }
        _ => Err(DecodeError::InvalidTopicFilter),
    })
}

/// Whether `filter` has a `+` or `#` level.
pub fn has_wildcards(filter: &str) -> bool {
    filter.split('/').any(|l| l == "+" || l == "#")
}

/// Whether the topic name `topic` matches the (non-shared, valid) `filter`. Topics starting
/// with `$` never match a filter starting with a wildcard ([MQTT-4.7.2-1]).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b/c").is_ok());
        assert!(validate_name("/").is_ok());
        assert_eq!(validate_name("a/+"), Err(DecodeError::InvalidTopicName));
        assert_eq!(validate_name("a/#"), Err(DecodeError::InvalidTopicName));
        assert_eq!(validate_name("a+b"), Err(DecodeError::InvalidTopicName));
    }

    #[test]
    fn filters_mqtt_4_7_1() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$SYS/#",
            "$share/g/a/#",
            "$share/g/#",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b#",
            "a+/b",
            "+a",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert_eq!(
                validate_filter(bad),
                Err(DecodeError::InvalidTopicFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn matching_mqtt_4_7_2() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(matches("+/+", "/x"));
        assert!(matches("#", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
