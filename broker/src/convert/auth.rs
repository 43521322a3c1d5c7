//! Mosquitto's security options to Tern's `[auth]` (and `[session]
//! allow_empty_client_id`): `allow_anonymous`, `password_file`, `acl_file`,
//! `allow_zero_length_clientid`, with Mosquitto 2's default for `allow_anonymous` (false
//! once the file has a listener).
//!
//! Tern has one `[auth]` for every listener. Under `per_listener_settings true` the
//! listeners' settings are combined: when they agree nothing changes; when they differ the
//! strictest are kept (anonymous clients only if every listener took them, the password
//! file and the ACL of any listener for all), and the finding says who is affected.

use super::catalogue;
use super::emit::{Entry, Table, Value};
use super::finding::{Finding, FindingKind};
use super::model::{last, Line, ListenerDef, Mosquitto};

/// One set of security options, as Mosquitto resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Security {
    allow_anonymous: bool,
    /// Where `allow_anonymous` came from, for the comment.
    anonymous_note: String,
    password_file: Option<(String, String)>,
    acl_file: Option<(String, String)>,
    allow_empty_client_id: Option<bool>,
}

impl Security {
    /// What Tern would do with it (origins aside).
    fn meaning(&self) -> (bool, Option<&str>, Option<&str>, bool) {
        (
            self.allow_anonymous,
            self.password_file.as_ref().map(|p| p.0.as_str()),
            self.acl_file.as_ref().map(|p| p.0.as_str()),
            self.allow_empty_client_id.unwrap_or(true),
        )
    }
}

fn read(
    lines: &[Line],
    local_only: bool,
    context: Option<&str>,
    findings: &mut Vec<Finding>,
) -> Security {
    for line in lines {
        if let Some((finding, _)) = catalogue::report(line, context) {
            findings.push(finding);
        }
    }
    let mut boolean = |key| match last(lines, key).map(|l| (l, l.boolean())) {
        Some((line, Ok(b))) => Some((b, line.at.to_string())),
        Some((_, Err(f))) => {
            findings.push(f);
            None
        }
        None => None,
    };
    let anonymous = boolean("allow_anonymous");
    let empty_id = boolean("allow_zero_length_clientid").map(|b| b.0);
    let path = |key| {
        last(lines, key)
            .and_then(|l: &Line| l.text().ok().map(|t| (t.to_string(), l.at.to_string())))
    };
    // Mosquitto 2 with no listener lets anonymous clients in, whatever the file says.
    let (allow_anonymous, anonymous_note) = match anonymous {
        Some((false, at)) if local_only => (
            true,
            format!(
                "allow_anonymous ({at}) says false, but Mosquitto 2 lets anonymous clients \
                 in when the file has no listener"
            ),
        ),
        _ if local_only => (
            true,
            "not set: Mosquitto 2 lets anonymous clients in when the file has no listener".into(),
        ),
        Some((b, at)) => (b, format!("allow_anonymous ({at})")),
        None => (
            false,
            "not set: Mosquitto 2 refuses anonymous clients once the file has a listener".into(),
        ),
    };
    Security {
        allow_anonymous,
        anonymous_note,
        password_file: path("password_file"),
        acl_file: path("acl_file"),
        allow_empty_client_id: empty_id,
    }
}

/// `[auth]` and the `[session]` entry, from the security options of the global scope or of
/// `listeners` (with whether each is written open).
pub(super) fn map_auth(
    m: &Mosquitto,
    listeners: &[(ListenerDef, bool)],
    findings: &mut Vec<Finding>,
) -> (Table, Option<Entry>) {
    let Some(per_listener) = &m.per_listener_settings else {
        let security = read(&m.security, m.local_only, None, findings);
        return tables(&security, Vec::new());
    };
    for line in &m.security {
        findings.push(line.malformed(format!(
            "comes before per_listener_settings true ({}), which Mosquitto refuses; not \
             converted",
            per_listener.at
        )));
    }
    let (open, closed): (Vec<_>, Vec<_>) = listeners.iter().partition(|(_, open)| *open);
    let chosen = if open.is_empty() {
        closed.clone()
    } else {
        unused(&closed, findings);
        open
    };
    let each: Vec<(String, Security)> = chosen
        .iter()
        .map(|(def, _)| {
            let label = def.label();
            let security = read(&def.security, m.local_only, Some(&label), findings);
            (label, security)
        })
        .collect();
    let Some((_, first)) = each.first() else {
        return tables(&read(&[], m.local_only, None, findings), Vec::new());
    };
    if each.iter().all(|(_, s)| s.meaning() == first.meaning()) {
        let note = format!(
            "per_listener_settings true ({}): every listener has the same settings, so \
             Tern's single [auth] says the same.",
            per_listener.at
        );
        return tables(first, vec![note]);
    }
    let (combined, effects) = strictest(&each);
    findings.push(per_listener.finding(
        FindingKind::HandledDifferently,
        format!(
            "Tern has one [auth] for all listeners and these differ, so the strictest \
             settings apply to every listener: {}",
            effects.join("; ")
        ),
    ));
    let note = format!(
        "per_listener_settings true ({}): combined, see the list at the top.",
        per_listener.at
    );
    tables(&combined, vec![note])
}

/// Reports the security options of listeners written commented out: they apply to none.
fn unused(closed: &[&(ListenerDef, bool)], findings: &mut Vec<Finding>) {
    for (def, _) in closed {
        for line in &def.security {
            findings.push(line.finding(
                FindingKind::HandledDifferently,
                format!(
                    "{} is written commented out, so this applies to no listener",
                    def.label()
                ),
            ));
        }
    }
}

/// The strictest combination of listeners' settings, and what changes for whom.
fn strictest(each: &[(String, Security)]) -> (Security, Vec<String>) {
    let mut effects = Vec::new();
    let anonymous: Vec<&str> = each
        .iter()
        .filter(|(_, s)| s.allow_anonymous)
        .map(|(l, _)| l.as_str())
        .collect();
    let allow_anonymous = anonymous.len() == each.len();
    if !allow_anonymous && !anonymous.is_empty() {
        effects.push(format!(
            "anonymous clients are refused, also on {} which took them",
            anonymous.join(", ")
        ));
    }
    let mut pick = |what: &str, get: fn(&Security) -> Option<&(String, String)>| {
        let mut files: Vec<&(String, String)> = Vec::new();
        for (_, s) in each {
            if let Some(f) = get(s).filter(|f| !files.iter().any(|g| g.0 == f.0)) {
                files.push(f);
            }
        }
        let chosen = files.first().map(|f| (*f).clone());
        if let Some((path, _)) = &chosen {
            let without: Vec<&str> = each
                .iter()
                .filter(|(_, s)| get(s).is_none())
                .map(|(l, _)| l.as_str())
                .collect();
            if !without.is_empty() {
                effects.push(format!(
                    "the {what} {path} applies to {} too",
                    without.join(", ")
                ));
            }
            for (other, _) in files.iter().skip(1) {
                effects.push(format!(
                    "the {what} {other} is not used (Tern reads one): merge it into {path}"
                ));
            }
        }
        chosen
    };
    let password_file = pick("password file", |s| s.password_file.as_ref());
    let acl_file = pick("ACL file", |s| s.acl_file.as_ref());
    let empty_ids = each
        .iter()
        .all(|(_, s)| s.allow_empty_client_id.unwrap_or(true));
    if !empty_ids
        && each
            .iter()
            .any(|(_, s)| s.allow_empty_client_id.unwrap_or(true))
    {
        effects.push("clients without a client identifier are refused on every listener".into());
    }
    let set = each.iter().any(|(_, s)| s.allow_empty_client_id.is_some());
    let security = Security {
        allow_anonymous,
        anonymous_note: "the listeners' allow_anonymous, combined (per_listener_settings)".into(),
        password_file,
        acl_file,
        allow_empty_client_id: set.then_some(empty_ids),
    };
    (security, effects)
}

fn tables(s: &Security, note: Vec<String>) -> (Table, Option<Entry>) {
    let mut entries = vec![Entry::new(
        "allow_anonymous",
        Value::Bool(s.allow_anonymous),
        s.anonymous_note.clone(),
    )];
    if let Some((path, at)) = &s.password_file {
        entries.push(Entry::new(
            "password_file",
            Value::Str(path.clone()),
            format!("password_file ({at}): mosquitto_passwd files ($7$, $6$) are read as they are"),
        ));
    }
    if let Some((path, at)) = &s.acl_file {
        entries.push(Entry::new(
            "acl_file",
            Value::Str(path.clone()),
            format!("acl_file ({at}): Mosquitto's ACL syntax, read as it is"),
        ));
    }
    let table = Table {
        name: "auth",
        comment: note,
        entries,
    };
    let session = s.allow_empty_client_id.map(|allow| {
        Entry::new(
            "allow_empty_client_id",
            Value::Bool(allow),
            "allow_zero_length_clientid",
        )
    });
    (table, session)
}
