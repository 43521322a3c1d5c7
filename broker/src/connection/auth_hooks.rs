//! Where the CONNECT handshake applies [`crate::auth`]: the password check and the will's
//! write check. The client's ACL then goes to its session machine
//! ([`crate::session::machine`]), which checks each PUBLISH and SUBSCRIBE against it; the
//! broker re-applies it to a resumed session's subscriptions ([`crate::broker::Broker::reapply_acl`]).
//!
//! Read access at delivery is checked in the router, with the [`ClientAcl`] a subscription
//! was granted under (only for subscriptions whose filter the ACL does not wholly allow),
//! so a broker without an ACL file pays one `None` test per delivery.

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tern_codec::{Connect, ProtocolVersion, ReasonCode};

use super::PeerInfo;
use crate::auth::{self, Access, ClientAcl};
use crate::broker::Broker;
use crate::delivery::shared_writer::SharedWriter;
use crate::error::Kick;
use crate::metrics::Metrics;

/// Checks CONNECT's credentials against the sources of `[auth]` in force
/// ([`auth::authenticate`]). Returns who the client is: a token's user name claim replaces
/// the CONNECT user name, and a token's expiry closes the connection then
/// ([`close_at_expiry`]).
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
) -> Result<auth::Granted, ReasonCode> {
    if info.cert_username.is_some() {
        return Ok(auth::Granted::default());
    }
    let state = broker.auth().current();
    let quick = auth::login::without_sources(
        &state,
        connect.username.as_deref(),
        connect.password.is_some(),
    );
    let decided = match quick {
        Some(decided) => decided,
        // Boxed: the sources' future is large and the connection task's future must stay
        // small (`connection_future_stays_small`); brokers without sources never get here.
        None => {
            Box::pin(auth::authenticate(
                state,
                credentials(connect, info),
                broker.metrics(),
            ))
            .await
        }
    };
    match decided {
        Ok(granted) => Ok(granted),
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

/// What CONNECT presented, for the authentication sources.
fn credentials(connect: &Connect, info: &PeerInfo) -> auth::Credentials {
    auth::Credentials {
        client_id: connect.client_id.to_string(),
        username: connect.username.clone(),
        password: connect.password.clone(),
        peer: Some(info.addr),
        protocol: match connect.protocol {
            ProtocolVersion::V5 => "mqtt5",
            ProtocolVersion::V3_1_1 => "mqtt3.1.1",
            ProtocolVersion::V3_1 => "mqtt3.1",
        },
    }
}

/// Closes the connection writing to `out` when its credentials expire (5.0: DISCONNECT
/// 0xA0 Maximum connect time). Only connections that logged in with an expiring token pay
/// for this: one sleeping task holding a weak reference, so a connection that closed
/// earlier is not kept alive by it.
pub(super) fn close_at_expiry(out: &Arc<SharedWriter>, expires_at: SystemTime) {
    let wait = auth::login::time_left(expires_at);
    let weak: Weak<SharedWriter> = Arc::downgrade(out);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if let Some(writer) = weak.upgrade() {
            writer.control().kick(Kick::TokenExpired);
        }
    });
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
