//! Refusing a plain TCP connection over a limit with a CONNACK that says why (issue #13):
//! 0x89 Server busy over `max_connections`, 0x97 Quota exceeded over a per-IP limit, and
//! 3.1.1's 0x03 Server unavailable for both (3.1.1 has no quota code). Bounded: at most
//! [`REFUSAL_BUDGET`] refusals per listener wait for their CONNECT at a time, each for at
//! most [`REFUSAL_READ_MS`] and [`REFUSAL_MAX_PACKET_BYTES`]; past the budget a connection
//! is closed right after accept, as before, so a flood cannot pile up.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ConnAck, Packet, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::connection::io::PacketReader;

/// Refusals per listener that may wait for their CONNECT at once.
pub(crate) const REFUSAL_BUDGET: usize = 16;
/// How long a refused connection may take to send CONNECT.
const REFUSAL_READ_MS: u64 = 1000;
/// The largest CONNECT read from a refused connection.
const REFUSAL_MAX_PACKET_BYTES: u32 = 4096;

/// Answers the CONNECT on `stream` with CONNACK `code` (5.0) or 0x03 (3.1.1) in a task of
/// its own when the budget has room; otherwise closes `stream` at once.
pub(crate) fn refuse(stream: TcpStream, code: ReasonCode, budget: &Arc<Semaphore>) {
    let Ok(permit) = budget.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let (reader, mut writer) = stream.into_split();
        let mut reader = PacketReader::new(reader, REFUSAL_MAX_PACKET_BYTES);
        let read =
            tokio::time::timeout(Duration::from_millis(REFUSAL_READ_MS), reader.next_packet())
                .await;
        let Ok(Ok((Packet::Connect(connect), _))) = read else {
            return;
        };
        let version = connect.protocol;
        let connack = ConnAck {
            code: if version.is_v5() {
                code
            } else {
                ReasonCode(0x03)
            },
            ..ConnAck::default()
        };
        let mut buf = BytesMut::new();
        connack.encode(version, &mut buf);
        let _ = writer.write_all(&buf).await;
        let _ = writer.shutdown().await;
    });
}
