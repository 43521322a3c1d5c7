//! Where the CONNECT handshake applies [`crate::auth`]: the password check and the will's
//! write check. The client's ACL then goes to its session machine
//! ([`crate::session::machine`]), which checks each PUBLISH and SUBSCRIBE against it; the
//! broker re-applies it to a resumed session's subscriptions ([`crate::broker::Broker::reapply_acl`]).
//!
//! Read access at delivery is checked in the router, with the [`ClientAcl`] a subscription
//! was granted under (only for subscriptions whose filter the ACL does not wholly allow),
//! so a broker without an ACL file pays one `None` test per delivery.

use std::sync::Arc;

use tern_codec::{Connect, ReasonCode};

use super::PeerInfo;
use crate::auth::{self, Access, ClientAcl};
use crate::broker::Broker;
use crate::metrics::Metrics;

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
    let state = broker.auth().current();
    let username = connect.username.clone();
    match auth::authenticate(state, username, connect.password.clone()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            Metrics::add(&broker.metrics().auth_failures, 1);
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
    let state = broker.auth().current();
    let acl = broker.client_acl(&state, client_id, connect.username.as_deref())?;
    if let Some(will) = &connect.will {
        if !acl.check(&will.topic, Access::Write) {
            Metrics::add(&broker.metrics().acl_denied, 1);
            tracing::debug!(%client_id, topic = %will.topic, "will topic not writable: will dropped");
            connect.will = None;
        }
    }
    Some(acl)
}
