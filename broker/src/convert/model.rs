//! A Mosquitto configuration as the parser files it: the options of each listener, of
//! each bridge, the security options (global or per listener) and the global ones, each
//! still a [`Line`] with its origin. Reading values out of a line (a boolean, a number)
//! reports a malformed value as a [`Finding`].
//!
//! No Tern concept appears here; the mappers turn this into Tern's configuration.

use std::path::PathBuf;

use super::finding::{Finding, FindingKind, Origin};
pub(super) use super::source::Line;

/// One `listener` block, or the default listener (options given before any `listener`
/// line, `port`, `bind_address`).
#[derive(Debug, Clone)]
pub(super) struct ListenerDef {
    /// The `listener` line, or the first line that made the default listener exist.
    pub(super) at: Origin,
    /// The port; `None` on the default listener without `port` (1883).
    pub(super) port: Option<u16>,
    /// The bind address or host name, if given.
    pub(super) host: Option<String>,
    /// A Unix socket path (`listener 0 PATH`).
    pub(super) unix_path: Option<String>,
    /// Why Mosquitto would refuse the `listener` line itself.
    pub(super) broken: Option<String>,
    /// Whether this is the default listener.
    pub(super) is_default: bool,
    /// Listener options, in order.
    pub(super) options: Vec<Line>,
    /// Security options, under `per_listener_settings true`.
    pub(super) security: Vec<Line>,
}

impl ListenerDef {
    pub(super) fn new(at: Origin, is_default: bool) -> ListenerDef {
        ListenerDef {
            at,
            port: None,
            host: None,
            unix_path: None,
            broken: None,
            is_default,
            options: Vec::new(),
            security: Vec::new(),
        }
    }

    /// How the output names it: `listener 8883 0.0.0.0` or `the default listener`.
    pub(super) fn label(&self) -> String {
        if self.is_default {
            return format!("default listener (port {})", self.port.unwrap_or(1883));
        }
        let mut label = format!("listener {}", self.port.unwrap_or(0));
        if let Some(host) = self.host.as_ref().or(self.unix_path.as_ref()) {
            label.push(' ');
            label.push_str(host);
        }
        label
    }
}

/// One `connection` block.
#[derive(Debug, Clone)]
pub(super) struct BridgeDef {
    /// The `connection` line.
    pub(super) at: Origin,
    /// Its name.
    pub(super) name: String,
    /// Its options, in order.
    pub(super) options: Vec<Line>,
}

/// Everything read from the main file and the files it includes.
#[derive(Debug, Clone, Default)]
pub(super) struct Mosquitto {
    /// `per_listener_settings true`: security options belong to their listener.
    pub(super) per_listener_settings: Option<Line>,
    /// No `listener`, `port` or `bind_address`: Mosquitto 2 listens on the loopback
    /// interface only, port 1883, and lets anonymous clients in.
    pub(super) local_only: bool,
    /// The `listener` blocks, in order.
    pub(super) listeners: Vec<ListenerDef>,
    /// The default listener, if any option made it exist.
    pub(super) default_listener: Option<ListenerDef>,
    /// Security options (without `per_listener_settings`).
    pub(super) security: Vec<Line>,
    /// Global options, in order.
    pub(super) globals: Vec<Line>,
    /// The `connection` blocks, in order.
    pub(super) bridges: Vec<BridgeDef>,
    /// Every file read, main file first.
    pub(super) files: Vec<PathBuf>,
    /// Unknown and malformed lines.
    pub(super) findings: Vec<Finding>,
}

impl Mosquitto {
    /// The listeners Mosquitto would open: the `listener` blocks, then the default
    /// listener if something made it exist; with none of these, the local-only listener.
    pub(super) fn effective_listeners(&self) -> Vec<ListenerDef> {
        let mut listeners = self.listeners.clone();
        if self.local_only {
            let mut local = self.default_listener.clone().unwrap_or_else(|| {
                let mut l = ListenerDef::new(self.main_origin(), true);
                l.port = Some(1883);
                l
            });
            local.host = Some("127.0.0.1".into());
            listeners.push(local);
        } else if let Some(default) = &self.default_listener {
            listeners.push(default.clone());
        }
        listeners
    }

    /// Line 1 of the main file: the origin of what the file as a whole implies.
    pub(super) fn main_origin(&self) -> Origin {
        Origin {
            file: std::sync::Arc::from(self.files.first().cloned().unwrap_or_default()),
            line: 1,
        }
    }
}

/// The last line setting `key`, if any.
pub(super) fn last<'a>(lines: &'a [Line], key: &str) -> Option<&'a Line> {
    lines.iter().rev().find(|l| l.key == key)
}

impl Line {
    /// A [`FindingKind::Malformed`] finding for this line.
    pub(super) fn malformed(&self, reason: impl Into<String>) -> Finding {
        Finding::at(&self.at, &self.key, FindingKind::Malformed, reason)
    }

    /// A finding of `kind` for this line.
    pub(super) fn finding(&self, kind: FindingKind, reason: impl Into<String>) -> Finding {
        Finding::at(&self.at, &self.key, kind, reason)
    }

    /// The first word of the value.
    pub(super) fn word(&self) -> Option<&str> {
        self.value.split_whitespace().next()
    }

    /// The value as Mosquitto reads a boolean: `true`/`1` or `false`/`0`.
    ///
    /// # Errors
    /// Anything else, or nothing.
    pub(super) fn boolean(&self) -> Result<bool, Finding> {
        match self.word() {
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(self.malformed(format!(
                "`{other}` is not true or false; Mosquitto refuses it"
            ))),
            None => Err(self.malformed("no value; Mosquitto refuses it")),
        }
    }

    /// The value as a whole number.
    ///
    /// # Errors
    /// Not a whole number (Mosquitto would read the leading digits, or 0).
    pub(super) fn integer(&self) -> Result<i64, Finding> {
        match self.word() {
            Some(word) => word.parse().map_err(|_| {
                self.malformed(format!("`{word}` is not a whole number; not converted"))
            }),
            None => Err(self.malformed("no value; Mosquitto refuses it")),
        }
    }

    /// The whole value, as for a path.
    ///
    /// # Errors
    /// An empty value, which Mosquitto refuses.
    pub(super) fn text(&self) -> Result<&str, Finding> {
        if self.value.is_empty() {
            Err(self.malformed("no value; Mosquitto refuses it"))
        } else {
            Ok(&self.value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    fn line(key: &str, value: &str) -> Line {
        Line {
            at: Origin {
                file: Arc::from(Path::new("m.conf")),
                line: 3,
            },
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn booleans_as_mosquitto_reads_them() {
        assert_eq!(line("a", "true").boolean(), Ok(true));
        assert_eq!(line("a", "1").boolean(), Ok(true));
        assert_eq!(line("a", "false").boolean(), Ok(false));
        assert_eq!(line("a", "0 # off").boolean(), Ok(false));
        let err = line("allow_anonymous", "yes").boolean().expect_err("yes");
        assert_eq!(err.kind, FindingKind::Malformed);
        assert!(err
            .to_string()
            .starts_with("m.conf:3: allow_anonymous: malformed"));
        assert!(line("a", "").boolean().is_err());
    }

    #[test]
    fn integers_and_text() {
        assert_eq!(line("a", "-1").integer(), Ok(-1));
        assert!(line("a", "10s").integer().is_err());
        assert_eq!(line("a", "/etc/x y").text(), Ok("/etc/x y"));
        assert!(line("a", "").text().is_err());
    }
}
