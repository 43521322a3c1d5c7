//! `tern ctl` through the binary against a running `tern` (also the binary): listing and
//! showing clients, kicking one (it gets DISCONNECT 0x98), publishing and listing retained
//! messages, sessions as JSON, reload through the API, and a wrong token refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Decoder, Packet, ProtocolVersion};

const TOKEN: &str = "ctl-test-admin-token-0123456789";

struct Running {
    child: Child,
    mqtt: SocketAddr,
    http: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_in(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("addr in log")
        .trim_matches('"')
        .parse()
        .expect("addr")
}

fn start() -> Running {
    let dir: PathBuf = std::env::temp_dir().join(format!("tern-ctl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).expect("token");
    let config = dir.join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
             [http]\nbind = \"127.0.0.1:0\"\n[persistence]\nenabled = false\n\
             [sys]\ninterval_secs = 0\n\
             [admin]\nenabled = true\ntoken_file = \"{}\"\n",
            dir.join("admin.token").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut mqtt, mut http) = (None, None);
    while mqtt.is_none() || http.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("broker did not start");
        if line.contains("HTTP listening") {
            http = Some(addr_in(&line));
        } else if line.contains("listening") {
            mqtt = Some(addr_in(&line));
        }
    }
    Running {
        child,
        mqtt: mqtt.expect("mqtt"),
        http: http.expect("http"),
    }
}

/// Runs `tern ctl ARGS` with the URL from the environment; returns (success, stdout+stderr).
fn ctl(http: SocketAddr, token: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("ctl")
        .args(args)
        .env("TERN_ADMIN_URL", format!("http://{http}"))
        .env("TERN_ADMIN_TOKEN", token)
        .output()
        .expect("run tern ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A connected 5.0 client (blocking).
fn mqtt_client(addr: SocketAddr, id: &str) -> (TcpStream, Decoder, BytesMut) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let connect = Connect::new(ProtocolVersion::V5, id);
    stream
        .write_all(&Packet::Connect(Box::new(connect)).to_bytes(ProtocolVersion::V5))
        .expect("write");
    let mut client = (
        stream,
        Decoder::with_version(ProtocolVersion::V5, u32::MAX),
        BytesMut::new(),
    );
    assert!(matches!(recv(&mut client), Some(Packet::ConnAck(c)) if c.code.0 == 0));
    client
}

fn recv(client: &mut (TcpStream, Decoder, BytesMut)) -> Option<Packet> {
    let (stream, decoder, buf) = client;
    loop {
        if let Some(packet) = decoder.decode(buf).expect("decode") {
            return Some(packet);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn tern_ctl_drives_the_admin_api() {
    let broker = start();
    let http = broker.http;
    let mut client = mqtt_client(broker.mqtt, "ctl-client-1");

    let (ok, text) = ctl(http, TOKEN, &["clients"]);
    assert!(ok, "{text}");
    assert!(text.starts_with("CLIENT ID"), "{text}");
    assert!(
        text.contains("ctl-client-1") && text.contains("(1 total)"),
        "{text}"
    );

    let (ok, text) = ctl(http, TOKEN, &["client", "ctl-client-1"]);
    assert!(
        ok && text.contains("protocol") && text.contains("5.0"),
        "{text}"
    );

    let (ok, text) = ctl(
        http,
        TOKEN,
        &["publish", "ctl/news", "hello", "-q", "1", "-r"],
    );
    assert!(ok && text.contains("published to ctl/news"), "{text}");
    let (ok, text) = ctl(http, TOKEN, &["retained", "ctl/#"]);
    assert!(
        ok && text.contains("ctl/news") && text.contains("hello"),
        "{text}"
    );

    let (ok, text) = ctl(http, TOKEN, &["sessions", "--json"]);
    assert!(ok, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(value["sessions"][0]["client_id"], "ctl-client-1");

    let (ok, text) = ctl(http, TOKEN, &["kick", "ctl-client-1"]);
    assert!(ok && text.contains("kicked ctl-client-1"), "{text}");
    match recv(&mut client) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98, "{d:?}"),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }

    let (ok, text) = ctl(http, TOKEN, &["reload"]);
    assert!(ok && text.contains("reloaded"), "{text}");

    let (ok, text) = ctl(http, "wrong-token-0123456789", &["clients"]);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = ctl(http, TOKEN, &["client", "nobody"]);
    assert!(!ok && text.contains("404"), "{text}");
}
