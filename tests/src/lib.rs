//! Test support for Tern's integration tests: start a broker in-process on 127.0.0.1:0 (or
//! over an in-memory duplex stream, for tests on tokio's paused clock), and a raw-packet
//! MQTT client built on `tern-codec` that sends and expects exact packets.

pub mod cluster_support;
pub mod crash_checker;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::config::Config;
use tern_broker::server::{self, Running};
use tern_broker::Broker;
use tern_codec::{
    ByteStr, ConnAck, Connect, Decoder, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, PublishQoS, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long `recv` waits before failing a test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Default test configuration: one TCP listener on 127.0.0.1:0, no `$SYS` chatter.
pub fn test_config() -> Config {
    let mut config = Config::default_config();
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("addr");
    config.sys.interval_secs = 0;
    config.http.bind = "127.0.0.1:0".parse().expect("addr");
    // In memory: tests that persist give a data directory of their own (in a temp dir).
    config.persistence.enabled = false;
    config
}

/// A broker running in this process.
pub struct TestBroker {
    /// The running broker.
    pub running: Running,
    /// The TCP address it listens on.
    pub addr: SocketAddr,
}

impl TestBroker {
    /// Starts a broker with [`test_config`].
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// Starts a broker with [`test_config`] changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = test_config();
        change(&mut config);
        let running = server::start(config).await.expect("start broker");
        let addr = running.addrs[0];
        TestBroker { running, addr }
    }

    /// The broker handle.
    pub fn broker(&self) -> &Broker {
        &self.running.broker
    }

    /// The HTTP bridges (SSE, WebSocket JSON) of the broker.
    pub fn bridges(&self) -> &std::sync::Arc<tern_broker::http::bridge::Bridges> {
        &self.running.bridges
    }

    /// A raw TCP client (not yet connected at the MQTT level).
    pub async fn raw(&self, version: ProtocolVersion) -> Client {
        Client::tcp(self.addr, version).await
    }

    /// A client that has sent CONNECT (clean start) and received a successful CONNACK.
    pub async fn client(&self, version: ProtocolVersion, client_id: &str) -> Client {
        let mut client = self.raw(version).await;
        let connack = client.connect(Connect::new(version, client_id)).await;
        assert_eq!(connack.code.0, 0, "CONNACK refused: {connack:?}");
        client
    }
}

/// A connection to a broker over an in-memory stream, driven by the broker's real
/// connection code: deterministic under `tokio::time::pause()`.
pub fn duplex_client(broker: &Broker, version: ProtocolVersion) -> Client {
    let (client_side, server_side) = tokio::io::duplex(1 << 20);
    let (reader, writer) = tokio::io::split(server_side);
    let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    tokio::spawn(tern_broker::connection::serve(
        broker.clone(),
        reader,
        writer,
        peer,
    ));
    Client::new(Box::new(client_side), version)
}

/// A transport a test client can use.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw-packet MQTT client for tests.
pub struct Client {
    stream: Box<dyn Stream>,
    decoder: Decoder,
    buf: BytesMut,
    /// The protocol version packets are encoded with.
    pub version: ProtocolVersion,
    next_id: u16,
}

impl Client {
    /// Wraps a transport.
    pub fn new(stream: Box<dyn Stream>, version: ProtocolVersion) -> Client {
        Client {
            stream,
            decoder: Decoder::with_version(version, u32::MAX),
            buf: BytesMut::new(),
            version,
            next_id: 0,
        }
    }

    /// Opens a TCP connection.
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Client::new(Box::new(stream), version)
    }

    /// A fresh packet identifier.
    pub fn next_packet_id(&mut self) -> PacketId {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        PacketId::new(self.next_id).expect("non-zero")
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect(&mut self, connect: Connect) -> ConnAck {
        self.version = connect.protocol;
        self.decoder.set_version(connect.protocol);
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(connack) => *connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// [`Client::connect`] waiting up to `timeout` for the CONNACK: for a broker that must
    /// first wait for something else (a silent cluster node's handover timeout) on a
    /// machine that may be loaded.
    pub async fn connect_within(&mut self, connect: Connect, timeout: Duration) -> ConnAck {
        self.version = connect.protocol;
        self.decoder.set_version(connect.protocol);
        self.send(&Packet::Connect(Box::new(connect))).await;
        match tokio::time::timeout(timeout, self.read_packet()).await {
            Ok(Some(Packet::ConnAck(connack))) => *connack,
            other => panic!("expected CONNACK within {timeout:?}, got {other:?}"),
        }
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: &Packet) {
        let bytes = packet.to_bytes(self.version);
        self.send_bytes(&bytes).await;
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
        self.stream.flush().await.expect("flush");
    }

    /// Sends raw bytes, ignoring errors (the broker may have closed already).
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// The next packet, or `None` at end of stream; panics after `RECV_TIMEOUT`.
    pub async fn recv_or_eof(&mut self) -> Option<Packet> {
        tokio::time::timeout(RECV_TIMEOUT, self.read_packet())
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet; panics at end of stream or after `RECV_TIMEOUT`.
    pub async fn recv(&mut self) -> Packet {
        self.recv_or_eof()
            .await
            .expect("connection closed while waiting for a packet")
    }

    /// The next packet if one comes within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, self.read_packet())
            .await
            .ok()
            .flatten()
    }

    async fn read_packet(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self
                .decoder
                .decode(&mut self.buf)
                .expect("broker sent a malformed packet")
            {
                return Some(packet);
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Asserts the connection stays open and silent for `wait`: a packet, the end of stream
    /// or a read error fails. (A test that expects the broker to close says so with
    /// [`Client::expect_disconnect`].)
    pub async fn expect_nothing(&mut self, wait: Duration) {
        match tokio::time::timeout(wait, self.read_packet()).await {
            Err(_elapsed) => {}
            Ok(Some(packet)) => panic!("expected nothing, got {packet:?}"),
            Ok(None) => panic!("expected nothing, but the connection closed (or a read failed)"),
        }
    }

    /// Reads until the broker closes the connection; returns the DISCONNECT it sent, if any,
    /// and fails on any other packet.
    pub async fn expect_disconnect(&mut self) -> Option<tern_codec::Disconnect> {
        let mut disconnect = None;
        while let Some(packet) = self.recv_or_eof().await {
            match packet {
                Packet::Disconnect(d) => disconnect = Some(d),
                other => panic!("expected DISCONNECT or close, got {other:?}"),
            }
        }
        disconnect
    }

    /// Subscribes to one filter; returns the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(vec![(filter, SubscriptionOptions::with_qos(qos))], None)
            .await
    }

    /// Subscribes to several filters with options and an optional subscription identifier.
    pub async fn subscribe_with(
        &mut self,
        filters: Vec<(&str, SubscriptionOptions)>,
        subscription_id: Option<u32>,
    ) -> SubAck {
        let packet_id = self.next_packet_id();
        let mut subscribe = Subscribe {
            packet_id,
            properties: Default::default(),
            filters: filters
                .into_iter()
                .map(|(f, o)| (ByteStr::from(f), o))
                .collect(),
        };
        subscribe.properties.subscription_identifier = subscription_id;
        self.send(&Packet::Subscribe(Box::new(subscribe))).await;
        match self.recv().await {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                *suback
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Unsubscribes; returns the UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> UnsubAck {
        let packet_id = self.next_packet_id();
        let unsubscribe = Unsubscribe {
            packet_id,
            properties: Default::default(),
            filters: filters.iter().map(|f| ByteStr::from(*f)).collect(),
        };
        self.send(&Packet::Unsubscribe(Box::new(unsubscribe))).await;
        match self.recv().await {
            Packet::UnsubAck(unsuback) => *unsuback,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP). Returns the
    /// PUBACK or PUBREC reason code for QoS > 0.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Option<tern_codec::ReasonCode> {
        let mut publish = Publish::new(topic, payload.to_vec())
            .with_qos(PublishQoS::with_id(qos, self.next_packet_id()));
        publish.retain = retain;
        self.send_publish(publish).await
    }

    /// Publishes a prepared PUBLISH (for QoS > 0 its packet id is replaced by this client's
    /// next one) and completes the QoS flow.
    pub async fn publish_packet(&mut self, mut publish: Publish) -> Option<tern_codec::ReasonCode> {
        if publish.qos() != QoS::AtMostOnce {
            publish.set_qos(PublishQoS::with_id(publish.qos(), self.next_packet_id()));
        }
        self.send_publish(publish).await
    }

    /// Sends `publish` as it is and completes the QoS flow.
    async fn send_publish(&mut self, publish: Publish) -> Option<tern_codec::ReasonCode> {
        let qos = publish.publish_qos();
        self.send(&Packet::Publish(publish)).await;
        match qos {
            PublishQoS::AtLeastOnce(id) => match self.recv().await {
                Packet::PubAck(ack) if ack.packet_id == id => Some(ack.reason_code),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            PublishQoS::ExactlyOnce(id) => {
                let code = match self.recv().await {
                    Packet::PubRec(rec) if rec.packet_id == id => rec.reason_code,
                    other => panic!("expected PUBREC, got {other:?}"),
                };
                self.send(&Packet::PubRel(PubRel::new(id))).await;
                match self.recv().await {
                    Packet::PubComp(comp) if comp.packet_id == id => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
                Some(code)
            }
            PublishQoS::AtMostOnce => None,
        }
    }

    /// Waits for a PUBLISH (failing on any other packet); does not acknowledge it.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Acknowledges a received PUBLISH per its QoS (PUBACK, or PUBREC then PUBREL/PUBCOMP).
    pub async fn ack(&mut self, publish: &Publish) {
        match publish.publish_qos() {
            PublishQoS::AtLeastOnce(id) => self.send(&Packet::PubAck(PubAck::new(id))).await,
            PublishQoS::ExactlyOnce(id) => {
                self.send(&Packet::PubRec(PubRec::new(id))).await;
                match self.recv().await {
                    Packet::PubRel(rel) if rel.packet_id == id => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubComp::new(id))).await;
            }
            PublishQoS::AtMostOnce => {}
        }
    }

    /// Waits for a PUBLISH and acknowledges it.
    pub async fn expect_publish_acked(&mut self) -> Publish {
        let publish = self.expect_publish().await;
        self.ack(&publish).await;
        publish
    }

    /// Sends DISCONNECT (reason Success) and waits for the close.
    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.recv_within(Duration::from_secs(2)).await;
    }

    /// Sends PINGREQ and waits for PINGRESP (a round trip: everything sent before is handled).
    pub async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

/// Whether a command exists; under `CI=true` a missing tool fails the test instead of
/// skipping it.
pub fn require_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        skip_unless_ci(&format!(
            "{tool} not found; install it to run this interop test (.ci/run installs it)"
        ));
    }
    found
}

/// For a test whose prerequisite is missing: prints `SKIPPED: {reason}` (the caller then
/// returns), or fails the test under `CI=true`, where every prerequisite must be present.
pub fn skip_unless_ci(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

impl Client {
    /// The next packet, or `None` at end of stream (or on a read error); no timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read stay buffered for the next call (for `tokio::select!`).
    pub async fn next_packet(&mut self) -> Option<Packet> {
        self.read_packet().await
    }

    /// Reads raw bytes until the broker closes the connection (or `wait` passes) and returns
    /// them with whether the end of stream was seen. For tests sending broken input, where
    /// what comes back may not decode.
    pub async fn read_to_close(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let mut got = self.buf.split().to_vec();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(wait, read).await.is_ok();
        (got, closed)
    }

    /// Shuts down the sending side (TCP FIN); the broker then sees the end of stream.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Whether MQTT.js and node are installed for `tests/interop`; under `CI=true` their absence
/// fails the test instead of skipping it.
pub fn mqttjs_available() -> bool {
    if !require_tool("node") {
        return false;
    }
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop/node_modules/mqtt")
        .is_dir();
    if !installed {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "MQTT.js missing under CI=true (.ci/run runs npm ci in tests/interop)"
        );
        eprintln!("SKIPPED: MQTT.js not installed (npm ci in tests/interop)");
    }
    installed
}

/// Runs `tests/interop/mqttjs_v5.js` against the WebSocket `url` (`ws://host:port/path`) and
/// fails the test with its output unless every check passed.
pub async fn run_mqttjs_over_websocket(url: &str) {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .args(["mqttjs_v5.js", "127.0.0.1", "0", url])
            .current_dir(&interop)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("MQTT.js finished in time")
    .expect("run node");
    assert!(
        output.status.success(),
        "MQTT.js over {url} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends `topic` at QoS 1 and at QoS 2 from `client` (connected as `client_id`), a PUBLISH
/// the broker refuses with `code` (5.0 numbering), and checks the one rule for
/// acknowledging a refused PUBLISH:
/// - 5.0: PUBACK/PUBREC carry `code`; after a PUBREC of 0x80 or more the exchange is over
///   and the id is not kept ([MQTT-4.3.3-9]), so a PUBREL gets PUBCOMP 0x92.
/// - 3.1.1 has no failure codes ([MQTT-3.3.5-2]): PUBACK/PUBREC as for a success, and the
///   QoS 2 id is kept until the PUBREL, which completes it ([MQTT-4.3.3-11]).
///
/// Whether the id is kept is read from the session (opened again without Clean Start,
/// which returns the live one): in 3.1.1 it does not show on the wire.
pub async fn check_refused_publish_acks(
    broker: &Broker,
    client: &mut Client,
    client_id: &str,
    topic: &str,
    code: tern_codec::ReasonCode,
) {
    use tern_codec::ReasonCode;
    let v5 = client.version.is_v5();
    let expected = if v5 { code } else { ReasonCode::SUCCESS };
    let version = client.version;
    let id = client.next_packet_id();
    let publish =
        Publish::new(topic, b"refused".to_vec()).with_qos(tern_codec::PublishQoS::AtLeastOnce(id));
    client.send(&Packet::Publish(publish)).await;
    match client.recv().await {
        Packet::PubAck(ack) if ack.packet_id == id => {
            assert_eq!(ack.reason_code, expected, "{version:?} QoS 1 {topic}");
        }
        other => panic!("{version:?}: expected PUBACK, got {other:?}"),
    }
    let id = client.next_packet_id();
    let publish =
        Publish::new(topic, b"refused".to_vec()).with_qos(tern_codec::PublishQoS::ExactlyOnce(id));
    client.send(&Packet::Publish(publish)).await;
    match client.recv().await {
        Packet::PubRec(rec) if rec.packet_id == id => {
            assert_eq!(rec.reason_code, expected, "{version:?} QoS 2 {topic}");
        }
        other => panic!("{version:?}: expected PUBREC, got {other:?}"),
    }
    let (session, present) = broker.open_session(client_id, false);
    assert!(present, "{client_id} has a session");
    assert_eq!(
        session.incoming_qos2().contains(&id.get()),
        !v5,
        "{version:?}: QoS 2 id kept until PUBREL in 3.1.1 only"
    );
    client.send(&Packet::PubRel(PubRel::new(id))).await;
    match client.recv().await {
        Packet::PubComp(comp) if comp.packet_id == id => {
            let completed = if v5 {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                ReasonCode::SUCCESS
            };
            assert_eq!(comp.reason_code, completed, "{version:?} PUBCOMP");
        }
        other => panic!("{version:?}: expected PUBCOMP, got {other:?}"),
    }
    assert!(!session.incoming_qos2().contains(&id.get()), "released");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client over one end of an in-memory stream; the other end plays the broker.
    fn pair() -> (Client, tokio::io::DuplexStream) {
        let (client_side, broker_side) = tokio::io::duplex(1024);
        (
            Client::new(Box::new(client_side), ProtocolVersion::V5),
            broker_side,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn expect_nothing_passes_on_an_open_silent_connection() {
        let (mut client, _broker_side) = pair();
        client.expect_nothing(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "connection closed")]
    async fn expect_nothing_fails_when_the_connection_closes() {
        let (mut client, broker_side) = pair();
        drop(broker_side);
        client.expect_nothing(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "expected nothing, got PingResp")]
    async fn expect_nothing_fails_on_a_packet() {
        let (mut client, mut broker_side) = pair();
        broker_side
            .write_all(&Packet::PingResp.to_bytes(ProtocolVersion::V5))
            .await
            .expect("write");
        client.expect_nothing(Duration::from_secs(1)).await;
    }
}
