//! Refusing a connection over a limit with a CONNACK that says why (issue #13): 0x89
//! Server busy over `max_connections`, 0x97 Quota exceeded over a per-IP limit, and
//! 3.1.1's 0x03 Server unavailable for both (3.1.1 has no quota code), on every listener
//! kind: TLS and WebSocket listeners finish their handshakes first. Bounded: at most
//! [`REFUSAL_BUDGET`] refusals per listener run at a time, each for at most
//! [`REFUSAL_TIMEOUT_MS`] (handshakes and CONNECT together) and a CONNECT of at most
//! [`REFUSAL_MAX_PACKET_BYTES`]; past the budget a connection is closed right after
//! accept, as before, so a flood cannot pile up.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ConnAck, Packet, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::tcp::Transport;
use super::ws;
use crate::config::ListenerKind;
use crate::connection::io::PacketReader;

/// Refusals per listener that may run at once.
pub(crate) const REFUSAL_BUDGET: usize = 16;
/// How long a refused connection may take for its TLS or WebSocket handshake and CONNECT.
const REFUSAL_TIMEOUT_MS: u64 = 2000;
/// The largest CONNECT read from a refused connection.
const REFUSAL_MAX_PACKET_BYTES: u32 = 4096;

/// Answers the CONNECT on `stream` with CONNACK `code` (5.0) or 0x03 (3.1.1), after the
/// transport's handshakes, in a task of its own when the budget has room; otherwise closes
/// `stream` at once.
pub(crate) fn refuse(
    stream: TcpStream,
    transport: &Arc<Transport>,
    code: ReasonCode,
    budget: &Arc<Semaphore>,
) {
    let Ok(permit) = budget.clone().try_acquire_owned() else {
        return;
    };
    let transport = transport.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let timeout = Duration::from_millis(REFUSAL_TIMEOUT_MS);
        let _ = tokio::time::timeout(timeout, refuse_over(stream, &transport, code)).await;
    });
}

/// Runs the transport's handshakes on `stream`, then [`answer`]s.
async fn refuse_over(stream: TcpStream, transport: &Transport, code: ReasonCode) {
    match (transport.kind, &transport.tls) {
        (ListenerKind::Tcp, _) => answer(stream, code).await,
        (ListenerKind::Ws, _) => {
            if let Ok(ws) = ws::accept(stream, REFUSAL_MAX_PACKET_BYTES).await {
                answer(ws, code).await;
            }
        }
        (ListenerKind::Tls, Some(acceptor)) => {
            if let Ok(tls) = acceptor.accept(stream).await {
                answer(tls, code).await;
            }
        }
        (ListenerKind::Wss, Some(acceptor)) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            if let Ok(ws) = ws::accept(tls, REFUSAL_MAX_PACKET_BYTES).await {
                answer(ws, code).await;
            }
        }
        (ListenerKind::Tls | ListenerKind::Wss, None) => {}
    }
}

/// Reads one CONNECT from `stream` and answers CONNACK `code` (0x03 to 3.1.1), then closes.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: S, code: ReasonCode) {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = PacketReader::new(reader, REFUSAL_MAX_PACKET_BYTES);
    let Ok((Packet::Connect(connect), _)) = reader.next_packet().await else {
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
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
