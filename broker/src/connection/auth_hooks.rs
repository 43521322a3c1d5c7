//! Where a connection applies [`crate::auth`]: the password check at CONNECT, the will's
//! write check, the read check of each SUBSCRIBE filter, the write check of each PUBLISH,
//! and re-applying the ACL to the subscriptions of a resumed session.
//!
//! Read access at delivery is checked in the router, with the [`ClientAcl`] a subscription
//! was granted under (only for subscriptions whose filter the ACL does not wholly allow),
//! so a broker without an ACL file pays one `None` test per delivery.

use std::sync::Arc;

use tern_codec::{Connect, PubAck, PubRec, Publish, PublishQoS, ReasonCode};

use super::{Connection, PeerInfo};
use crate::auth::{self, Access, ClientAcl, SubscribeVerdict};
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::session::Session;

/// Checks CONNECT's user name and password against the password file in force.
///
/// A client whose user name comes from its verified certificate
/// (`use_identity_as_username`) has been authenticated by the TLS handshake: its CONNECT
/// user name and password are not used.
///
/// # Errors
/// The CONNACK reason code (5.0 numbering) to refuse with; the failure is counted.
pub(super) async fn login(
    broker: &Broker,
    connect: &Connect,
    info: &PeerInfo,
) -> Result<(), ReasonCode> {
    if info.cert_username.is_some() {
        return Ok(());
    }
    let state = broker.auth.current();
    let username = connect.username.clone();
    match auth::authenticate(state, username, connect.password.clone()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            Metrics::add(&broker.metrics.auth_failures, 1);
            tracing::debug!(
                peer = %info.addr,
                client_id = %connect.client_id,
                username = ?connect.username.as_deref(),
                reason = ?e,
                "authentication failed"
            );
            Err(e.reason_code())
        }
    }
}

/// The ACL of a client about to be established (`None`: no ACL file), and its will
/// checked: a will the client may not publish is dropped, as Mosquitto does (the CONNECT is
/// still accepted).
pub(super) fn client_acl(
    broker: &Broker,
    client_id: &str,
    connect: &mut Connect,
) -> Option<Arc<ClientAcl>> {
    let acl = broker
        .auth
        .current()
        .client_acl(client_id, connect.username.as_deref())?;
    if let Some(will) = &connect.will {
        if !acl.check(&will.topic, Access::Write) {
            Metrics::add(&broker.metrics.acl_denied, 1);
            tracing::debug!(%client_id, topic = %will.topic, "will topic not writable: will dropped");
            connect.will = None;
        }
    }
    Some(acl)
}

/// A resumed session's subscriptions were granted under the ACL of an earlier connection,
/// whose user name may differ: classify them again for this one. Filters it may not read
/// are removed; the others get this connection's ACL for their delivery checks.
pub(crate) fn reapply_acl(broker: &Broker, session: &Arc<Session>, acl: Option<&Arc<ClientAcl>>) {
    let Some(acl) = acl else { return };
    let current = session.subscription_snapshot();
    for (filter, record) in current {
        match acl.check_subscribe(&filter) {
            SubscribeVerdict::Denied => {
                session.subscriptions().remove(&filter);
                if broker.router.unsubscribe(&filter, session.id) {
                    Metrics::sub(&broker.metrics.subscriptions, 1);
                }
                Metrics::add(&broker.metrics.acl_denied, 1);
                tracing::debug!(client_id = %session.client_id, %filter, "subscription no longer allowed: removed");
            }
            verdict => {
                let check = (verdict == SubscribeVerdict::Filtered).then(|| acl.clone());
                if broker.router.subscribe_checked(
                    &filter,
                    session,
                    record.options,
                    record.subscription_id,
                    check,
                ) {
                    Metrics::add(&broker.metrics.subscriptions, 1);
                }
            }
        }
    }
}

/// After a reload that removed the ACL file: every subscription of `session` is delivered
/// without a read check again.
pub(crate) fn clear_read_checks(broker: &Broker, session: &Arc<Session>) {
    let current = session.subscription_snapshot();
    for (filter, record) in current {
        if broker.router.subscribe_checked(
            &filter,
            session,
            record.options,
            record.subscription_id,
            None,
        ) {
            Metrics::add(&broker.metrics.subscriptions, 1);
        }
    }
}

impl Connection {
    /// Re-derives this client's ACL when the auth files were reloaded since it was derived
    /// (one atomic load per PUBLISH/SUBSCRIBE otherwise).
    pub(super) fn refresh_acl(&mut self) {
        let generation = self.broker.auth.generation();
        if generation == self.acl_generation {
            return;
        }
        self.acl_generation = generation;
        self.acl = self
            .broker
            .auth
            .current()
            .client_acl(&self.session.client_id, self.username.as_deref());
    }

    /// The read check of one SUBSCRIBE filter: `Ok(None)` to subscribe with no delivery
    /// check, `Ok(Some(acl))` to check each message, `Err(code)` to refuse (SUBACK 0x87;
    /// the 3.1.1 encoder sends 0x80).
    pub(super) fn subscribe_acl(&self, filter: &str) -> Result<Option<Arc<ClientAcl>>, ReasonCode> {
        let Some(acl) = &self.acl else {
            return Ok(None);
        };
        match acl.check_subscribe(filter) {
            SubscribeVerdict::Allowed => Ok(None),
            SubscribeVerdict::Filtered => Ok(Some(acl.clone())),
            SubscribeVerdict::Denied => {
                Metrics::add(&self.broker.metrics.acl_denied, 1);
                tracing::debug!(client_id = %self.session.client_id, %filter, "subscription refused by ACL");
                Err(ReasonCode::NOT_AUTHORIZED)
            }
        }
    }

    /// The write check of a PUBLISH (topic alias already resolved). When it is refused this
    /// answers it and returns `true`: 5.0 QoS 1/2 get PUBACK/PUBREC 0x87; QoS 0 and 3.1.1
    /// are dropped silently, still acknowledged for 3.1.1 QoS 1/2 (3.1.1 has no way to say
    /// no, [MQTT-3.3.5-2]), a QoS 2 one remembered so its PUBREL completes normally.
    pub(super) fn publish_denied(&mut self, publish: &Publish) -> bool {
        let Some(acl) = &self.acl else {
            return false;
        };
        if acl.check(publish.topic(), Access::Write) {
            return false;
        }
        Metrics::add(&self.broker.metrics.acl_denied, 1);
        tracing::debug!(client_id = %self.session.client_id, topic = %publish.topic(), "publish refused by ACL: dropped");
        let v5 = self.version.is_v5();
        let code = if v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        match publish.publish_qos() {
            PublishQoS::AtLeastOnce(id) => {
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                self.send(|buf, version| ack.encode(version, buf));
            }
            PublishQoS::ExactlyOnce(id) => {
                if !v5 {
                    self.session.incoming_qos2().insert(id.get());
                }
                let mut rec = PubRec::new(id);
                rec.reason_code = code;
                self.send(|buf, version| rec.encode(version, buf));
            }
            PublishQoS::AtMostOnce => {}
        }
        true
    }
}
