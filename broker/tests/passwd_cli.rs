//! `tern passwd FILE USER [--pbkdf2 | --scram]`, run as the built binary: the password comes from
//! standard input (not a terminal here), the file is created 0600, other lines are kept, and
//! the result verifies with the password-file reader the broker uses.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use tern_broker::auth::PasswordFile;

/// Runs `tern passwd` with `stdin` piped in; returns whether it succeeded.
fn passwd(file: &Path, user: &str, stdin: &str, extra: &[&str]) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tern passwd");
    // A refused command line (`--scram --pbkdf2`) exits before reading: the write may then
    // meet a closed pipe, which is not the test's failure (its exit status is).
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    child.wait().expect("wait").success()
}

#[test]
fn passwd_adds_updates_and_keeps_lines() {
    let dir = std::env::temp_dir().join(format!("tern-passwd-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");

    assert!(passwd(&file, "dave", "first\n", &[]));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a new password file is private");
    }
    assert!(passwd(&file, "erin", "mosq-compatible\r\n", &["--pbkdf2"]));
    assert!(passwd(&file, "dave", "second\n", &[]));
    // Refused without touching the file: empty password, bad user name.
    assert!(!passwd(&file, "frank", "\n", &[]));
    assert!(!passwd(&file, "a:b", "pw\n", &[]));

    let text = std::fs::read_to_string(&file).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("dave:$argon2id$v=19$"), "{text}");
    assert!(lines[1].starts_with("erin:$7$101$"), "{text}");

    let users = PasswordFile::load(&file).expect("load");
    assert!(users.verify("dave", b"second"));
    assert!(!users.verify("dave", b"first"));
    assert!(users.verify("erin", b"mosq-compatible"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tern passwd --scram` stores SCRAM-SHA-256 credentials (RFC 5802: salt, iteration
/// count, StoredKey and ServerKey; never the password), which verify plain passwords too
/// and give the SCRAM exchange its credentials.
#[test]
fn passwd_scram_stores_salted_credentials() {
    let dir = std::env::temp_dir().join(format!("tern-passwd-scram-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    assert!(passwd(&file, "alice", "wonderland\n", &["--scram"]));
    assert!(!passwd(&file, "bob", "x\n", &["--scram", "--pbkdf2"]));
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("alice:$scram-sha-256$4096$"), "{text}");
    assert!(!text.contains("wonderland"));
    let users = PasswordFile::load(&file).expect("load");
    assert!(users.verify("alice", b"wonderland"));
    assert!(!users.verify("alice", b"looking-glass"));
    let state = tern_broker::auth::AuthState {
        passwords: Some(users),
        ..Default::default()
    };
    let credentials = state.scram_credentials("alice").expect("scram credentials");
    assert_eq!(credentials.iterations, 4096);
    assert_eq!(credentials.salt.len(), 16);
    let _ = std::fs::remove_dir_all(&dir);
}
