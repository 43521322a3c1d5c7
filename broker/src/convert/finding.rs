//! What the conversion could not carry over, and where it was: a [`Finding`] names the
//! file and line, the Mosquitto option and why. Findings go both to the top of the
//! generated file and to stderr, so nothing is dropped silently.
//!
//! This module owns only the type and its text; deciding what is a finding is the job of
//! the parser (unknown and malformed lines) and of the mappers.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A line of a Mosquitto configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as it was named (the main file as given, included files as found).
    pub file: Arc<Path>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Why an option is listed as not converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Tern has no equivalent; the reason says what to do instead, if anything.
    NotSupported,
    /// Tern covers it in another way; the reason says how.
    HandledDifferently,
    /// Not an option Mosquitto 2.x knows (Mosquitto would refuse to start).
    Unknown,
    /// An option Mosquitto knows, with a value or in a place it refuses or ignores.
    Malformed,
}

impl FindingKind {
    fn label(self) -> &'static str {
        match self {
            FindingKind::NotSupported => "not supported",
            FindingKind::HandledDifferently => "handled differently",
            FindingKind::Unknown => "unknown option",
            FindingKind::Malformed => "malformed",
        }
    }
}

/// One option (or line) the conversion could not carry over as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where it was; `None` for what no single line caused (a default that differs).
    pub at: Option<Origin>,
    /// The Mosquitto option (the first word of the line).
    pub option: String,
    /// What kind of problem.
    pub kind: FindingKind,
    /// Why, and what Tern does instead.
    pub reason: String,
}

impl Finding {
    /// A finding at a line.
    pub(super) fn at(
        at: &Origin,
        option: &str,
        kind: FindingKind,
        reason: impl Into<String>,
    ) -> Finding {
        Finding {
            at: Some(at.clone()),
            option: option.to_string(),
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(
            f,
            "{}: {}: {}",
            printable(&self.option),
            self.kind.label(),
            printable(&self.reason)
        )
    }
}

/// `text` with control characters (other than tab) escaped: such characters may not appear
/// in a TOML comment, and should not reach a terminal from a configuration file.
pub(super) fn printable(text: &str) -> String {
    if !text.chars().any(is_forbidden) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if is_forbidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn is_forbidden(c: char) -> bool {
    c != '\t' && c.is_control()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_option_kind_and_reason() {
        let at = Origin {
            file: Arc::from(Path::new("/etc/mosquitto/mosquitto.conf")),
            line: 7,
        };
        let finding = Finding::at(&at, "pid_file", FindingKind::NotSupported, "no pid file");
        assert_eq!(
            finding.to_string(),
            "/etc/mosquitto/mosquitto.conf:7: pid_file: not supported: no pid file"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\tc");
        assert_eq!(printable("plain"), "plain");
    }
}
