//! ACL files in the syntax of Mosquitto's `acl_file`, and the checks made with them.
//!
//! ```text
//! # comment
//! topic read public/#          <- before any `user` line: anonymous clients
//! user alice
//! topic readwrite alice/#      <- alice only
//! topic deny alice/secret
//! pattern write devices/%c/up  <- every client; %c = client id, %u = user name
//! ```
//!
//! Semantics follow Mosquitto 2.x's default ACL check (`mosquitto_acl_check_default`):
//! - A client's own rules are the section of its user name (anonymous clients: the lines
//!   before the first `user` line; a user with no section has none), then the `pattern`
//!   lines of the whole file with `%c` and `%u` substituted. A pattern with `%u` does not
//!   apply to anonymous clients. When the file has patterns, a client whose id or user name
//!   contains `+` or `#` gets nothing from them.
//! - A check walks the client's rules, then the patterns, `deny` rules of each group first;
//!   the first rule whose topic matches decides: `deny` refuses, a rule granting the access
//!   allows, a rule granting only the other access is passed over. No decision: refused.
//! - Topics starting with `$` are matched only by rules starting with `$`.
//! - `topic`/`pattern` with no access word is `readwrite`; the topic is the rest of the line
//!   and must be a valid topic filter.
//!
//! Mosquitto's default check lets every SUBSCRIBE through and filters at delivery. Tern
//! also answers SUBSCRIBE, as the MQTT specification expects from a server that has ACLs
//! (see [`ClientAcl::check_subscribe`]): a filter none of whose topics the client could read
//! is refused; a filter all of whose topics it can read needs no further check; anything in
//! between is granted and each message is checked at delivery.

use std::collections::HashMap;
use std::path::Path;

use super::AuthError;

const READ: u8 = 1;
const WRITE: u8 = 2;
const DENY: u8 = 0;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (subscribe, delivery, retained messages).
    Read,
    /// Publish (including the will).
    Write,
}

impl Access {
    fn bit(self) -> u8 {
        match self {
            Access::Read => READ,
            Access::Write => WRITE,
        }
    }
}

/// One level of a rule's topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Plus,
    Hash,
    Literal(Box<str>),
}

/// One `topic` or `pattern` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The filter as written (patterns: before substitution).
    text: Box<str>,
    /// Parsed levels (patterns: only after substitution, see [`ClientAcl`]).
    levels: Vec<Level>,
    /// READ | WRITE, or DENY.
    access: u8,
}

impl Rule {
    fn new(text: &str, access: u8) -> Rule {
        Rule {
            text: text.into(),
            levels: text
                .split('/')
                .map(|l| match l {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    other => Level::Literal(other.into()),
                })
                .collect(),
            access,
        }
    }

    fn dollar(&self) -> bool {
        self.text.starts_with('$')
    }

    /// `mosquitto_topic_matches_sub(rule, topic)` plus the ACL's `$` rule.
    fn matches_topic(&self, topic: &str) -> bool {
        if topic.starts_with('$') != self.dollar() {
            // A `$` topic needs a `$` rule; a `$` rule (a literal first level) cannot match
            // a topic that does not start with `$`.
            return false;
        }
        let mut levels = self.levels.iter();
        let mut parts = topic.split('/');
        loop {
            match (levels.next(), parts.next()) {
                (Some(Level::Hash), _) => return true,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Literal(l)), Some(p)) if **l == *p => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether every topic `filter` matches is matched by this rule (a safe
    /// under-approximation).
    fn covers(&self, filter: &[&str]) -> bool {
        let mut f = filter.iter();
        for level in &self.levels {
            match (level, f.next()) {
                (Level::Hash, _) => return true,
                (_, None) => return false,
                (_, Some(&"#")) => return false,
                (Level::Plus, Some(_)) => {}
                (Level::Literal(_), Some(&"+")) => return false,
                (Level::Literal(l), Some(p)) if **l == **p => {}
                (Level::Literal(_), Some(_)) => return false,
            }
        }
        f.next().is_none()
    }

    /// Whether some topic is matched both by `filter` and this rule (a safe
    /// over-approximation).
    fn intersects(&self, filter: &[&str]) -> bool {
        let mut f = filter.iter();
        let mut r = self.levels.iter();
        loop {
            match (r.next(), f.next()) {
                (Some(Level::Hash), _) | (_, Some(&"#")) => return true,
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (Some(Level::Plus), Some(_)) | (Some(Level::Literal(_)), Some(&"+")) => {}
                (Some(Level::Literal(l)), Some(p)) if **l == **p => {}
                (Some(Level::Literal(_)), Some(_)) => return false,
            }
        }
    }
}

/// Rules in check order: deny rules first, then the others in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RuleList {
    denies: Vec<Rule>,
    grants: Vec<Rule>,
}

impl RuleList {
    fn push(&mut self, rule: Rule) {
        if rule.access == DENY {
            self.denies.push(rule);
        } else {
            self.grants.push(rule);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.denies.iter().chain(&self.grants)
    }
}

/// A loaded ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: RuleList,
    users: HashMap<String, RuleList>,
    patterns: RuleList,
}

impl AclFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`AuthError`] naming the file, the line and what is wrong.
    pub fn load(path: &Path) -> Result<AclFile, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::new(path, None, format!("cannot read: {e}")))?;
        AclFile::parse(&text, path)
    }

    /// Parses the text of an ACL file; `path` is only used in errors.
    ///
    /// # Errors
    /// [`AuthError`] naming the line and what is wrong.
    pub fn parse(text: &str, path: &Path) -> Result<AclFile, AuthError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| AuthError::new(path, Some(index + 1), message);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(err(format!("`{keyword}` without a topic")));
                    }
                    // As Mosquitto: a single word is the topic (readwrite); otherwise the
                    // first word is the access and the rest of the line the topic.
                    let (access, topic) = match rest.split_once([' ', '\t']) {
                        None => (READ | WRITE, rest),
                        Some((word, topic)) => {
                            let access = match word {
                                "read" => READ,
                                "write" => WRITE,
                                "readwrite" => READ | WRITE,
                                "deny" => DENY,
                                other => {
                                    return Err(err(format!(
                                        "access `{other}` is not one of read, write, \
                                         readwrite, deny"
                                    )))
                                }
                            };
                            (access, topic.trim())
                        }
                    };
                    if tern_codec::topic::validate_filter(topic).is_err() {
                        return Err(err(format!("`{topic}` is not a valid topic filter")));
                    }
                    let rule = Rule::new(topic, access);
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &user {
                            None => acl.anonymous.push(rule),
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                        }
                    }
                }
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` without a user name".into()));
                    }
                    user = Some(rest.to_string());
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword `{other}` (expected topic, pattern or user)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// An ACL of `pattern` lines only: `publish` filters writable, `subscribe` filters
    /// readable (`%c`, `%u` substituted per client), as a token or an HTTP callout carries.
    ///
    /// # Errors
    /// The first entry that is not a valid topic filter.
    pub fn from_patterns(publish: &[String], subscribe: &[String]) -> Result<AclFile, String> {
        let mut acl = AclFile::default();
        for (list, access) in [(publish, WRITE), (subscribe, READ)] {
            for topic in list {
                if tern_codec::topic::validate_filter(topic).is_err() {
                    return Err(format!("`{topic}` is not a valid topic filter"));
                }
                acl.patterns.push(Rule::new(topic, access));
            }
        }
        Ok(acl)
    }

    /// The rules that apply to one client, with patterns substituted.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let own = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        let mut patterns = RuleList::default();
        let dangerous = |s: &str| s.contains(['+', '#']);
        let poisoned = dangerous(client_id) || username.is_some_and(dangerous);
        if !poisoned {
            for rule in self.patterns.iter() {
                if rule.text.contains("%u") && username.is_none() {
                    continue;
                }
                let text = rule.text.replace("%c", client_id);
                let text = match username {
                    Some(u) => text.replace("%u", u),
                    None => text,
                };
                patterns.push(Rule::new(&text, rule.access));
            }
        }
        ClientAcl { own, patterns }
    }
}

/// What [`ClientAcl::check_subscribe`] decided for one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// The client can read no topic the filter matches: SUBACK failure.
    Denied,
    /// The client can read every topic the filter matches: no check at delivery.
    Allowed,
    /// Some topics may be readable: granted, each message checked at delivery.
    Filtered,
}

/// The rules of one client (its section, then the substituted patterns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAcl {
    own: RuleList,
    patterns: RuleList,
}

impl ClientAcl {
    /// Adds a rule granting `access` to the topics `filter` matches, after every rule of
    /// the file (so a `deny` there still wins): the response topics of Response
    /// Information ([`crate::features::ResponseAcl`]).
    pub fn grant(&mut self, filter: &str, access: Access) {
        self.patterns.push(Rule::new(filter, access.bit()));
    }

    /// This ACL with `extra`'s rules added after its own: a deny here still wins, and what
    /// neither allows stays refused.
    pub fn extended(mut self, extra: ClientAcl) -> ClientAcl {
        for rule in extra.own.iter().chain(extra.patterns.iter()) {
            self.patterns.push(rule.clone());
        }
        self
    }

    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.own.iter().chain(self.patterns.iter())
    }

    /// Whether the client may `access` the topic name `topic`.
    pub fn check(&self, topic: &str, access: Access) -> bool {
        let bit = access.bit();
        for rule in self.rules() {
            if rule.matches_topic(topic) {
                if rule.access == DENY {
                    return false;
                }
                if rule.access & bit != 0 {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the client may receive a message published to `topic`.
    #[inline]
    pub fn allows_read(&self, topic: &str) -> bool {
        self.check(topic, Access::Read)
    }

    /// Classifies a subscription filter (a `$share/{group}/` prefix is ignored).
    ///
    /// Walking the rules in check order: a `deny` rule that covers the whole filter, or no
    /// read rule overlapping it at all, refuses it; a read rule covering the whole filter
    /// with no `deny` rule overlapping before it allows it outright; a read rule that only
    /// overlaps grants it with a check per message. So `topic read sensors/+/temp` lets a
    /// client subscribe to `sensors/#` and receive only the temperatures, as in Mosquitto,
    /// while `secret/#` is refused with SUBACK 0x87 (0x80 in 3.1.1).
    pub fn check_subscribe(&self, filter: &str) -> SubscribeVerdict {
        let inner = match tern_codec::topic::split_shared(filter) {
            Some(Ok((_, inner))) => inner,
            _ => filter,
        };
        let dollar = inner.starts_with('$');
        let levels: Vec<&str> = inner.split('/').collect();
        let mut deny_overlaps = false;
        for rule in self.rules() {
            if rule.dollar() != dollar {
                continue;
            }
            if rule.access == DENY {
                if rule.covers(&levels) {
                    return SubscribeVerdict::Denied;
                }
                deny_overlaps |= rule.intersects(&levels);
            } else if rule.access & READ != 0 {
                if rule.covers(&levels) {
                    return if deny_overlaps {
                        SubscribeVerdict::Filtered
                    } else {
                        SubscribeVerdict::Allowed
                    };
                }
                if rule.intersects(&levels) {
                    return SubscribeVerdict::Filtered;
                }
            }
        }
        SubscribeVerdict::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AclFile {
        AclFile::parse(text, Path::new("acl")).expect("parse")
    }

    const FILE: &str = "\
# anonymous
topic read public/#
topic   pub/+/in

user alice
topic readwrite alice/#
topic deny alice/secret
topic read sensors/+/temp
topic write $SYS/broker/log/#
topic read $SYS/#

user bob
topic write bob/out

pattern readwrite clients/%c/#
pattern read users/%u/inbox
pattern deny clients/%c/locked
";

    #[test]
    fn anonymous_section() {
        let acl = parse(FILE).for_client("c1", None);
        assert!(acl.check("public/news", Access::Read));
        assert!(!acl.check("public/news", Access::Write));
        assert!(acl.check("pub/x/in", Access::Write));
        assert!(acl.check("pub/x/in", Access::Read));
        assert!(!acl.check("alice/a", Access::Read));
        // Patterns apply to anonymous clients too, except those with %u.
        assert!(acl.check("clients/c1/x", Access::Write));
        assert!(!acl.check("users/c1/inbox", Access::Read));
    }

    #[test]
    fn user_section_and_deny_first() {
        let acl = parse(FILE).for_client("c2", Some("alice"));
        assert!(acl.check("alice/a/b", Access::Write));
        assert!(
            acl.check("alice", Access::Read),
            "# matches the parent level"
        );
        assert!(
            !acl.check("alice/secret", Access::Read),
            "deny wins though listed after"
        );
        assert!(!acl.check("alice/secret", Access::Write));
        assert!(acl.check("alice/secret/x", Access::Read), "deny is exact");
        assert!(
            !acl.check("public/news", Access::Read),
            "not in alice's section"
        );
        assert!(acl.check("users/alice/inbox", Access::Read));
        assert!(!acl.check("users/bob/inbox", Access::Read));
        assert!(!acl.check("clients/c2/locked", Access::Write));
        assert!(acl.check("clients/c2/other", Access::Write));
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let file = parse("topic readwrite #\ntopic read +/x\n");
        let acl = file.for_client("c", None);
        assert!(acl.check("a/x", Access::Read));
        assert!(!acl.check("$SYS/x", Access::Read));
        let alice = parse(FILE).for_client("c", Some("alice"));
        assert!(alice.check("$SYS/broker/uptime", Access::Read));
        assert!(alice.check("$SYS/broker/log/x", Access::Write));
        assert!(!alice.check("$SYS/broker/uptime", Access::Write));
    }

    #[test]
    fn unknown_user_gets_only_patterns() {
        let acl = parse(FILE).for_client("c3", Some("mallory"));
        assert!(!acl.check("public/news", Access::Read));
        assert!(acl.check("clients/c3/a", Access::Read));
        assert!(acl.check("users/mallory/inbox", Access::Read));
    }

    #[test]
    fn dangerous_ids_get_no_patterns() {
        let file = parse(FILE);
        assert!(!file
            .for_client("c+", Some("carol"))
            .check("clients/c+/a", Access::Read));
        assert!(!file
            .for_client("c", Some("#"))
            .check("users/#/inbox", Access::Read));
        // The user's own section still applies.
        let file = parse("user a+b\ntopic read x\npattern read %c\n");
        assert!(file.for_client("id", Some("a+b")).check("x", Access::Read));
    }

    #[test]
    fn subscribe_verdicts() {
        use SubscribeVerdict::*;
        let alice = parse(FILE).for_client("c", Some("alice"));
        assert_eq!(alice.check_subscribe("alice/#"), Filtered, "deny overlaps");
        assert_eq!(alice.check_subscribe("alice/x/+"), Allowed);
        assert_eq!(alice.check_subscribe("alice/secret"), Denied);
        assert_eq!(alice.check_subscribe("sensors/+/temp"), Allowed);
        assert_eq!(alice.check_subscribe("sensors/kitchen/temp"), Allowed);
        assert_eq!(alice.check_subscribe("sensors/#"), Filtered);
        assert_eq!(alice.check_subscribe("+/kitchen/temp"), Filtered);
        assert_eq!(alice.check_subscribe("#"), Filtered);
        assert_eq!(alice.check_subscribe("bob/out"), Denied);
        assert_eq!(alice.check_subscribe("$SYS/#"), Allowed);
        assert_eq!(alice.check_subscribe("$share/g/alice/x"), Allowed);
        assert_eq!(alice.check_subscribe("$share/g/bob/x"), Denied);
        assert_eq!(alice.check_subscribe("users/alice/inbox"), Allowed);
        let bob = parse(FILE).for_client("c", Some("bob"));
        assert_eq!(bob.check_subscribe("bob/out"), Denied, "write only");
        assert_eq!(bob.check_subscribe("#"), Filtered, "patterns overlap");
        let anon = parse("topic read a/#\n").for_client("c", None);
        assert_eq!(anon.check_subscribe("a"), Allowed);
        assert_eq!(anon.check_subscribe("+"), Filtered);
        assert_eq!(anon.check_subscribe("+/+/+"), Filtered);
        assert_eq!(anon.check_subscribe("b/#"), Denied);
        assert_eq!(anon.check_subscribe("$SYS/#"), Denied);
    }

    #[test]
    fn verdicts_agree_with_per_topic_checks() {
        let file = parse(FILE);
        let topics = [
            "alice",
            "alice/x",
            "alice/secret",
            "alice/secret/y",
            "sensors/k/temp",
            "sensors/k/hum",
            "public/a",
            "bob/out",
            "clients/c/a",
            "clients/c/locked",
            "users/alice/inbox",
            "a",
            "a/b/c",
        ];
        let filters = [
            "#",
            "+",
            "+/+",
            "alice/#",
            "alice/+",
            "alice/secret",
            "sensors/#",
            "sensors/+/temp",
            "+/+/temp",
            "clients/c/#",
            "clients/+/locked",
            "users/+/inbox",
            "a/b/c",
            "public/#",
            "bob/out",
        ];
        for user in [None, Some("alice"), Some("bob")] {
            let acl = file.for_client("c", user);
            for filter in filters {
                let readable: Vec<bool> = topics
                    .iter()
                    .filter(|t| tern_codec::topic::matches(filter, t))
                    .map(|t| acl.allows_read(t))
                    .collect();
                match acl.check_subscribe(filter) {
                    SubscribeVerdict::Denied => {
                        assert!(!readable.contains(&true), "{user:?} {filter}")
                    }
                    SubscribeVerdict::Allowed => {
                        assert!(!readable.contains(&false), "{user:?} {filter}")
                    }
                    SubscribeVerdict::Filtered => {}
                }
            }
        }
    }

    #[test]
    fn mosquitto_line_quirks() {
        // A single word after `topic` is the topic, with readwrite access.
        let acl = parse("topic read\n").for_client("c", None);
        assert!(acl.check("read", Access::Write));
        // The topic is the rest of the line, spaces included.
        let acl = parse("topic read a b/c  \n").for_client("c", None);
        assert!(acl.check("a b/c", Access::Read));
        // A user with no rules has none; user names may contain spaces.
        let file = parse("user John Smith\ntopic read js/#\n");
        assert!(file
            .for_client("c", Some("John Smith"))
            .check("js/a", Access::Read));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, needle) in [
            ("topic\n", "without a topic"),
            ("topic readonly a/b\n", "readonly"),
            ("topic read a/#/b\n", "valid topic filter"),
            ("user\n", "without a user name"),
            ("allow a\n", "unknown keyword"),
        ] {
            let err = AclFile::parse(&format!("# x\n{text}"), Path::new("acl"))
                .expect_err(text)
                .to_string();
            assert!(err.starts_with("acl:2: "), "{err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
