//! The SUBSCRIBE side of the session machine ([`super::Machine`]): each filter checked
//! against the capabilities announced in CONNACK, the topic limits and the client's ACL
//! (the broker then subscribes what was allowed), and the SUBACK and UNSUBACK built from
//! what the broker did.

use std::sync::Arc;

use tern_codec::{ByteStr, PacketId, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck};

use super::{Event, Machine, Output, Transmit};
use crate::auth::{ClientAcl, SubscribeVerdict};
use crate::metrics::Metrics;
use crate::session::SubscriptionRecord;

/// A SUBSCRIBE, checked: each filter with its record and read check, or the reason code it
/// is refused with.
#[derive(Debug)]
pub struct SubscribeRequest {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: PacketId,
    /// Each filter, in order.
    pub filters: Vec<FilterRequest>,
}

/// One filter of a SUBSCRIBE.
#[derive(Debug)]
pub struct FilterRequest {
    /// The filter.
    pub filter: ByteStr,
    /// The subscription to make.
    pub record: SubscriptionRecord,
    /// `Ok(read check)` to subscribe (`None`: wholly readable), `Err(code)` when refused.
    pub verdict: Result<Option<Arc<ClientAcl>>, ReasonCode>,
}

/// How one filter of a SUBSCRIBE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOutcome {
    /// Subscribed: new, or replacing one the session held.
    Granted {
        /// The session did not hold this filter before.
        new: bool,
    },
    /// Refused with this code.
    Refused(ReasonCode),
}

impl Machine {
    /// Checks each filter of a SUBSCRIBE against the topic limits and the client's ACL.
    pub(super) fn handle_subscribe(&self, subscribe: Subscribe, metrics: &Metrics) -> Output {
        let subscription_id = subscribe.properties.subscription_identifier;
        let filters = subscribe
            .filters
            .into_iter()
            .map(|(filter, mut options)| {
                // [MQTT-3.2.2-10]: a SUBSCRIBE above Maximum QoS is accepted, granted at it.
                if options.qos as u8 > self.capabilities.maximum_qos {
                    options.qos = tern_codec::QoS::from_u8(self.capabilities.maximum_qos)
                        .unwrap_or(tern_codec::QoS::AtMostOnce);
                }
                let verdict = self
                    .capabilities
                    .check_filter(&filter, subscription_id.is_some())
                    .and_then(|()| self.filter_verdict(&filter, metrics));
                FilterRequest {
                    filter,
                    record: SubscriptionRecord {
                        options,
                        subscription_id,
                    },
                    verdict,
                }
            })
            .collect();
        Output::Event(Event::Subscribe(Box::new(SubscribeRequest {
            packet_id: subscribe.packet_id,
            filters,
        })))
    }

    /// The read check of one SUBSCRIBE filter: `Ok(None)` to subscribe with no delivery
    /// check, `Ok(Some(acl))` to check each message, `Err(code)` to refuse (SUBACK 0x87,
    /// which the 3.1.1 encoder sends as 0x80; 0x8F for a filter over the topic limits).
    fn filter_verdict(
        &self,
        filter: &str,
        metrics: &Metrics,
    ) -> Result<Option<Arc<ClientAcl>>, ReasonCode> {
        if !self.limits.topic_within_limits(filter) {
            return Err(ReasonCode::TOPIC_FILTER_INVALID);
        }
        let Some(acl) = &self.acl else {
            return Ok(None);
        };
        match acl.check_subscribe(filter) {
            SubscribeVerdict::Allowed => Ok(None),
            SubscribeVerdict::Filtered => Ok(Some(acl.clone())),
            SubscribeVerdict::Denied => {
                Metrics::add(&metrics.acl_denied, 1);
                tracing::debug!(client_id = %self.session.client_id, %filter, "subscription refused by ACL");
                Err(ReasonCode::NOT_AUTHORIZED)
            }
        }
    }

    /// The SUBACK for a SUBSCRIBE whose filters ended as `outcomes` (in order).
    pub fn subscribed(
        &self,
        packet_id: PacketId,
        outcomes: &[(SubscriptionOptions, FilterOutcome)],
    ) -> Transmit {
        let reason_codes = outcomes
            .iter()
            .map(|(options, outcome)| match outcome {
                FilterOutcome::Granted { .. } => ReasonCode(options.qos as u8),
                FilterOutcome::Refused(code) => *code,
            })
            .collect();
        Transmit::SubAck(SubAck {
            packet_id,
            properties: Default::default(),
            reason_codes,
        })
    }

    /// The UNSUBACK for an UNSUBSCRIBE; `existed` says, per filter, whether it was held.
    pub fn unsubscribed(
        &self,
        packet_id: PacketId,
        existed: impl IntoIterator<Item = bool>,
    ) -> Transmit {
        let reason_codes = existed
            .into_iter()
            .map(|held| {
                if held {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        Transmit::UnsubAck(UnsubAck {
            packet_id,
            properties: Default::default(),
            reason_codes,
        })
    }
}

/// Whether a subscription sends the retained messages it matches: per Retain Handling
/// ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]), never for shared subscriptions (5.0
/// section 4.8.2).
pub fn sends_retained(filter: &str, options: &SubscriptionOptions, new: bool) -> bool {
    let shared = tern_codec::topic::split_shared(filter).is_some();
    let wanted = match options.retain_handling {
        tern_codec::RetainHandling::SendAtSubscribe => true,
        tern_codec::RetainHandling::SendIfNew => new,
        tern_codec::RetainHandling::DoNotSend => false,
    };
    wanted && !shared
}
