//! The link between a session and the connection attached to it: the connection's output
//! buffer and what delivering to it needs (protocol version, Maximum Packet Size, the
//! outbound topic aliases), plus what the admin API shows of it. Owned by the session's
//! delivery state ([`super::delivery::Delivery`]); nothing here writes.

use std::collections::HashMap;
use std::sync::Arc;

use tern_codec::{ByteStr, ProtocolVersion};

use crate::delivery::shared_writer::SharedWriter;

/// Outbound topic aliases of one connection (5.0): topic -> alias, within the client's
/// Topic Alias Maximum. Aliases are handed out first come and never reassigned.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    /// Boxed at the first alias: most clients allow none, and an empty map is 48 bytes.
    #[allow(clippy::box_collection)]
    pub(super) map: Option<Box<HashMap<ByteStr, u16>>>,
    max: u16,
}

impl OutboundAliases {
    /// A table allowing aliases 1..=max (0: none).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { map: None, max }
    }

    /// The alias to use for `topic` and whether the client already knows it.
    pub(super) fn choose(&self, topic: &str) -> Option<(u16, bool)> {
        if self.max == 0 {
            return None;
        }
        let map = self.map.as_deref();
        if let Some(&alias) = map.and_then(|map| map.get(topic)) {
            return Some((alias, true));
        }
        // Aliases are 1..=in use + 1; once all `max` are taken (up to 65535, so the next
        // would not fit in a u16), new topics go without one ([MQTT-3.3.2-8]: never 0).
        let next = u16::try_from(map.map_or(0, HashMap::len) + 1).ok()?;
        (next <= self.max).then_some((next, false))
    }
}

/// The connection a session is attached to.
#[derive(Debug)]
pub struct Link {
    /// Output buffer of the connection.
    pub writer: Arc<SharedWriter>,
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// The client's Maximum Packet Size (u32::MAX when it gave none).
    pub max_packet_size_bytes: u32,
    /// Outbound topic aliases.
    pub aliases: OutboundAliases,
    /// The connection's generation; a connection only detaches itself.
    pub generation: u64,
    /// The user name the connection authenticated as (ACL reload re-derives from it). Its
    /// own copy, 16 bytes inline where a `ByteStr` takes 32.
    pub username: Option<Arc<str>>,
    /// The peer's address (the admin API shows it).
    pub peer: std::net::SocketAddr,
    /// The keep alive in force, in seconds (the admin API shows it).
    pub keep_alive_secs: u16,
    /// When the connection attached, in ms since the Unix epoch (the admin API shows it).
    pub connected_at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [MQTT-3.3.2-8] (no Topic Alias 0) and [MQTT-3.3.2-11] (none above the client's
    /// maximum) at the largest maximum a client can give: with all 65535 aliases in use a
    /// new topic goes without one, instead of alias 65535 + 1 overflowing to 0.
    #[test]
    fn outbound_alias_at_maximum_65535_mqtt_3_3_2_8() {
        let mut aliases = OutboundAliases::new(u16::MAX);
        let map = aliases.map.get_or_insert_default();
        for alias in 1..u16::MAX {
            map.insert(ByteStr::from(format!("t/{alias}")), alias);
        }
        assert_eq!(
            aliases.choose("new/1"),
            Some((u16::MAX, false)),
            "the last one"
        );
        aliases
            .map
            .get_or_insert_default()
            .insert(ByteStr::from("new/1"), u16::MAX);
        assert_eq!(aliases.choose("new/1"), Some((u16::MAX, true)));
        assert_eq!(aliases.choose("t/7"), Some((7, true)));
        assert_eq!(aliases.choose("new/2"), None, "all taken: no alias");
    }
}
