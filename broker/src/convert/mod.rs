//! `tern convert`: a Mosquitto 2.x `mosquitto.conf` (with the files its `include_dir`
//! names) to a commented Tern `config.toml` that keeps what means the same thing.
//!
//! Layout, in the order the work flows:
//! - [`source`] reads files and splits lines as Mosquitto does; [`catalogue`] knows every
//!   Mosquitto option, its scope and what becomes of it; [`parse`] files each line under
//!   its listener, bridge or the broker ([`model`]).
//! - The mappers turn that into Tern's keys: [`listeners`], [`auth`], [`limits`],
//!   [`runtime`] (persistence, `$SYS`, logging) and [`bridges`].
//! - [`emit`] writes the TOML, with everything not converted listed at the top; the same
//!   list ([`Finding`]s) is returned for the caller to print as warnings.
//!
//! It only writes keys Tern's [`crate::config`] knows, and the result loads with
//! [`crate::config::Config::load`]. It reads files but starts nothing: checking that the
//! certificate, password and ACL files it names exist is `tern check-config`'s job.

mod auth;
mod bridges;
mod catalogue;
mod emit;
mod finding;
mod limits;
mod listeners;
mod model;
mod parse;
mod runtime;
mod source;

use std::path::{Path, PathBuf};

pub use finding::{Finding, FindingKind, Origin};

use emit::{Document, Entry, Table, Value};

/// A converted configuration.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The Tern configuration, as commented TOML.
    pub toml: String,
    /// Everything not converted as written, in file order (also listed in `toml`).
    pub findings: Vec<Finding>,
    /// The files read: the main file, then the included ones.
    pub files: Vec<PathBuf>,
}

/// The main file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ConvertError {
    path: PathBuf,
    source: std::io::Error,
}

/// Converts the Mosquitto configuration at `path`.
///
/// # Errors
/// [`ConvertError`] when `path` cannot be read. Problems inside it (and in included files)
/// are [`Finding`]s, not errors.
pub fn convert_file(path: &Path) -> Result<Conversion, ConvertError> {
    let bytes = std::fs::read(path).map_err(|source| ConvertError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(convert_bytes(path, &bytes))
}

/// Converts `bytes`, the contents of the main file at `path` (named in the findings;
/// `include_dir` lines still read their directories). Never fails and never panics:
/// whatever the input, the result is TOML that [`crate::config::Config::load`] accepts.
pub fn convert_bytes(path: &Path, bytes: &[u8]) -> Conversion {
    let m = parse::parse(path, bytes);
    let mut findings = m.findings.clone();
    let defs = m.effective_listeners();
    let mapped: Vec<_> = defs
        .iter()
        .map(|def| listeners::map_listener(def, m.local_only && def.is_default, &mut findings))
        .collect();
    for line in &m.globals {
        if let Some((finding, _)) = catalogue::report(line, None) {
            findings.push(finding);
        }
    }
    let opened: Vec<_> = defs
        .iter()
        .cloned()
        .zip(mapped.iter().map(|l| l.open))
        .collect();
    let labels: Vec<String> = defs.iter().map(model::ListenerDef::label).collect();
    let (auth, empty_client_id) = auth::map_auth(&m, &opened, &mut findings);
    let (limits, mut defaults) = limits::map_limits(&m.globals, &mapped, &labels, &mut findings);
    let persistence = runtime::map_persistence(&m.globals, &mut findings, &mut defaults);
    let sys = runtime::map_sys(&m.globals, &mut findings);
    let log = runtime::map_log(&m.globals, &mut findings);
    let bridges = bridges::map_bridges(&m.bridges, &mut findings);
    if !mapped.iter().any(|l| l.open) {
        findings.push(Finding {
            at: None,
            option: "listener".into(),
            kind: FindingKind::HandledDifferently,
            reason: "no listener could be converted, so Tern's default one applies \
                     (127.0.0.1:1883)"
                .into(),
        });
    }
    sort(&mut findings, &m.files);
    let doc = Document {
        files: m.files.clone(),
        findings: findings.clone(),
        defaults,
        listeners: mapped.into_iter().map(|l| l.out).collect(),
        tables: vec![
            http(),
            auth,
            Table {
                name: "session",
                comment: Vec::new(),
                entries: empty_client_id.into_iter().collect(),
            },
            limits,
            sys,
            persistence,
            log,
        ],
        bridges,
    };
    Conversion {
        toml: emit::render(&doc),
        findings,
        files: m.files,
    }
}

/// `[http]` off: Mosquitto has no HTTP listener, and Tern's default port (8080) is a
/// common one for Mosquitto's WebSocket listeners.
fn http() -> Table {
    Table {
        name: "http",
        comment: vec![
            "Mosquitto has no HTTP listener. Tern's serves /metrics, /health, a dashboard and \
             SSE/WebSocket bridges; enable it with a free bind address."
                .into(),
        ],
        entries: vec![Entry::new("enabled", Value::Bool(false), "")],
    }
}

/// File order (main file first, then included files), then line; general findings last.
fn sort(findings: &mut [Finding], files: &[PathBuf]) {
    findings.sort_by_key(|f| match &f.at {
        Some(at) => (
            files
                .iter()
                .position(|p| p.as_path() == &*at.file)
                .unwrap_or(usize::MAX - 1),
            at.line,
        ),
        None => (usize::MAX, 0),
    });
}

#[cfg(test)]
mod tests;
