//! A stored message's fixed-width encoding (the one wills, retained messages and older
//! logs use; the compact one is in `compact.rs`), its borrowed form [`StoredRef`], and the
//! decoding of its PUBLISH.

use bytes::{BufMut, Bytes, BytesMut};
use tern_codec::decoder::Decoder;
use tern_codec::{Family, Packet, ProtocolVersion, Publish};

use super::{get_u32, get_u64, take_frame, RecordError, StoredMessage, V3_FRAME_FLAG};

/// A [`StoredMessage`] borrowed from the live message it describes: what the hot path
/// encodes into an out record's inline body without taking a reference to the frame.
#[derive(Debug, Clone, Copy)]
pub struct StoredRef<'a> {
    /// When the broker received it, in milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// The session that published it, 0 for none.
    pub origin_session: u64,
    /// The encoded PUBLISH packet, of `family`'s layout.
    pub publish: &'a Bytes,
    /// The layout of `publish`.
    pub family: Family,
}

impl StoredRef<'_> {
    /// The message owned: its frame shared, not copied.
    pub fn to_stored(self) -> StoredMessage {
        StoredMessage {
            received_unix_ms: self.received_unix_ms,
            origin_session: self.origin_session,
            publish: self.publish.clone(),
            family: self.family,
        }
    }
}

impl StoredMessage {
    /// This message, borrowed.
    pub fn as_stored_ref(&self) -> StoredRef<'_> {
        StoredRef {
            received_unix_ms: self.received_unix_ms,
            origin_session: self.origin_session,
            publish: &self.publish,
            family: self.family,
        }
    }
}

impl StoredMessage {
    /// Appends the encoding to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) {
        dst.put_u64_le(self.received_unix_ms);
        dst.put_u64_le(self.origin_session);
        let flag = match self.family {
            Family::V3 => V3_FRAME_FLAG,
            Family::V5 => 0,
        };
        dst.put_u32_le(self.publish.len() as u32 | flag);
        dst.put_slice(&self.publish);
    }

    /// Decodes one message from the front of `src`.
    ///
    /// # Errors
    /// [`RecordError::Truncated`].
    pub fn decode(src: &mut &[u8]) -> Result<StoredMessage, RecordError> {
        let received_unix_ms = get_u64(src)?;
        let origin_session = get_u64(src)?;
        let len_and_flag = get_u32(src)?;
        let len = (len_and_flag & !V3_FRAME_FLAG) as usize;
        let (publish, family) = take_frame(src, len, len_and_flag & V3_FRAME_FLAG != 0)?;
        Ok(StoredMessage {
            received_unix_ms,
            origin_session,
            publish,
            family,
        })
    }

    /// The stored PUBLISH decoded (`None`: it does not decode).
    pub fn decode_publish(&self) -> Option<Publish> {
        let mut buf = BytesMut::from(&self.publish[..]);
        let version = match self.family {
            Family::V3 => ProtocolVersion::V3_1_1,
            Family::V5 => ProtocolVersion::V5,
        };
        let mut decoder = Decoder::with_version(version, u32::MAX);
        match decoder.decode(&mut buf) {
            Ok(Some(Packet::Publish(publish))) => Some(publish),
            _ => None,
        }
    }
}
