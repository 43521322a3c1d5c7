//! A blocking raw MQTT 5.0 client for the tests that drive the real `tern` binary
//! (`mod raw_client;` in each): send a packet, read the next one, 5 s read timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ConnAck, Connect, Decoder, Packet, ProtocolVersion};

/// See the module doc.
pub(crate) struct RawClient {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl RawClient {
    /// Connects to `addr`, sends `connect` and returns the client and its CONNACK.
    pub(crate) fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut client = RawClient {
            stream,
            decoder: Decoder::with_version(ProtocolVersion::V5, u32::MAX),
            buf: BytesMut::new(),
        };
        client.send(&Packet::Connect(Box::new(connect)));
        match client.recv() {
            Some(Packet::ConnAck(connack)) => (client, *connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes one packet.
    pub(crate) fn send(&mut self, packet: &Packet) {
        self.stream
            .write_all(&packet.to_bytes(ProtocolVersion::V5))
            .expect("write");
    }

    /// The next packet; `None` at end of stream, on a read error or after the timeout.
    pub(crate) fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).expect("decode") {
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
