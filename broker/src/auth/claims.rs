//! ACL rules that come with a login rather than from the ACL file: the `acl` claim of a
//! JSON Web Token, or the `acl`/`superuser` fields of an HTTP callout's answer.
//!
//! They are kept per user name in a [`ClaimRegistry`] that outlives reloads: every place
//! that derives a client's ACL (at CONNECT, after a reload, for a bridge ring) goes through
//! [`combine`] with the user name, so carried rules are re-applied exactly like the ACL
//! file's. The last login of a user sets (or clears) its entry: the rules of one user's
//! connections are those of the token or answer it connected with last.
//!
//! This module owns the registry and the combination, not where the rules come from
//! ([`super::jwt`], [`super::callout`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::acl::{AclFile, ClientAcl};
use crate::config::ClaimAclMode;

/// Most user names the registry keeps; past it the oldest entries are not tracked and
/// new ones are not added (their logins keep the ACL file's rules).
const MAX_USERS: usize = 100_000;

/// What a login carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// Rules (patterns with `%c`/`%u`), and how they combine with the ACL file.
    Rules(AclFile, ClaimAclMode),
    /// No ACL applies: the client may do everything (HTTP callout `"superuser": true`).
    Superuser,
}

/// User name -> what that user's latest login carried.
#[derive(Debug, Default)]
pub struct ClaimRegistry {
    by_user: RwLock<HashMap<Box<str>, Arc<Carried>>>,
}

impl ClaimRegistry {
    /// Records what `username`'s login carried (`None`: nothing, the ACL file applies).
    pub fn set(&self, username: &str, carried: Option<Carried>) {
        if carried.is_none() {
            // The common case (password logins): nothing recorded, so no write lock.
            let map = self.by_user.read().unwrap_or_else(|p| p.into_inner());
            if !map.contains_key(username) {
                return;
            }
        }
        let mut map = self.by_user.write().unwrap_or_else(|p| p.into_inner());
        match carried {
            None => {
                map.remove(username);
            }
            Some(carried) if map.len() < MAX_USERS || map.contains_key(username) => {
                map.insert(username.into(), Arc::new(carried));
            }
            Some(_) => {
                tracing::warn!(username, "claim ACL registry full: rules not recorded");
            }
        }
    }

    /// What `username`'s latest login carried.
    pub fn get(&self, username: &str) -> Option<Arc<Carried>> {
        let map = self.by_user.read().unwrap_or_else(|p| p.into_inner());
        map.get(username).cloned()
    }
}

/// Parses `{"publish": [..], "subscribe": [..]}` (either list may be missing).
///
/// # Errors
/// What is wrong with the value.
pub fn parse_acl(value: &Value) -> Result<AclFile, String> {
    let Value::Object(map) = value else {
        return Err("ACL rules must be an object with publish/subscribe lists".into());
    };
    let list = |key: &str| -> Result<Vec<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{key}: entries must be strings"))
                })
                .collect(),
            Some(_) => Err(format!("{key} must be a list of topic filters")),
        }
    };
    AclFile::from_patterns(&list("publish")?, &list("subscribe")?)
}

/// The ACL of one client: the ACL file's rules, replaced by or extended with what its
/// user's login carried. `None`: everything is allowed.
pub fn combine(
    file: Option<&AclFile>,
    carried: Option<&Carried>,
    client_id: &str,
    username: Option<&str>,
) -> Option<Arc<ClientAcl>> {
    let acl = match carried {
        None => file?.for_client(client_id, username),
        Some(Carried::Superuser) => return None,
        Some(Carried::Rules(rules, ClaimAclMode::Replace)) => rules.for_client(client_id, username),
        Some(Carried::Rules(rules, ClaimAclMode::Add)) => {
            let extra = rules.for_client(client_id, username);
            match file {
                Some(file) => file.for_client(client_id, username).extended(extra),
                None => extra,
            }
        }
    };
    Some(Arc::new(acl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Access;
    use std::path::Path;

    fn rules(json: &str) -> AclFile {
        parse_acl(&serde_json::from_str(json).expect("json")).expect("rules")
    }

    #[test]
    fn claim_rules_replace_or_extend_the_file() {
        let file = AclFile::parse(
            "user u\ntopic read public/#\ntopic deny x/c1/secret\n",
            Path::new("a"),
        )
        .expect("acl");
        let carried = rules(r#"{"publish": ["x/%c/#"], "subscribe": ["in/%u/+"]}"#);
        let replace = Carried::Rules(carried.clone(), ClaimAclMode::Replace);
        let acl = combine(Some(&file), Some(&replace), "c1", Some("u")).expect("acl");
        assert!(acl.check("x/c1/a", Access::Write));
        assert!(!acl.check("x/c1/a", Access::Read));
        assert!(acl.check("in/u/z", Access::Read));
        assert!(!acl.check("public/n", Access::Read));
        let add = Carried::Rules(carried, ClaimAclMode::Add);
        let acl = combine(Some(&file), Some(&add), "c1", Some("u")).expect("acl");
        assert!(acl.check("public/n", Access::Read));
        assert!(acl.check("x/c1/a", Access::Write));
        assert!(
            !acl.check("x/c1/secret", Access::Write),
            "the file's deny wins"
        );
        assert!(combine(Some(&file), Some(&Carried::Superuser), "c1", Some("u")).is_none());
        assert!(combine(None, None, "c1", Some("u")).is_none());
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(parse_acl(&serde_json::json!({"publish": "a"})).is_err());
        assert!(parse_acl(&serde_json::json!({"publish": ["a/#/b"]})).is_err());
        assert!(parse_acl(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn registry_set_and_clear() {
        let registry = ClaimRegistry::default();
        assert!(registry.get("u").is_none());
        registry.set("u", Some(Carried::Superuser));
        assert_eq!(registry.get("u").as_deref(), Some(&Carried::Superuser));
        registry.set("u", None);
        assert!(registry.get("u").is_none());
    }
}
