//! MQTT 5.0 reason codes (section 2.4) and the 3.1.1 CONNACK return codes.
//!
//! One constant per code, each with its meaning; the packets carry a [`ReasonCode`] and the
//! decoder checks that a received code is legal for the packet it came in.

use std::fmt;

/// A reason code byte. A newtype rather than an enum: the legal set differs per packet and a
/// peer may send a code we do not name, which each packet's decoder checks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl ReasonCode {
            $($(#[$doc])* pub const $name: ReasonCode = ReasonCode($value);)*

            /// The spec's name of the code, or `None` for a byte the spec does not define.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(x if x == $value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// Success; also Normal disconnection and Granted QoS 0.
    SUCCESS = 0x00;
    /// SUBACK: Granted QoS 1.
    GRANTED_QOS_1 = 0x01;
    /// SUBACK: Granted QoS 2.
    GRANTED_QOS_2 = 0x02;
    /// DISCONNECT: the client wants its Will Message published.
    DISCONNECT_WITH_WILL = 0x04;
    /// PUBACK/PUBREC: accepted, but nobody subscribes.
    NO_MATCHING_SUBSCRIBERS = 0x10;
    /// UNSUBACK: there was no such subscription.
    NO_SUBSCRIPTION_EXISTED = 0x11;
    /// AUTH: continue the authentication exchange.
    CONTINUE_AUTHENTICATION = 0x18;
    /// AUTH: re-authenticate.
    RE_AUTHENTICATE = 0x19;
    /// The receiver does not accept the packet and gives no other reason.
    UNSPECIFIED_ERROR = 0x80;
    /// The packet could not be parsed according to the specification.
    MALFORMED_PACKET = 0x81;
    /// The packet parsed, but breaks the protocol.
    PROTOCOL_ERROR = 0x82;
    /// Valid, but this implementation does not accept it.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83;
    /// CONNACK: the protocol version is not supported.
    UNSUPPORTED_PROTOCOL_VERSION = 0x84;
    /// CONNACK: the client identifier is valid but not allowed.
    CLIENT_IDENTIFIER_NOT_VALID = 0x85;
    /// CONNACK: bad user name or password.
    BAD_USER_NAME_OR_PASSWORD = 0x86;
    /// The client is not authorized to do this.
    NOT_AUTHORIZED = 0x87;
    /// CONNACK: the server is not available.
    SERVER_UNAVAILABLE = 0x88;
    /// The server is busy.
    SERVER_BUSY = 0x89;
    /// CONNACK: this client is banned.
    BANNED = 0x8A;
    /// DISCONNECT: the server is shutting down.
    SERVER_SHUTTING_DOWN = 0x8B;
    /// The authentication method is not supported.
    BAD_AUTHENTICATION_METHOD = 0x8C;
    /// DISCONNECT: no packet within 1.5 times the keep alive.
    KEEP_ALIVE_TIMEOUT = 0x8D;
    /// DISCONNECT: another connection took over the session.
    SESSION_TAKEN_OVER = 0x8E;
    /// The topic filter is well formed but not accepted.
    TOPIC_FILTER_INVALID = 0x8F;
    /// The topic name is well formed but not accepted.
    TOPIC_NAME_INVALID = 0x90;
    /// The packet identifier is already in use.
    PACKET_IDENTIFIER_IN_USE = 0x91;
    /// The packet identifier is not known.
    PACKET_IDENTIFIER_NOT_FOUND = 0x92;
    /// More QoS > 0 publishes in flight than Receive Maximum allows.
    RECEIVE_MAXIMUM_EXCEEDED = 0x93;
    /// The topic alias is 0 or above the Topic Alias Maximum.
    TOPIC_ALIAS_INVALID = 0x94;
    /// The packet is larger than the Maximum Packet Size.
    PACKET_TOO_LARGE = 0x95;
    /// The message rate is too high.
    MESSAGE_RATE_TOO_HIGH = 0x96;
    /// An implementation or administrative quota is exceeded.
    QUOTA_EXCEEDED = 0x97;
    /// DISCONNECT: administrative action.
    ADMINISTRATIVE_ACTION = 0x98;
    /// The payload does not match the Payload Format Indicator.
    PAYLOAD_FORMAT_INVALID = 0x99;
    /// The server does not support retained messages.
    RETAIN_NOT_SUPPORTED = 0x9A;
    /// The server does not support this QoS.
    QOS_NOT_SUPPORTED = 0x9B;
    /// The client should temporarily use another server.
    USE_ANOTHER_SERVER = 0x9C;
    /// The client should permanently use another server.
    SERVER_MOVED = 0x9D;
    /// The server does not support shared subscriptions.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E;
    /// The connection rate limit has been exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9F;
    /// The maximum connection time has been exceeded.
    MAXIMUM_CONNECT_TIME = 0xA0;
    /// The server does not support subscription identifiers.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1;
    /// The server does not support wildcard subscriptions.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2;
}

impl ReasonCode {
    /// Whether the code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The 3.1.1 CONNACK return code closest to a 5.0 CONNACK reason code (3.1.1 table 3.1).
    pub fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::SUCCESS => 0x00,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 0x01,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 0x02,
            ReasonCode::SERVER_UNAVAILABLE
            | ReasonCode::SERVER_BUSY
            | ReasonCode::SERVER_SHUTTING_DOWN
            | ReasonCode::USE_ANOTHER_SERVER
            | ReasonCode::SERVER_MOVED => 0x03,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => 0x04,
            _ => 0x05,
        }
    }

    /// The 5.0 CONNACK reason code for a 3.1.1 return code.
    pub fn from_v3_connack(code: u8) -> ReasonCode {
        match code {
            0x00 => ReasonCode::SUCCESS,
            0x01 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            0x02 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            0x03 => ReasonCode::SERVER_UNAVAILABLE,
            0x04 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            _ => ReasonCode::NOT_AUTHORIZED,
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}(0x{:02X})", self.0),
            None => write!(f, "ReasonCode(0x{:02X})", self.0),
        }
    }
}
