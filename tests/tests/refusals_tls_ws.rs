//! Connection limits on TLS and WebSocket listeners (issue #13): a connection over
//! `max_connections` finishes its TLS or WebSocket handshake and gets CONNACK 0x89 Server
//! busy (3.1.1: 0x03), one over a per-IP limit 0x97 Quota exceeded, instead of a socket
//! closed after accept. `tests/limits.rs` covers plain TCP.

use std::path::PathBuf;
use std::sync::Arc;

use tern_broker::config::{ListenerConfig, ListenerKind};
use tern_codec::{Connect, ProtocolVersion, ReasonCode};
use tern_tests::{Client, TestBroker};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A self-signed certificate for 127.0.0.1, as PEM files, and its DER for the client.
struct SelfSigned {
    dir: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl SelfSigned {
    fn generate(name: &str) -> SelfSigned {
        let dir = std::env::temp_dir().join(format!("tern-refuse-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.join("server.crt"), cert.pem()).expect("crt");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("key");
        SelfSigned {
            der: cert.der().clone(),
            dir,
        }
    }

    fn listener(&self, kind: ListenerKind) -> ListenerConfig {
        ListenerConfig {
            kind,
            bind: "127.0.0.1:0".parse().expect("addr"),
            cert_file: Some(self.dir.join("server.crt")),
            key_file: Some(self.dir.join("server.key")),
            client_ca_file: None,
            use_identity_as_username: false,
            redirect: None,
        }
    }

    async fn tls(&self, addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(addr).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        connector
            .connect(name, stream)
            .await
            .expect("tls handshake")
    }
}

/// A WebSocket (subprotocol `mqtt`) over `stream`, as a byte stream.
async fn websocket<S>(stream: S, port: u16) -> impl tern_tests::Stream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let mut request = format!("ws://127.0.0.1:{port}/mqtt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("ws handshake");
    tern_broker::listener::ws::WsByteStream::new(ws)
}

/// Connects over the listener's transport and returns the CONNACK code as sent.
async fn connack_over(
    pki: &SelfSigned,
    kind: ListenerKind,
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
) -> u8 {
    let stream: Box<dyn tern_tests::Stream> = match kind {
        ListenerKind::Tls => Box::new(pki.tls(addr).await),
        ListenerKind::Ws => {
            Box::new(websocket(TcpStream::connect(addr).await.expect("tcp"), addr.port()).await)
        }
        ListenerKind::Wss => Box::new(websocket(pki.tls(addr).await, addr.port()).await),
        ListenerKind::Tcp => Box::new(TcpStream::connect(addr).await.expect("tcp")),
    };
    let mut client = Client::new(stream, version);
    let code = client.connect(Connect::new(version, "over")).await.code.0;
    assert!(client.expect_disconnect().await.is_none());
    code
}

// Over max_connections on TLS, WebSocket and WebSocket over TLS: CONNACK 0x89 (3.1.1 0x03).
#[tokio::test]
async fn tls_and_websocket_over_max_connections_connack_0x89() {
    let pki = SelfSigned::generate("busy");
    for kind in [ListenerKind::Tls, ListenerKind::Ws, ListenerKind::Wss] {
        let listener = pki.listener(kind);
        let listener = if kind == ListenerKind::Ws {
            ListenerConfig {
                cert_file: None,
                key_file: None,
                ..listener
            }
        } else {
            listener
        };
        let broker = TestBroker::start_with(|c| {
            c.listeners = vec![listener];
            c.limits.max_connections = 1;
        })
        .await;
        let addr = broker.addr;
        let first: Box<dyn tern_tests::Stream> = match kind {
            ListenerKind::Tls => Box::new(pki.tls(addr).await),
            ListenerKind::Ws => {
                Box::new(websocket(TcpStream::connect(addr).await.expect("tcp"), addr.port()).await)
            }
            _ => Box::new(websocket(pki.tls(addr).await, addr.port()).await),
        };
        let mut holder = Client::new(first, V5);
        assert_eq!(
            holder.connect(Connect::new(V5, "holder")).await.code,
            ReasonCode::SUCCESS
        );
        assert_eq!(connack_over(&pki, kind, addr, V5).await, 0x89, "{kind:?}");
        assert_eq!(connack_over(&pki, kind, addr, V3).await, 0x03, "{kind:?}");
        broker.running.stop().await;
    }
}

// Over max_connections_per_ip on a TLS listener: CONNACK 0x97 Quota exceeded.
#[tokio::test]
async fn tls_over_per_ip_limit_connack_0x97() {
    let pki = SelfSigned::generate("quota");
    let listener = pki.listener(ListenerKind::Tls);
    let broker = TestBroker::start_with(|c| {
        c.listeners = vec![listener];
        c.limits.max_connections_per_ip = 1;
    })
    .await;
    let mut holder = Client::new(Box::new(pki.tls(broker.addr).await), V5);
    assert_eq!(
        holder.connect(Connect::new(V5, "holder")).await.code,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        connack_over(&pki, ListenerKind::Tls, broker.addr, V5).await,
        0x97
    );
    broker.running.stop().await;
}
