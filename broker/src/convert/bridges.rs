//! Mosquitto bridges (`connection` blocks) to `[[mqtt_bridges]]` (issue #14): remotes,
//! protocol, client id, credentials, clean session, keep alive, backoff, TLS files and the
//! `topic` rules. Passwords are never copied: the output says where to give one. Options
//! with no equivalent are reported by the catalogue's reasons; a bridge that cannot work
//! (no address, no usable topic) is kept as a comment instead.

use std::fmt::Write as _;

use super::catalogue::{is_secret, report};
use super::emit::quote;
use super::finding::{Finding, FindingKind};
use super::model::{last, BridgeDef};
use super::source::Line;
use crate::config::mqtt_bridges::{check_rule_topics, split_host_port};

/// One block of TOML text per bridge (a `[[mqtt_bridges]]` table, or a comment).
pub(super) fn map_bridges(bridges: &[BridgeDef], findings: &mut Vec<Finding>) -> Vec<String> {
    bridges
        .iter()
        .map(|bridge| {
            for line in bridge.options.iter().skip(1) {
                if let Some((finding, _)) = report(line, Some(&format!("bridge `{}`", bridge.name)))
                {
                    findings.push(finding);
                }
            }
            match Mapper::new(bridge, findings).table() {
                Some(table) => table,
                None => commented(bridge),
            }
        })
        .collect()
}

/// The bridge as a comment, when it could not be converted.
fn commented(bridge: &BridgeDef) -> String {
    let mut out = format!(
        "# Bridge `{}` ({}), not converted (see the warnings above). Its Mosquitto settings:\n",
        bridge.name, bridge.at
    );
    for line in &bridge.options {
        if is_secret(&line.key) {
            let _ = writeln!(out, "#   {} (set; not shown)", line.key);
        } else {
            let _ = writeln!(out, "#   {} {}", line.key, line.value);
        }
    }
    out
}

/// The words of a value, `""` standing for an empty word (as in Mosquitto's `topic`).
fn words(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .map(|w| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        })
        .collect()
}

struct Mapper<'a> {
    bridge: &'a BridgeDef,
    findings: &'a mut Vec<Finding>,
    out: String,
}

impl<'a> Mapper<'a> {
    fn new(bridge: &'a BridgeDef, findings: &'a mut Vec<Finding>) -> Mapper<'a> {
        Mapper {
            bridge,
            findings,
            out: String::new(),
        }
    }

    fn last(&self, key: &str) -> Option<&'a Line> {
        last(&self.bridge.options, key)
    }

    fn key(&mut self, key: &str, value: String) {
        let _ = writeln!(self.out, "{key} = {value}");
    }

    fn fail(&mut self, line: Option<&Line>, reason: &str) -> Option<String> {
        let reason = format!("bridge `{}`: {reason}", self.bridge.name);
        self.findings.push(match line {
            Some(line) => line.finding(FindingKind::NotSupported, reason),
            None => Finding::at(
                &self.bridge.at,
                "connection",
                FindingKind::NotSupported,
                reason,
            ),
        });
        None
    }

    /// The `[[mqtt_bridges]]` table, or `None` (with a finding) if it cannot work.
    fn table(mut self) -> Option<String> {
        let name: String = self
            .bridge
            .name
            .chars()
            .map(|c| if matches!(c, '/' | '+' | '#') { '-' } else { c })
            .collect();
        let remotes = self.remotes();
        if remotes.is_empty() {
            return self.fail(None, "no `address`: not converted");
        }
        if let Some(bad) = remotes.iter().find(|r| split_host_port(r).is_none()) {
            let reason = format!("address {bad:?} is not host[:port]: not converted");
            return self.fail(None, &reason);
        }
        let rules = self.rules();
        if rules.is_empty() {
            return self.fail(None, "no usable `topic` line: not converted");
        }
        let _ = writeln!(
            self.out,
            "# Converted from Mosquitto's bridge `{}` ({}).",
            self.bridge.name, self.bridge.at
        );
        let _ = writeln!(self.out, "[[mqtt_bridges]]");
        self.key("name", quote(&name));
        let list: Vec<String> = remotes.iter().map(|r| quote(r)).collect();
        self.key("remotes", format!("[{}]", list.join(", ")));
        self.session(&name);
        self.credentials();
        self.backoff();
        self.tls();
        self.out.push_str(&rules);
        Some(self.out)
    }

    /// `address`/`addresses`: `host[:port]` words, port 1883 by default.
    fn remotes(&self) -> Vec<String> {
        let line = self.last("address").or_else(|| self.last("addresses"));
        line.map(|l| {
            words(&l.value)
                .into_iter()
                .filter(|w| !w.is_empty())
                .map(|w| {
                    if w.contains(':') {
                        w
                    } else {
                        format!("{w}:1883")
                    }
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn session(&mut self, name: &str) {
        let protocol = match self.last("bridge_protocol_version").and_then(Line::word) {
            Some("mqttv50") => "5.0",
            // Mosquitto's default; mqttv31 clients speak 3.1.1 to a 3.1.1 remote.
            _ => "3.1.1",
        };
        self.key("protocol", quote(protocol));
        let client_id = self
            .last("remote_clientid")
            .or_else(|| self.last("clientid"))
            .and_then(Line::word)
            .map_or_else(|| name.to_string(), str::to_string);
        self.key("client_id", quote(&client_id));
        let flag = |line: Option<&Line>| line.and_then(|l| l.boolean().ok());
        if let Some(clean) = flag(self.last("cleansession")) {
            self.key("clean_start", clean.to_string());
        }
        if let Some(private) = flag(self.last("try_private")) {
            self.key("try_private", private.to_string());
        }
        let number = |line: Option<&Line>| line.and_then(|l| l.integer().ok());
        if let Some(secs) =
            number(self.last("keepalive_interval")).filter(|s| (0..=65535).contains(s))
        {
            self.key("keep_alive_secs", secs.to_string());
        }
        if let Some(secs) = number(self.last("bridge_session_expiry_interval"))
            .filter(|s| (0..=u32::MAX as i64).contains(s))
        {
            self.key("session_expiry_secs", secs.to_string());
        }
        if let Some(id) = self.last("local_clientid").and_then(Line::word) {
            self.key("local_client_id", quote(id));
        }
        if let Some(user) = self.last("local_username").and_then(Line::word) {
            self.key("local_username", quote(user));
        }
    }

    fn credentials(&mut self) {
        if let Some(user) = self
            .last("remote_username")
            .or_else(|| self.last("username"))
            .and_then(Line::word)
        {
            self.key("username", quote(user));
        }
        if let Some(line) = self
            .last("remote_password")
            .or_else(|| self.last("password"))
        {
            let reason = format!(
                "bridge `{}`: the password is not copied into the output; give it with \
                 password_file or password_env",
                self.bridge.name
            );
            self.findings
                .push(line.finding(FindingKind::HandledDifferently, reason));
            self.out.push_str(
                "# The Mosquitto bridge had a password (not copied): set password_file or password_env.\n",
            );
        }
    }

    /// `restart_timeout SECS` (constant) or `restart_timeout BASE CAP` (backoff).
    fn backoff(&mut self) {
        let Some(line) = self.last("restart_timeout") else {
            return;
        };
        let secs: Vec<u64> = words(&line.value)
            .iter()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (min, max) = match secs.as_slice() {
            [one] => (*one, *one),
            [base, cap, ..] => (*base, *cap),
            [] => return,
        };
        if min == 0 || max < min {
            return;
        }
        self.key("reconnect_min_ms", (min * 1000).to_string());
        self.key("reconnect_max_ms", (max * 1000).to_string());
    }

    fn tls(&mut self) {
        let ca = self.last("bridge_cafile").and_then(|l| l.text().ok());
        let Some(ca) = ca else {
            return;
        };
        let _ = writeln!(self.out, "[mqtt_bridges.tls]");
        self.key("ca_file", quote(ca));
        let cert = self.last("bridge_certfile").and_then(|l| l.text().ok());
        let key = self.last("bridge_keyfile").and_then(|l| l.text().ok());
        if let (Some(cert), Some(key)) = (cert, key) {
            self.key("cert_file", quote(cert));
            self.key("key_file", quote(key));
        }
    }

    /// The `topic` lines as `[[mqtt_bridges.topics]]` tables.
    fn rules(&mut self) -> String {
        let mut out = String::new();
        let lines: Vec<&Line> = self
            .bridge
            .options
            .iter()
            .filter(|l| l.key == "topic")
            .collect();
        for line in lines {
            let w = words(&line.value);
            let pattern = w.first().cloned().unwrap_or_default();
            let direction = w.get(1).map_or("out", String::as_str);
            let qos = w.get(2).map_or("0", String::as_str);
            let ok = !pattern.is_empty()
                && matches!(direction, "in" | "out" | "both")
                && matches!(qos, "0" | "1" | "2");
            if !ok {
                self.fail(
                    Some(line),
                    "a topic rule with an empty pattern or an unknown direction/QoS: not converted",
                );
                continue;
            }
            let local_prefix = w.get(3).map_or("", String::as_str);
            let remote_prefix = w.get(4).map_or("", String::as_str);
            if let Err((key, allowed)) = check_rule_topics(&pattern, local_prefix, remote_prefix) {
                let reason =
                    format!("a topic rule Tern cannot take ({key}: {allowed}): not converted");
                self.fail(Some(line), &reason);
                continue;
            }
            let _ = writeln!(out, "[[mqtt_bridges.topics]]");
            let _ = writeln!(out, "pattern = {}", quote(&pattern));
            let _ = writeln!(out, "direction = {}", quote(direction));
            let _ = writeln!(out, "qos = {qos}");
            let _ = writeln!(out, "local_prefix = {}", quote(local_prefix));
            let _ = writeln!(out, "remote_prefix = {}", quote(remote_prefix));
        }
        out
    }
}
