//! `[mqtt]`: what the broker offers MQTT 5 clients beyond the limits: the capabilities it
//! announces in CONNACK and enforces (Maximum QoS, Retain Available, Wildcard, Shared and
//! Subscription Identifier availability), the Response Information it hands out, and server
//! redirection (Server Reference with 0x9C Use another server or 0x9D Server moved).
//!
//! This module owns the settings and the pure decisions on them (which reason code a
//! filter, a will or a PUBLISH gets; the CONNACK properties; the response topic prefix).
//! Applying them is the handshake's ([`crate::connection`]) and the session machine's; the
//! broker keeps the section in force and swaps it on reload, like the limits.

use serde::Deserialize;
use tern_codec::{ConnAckProperties, ReasonCode};

use crate::error::ProtocolError;

/// The `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFeatures {
    /// Highest QoS accepted in PUBLISH and wills (0, 1 or 2); subscriptions are granted at
    /// most this.
    pub maximum_qos: u8,
    /// Whether retained messages (and will retain) are accepted.
    pub retain_available: bool,
    /// Whether filters with `+` or `#` are accepted.
    pub wildcard_subscription_available: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are accepted.
    pub shared_subscription_available: bool,
    /// Whether SUBSCRIBE may carry a Subscription Identifier.
    pub subscription_identifiers_available: bool,
    /// Response Information template handed to a client that sets Request Response
    /// Information; `{client_id}` is replaced. Empty: none is given.
    pub response_information: String,
    /// Redirect every new connection (and, when turned on by a reload or a drain, the
    /// connected 5.0 clients) to `server_reference`.
    pub redirect: Redirect,
    /// Where redirected clients should go (the Server Reference property), e.g.
    /// `other.example.com:1883`.
    pub server_reference: String,
}

/// Server redirection mode (section 4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// Accept connections here.
    #[default]
    None,
    /// 0x9C: the client should temporarily use another server.
    UseAnotherServer,
    /// 0x9D: the client should permanently use another server.
    ServerMoved,
}

impl Redirect {
    /// The CONNACK / DISCONNECT reason code, `None` when not redirecting.
    pub fn reason_code(self) -> Option<ReasonCode> {
        match self {
            Redirect::None => None,
            Redirect::UseAnotherServer => Some(ReasonCode::USE_ANOTHER_SERVER),
            Redirect::ServerMoved => Some(ReasonCode::SERVER_MOVED),
        }
    }
}

/// A listener's redirection, overriding `[mqtt] redirect` for connections it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerRedirect {
    /// The mode.
    pub redirect: Redirect,
    /// The Server Reference sent.
    pub server_reference: String,
}

/// The capability checks the session machine applies to each packet: small and `Copy`, so
/// that a connection keeps its own without a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// See [`MqttFeatures::maximum_qos`].
    pub maximum_qos: u8,
    /// See [`MqttFeatures::retain_available`].
    pub retain_available: bool,
    /// See [`MqttFeatures::wildcard_subscription_available`].
    pub wildcard_subscription_available: bool,
    /// See [`MqttFeatures::shared_subscription_available`].
    pub shared_subscription_available: bool,
    /// See [`MqttFeatures::subscription_identifiers_available`].
    pub subscription_identifiers_available: bool,
}

impl Default for Capabilities {
    /// Everything available (what a broker without `[mqtt]` settings offers).
    fn default() -> Capabilities {
        Capabilities {
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
        }
    }
}

impl MqttFeatures {
    /// The capabilities part.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            maximum_qos: self.maximum_qos,
            retain_available: self.retain_available,
            wildcard_subscription_available: self.wildcard_subscription_available,
            shared_subscription_available: self.shared_subscription_available,
            subscription_identifiers_available: self.subscription_identifiers_available,
        }
    }

    /// The Response Information for `client_id` ([MQTT-3.1.2-28]: only when requested),
    /// or `None` when no template is configured.
    pub fn response_information(&self, client_id: &str) -> Option<String> {
        (!self.response_information.is_empty())
            .then(|| self.response_information.replace("{client_id}", client_id))
    }

    /// The topic filters of the response topic template: what its owner may read
    /// (`None` for a client id that cannot be put in a filter) and what every client may
    /// write to. `None` when no template is configured.
    pub fn response_acl(&self, client_id: &str) -> Option<ResponseAcl> {
        if self.response_information.is_empty() {
            return None;
        }
        let filter = |id: &str| {
            let prefix = self.response_information.replace("{client_id}", id);
            if prefix.ends_with('/') || prefix.is_empty() {
                format!("{prefix}#")
            } else {
                format!("{prefix}/#")
            }
        };
        let safe = !client_id.is_empty() && !client_id.contains(['/', '+', '#']);
        Some(ResponseAcl {
            own_read: safe.then(|| filter(client_id)),
            anyone_write: filter("+"),
        })
    }
}

/// What the response topic template grants in the ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAcl {
    /// The filter the client may subscribe to (its own prefix).
    pub own_read: Option<String>,
    /// The filter every client may publish to (every client's prefix).
    pub anyone_write: String,
}

impl Capabilities {
    /// Sets the capability properties of a 5.0 CONNACK. Maximum QoS is sent only below 2
    /// ([MQTT-3.2.2-9]; 2 is the default and may not be sent).
    pub fn announce(&self, properties: &mut ConnAckProperties) {
        properties.maximum_qos = (self.maximum_qos < 2).then_some(self.maximum_qos);
        properties.retain_available = Some(self.retain_available);
        properties.wildcard_subscription_available = Some(self.wildcard_subscription_available);
        properties.subscription_identifiers_available =
            Some(self.subscription_identifiers_available);
        properties.shared_subscription_available = Some(self.shared_subscription_available);
    }

    /// Why a will cannot be accepted: its QoS above Maximum QoS (0x9B, [MQTT-3.2.2-12]) or
    /// its retain flag without Retain Available (0x9A, [MQTT-3.2.2-13]).
    pub fn check_will(&self, qos: u8, retain: bool) -> Result<(), ReasonCode> {
        self.check_publish(qos, retain).map_err(|e| e.reason_code())
    }

    /// Why a client's PUBLISH breaks what CONNACK announced: QoS above Maximum QoS (0x9B,
    /// [MQTT-3.2.2-11]) or RETAIN without Retain Available (0x9A, [MQTT-3.2.2-14]).
    pub fn check_publish(&self, qos: u8, retain: bool) -> Result<(), ProtocolError> {
        if qos > self.maximum_qos {
            return Err(ProtocolError::QosNotSupported);
        }
        if retain && !self.retain_available {
            return Err(ProtocolError::RetainNotSupported);
        }
        Ok(())
    }

    /// Why a SUBSCRIBE filter is refused (SUBACK code): a shared subscription without
    /// Shared Subscription Available (0x9E), a wildcard without Wildcard Subscription
    /// Available (0xA2), a Subscription Identifier without Subscription Identifiers
    /// Available (0xA1).
    pub fn check_filter(&self, filter: &str, has_subscription_id: bool) -> Result<(), ReasonCode> {
        let shared = tern_codec::topic::split_shared(filter);
        if shared.is_some() && !self.shared_subscription_available {
            return Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        let plain = match shared {
            Some(Ok((_, inner))) => inner,
            _ => filter,
        };
        if !self.wildcard_subscription_available && tern_codec::topic::has_wildcards(plain) {
            return Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if has_subscription_id && !self.subscription_identifiers_available {
            return Err(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_off() -> Capabilities {
        Capabilities {
            maximum_qos: 1,
            retain_available: false,
            wildcard_subscription_available: false,
            shared_subscription_available: false,
            subscription_identifiers_available: false,
        }
    }

    #[test]
    fn filters_refused_with_their_codes() {
        let on = Capabilities::default();
        assert_eq!(on.check_filter("$share/g/a/#", true), Ok(()));
        let off = all_off();
        assert_eq!(off.check_filter("a/b", false), Ok(()));
        assert_eq!(
            off.check_filter("$share/g/a", false),
            Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
        );
        assert_eq!(
            off.check_filter("a/+", false),
            Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
        );
        assert_eq!(
            off.check_filter("a", true),
            Err(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
        );
    }

    #[test]
    fn will_and_publish_checks() {
        let off = all_off();
        assert_eq!(off.check_will(1, false), Ok(()));
        assert_eq!(off.check_will(2, false), Err(ReasonCode::QOS_NOT_SUPPORTED));
        assert_eq!(
            off.check_publish(0, true).map_err(|e| e.reason_code()),
            Err(ReasonCode::RETAIN_NOT_SUPPORTED)
        );
        let mut props = ConnAckProperties::default();
        Capabilities::default().announce(&mut props);
        assert_eq!(props.maximum_qos, None);
        off.announce(&mut props);
        assert_eq!(props.maximum_qos, Some(1));
        assert_eq!(props.retain_available, Some(false));
    }

    #[test]
    fn response_information_and_acl() {
        let features = MqttFeatures {
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            response_information: "reply/{client_id}/".into(),
            redirect: Redirect::None,
            server_reference: String::new(),
        };
        assert_eq!(
            features.response_information("c1").as_deref(),
            Some("reply/c1/")
        );
        let acl = features.response_acl("c1").expect("acl");
        assert_eq!(acl.own_read.as_deref(), Some("reply/c1/#"));
        assert_eq!(acl.anyone_write, "reply/+/#");
        assert_eq!(features.response_acl("a/b").expect("acl").own_read, None);
    }
}
