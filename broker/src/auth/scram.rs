//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), the server side, as MQTT 5 enhanced
//! authentication carries it (section 4.12, the way EMQX does): the client-first message
//! in CONNECT's Authentication Data, server-first in AUTH 0x18, client-final in AUTH 0x18,
//! server-final in CONNACK (or in AUTH 0x00 after a re-authentication).
//!
//! Stored credentials are RFC 5802's StoredKey and ServerKey with the salt and iteration
//! count ([`ScramCredentials`], `$scram-sha-256$...` in the password file): the password is
//! never stored, and neither is anything that logs in by itself (a stolen file does not
//! give the ClientKey). The proof is checked in constant time; an unknown user gets a
//! made-up salt that stays the same for that name, and fails at the proof like a wrong
//! password, so that the exchange does not tell which users exist.
//!
//! Not supported: channel binding (a client that requires it, `p=`, is refused), SASLprep
//! normalisation of names and passwords (they are taken as UTF-8 bytes: the same for ASCII),
//! and mandatory extensions (`m=`). This module has no I/O: the connection drives it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";
/// Iterations `tern passwd --scram` uses: RFC 7677's recommended minimum.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length written by `tern passwd --scram`.
const SALT_LEN: usize = 16;
/// The prefix of stored credentials in a password file.
const PREFIX: &str = "$scram-sha-256$";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// What the server keeps of a SCRAM user: never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// H(ClientKey): checks the client's proof.
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"): signs the server-final message.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramCredentials(i={}, <redacted>)", self.iterations)
    }
}

impl ScramCredentials {
    /// Derives the credentials of `password` (RFC 5802 section 3).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations.max(1), &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramCredentials {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Credentials for `password` with a random salt and [`DEFAULT_ITERATIONS`].
    ///
    /// # Errors
    /// The system random source failed.
    pub fn generate(password: &[u8]) -> std::io::Result<ScramCredentials> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(ScramCredentials::derive(
            password,
            &salt,
            DEFAULT_ITERATIONS,
        ))
    }

    /// `$scram-sha-256$<iterations>$<salt>$<StoredKey>$<ServerKey>` (standard base64).
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}{}${}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Whether `encoded` is in the stored SCRAM format (to choose the parser).
    pub fn is_encoded(encoded: &str) -> bool {
        encoded.starts_with(PREFIX)
    }

    /// Parses [`ScramCredentials::encode`]'s format.
    ///
    /// # Errors
    /// What is wrong, without echoing the keys.
    pub fn parse(encoded: &str) -> Result<ScramCredentials, String> {
        let rest = encoded
            .strip_prefix(PREFIX)
            .ok_or("not a $scram-sha-256$ entry")?;
        let [iterations, salt, stored, server] = rest.split('$').collect::<Vec<_>>()[..] else {
            return Err("a $scram-sha-256$ entry has four `$`-separated fields".into());
        };
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or("iteration count is not a positive integer")?;
        let decode = |what: &str, text: &str| {
            B64.decode(text)
                .map_err(|e| format!("{what} is not valid base64: {e}"))
        };
        let key = |what: &str, text: &str| -> Result<[u8; 32], String> {
            decode(what, text)?
                .try_into()
                .map_err(|_| format!("{what} is not 32 bytes"))
        };
        let salt = decode("salt", salt)?;
        if salt.is_empty() {
            return Err("empty salt".into());
        }
        Ok(ScramCredentials {
            iterations,
            salt,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }

    /// Whether `password` is this user's (for a plain CONNECT password), in constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let derived = ScramCredentials::derive(password, &self.salt, self.iterations);
        bool::from(derived.stored_key.ct_eq(&self.stored_key))
    }
}

/// Why a SCRAM exchange failed. Each ends the exchange; the connection answers CONNACK
/// 0x86 (or DISCONNECT 0x87 for a re-authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message did not follow RFC 5802's grammar.
    #[error("malformed SCRAM message")]
    Malformed,
    /// The client requires channel binding (`p=`), which is not offered.
    #[error("channel binding not supported")]
    ChannelBinding,
    /// An authorization identity other than the user name.
    #[error("authorization identity differs from the user name")]
    Authzid,
    /// The client-final nonce or channel binding data is not what was agreed.
    #[error("nonce or channel binding mismatch")]
    Mismatch,
    /// Wrong proof, or an unknown user.
    #[error("invalid proof")]
    InvalidProof,
}

/// One SCRAM exchange after the server-first message, waiting for client-final.
pub struct ServerExchange {
    username: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credentials: ScramCredentials,
    /// False for an unknown user: the exchange runs to the proof and fails there.
    known: bool,
}

impl std::fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerExchange")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A fresh server nonce: 18 random bytes in base64 (printable, no comma).
///
/// # Errors
/// The system random source failed.
pub fn random_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 18];
    getrandom::getrandom(&mut bytes)?;
    Ok(B64.encode(bytes))
}

/// A per-process secret for made-up credentials of unknown users.
fn mock_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        // Without randomness the made-up salts are predictable, which only tells that a
        // name is unknown; the exchange still fails.
        let _ = getrandom::getrandom(&mut secret);
        secret
    })
}

fn mock_credentials(username: &str) -> ScramCredentials {
    let secret = mock_secret();
    let salt = hmac(secret, format!("salt:{username}").as_bytes());
    ScramCredentials {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..SALT_LEN].to_vec(),
        stored_key: hmac(secret, format!("stored:{username}").as_bytes()),
        server_key: hmac(secret, format!("server:{username}").as_bytes()),
    }
}

/// `saslname` of RFC 5802: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of attribute `key` (`k=value`) in `part`.
fn attribute(part: Option<&str>, key: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(key))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed)
}

/// The user name a client-first message names (to look up before [`ServerExchange::start`]).
///
/// # Errors
/// [`ScramError`] for a message that does not parse.
pub fn client_first_username(client_first: &[u8]) -> Result<String, ScramError> {
    Ok(parse_client_first(client_first)?.1)
}

/// Splits client-first into (gs2 header, user name, client nonce, client-first-bare).
fn parse_client_first(message: &[u8]) -> Result<(String, String, String, String), ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed)?;
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().ok_or(ScramError::Malformed)?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed),
    }
    let authzid = parts.next().ok_or(ScramError::Malformed)?;
    let bare = parts.next().ok_or(ScramError::Malformed)?;
    let mut fields = bare.split(',');
    let first = fields.next();
    if first.is_some_and(|f| f.starts_with("m=")) {
        return Err(ScramError::Malformed); // a mandatory extension we do not know
    }
    let username = decode_saslname(attribute(first, 'n')?)?;
    let nonce = attribute(fields.next(), 'r')?;
    if username.is_empty() || nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ScramError::Malformed);
    }
    if !authzid.is_empty() {
        let authzid = decode_saslname(attribute(Some(authzid), 'a')?)?;
        if authzid != username {
            return Err(ScramError::Authzid);
        }
    }
    let gs2_header = format!("{flag},{authzid},");
    Ok((gs2_header, username, nonce.to_string(), bare.to_string()))
}

impl ServerExchange {
    /// Reads the client-first message and answers server-first, with the credentials
    /// `lookup` finds for the user (made-up ones for an unknown user) and `server_nonce`.
    ///
    /// # Errors
    /// [`ScramError`] for a message that does not parse or that requires channel binding.
    pub fn start(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        server_nonce: &str,
    ) -> Result<(ServerExchange, String), ScramError> {
        let (gs2_header, username, client_nonce, client_first_bare) =
            parse_client_first(client_first)?;
        let found = lookup(&username);
        let known = found.is_some();
        let credentials = found.unwrap_or_else(|| mock_credentials(&username));
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credentials.salt),
            credentials.iterations
        );
        let exchange = ServerExchange {
            username,
            gs2_header,
            client_first_bare,
            server_first: server_first.clone(),
            nonce,
            credentials,
            known,
        };
        Ok((exchange, server_first))
    }

    /// The user name the client authenticates as.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks the client-final message; on success returns the server-final message
    /// (`v=` with the server signature).
    ///
    /// # Errors
    /// [`ScramError`]: malformed, a nonce or channel-binding mismatch, or a wrong proof.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let binding = attribute(fields.next(), 'c')?;
        let nonce = attribute(fields.next(), 'r')?;
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        if binding != B64.encode(&self.gs2_header) || nonce != self.nonce {
            return Err(ScramError::Mismatch);
        }
        if proof.len() != 32 {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac(&self.credentials.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let matches = bool::from(stored.ct_eq(&self.credentials.stored_key));
        if !(matches && self.known) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> ScramCredentials {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        ScramCredentials::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc_7677_test_vector() {
        let (exchange, server_first) = ServerExchange::start(
            CLIENT_FIRST.as_bytes(),
            |user| (user == "user").then(pencil),
            SERVER_NONCE,
        )
        .expect("start");
        assert_eq!(server_first, SERVER_FIRST);
        assert_eq!(exchange.username(), "user");
        assert_eq!(
            exchange.finish(CLIENT_FINAL.as_bytes()).as_deref(),
            Ok(SERVER_FINAL)
        );
    }

    #[test]
    fn wrong_proof_unknown_user_and_mismatches_fail() {
        let start = |first: &str| {
            ServerExchange::start(
                first.as_bytes(),
                |u| (u == "user").then(pencil),
                SERVER_NONCE,
            )
        };
        let (exchange, _) = start(CLIENT_FIRST).expect("start");
        let wrong = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            exchange.finish(wrong.as_bytes()),
            Err(ScramError::InvalidProof)
        );
        let other_nonce = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(
            exchange.finish(other_nonce.as_bytes()),
            Err(ScramError::Mismatch)
        );
        // An unknown user gets a server-first like anyone (same salt every time) and fails.
        let (unknown, first_a) = start("n,,n=nobody,r=abc").expect("start");
        let (_, first_b) = start("n,,n=nobody,r=abc").expect("start");
        assert_eq!(first_a, first_b);
        assert!(first_a.contains(",i=4096"));
        let forged = format!("c=biws,r=abc{SERVER_NONCE},p={}", B64.encode([0u8; 32]));
        assert_eq!(
            unknown.finish(forged.as_bytes()),
            Err(ScramError::InvalidProof)
        );
        assert_eq!(
            start("p=tls-unique,,n=user,r=x").err(),
            Some(ScramError::ChannelBinding)
        );
        assert_eq!(
            start("n,a=admin,n=user,r=x").err(),
            Some(ScramError::Authzid)
        );
        assert_eq!(start("n,,r=x").err(), Some(ScramError::Malformed));
        assert_eq!(start("n,,n=a=2Cb=3D,r=x").expect("ok").0.username(), "a,b=");
        assert_eq!(start("n,,n=a=2,r=x").err(), Some(ScramError::Malformed));
    }

    #[test]
    fn stored_format_round_trips_and_verifies_passwords() {
        let credentials = pencil();
        let encoded = credentials.encode();
        assert!(ScramCredentials::is_encoded(&encoded));
        let parsed = ScramCredentials::parse(&encoded).expect("parse");
        assert_eq!(parsed, credentials);
        assert!(parsed.verify_password(b"pencil"));
        assert!(!parsed.verify_password(b"pencil2"));
        assert!(!format!("{parsed:?}").contains(&B64.encode(parsed.stored_key)));
        for bad in [
            "$scram-sha-256$x$AAAA$AAAA$AAAA",
            "$scram-sha-256$4096$AAAA$AAAA",
            "$scram-sha-256$4096$$AAAA$AAAA",
        ] {
            assert!(ScramCredentials::parse(bad).is_err(), "{bad}");
        }
    }
}
