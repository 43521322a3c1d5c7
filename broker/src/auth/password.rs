//! Password files in the format of Mosquitto's `mosquitto_passwd`, and the `tern passwd`
//! command that writes them.
//!
//! One user per line, `username:hash`. Hashes understood:
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, what `mosquitto_passwd` 2.x writes
//!   by default (101 iterations, 12-byte salt); salt and hash in standard padded base64.
//! - `$6$<salt>$<hash>`: SHA-512 over the password followed by the salt bytes, what
//!   Mosquitto 1.x wrote (and `mosquitto_passwd -H sha512` still does). This is *not*
//!   crypt(3)'s sha512-crypt, which shares the prefix.
//! - `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`: an Argon2id PHC string; what
//!   `tern passwd` writes by default.
//! - `$scram-sha-256$<iterations>$<salt>$<StoredKey>$<ServerKey>`: SCRAM-SHA-256
//!   credentials ([`super::scram`]), written by `tern passwd --scram`; they log in with
//!   enhanced authentication (method `SCRAM-SHA-256`) and with a plain password alike.
//!
//! Blank lines and lines starting with `#` are ignored. Comparisons are constant-time, and
//! nothing here prints a hash or a password ([`PasswordHash`]'s `Debug` is redacted).

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::scram::ScramCredentials;
use super::AuthError;

/// Iterations `tern passwd --pbkdf2` uses: Mosquitto 2.x's own default, so the file reads
/// the same in both brokers.
pub const MOSQUITTO_PBKDF2_ITERATIONS: u32 = 101;

/// Salt length of `$6$` and `$7$` hashes written here (Mosquitto's is 12 bytes too).
const SALT_LEN: usize = 12;

/// Length of a SHA-512 digest: the only hash length `$6$` and `$7$` can have.
const SHA512_LEN: usize = 64;

/// Base64 as Mosquitto writes it (standard alphabet, padded), read leniently about padding.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 {
        /// Salt bytes.
        salt: Vec<u8>,
        /// The 64-byte digest.
        hash: Vec<u8>,
    },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iteration count.
        iterations: u32,
        /// Salt bytes.
        salt: Vec<u8>,
        /// The 64-byte derived key.
        hash: Vec<u8>,
    },
    /// `$argon2id$...`: a validated Argon2id PHC string.
    Argon2id(String),
    /// `$scram-sha-256$...`: SCRAM credentials.
    ScramSha256(ScramCredentials),
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            PasswordHash::Sha512 { .. } => "$6$",
            PasswordHash::Pbkdf2Sha512 { .. } => "$7$",
            PasswordHash::Argon2id(_) => "$argon2id$",
            PasswordHash::ScramSha256(_) => "$scram-sha-256$",
        };
        write!(f, "PasswordHash({kind} <redacted>)")
    }
}

impl PasswordHash {
    /// Parses the part of a password-file line after `username:`.
    ///
    /// # Errors
    /// What is wrong with it, without echoing the hash.
    pub fn parse(encoded: &str) -> Result<PasswordHash, String> {
        if ScramCredentials::is_encoded(encoded) {
            return ScramCredentials::parse(encoded).map(PasswordHash::ScramSha256);
        }
        if encoded.starts_with("$argon2") {
            let phc = argon2::PasswordHash::new(encoded)
                .map_err(|e| format!("invalid argon2 PHC string: {e}"))?;
            if phc.algorithm != argon2::Algorithm::Argon2id.ident() {
                return Err(format!(
                    "unsupported algorithm `{}` (only argon2id)",
                    phc.algorithm
                ));
            }
            if phc.hash.is_none() || phc.salt.is_none() {
                return Err("argon2id string without salt or hash".into());
            }
            return Ok(PasswordHash::Argon2id(encoded.to_string()));
        }
        let parts: Vec<&str> = encoded.split('$').collect();
        let decode = |what: &str, text: &str| {
            B64.decode(text)
                .map_err(|e| format!("{what} is not valid base64: {e}"))
        };
        let check = |salt: &[u8], hash: &[u8]| {
            if salt.is_empty() {
                return Err("empty salt".to_string());
            }
            if hash.len() != SHA512_LEN {
                return Err(format!(
                    "hash is {} bytes, a SHA-512 hash is {SHA512_LEN}",
                    hash.len()
                ));
            }
            Ok(())
        };
        match parts.as_slice() {
            ["", "6", salt, hash] => {
                let salt = decode("salt", salt)?;
                let hash = decode("hash", hash)?;
                check(&salt, &hash)?;
                Ok(PasswordHash::Sha512 { salt, hash })
            }
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 =
                    iterations.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("iteration count `{iterations}` is not a positive integer")
                    })?;
                let salt = decode("salt", salt)?;
                let hash = decode("hash", hash)?;
                check(&salt, &hash)?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
            ["", "6" | "7", ..] => Err("wrong number of `$`-separated fields".into()),
            _ if !encoded.starts_with('$') => Err(
                "not a hashed password (plain-text passwords are not accepted; hash the file \
                 with `tern passwd` or `mosquitto_passwd -U`)"
                    .into(),
            ),
            _ => Err("unknown hash type (expected $6$, $7$, $argon2id$ or $scram-sha-256$)".into()),
        }
    }

    /// Whether `password` matches, in constant time with respect to the stored hash.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                use sha2::Digest as _;
                let mut digest = sha2::Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.as_slice().ct_eq(hash))
            }
            PasswordHash::Argon2id(phc) => {
                use argon2::PasswordVerifier as _;
                // Parameters come from the string; the digest comparison inside is
                // constant-time (password_hash::Output).
                match argon2::PasswordHash::new(phc) {
                    Ok(parsed) => argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok(),
                    Err(_) => false,
                }
            }
            PasswordHash::ScramSha256(credentials) => credentials.verify_password(password),
        }
    }

    /// Whether verifying this hash is expensive enough to move off the async workers.
    pub fn is_expensive(&self) -> bool {
        match self {
            PasswordHash::Sha512 { .. } => false,
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => *iterations > 1000,
            PasswordHash::Argon2id(_) => true,
            PasswordHash::ScramSha256(c) => c.iterations > 1000,
        }
    }
}

/// A loaded password file: user name -> hash.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`AuthError`] naming the file, the line and what is wrong.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::new(path, None, format!("cannot read: {e}")))?;
        PasswordFile::parse(&text, path)
    }

    /// Parses the text of a password file; `path` is only used in errors.
    ///
    /// # Errors
    /// [`AuthError`] naming the line and what is wrong.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AuthError::new(path, Some(line_no), message);
            let Some((user, encoded)) = line.split_once(':') else {
                return Err(err("expected `username:hash`".into()));
            };
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = PasswordHash::parse(encoded.trim_end())
                .map_err(|m| err(format!("user `{user}`: {m}")))?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err(err(format!("user `{user}` appears twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    /// The stored hash of `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.users.get(user).is_some_and(|h| h.verify(password))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn random_salt<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut salt = [0u8; N];
    getrandom::getrandom(&mut salt).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(salt)
}

/// Hashes `password` as an Argon2id PHC string with the `argon2` crate's default parameters
/// (19 MiB, 2 passes, 1 lane) and a random 16-byte salt.
///
/// # Errors
/// The system random source failed.
pub fn hash_argon2id(password: &[u8]) -> std::io::Result<String> {
    use argon2::PasswordHasher as _;
    let salt_bytes: [u8; 16] = random_salt()?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt_bytes)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Hashes `password` in Mosquitto's `$7$` format (PBKDF2-HMAC-SHA512) with a random 12-byte
/// salt.
///
/// # Errors
/// The system random source failed.
pub fn hash_pbkdf2(password: &[u8], iterations: u32) -> std::io::Result<String> {
    let salt: [u8; SALT_LEN] = random_salt()?;
    Ok(encode_pbkdf2(password, &salt, iterations))
}

/// `$7$` encoding with a given salt (tests, and [`hash_pbkdf2`]).
pub fn encode_pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; SHA512_LEN];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations.max(1), &mut out);
    format!(
        "$7${}${}${}",
        iterations.max(1),
        B64.encode(salt),
        B64.encode(out)
    )
}

/// `$6$` encoding with a given salt (tests; new files should use `$7$` or Argon2id).
pub fn encode_sha512(password: &[u8], salt: &[u8]) -> String {
    use sha2::Digest as _;
    let mut digest = sha2::Sha512::new();
    digest.update(password);
    digest.update(salt);
    format!("$6${}${}", B64.encode(salt), B64.encode(digest.finalize()))
}

/// Checks a user name can be stored in a password file.
fn check_username(user: &str) -> std::io::Result<()> {
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a user name must be non-empty and contain no `:` or line break",
        ));
    }
    Ok(())
}

/// Adds `user` with the already encoded `hash` to the password file at `path`, or replaces
/// that user's line; every other line is kept as it was. The file is written to a temporary
/// file in the same directory and renamed over the old one, so readers see the old or the
/// new file, never a partial one. A new file is created with mode 0600; an existing file
/// keeps its mode.
///
/// # Errors
/// An invalid user name or hash, or an I/O error.
pub fn write_entry(path: &Path, user: &str, hash: &str) -> std::io::Result<()> {
    check_username(user)?;
    PasswordHash::parse(hash)
        .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
    let (old, mode) = match std::fs::read_to_string(path) {
        Ok(text) => {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
            (text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(e),
    };
    let new_line = format!("{user}:{hash}");
    let mut replaced = false;
    let mut out = String::with_capacity(old.len() + new_line.len() + 1);
    for line in old.lines() {
        if !replaced && line.split_once(':').is_some_and(|(u, _)| u == user) {
            out.push_str(&new_line);
            replaced = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&new_line);
        out.push('\n');
    }
    write_atomically(path, out.as_bytes(), mode)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tern-tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a new password for `tern passwd`: one line from standard input when it is not a
/// terminal; otherwise a prompt on the terminal, without echo, asked twice.
///
/// # Errors
/// Nothing could be read, the two entries differ, or the password is empty.
pub fn read_new_password() -> std::io::Result<String> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Reenter password: ")?;
        if first != second {
            return Err(invalid("passwords do not match"));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.truncate(line.trim_end_matches(['\n', '\r']).len());
        line
    };
    if password.is_empty() {
        return Err(invalid("empty password"));
    }
    Ok(password)
}

/// How `tern passwd` stores a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// Argon2id (the default).
    Argon2id,
    /// Mosquitto's `$7$` PBKDF2-SHA512, for a file Mosquitto must read too.
    Pbkdf2,
    /// SCRAM-SHA-256 credentials, for enhanced authentication (and plain passwords).
    Scram,
}

/// `tern passwd FILE USER [--pbkdf2 | --scram]`: reads a password ([`read_new_password`])
/// and adds or updates `user` in `file` ([`write_entry`]), stored as `kind` says.
///
/// # Errors
/// Reading the password, hashing or writing the file failed.
pub fn passwd_command(file: &Path, user: &str, kind: HashKind) -> std::io::Result<()> {
    check_username(user)?;
    let password = read_new_password()?;
    let hash = match kind {
        HashKind::Pbkdf2 => hash_pbkdf2(password.as_bytes(), MOSQUITTO_PBKDF2_ITERATIONS)?,
        HashKind::Argon2id => hash_argon2id(password.as_bytes())?,
        HashKind::Scram => ScramCredentials::generate(password.as_bytes())?.encode(),
    };
    write_entry(file, user, &hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `mosquitto_passwd` 2.0.11: `-b` (default, $7$) and `-H sha512 -b` ($6$).
    const MOSQ_7: &str = "$7$101$XaMFJYdx+2mcMcSJ$xabLAds0lu9nRbfLsEUcqtA4dXeIqr3e3Fg8eL/3atO38KHNCo2iau/KaYrEosoLBY5CTz0bJw/gWJ0k4nH3OQ==";
    const MOSQ_6: &str = "$6$4Y98Uwgnt/YFI9+X$5eSBNRMex0IVubWwWsEqbUo/oUOLPo7OtxefcXfYuIat9+T5hgUMboMESd6KhJEEYLm/ab66+lQfrKBLrvt/Fw==";

    #[test]
    fn mosquitto_pbkdf2_line_verifies() {
        let h = PasswordHash::parse(MOSQ_7).expect("parse");
        assert!(matches!(
            h,
            PasswordHash::Pbkdf2Sha512 {
                iterations: 101,
                ..
            }
        ));
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"secret2"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn mosquitto_sha512_line_verifies() {
        let h = PasswordHash::parse(MOSQ_6).expect("parse");
        assert!(h.verify(b"hunter2"));
        assert!(!h.verify(b"hunter3"));
    }

    #[test]
    fn encoders_round_trip() {
        let salt = [7u8; 12];
        let p7 = encode_pbkdf2(b"pw", &salt, 101);
        assert!(PasswordHash::parse(&p7).expect("7").verify(b"pw"));
        let p6 = encode_sha512(b"pw", &salt);
        assert!(PasswordHash::parse(&p6).expect("6").verify(b"pw"));
        let a = hash_argon2id(b"pw").expect("argon2");
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        let h = PasswordHash::parse(&a).expect("argon2 parse");
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pW"));
        assert!(h.is_expensive());
    }

    #[test]
    fn debug_is_redacted() {
        let h = PasswordHash::parse(MOSQ_7).expect("parse");
        let shown = format!("{h:?}");
        assert!(!shown.contains("XaMFJ"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let path = Path::new("pw");
        for (text, needle) in [
            ("alice:plain", "plain-text"),
            ("alice", "username:hash"),
            ("a:$6$abc", "fields"),
            ("a:$7$x$AAAA$AAAA", "iteration"),
            ("a:$6$AAAA$AAAA", "SHA-512"),
            ("a:$6$@@@$AAAA", "base64"),
            ("a:$5$x$y", "unknown hash"),
            (
                "a:$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "argon2id",
            ),
        ] {
            let err = PasswordFile::parse(&format!("# c\n\n{text}\n"), path)
                .expect_err(text)
                .to_string();
            assert!(err.starts_with("pw:3: "), "{err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
        let dup = format!("a:{MOSQ_6}\na:{MOSQ_7}\n");
        let err = PasswordFile::parse(&dup, path)
            .expect_err("dup")
            .to_string();
        assert!(err.contains("pw:2:") && err.contains("twice"), "{err}");
    }

    #[test]
    fn file_verifies_users() {
        let text = format!("alice:{MOSQ_7}\r\nbob:{MOSQ_6}\n");
        let f = PasswordFile::parse(&text, Path::new("pw")).expect("parse");
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"secret"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(!f.verify("bob", b"secret"));
        assert!(!f.verify("carol", b"secret"));
    }

    #[test]
    fn write_entry_adds_and_replaces() {
        let dir = std::env::temp_dir().join(format!("tern-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("passwd");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("# keep me\nbob:{MOSQ_6}\n")).expect("seed");
        let a1 = encode_pbkdf2(b"one", b"saltsaltsalt", 101);
        write_entry(&path, "alice", &a1).expect("add");
        let a2 = encode_pbkdf2(b"two", b"saltsaltsalt", 101);
        write_entry(&path, "alice", &a2).expect("replace");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("# keep me\nbob:{MOSQ_6}\nalice:{a2}\n"));
        let f = PasswordFile::load(&path).expect("load");
        assert!(f.verify("alice", b"two"));
        assert!(!f.verify("alice", b"one"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(write_entry(&path, "a:b", &a1).is_err());
        assert!(write_entry(&path, "c", "plain").is_err());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tern-tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
