//! Support for `convert_mosquitto.rs`: a fixture copied into a temporary directory with its
//! placeholders filled (certificates, password file and ACL written beside it, free ports
//! on 127.0.0.1), `tern convert`/`check-config`, Tern and Mosquitto as processes, and the
//! clients: `mosquitto_pub`/`mosquitto_sub`, and a raw MQTT-over-WebSocket CONNECT.

#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// The users in the password file, with their passwords.
pub(crate) const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

/// The ACL: alice and bob each have a tree; the certificate user `device-42` has its own.
pub(crate) const ACL: &str = "# written by convert_mosquitto.rs\n\
    user alice\ntopic readwrite alice/#\ntopic readwrite sensors/#\n\
    user bob\ntopic readwrite bob/#\n\
    user device-42\ntopic readwrite devices/device-42/#\n";

/// Whether `tool` is on the PATH; if not, prints why the test skips, or fails under
/// `CI=true` (where `.ci/run` installs it).
pub(crate) fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!(
            "{tool} not found (Debian: apt-get install mosquitto mosquitto-clients)"
        ));
    }
    found
}

/// Prints `SKIPPED: reason`, or fails under `CI=true`.
pub(crate) fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A fixture directory, copied and filled in.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    pub(crate) ports: BTreeMap<String, u16>,
}

impl Fixture {
    /// Copies `broker/tests/mosquitto/NAME` into a fresh temporary directory, replacing
    /// `@DIR@` and each `@PORT_X@`, and writes `ca.crt`, `server.crt`/`.key`,
    /// `client.crt`/`.key` (CN device-42), `passwd` and `acl` there.
    pub(crate) fn prepare(name: &str) -> Fixture {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/mosquitto")
            .join(name);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tern-convert-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let mut fixture = Fixture {
            dir,
            ports: BTreeMap::new(),
        };
        fixture.copy(&source, &fixture.dir.clone());
        write_pki(&fixture.dir);
        write_password_file(&fixture.dir.join("passwd"));
        std::fs::write(fixture.dir.join("acl"), ACL).expect("acl");
        fixture
    }

    fn copy(&mut self, from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("dir");
        for entry in std::fs::read_dir(from).expect("fixture") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                self.copy(&path, &target);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read fixture");
            std::fs::write(&target, self.fill(&text)).expect("write fixture");
        }
    }

    fn fill(&mut self, text: &str) -> String {
        let mut out = text.replace("@DIR@", &self.dir.display().to_string());
        while let Some(start) = out.find("@PORT_") {
            let end = start + 1 + out[start + 1..].find('@').expect("closing @");
            let name = out[start + 1..end].to_string();
            let port = *self.ports.entry(name).or_insert_with(free_port);
            out.replace_range(start..=end, &port.to_string());
        }
        out
    }

    pub(crate) fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `tern convert mosquitto.conf -o tern.toml`: the output and the warnings.
    pub(crate) fn convert(&self) -> (String, String) {
        let output = tern(&[
            "convert".as_ref(),
            self.path("mosquitto.conf").as_os_str(),
            "-o".as_ref(),
            self.path("tern.toml").as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "tern convert failed: {stderr}");
        let toml = std::fs::read_to_string(self.path("tern.toml")).expect("tern.toml");
        (toml, stderr)
    }

    /// `tern check-config tern.toml` passes.
    pub(crate) fn check_config(&self) {
        let output = tern(&["check-config".as_ref(), self.path("tern.toml").as_os_str()]);
        assert!(
            output.status.success(),
            "check-config: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tern(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tern")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    listener.local_addr().expect("addr").port()
}

fn write_pki(dir: &Path) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Convert Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "device-42");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let write = |file: &str, text: String| std::fs::write(dir.join(file), text).expect("pem");
    write("ca.crt", ca.pem());
    write("server.crt", server.pem());
    write("server.key", server_key.serialize_pem());
    write("client.crt", client.pem());
    write("client.key", client_key.serialize_pem());
}

/// With `mosquitto_passwd` when present (the file a Mosquitto user has), else with
/// `tern passwd --pbkdf2`, which writes the same `$7$` format.
fn write_password_file(path: &Path) {
    let have_mosquitto_passwd = Command::new("sh")
        .arg("-c")
        .arg("command -v mosquitto_passwd")
        .output()
        .is_ok_and(|o| o.status.success());
    for (i, (user, password)) in USERS.iter().enumerate() {
        let status = if have_mosquitto_passwd {
            let mut c = Command::new("mosquitto_passwd");
            if i == 0 {
                c.arg("-c");
            }
            c.arg("-b").arg(path).arg(user).arg(password).status()
        } else {
            use std::io::Write as _;
            let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
                .arg("passwd")
                .arg(path)
                .arg(user)
                .arg("--pbkdf2")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("tern passwd");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .expect("pw");
            drop(stdin);
            child.wait()
        };
        assert!(
            status.expect("passwd").success(),
            "writing the password of {user}"
        );
    }
}

/// A broker process (Tern or Mosquitto) with its stderr kept, killed when dropped.
pub(crate) struct Process {
    pub(crate) name: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `program args` in `dir` and waits until every port in `ports` accepts TCP.
    pub(crate) fn start(
        name: &'static str,
        program: &Path,
        args: &[&str],
        dir: &Path,
        ports: &[u16],
    ) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut process = Process { name, child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!(
                        "{name} exited ({status}) before listening on {port}:\n{}",
                        process.log()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} not listening on {port}:\n{}",
                    process.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        process
    }

    /// What it wrote on stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGTERM (both brokers then save their state), and waits for the exit.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a client connects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tls {
    /// Plain TCP.
    No,
    /// TLS, checking the server against `ca.crt`.
    Server,
    /// TLS with the client certificate `client.crt` (CN device-42).
    Client,
}

/// A `mosquitto_pub`/`mosquitto_sub` identity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) user: Option<(&'a str, &'a str)>,
    pub(crate) tls: Tls,
}

pub(crate) const ANONYMOUS: Who<'static> = Who {
    user: None,
    tls: Tls::No,
};

pub(crate) fn user(name: &'static str) -> Who<'static> {
    let password = USERS.iter().find(|u| u.0 == name).map_or("", |u| u.1);
    Who {
        user: Some((name, password)),
        tls: Tls::No,
    }
}

/// What a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The connection was refused (CONNACK with an error, or TLS failed).
    Refused(String),
    /// Connected, and the message arrived.
    Message(String),
    /// Connected, and nothing arrived.
    Nothing,
}

fn client_args(fixture: &Fixture, port: u16, who: Who<'_>) -> Vec<String> {
    let mut args = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    if let Some((user, password)) = who.user {
        args.extend(["-u".into(), user.into(), "-P".into(), password.into()]);
    }
    let path = |f: &str| fixture.path(f).display().to_string();
    match who.tls {
        Tls::No => {}
        Tls::Server => args.extend(["--cafile".into(), path("ca.crt")]),
        Tls::Client => args.extend([
            "--cafile".into(),
            path("ca.crt"),
            "--cert".into(),
            path("client.crt"),
            "--key".into(),
            path("client.key"),
        ]),
    }
    args
}

/// `mosquitto_pub -r -q 1`: `Ok` once published, `Err` with what it printed otherwise.
pub(crate) fn publish(
    fixture: &Fixture,
    port: u16,
    who: Who<'_>,
    topic: &str,
    payload: &str,
) -> Result<(), String> {
    let output = Command::new("timeout")
        .args(["20", "mosquitto_pub"])
        .args(client_args(fixture, port, who))
        .args(["-t", topic, "-m", payload, "-r", "-q", "1"])
        .output()
        .expect("mosquitto_pub");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `mosquitto_sub -C 1 -W 3` on `topic` (a retained message arrives at once).
pub(crate) fn receive(fixture: &Fixture, port: u16, who: Who<'_>, topic: &str) -> Seen {
    let output = Command::new("timeout")
        .args(["20", "mosquitto_sub"])
        .args(client_args(fixture, port, who))
        .args(["-t", topic, "-C", "1", "-W", "3"])
        .output()
        .expect("mosquitto_sub");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !stdout.is_empty() {
        Seen::Message(stdout)
    } else if stderr.contains("Connection error")
        || stderr.contains("Connection Refused")
        || stderr.contains("Error:") && !stderr.contains("Timed out")
    {
        Seen::Refused(stderr)
    } else {
        Seen::Nothing
    }
}

/// A 3.1.1 CONNECT over WebSocket (subprotocol `mqtt`): the CONNACK return code.
pub(crate) fn websocket_connect(port: u16, who: Who<'_>) -> Result<u8, String> {
    use bytes::BytesMut;
    use tern_codec::{Connect, Decoder, Packet, ProtocolVersion};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("ws://127.0.0.1:{port}/mqtt")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (mut socket, _) =
        tokio_tungstenite::tungstenite::client(request, stream).map_err(|e| e.to_string())?;
    let mut connect = Connect::new(ProtocolVersion::V3_1_1, "convert-ws");
    if let Some((user, password)) = who.user {
        connect.username = Some(user.into());
        connect.password = Some(password.as_bytes().to_vec().into());
    }
    let bytes = Packet::Connect(Box::new(connect)).to_bytes(ProtocolVersion::V3_1_1);
    socket
        .send(Message::Binary(bytes.freeze()))
        .map_err(|e| e.to_string())?;
    let mut decoder = Decoder::with_version(ProtocolVersion::V3_1_1, u32::MAX);
    let mut buf = BytesMut::new();
    loop {
        match socket.read().map_err(|e| e.to_string())? {
            Message::Binary(data) => buf.extend_from_slice(&data),
            Message::Close(_) => return Err("closed before CONNACK".into()),
            _ => continue,
        }
        if let Some(packet) = decoder.decode(&mut buf).map_err(|e| format!("{e:?}"))? {
            return match packet {
                Packet::ConnAck(connack) => Ok(connack.code.0),
                other => Err(format!("expected CONNACK, got {other:?}")),
            };
        }
    }
}
