//! A bridge's topic rules: which filters it subscribes to on each side, and how a topic is
//! remapped between the prefixes (Mosquitto's `topic PATTERN DIRECTION QOS LOCAL REMOTE`).
//! Pure functions; no I/O.

use tern_codec::topic::matches;
use tern_codec::QoS;

use crate::config::mqtt_bridges::TopicRule;

/// The rules of one bridge.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    rules: Vec<TopicRule>,
}

/// Where a message goes, by one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapped {
    /// The topic on the other side.
    pub(crate) topic: String,
    /// The rule's QoS (the hop uses min(this, the message's)).
    pub(crate) qos: QoS,
}

fn qos_of(rule: &TopicRule) -> QoS {
    match rule.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Rules {
    /// The rules, in configuration order (the first matching one maps a topic).
    pub(crate) fn new(rules: Vec<TopicRule>) -> Rules {
        Rules { rules }
    }

    /// The filters to subscribe to on this broker (out rules), with their QoS.
    pub(crate) fn local_filters(&self) -> Vec<(String, QoS)> {
        self.filters(|r| r.direction.is_out(), |r| &r.local_prefix)
    }

    /// The filters to subscribe to on the remote (in rules), with their QoS.
    pub(crate) fn remote_filters(&self) -> Vec<(String, QoS)> {
        self.filters(|r| r.direction.is_in(), |r| &r.remote_prefix)
    }

    fn filters(
        &self,
        keep: impl Fn(&TopicRule) -> bool,
        prefix: impl Fn(&TopicRule) -> &String,
    ) -> Vec<(String, QoS)> {
        let mut out: Vec<(String, QoS)> = Vec::new();
        for rule in self.rules.iter().filter(|r| keep(r)) {
            let filter = format!("{}{}", prefix(rule), rule.pattern);
            match out.iter_mut().find(|(f, _)| *f == filter) {
                // One subscription per filter: the highest QoS of the rules that share it.
                Some((_, qos)) => *qos = (*qos).max(qos_of(rule)),
                None => out.push((filter, qos_of(rule))),
            }
        }
        out
    }

    /// The remote topic of local `topic`, by the first out rule it matches.
    pub(crate) fn outbound(&self, topic: &str) -> Option<Mapped> {
        self.map(
            topic,
            |r| r.direction.is_out(),
            |r| (&r.local_prefix, &r.remote_prefix),
        )
    }

    /// The local topic of remote `topic`, by the first in rule it matches.
    pub(crate) fn inbound(&self, topic: &str) -> Option<Mapped> {
        self.map(
            topic,
            |r| r.direction.is_in(),
            |r| (&r.remote_prefix, &r.local_prefix),
        )
    }

    fn map(
        &self,
        topic: &str,
        keep: impl Fn(&TopicRule) -> bool,
        prefixes: impl Fn(&TopicRule) -> (&String, &String),
    ) -> Option<Mapped> {
        self.rules.iter().filter(|r| keep(r)).find_map(|rule| {
            let (from, to) = prefixes(rule);
            let rest = topic.strip_prefix(from.as_str())?;
            matches(&rule.pattern, rest).then(|| Mapped {
                topic: format!("{to}{rest}"),
                qos: qos_of(rule),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt_bridges::Direction;

    fn rule(pattern: &str, direction: Direction, qos: u8, local: &str, remote: &str) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_remap_each_way() {
        let rules = Rules::new(vec![
            rule("sensors/#", Direction::Out, 1, "", "site1/"),
            rule("cmd/+", Direction::In, 2, "local/", "cloud/"),
            rule("both/#", Direction::Both, 0, "l/", "r/"),
        ]);
        assert_eq!(
            rules.outbound("sensors/a/b").map(|m| m.topic),
            Some("site1/sensors/a/b".into())
        );
        assert_eq!(rules.outbound("cmd/x"), None);
        assert_eq!(
            rules.inbound("cloud/cmd/x").map(|m| m.topic),
            Some("local/cmd/x".into())
        );
        assert_eq!(rules.inbound("cloud/cmd/x/y"), None);
        assert_eq!(
            rules.inbound("r/both/1").map(|m| m.topic),
            Some("l/both/1".into())
        );
        assert_eq!(
            rules.outbound("l/both/1").map(|m| m.topic),
            Some("r/both/1".into())
        );
        assert_eq!(
            rules.local_filters(),
            vec![
                ("sensors/#".to_string(), QoS::AtLeastOnce),
                ("l/both/#".to_string(), QoS::AtMostOnce)
            ]
        );
        assert_eq!(
            rules.remote_filters(),
            vec![
                ("cloud/cmd/+".to_string(), QoS::ExactlyOnce),
                ("r/both/#".to_string(), QoS::AtMostOnce)
            ]
        );
    }
}
