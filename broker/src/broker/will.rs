//! Will messages: turning a CONNECT's will into a routed message (3.1.2.5, 3.1.3.2).

use std::sync::Arc;
use tokio::time::Instant;

use tern_codec::{LastWill, PacketId, Publish, PublishProperties, PublishQoS, WillProperties};

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;
use crate::session::Session;

/// The PUBLISH a will becomes: its topic, payload, QoS, RETAIN and the will properties that
/// are also PUBLISH properties (Will Delay Interval is not one).
pub fn to_publish(will: LastWill) -> Publish {
    let p = will.properties;
    let mut publish = Publish::new(will.topic, will.payload);
    // A routed message's own packet identifier is never sent (every delivery patches in its
    // own); a will has none, so it carries the placeholder 1, as a template does.
    publish.set_qos(PublishQoS::with_id(will.qos, PacketId::MIN));
    publish.retain = will.retain;
    *publish.properties_mut() = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval_secs: p.message_expiry_interval_secs,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        ..PublishProperties::default()
    };
    publish
}

/// The will a stored will PUBLISH ([`to_publish`]) came from, with its Will Delay Interval:
/// a will recovered from the journal.
pub fn from_publish(publish: &Publish, delay_secs: u32) -> LastWill {
    let p = publish.properties().to_properties();
    LastWill {
        topic: publish.shared_topic(),
        payload: publish.shared_payload(),
        qos: publish.qos(),
        retain: publish.retain,
        properties: WillProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval_secs: p.message_expiry_interval_secs,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            will_delay_interval_secs: (delay_secs > 0).then_some(delay_secs),
            user_properties: p.user_properties,
        },
    }
}

/// Publishes `will` of `session` now.
pub fn publish(broker: &Broker, session: &Arc<Session>, will: LastWill) {
    let now = Instant::now();
    tracing::debug!(client_id = %session.client_id, topic = %will.topic, "publishing will");
    let message = Message::new(to_publish(will), now, None);
    Metrics::add(&broker.metrics().wills_published, 1);
    broker.publish(&message, &mut RouteScratch::default(), now);
}
