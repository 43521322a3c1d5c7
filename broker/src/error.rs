//! Why a connection ends, and the one place where each reason maps to the DISCONNECT reason
//! code a 5.0 client is sent (3.x clients just see the socket close, as their spec says).
//!
//! Layers: [`tern_codec::DecodeError`] (the bytes) -> [`ProtocolError`] (the rules of the
//! session) -> [`Close`] (the end of one connection, with who started it).

use tern_codec::{DecodeError, ReasonCode};

/// A broken protocol rule after CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A second CONNECT ([MQTT-3.1.0-2]).
    #[error("second CONNECT")]
    SecondConnect,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    #[error("{0} sent by a client")]
    ServerOnlyPacket(&'static str),
    /// A Subscription Identifier in a client's PUBLISH ([MQTT-3.3.4-6]).
    #[error("subscription identifier in a client PUBLISH")]
    SubscriptionIdFromClient,
    /// Topic Alias 0 or above our Topic Alias Maximum ([MQTT-3.2.2-17], [MQTT-3.3.2-9]).
    #[error("topic alias out of range")]
    TopicAliasInvalid,
    /// An empty topic with an alias never set on this connection (5.0 section 3.3.2.3.4).
    #[error("unknown topic alias")]
    TopicAliasUnknown,
    /// More unacknowledged QoS 2 PUBLISH than our Receive Maximum ([MQTT-3.3.4-9]).
    #[error("receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// DISCONNECT sets a Session Expiry Interval after CONNECT had 0 ([MQTT-3.14.2-2]).
    #[error("session expiry set at DISCONNECT after 0 at CONNECT")]
    SessionExpiryAfterZero,
    /// AUTH from a client that did not authenticate with a method at CONNECT
    /// ([MQTT-4.12.0-7]), with another method ([MQTT-4.12.1-1]) or a reason code out of
    /// turn.
    #[error("unexpected AUTH")]
    UnexpectedAuth,
    /// A PUBLISH above the Maximum QoS announced in CONNACK ([MQTT-3.2.2-11]).
    #[error("QoS above the maximum QoS")]
    QosNotSupported,
    /// A PUBLISH with RETAIN after CONNACK said Retain Available 0 ([MQTT-3.2.2-14]).
    #[error("retain not available")]
    RetainNotSupported,
}

impl ProtocolError {
    /// The DISCONNECT reason code for this error.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ProtocolError::Decode(e) => e.reason_code(),
            ProtocolError::TopicAliasInvalid => ReasonCode::TOPIC_ALIAS_INVALID,
            ProtocolError::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            ProtocolError::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            ProtocolError::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            ProtocolError::SecondConnect
            | ProtocolError::ServerOnlyPacket(_)
            | ProtocolError::SubscriptionIdFromClient
            | ProtocolError::TopicAliasUnknown
            | ProtocolError::SessionExpiryAfterZero
            | ProtocolError::UnexpectedAuth => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// How and why one connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Close {
    /// The client sent DISCONNECT with this reason code.
    #[error("client disconnected ({0:?})")]
    ClientDisconnect(ReasonCode),
    /// The transport closed without DISCONNECT.
    #[error("connection closed by peer")]
    PeerGone,
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke a protocol rule.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// A new connection took the session over ([MQTT-3.1.4-3]).
    #[error("session taken over")]
    TakenOver,
    /// The client stayed over its output buffer's cap for too long (a slow consumer).
    #[error("slow consumer")]
    SlowConsumer,
    /// Nothing received within 1.5 times the keep alive ([MQTT-3.1.2-24]).
    #[error("keep alive timeout")]
    KeepAliveTimeout,
    /// The broker is shutting down.
    #[error("server shutting down")]
    Shutdown,
    /// A 3.1.1 QoS 1/2 PUBLISH while the data directory is over its budget (5.0 gets
    /// PUBACK/PUBREC 0x97 instead and stays connected).
    #[error("data directory over max_disk_bytes")]
    DiskFull,
    /// The client's token expired (0xA0 Maximum connect time).
    #[error("token expired")]
    TokenExpired,
    /// An operator disconnected the client through the admin API (0x98).
    #[error("disconnected by an administrator")]
    Administrative,
    /// The broker moves its clients elsewhere (drain): 0x9C Use another server or 0x9D
    /// Server moved, with the Server Reference.
    #[error("redirected ({0:?})")]
    Redirected(ReasonCode),
    /// Re-authentication (AUTH 0x19) failed ([MQTT-4.12.1-2]): DISCONNECT 0x87.
    #[error("re-authentication failed")]
    ReauthFailed,
    /// No CONNECT within the connect timeout.
    #[error("no CONNECT in time")]
    ConnectTimeout,
    /// CONNECT was refused with a CONNACK carrying this reason code.
    #[error("connection refused ({0:?})")]
    Refused(ReasonCode),
    /// A 5.0 CONNECT that could not be decoded, answered by a CONNACK with the error's
    /// reason code.
    #[error("CONNECT refused: {0}")]
    RefusedMalformed(DecodeError),
}

impl Close {
    /// The reason code of the DISCONNECT we send (5.0 only), or `None` when we send none
    /// because the client closed (or the transport is gone).
    pub fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            Close::ClientDisconnect(_)
            | Close::PeerGone
            | Close::Io(_)
            | Close::ConnectTimeout
            | Close::Refused(_)
            | Close::RefusedMalformed(_) => None,
            Close::Protocol(e) => Some(e.reason_code()),
            Close::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            Close::SlowConsumer => Some(ReasonCode::QUOTA_EXCEEDED),
            Close::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::DiskFull => Some(ReasonCode::QUOTA_EXCEEDED),
            Close::TokenExpired => Some(ReasonCode::MAXIMUM_CONNECT_TIME),
            Close::Administrative => Some(ReasonCode::ADMINISTRATIVE_ACTION),
            Close::Redirected(code) => Some(*code),
            Close::ReauthFailed => Some(ReasonCode::NOT_AUTHORIZED),
        }
    }

    /// Whether the socket may take only a short flush after this close: a slow consumer
    /// does not read, and waiting for it would only keep the connection (and up to twice
    /// its writer cap) alive.
    pub fn is_slow_consumer(&self) -> bool {
        matches!(self, Close::SlowConsumer)
    }

    /// Whether the Will Message is published: every end but a DISCONNECT with reason
    /// Success ([MQTT-3.1.2-8], [MQTT-3.14.4-3]), a broker shutdown and a redirection (the
    /// client is well and moves on).
    pub fn publishes_will(&self) -> bool {
        match self {
            Close::ClientDisconnect(reason) => *reason != ReasonCode::SUCCESS,
            Close::Shutdown
            | Close::Redirected(_)
            | Close::ConnectTimeout
            | Close::Refused(_)
            | Close::RefusedMalformed(_) => false,
            _ => true,
        }
    }
}

/// Why another task asks a connection to close, kept in the connection's SharedWriter as
/// one byte ([`Kick::to_u8`], [`Kick::from_u8`]). The connection turns it into its
/// [`Close`] (`From<Kick>`), which gives the DISCONNECT reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The broker is shutting down (0x8B).
    Shutdown,
    /// Nothing received within 1.5 times the keep alive (0x8D, [MQTT-3.1.2-22]).
    KeepAlive,
    /// A new connection took the session over (0x8E, [MQTT-3.1.4-3]).
    TakenOver,
    /// Over the output buffer's cap for longer than the slow-consumer timeout (0x97).
    SlowConsumer,
    /// The token the client authenticated with expired (0xA0).
    TokenExpired,
    /// An operator asked for it through the admin API (0x98).
    Administrative,
    /// The broker drains: 0x9C Use another server.
    UseAnotherServer,
    /// The broker drains: 0x9D Server moved.
    ServerMoved,
}

impl Kick {
    /// The byte stored for this kick; never 0, which stands for "not kicked".
    pub fn to_u8(self) -> u8 {
        match self {
            Kick::Shutdown => 1,
            Kick::KeepAlive => 2,
            Kick::TakenOver => 3,
            Kick::SlowConsumer => 4,
            Kick::TokenExpired => 5,
            Kick::Administrative => 6,
            Kick::UseAnotherServer => 7,
            Kick::ServerMoved => 8,
        }
    }

    /// The kick stored as `byte` (`None` for 0, "not kicked").
    pub fn from_u8(byte: u8) -> Option<Kick> {
        match byte {
            1 => Some(Kick::Shutdown),
            2 => Some(Kick::KeepAlive),
            3 => Some(Kick::TakenOver),
            4 => Some(Kick::SlowConsumer),
            5 => Some(Kick::TokenExpired),
            6 => Some(Kick::Administrative),
            7 => Some(Kick::UseAnotherServer),
            8 => Some(Kick::ServerMoved),
            _ => None,
        }
    }
}

impl From<Kick> for Close {
    fn from(kick: Kick) -> Close {
        match kick {
            Kick::Shutdown => Close::Shutdown,
            Kick::KeepAlive => Close::KeepAliveTimeout,
            Kick::TakenOver => Close::TakenOver,
            Kick::SlowConsumer => Close::SlowConsumer,
            Kick::TokenExpired => Close::TokenExpired,
            Kick::Administrative => Close::Administrative,
            Kick::UseAnotherServer => Close::Redirected(ReasonCode::USE_ANOTHER_SERVER),
            Kick::ServerMoved => Close::Redirected(ReasonCode::SERVER_MOVED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kick survives its byte, and the DISCONNECT it ends in carries its reason code:
    /// 0x8E for a takeover ([MQTT-3.1.4-3]), 0x8D keep alive, 0x8B shutdown, 0x97 slow.
    #[test]
    fn kick_byte_round_trip_and_disconnect_reason_mqtt_3_1_4_3() {
        assert_eq!(Kick::from_u8(0), None);
        for (kick, code) in [
            (Kick::Shutdown, ReasonCode::SERVER_SHUTTING_DOWN),
            (Kick::KeepAlive, ReasonCode::KEEP_ALIVE_TIMEOUT),
            (Kick::TakenOver, ReasonCode::SESSION_TAKEN_OVER),
            (Kick::SlowConsumer, ReasonCode::QUOTA_EXCEEDED),
            (Kick::TokenExpired, ReasonCode::MAXIMUM_CONNECT_TIME),
            (Kick::Administrative, ReasonCode::ADMINISTRATIVE_ACTION),
            (Kick::UseAnotherServer, ReasonCode::USE_ANOTHER_SERVER),
            (Kick::ServerMoved, ReasonCode::SERVER_MOVED),
        ] {
            assert_ne!(kick.to_u8(), 0);
            assert_eq!(Kick::from_u8(kick.to_u8()), Some(kick));
            assert_eq!(
                Close::from(kick).disconnect_reason(),
                Some(code),
                "{kick:?}"
            );
        }
        assert!(Close::from(Kick::SlowConsumer).is_slow_consumer());
        assert!(!Close::from(Kick::TakenOver).is_slow_consumer());
    }
}
