//! Files each line of a Mosquitto configuration where Mosquitto 2.x applies it: to the
//! current listener (before any `listener` line in a file: the default listener), to the
//! current bridge, to the listener's or the global security options
//! (`per_listener_settings`), or to the broker. `include_dir` in the main file reads the
//! directory's `*.conf` files at that point, each starting afresh as Mosquitto does.
//!
//! Unknown options and lines Mosquitto would refuse become findings here; values are not
//! interpreted (the mappers do that).

use std::path::Path;
use std::sync::Arc;

use super::catalogue::{self, Scope};
use super::finding::{Finding, FindingKind, Origin};
use super::model::{BridgeDef, Line, ListenerDef, Mosquitto};
use super::source;

/// What a file's lines apply to so far. Mosquitto starts every file with the default
/// listener and no bridge.
#[derive(Default)]
struct FileState {
    listener: Option<usize>,
    bridge: Option<usize>,
}

/// Reads the main file's contents (`bytes`, from `path`) and what it includes.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Mosquitto {
    let mut parser = Parser {
        m: Mosquitto {
            local_only: true,
            ..Mosquitto::default()
        },
        security_seen: false,
    };
    parser.m.files.push(path.to_path_buf());
    parser.file(&Arc::from(path), bytes, 0);
    parser.m
}

struct Parser {
    m: Mosquitto,
    /// Whether a security option has been read (`per_listener_settings` must precede them).
    security_seen: bool,
}

impl Parser {
    fn file(&mut self, file: &Arc<Path>, bytes: &[u8], level: usize) {
        let mut state = FileState::default();
        for line in source::lines(file, bytes) {
            match line {
                Ok(line) => self.line(line, &mut state, level),
                Err(at) => self.m.findings.push(Finding::at(
                    &at,
                    "(line)",
                    FindingKind::Malformed,
                    "not UTF-8; Mosquitto refuses it",
                )),
            }
        }
    }

    fn line(&mut self, line: Line, state: &mut FileState, level: usize) {
        let Some(info) = catalogue::lookup(&line.key) else {
            self.m.findings.push(line.finding(
                FindingKind::Unknown,
                "not a Mosquitto 2.x option (Mosquitto refuses to start with it)",
            ));
            return;
        };
        let repeatable = info.repeatable;
        let repeated = match info.scope {
            Scope::Structure => return self.structure(line, state, level),
            Scope::Global => push(&mut self.m.globals, line, repeatable),
            Scope::Security => {
                self.security_seen = true;
                let list = if self.m.per_listener_settings.is_some() {
                    &mut self.current_listener(state, &line.at).security
                } else {
                    &mut self.m.security
                };
                push(list, line, repeatable)
            }
            Scope::Listener => {
                let list = &mut self.current_listener(state, &line.at).options;
                push(list, line, repeatable)
            }
            Scope::Bridge => match state.bridge {
                Some(i) => push(&mut self.m.bridges[i].options, line, true),
                None => Some(line.malformed(
                    "a bridge option outside a `connection` block (Mosquitto refuses it)",
                )),
            },
        };
        self.m.findings.extend(repeated);
    }

    fn structure(&mut self, line: Line, state: &mut FileState, level: usize) {
        match line.key.as_str() {
            "listener" => self.listener(line, state),
            "connection" => self.connection(line, state),
            "include_dir" if level > 0 => self.m.findings.push(line.malformed(
                "Mosquitto reads include_dir only in the main file and ignores it here",
            )),
            "include_dir" => self.include_dir(&line),
            "per_listener_settings" => self.per_listener_settings(line),
            "port" => {
                self.m.local_only = false;
                let port = line.integer().and_then(|p| port_number(&line, p));
                match port {
                    Ok(port) => self.default_listener(&line.at).port = Some(port),
                    Err(finding) => self.m.findings.push(finding),
                }
            }
            "bind_address" => {
                self.m.local_only = false;
                match line.text() {
                    Ok(host) => self.default_listener(&line.at).host = Some(host.to_string()),
                    Err(finding) => self.m.findings.push(finding),
                }
            }
            _ => self.m.findings.push(line.finding(
                FindingKind::Unknown,
                "not a Mosquitto 2.x option (Mosquitto refuses to start with it)",
            )),
        }
    }

    fn listener(&mut self, line: Line, state: &mut FileState) {
        self.m.local_only = false;
        let mut def = ListenerDef::new(line.at.clone(), false);
        let mut words = line.value.split_whitespace();
        let port = words.next().map(|w| w.parse::<u16>());
        let host = words.next().filter(|w| !w.starts_with('#'));
        match port {
            Some(Ok(0)) => match host {
                Some(path) => def.unix_path = Some(path.to_string()),
                None => def.broken = Some("port 0 without a Unix socket path".into()),
            },
            Some(Ok(port)) => {
                def.port = Some(port);
                def.host = host.map(str::to_string);
            }
            Some(Err(_)) => def.broken = Some(format!("invalid port `{}`", line.value)),
            None => def.broken = Some("no port".into()),
        }
        if let Some(broken) = &def.broken {
            self.m.findings.push(line.malformed(format!(
                "{broken} (Mosquitto refuses it); the listener is not converted"
            )));
        }
        self.m.listeners.push(def);
        state.listener = Some(self.m.listeners.len() - 1);
    }

    fn connection(&mut self, line: Line, state: &mut FileState) {
        state.bridge = None;
        let Some(name) = line.word().map(str::to_string) else {
            self.m
                .findings
                .push(line.malformed("no bridge name (Mosquitto refuses it)"));
            return;
        };
        if self.m.bridges.iter().any(|b| b.name == name) {
            self.m.findings.push(line.malformed(format!(
                "a second bridge named `{name}` (Mosquitto refuses it)"
            )));
        }
        self.m.bridges.push(BridgeDef {
            at: line.at.clone(),
            name,
            options: vec![line],
        });
        state.bridge = Some(self.m.bridges.len() - 1);
    }

    fn include_dir(&mut self, line: &Line) {
        let dir = match line.text() {
            Ok(dir) => dir.to_string(),
            Err(finding) => return self.m.findings.push(finding),
        };
        let files = match source::include_files(Path::new(&dir)) {
            Ok(files) => files,
            Err(e) => {
                return self.m.findings.push(line.malformed(format!(
                    "cannot read the directory {dir}: {e} (Mosquitto refuses to start)"
                )))
            }
        };
        for file in files {
            match std::fs::read(&file) {
                Ok(bytes) => {
                    self.m.files.push(file.clone());
                    self.file(&Arc::from(file.as_path()), &bytes, 1);
                }
                Err(e) => self.m.findings.push(line.malformed(format!(
                    "cannot read {}: {e} (Mosquitto refuses to start)",
                    file.display()
                ))),
            }
        }
    }

    fn per_listener_settings(&mut self, line: Line) {
        if self.m.per_listener_settings.is_some() {
            return; // Mosquitto: once true, it stays true.
        }
        match line.boolean() {
            Ok(true) => {
                if self.security_seen {
                    self.m.findings.push(line.malformed(
                        "must come before every security option (Mosquitto refuses it); \
                         the options before it stay global",
                    ));
                }
                self.m.per_listener_settings = Some(line);
            }
            Ok(false) => {}
            Err(finding) => self.m.findings.push(finding),
        }
    }

    fn current_listener(&mut self, state: &FileState, at: &Origin) -> &mut ListenerDef {
        match state.listener {
            Some(i) => &mut self.m.listeners[i],
            None => self.default_listener(at),
        }
    }

    fn default_listener(&mut self, at: &Origin) -> &mut ListenerDef {
        self.m
            .default_listener
            .get_or_insert_with(|| ListenerDef::new(at.clone(), true))
    }
}

/// Adds `line` to `list`; a repeated option that does not add up comes back as a finding.
fn push(list: &mut Vec<Line>, line: Line, repeatable: bool) -> Option<Finding> {
    let repeated = (!repeatable)
        .then(|| list.iter().find(|l| l.key == line.key))
        .flatten()
        .map(|first| {
            first.malformed(format!(
                "set again at {}; the later value is used (Mosquitto refuses a repeated \
                 path or name)",
                line.at
            ))
        });
    list.push(line);
    repeated
}

fn port_number(line: &Line, value: i64) -> Result<u16, Finding> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| line.malformed(format!("invalid port {value} (Mosquitto refuses it)")))
}
