//! Authentication (user names and passwords from a `mosquitto_passwd` file) and
//! authorisation (a Mosquitto `acl_file`), configured in `[auth]`.
//!
//! - [`password`]: the password file, the hashes it may hold, and `tern passwd`.
//! - [`acl`]: the ACL file and the per-client checks.
//! - [`jwt`]: JSON Web Tokens (`[auth.jwt]`).
//! - [`callout`]: the HTTP callout (`[auth.http]`).
//! - [`login`]: the sources tried in `[auth] order` for one client.
//! - [`claims`]: ACL rules carried by a token or a callout answer, per user name.
//! - [`scram`]: SCRAM-SHA-256, the enhanced authentication method (MQTT 5 AUTH).
//!
//! [`AuthState`] is what one load of `[auth]` produced; the broker keeps it in an [`Auth`],
//! which can be swapped as a whole (for SIGHUP reload). A connection takes the state in force
//! at CONNECT: its password is checked against it, and its [`ClientAcl`] is built from it.
//! Subscriptions and bridge rings capture the [`ClientAcl`] they were granted under, so a
//! reload re-applies the ACL to them ([`crate::reload`]).

pub mod acl;
pub mod callout;
pub mod claims;
pub mod jwt;
pub mod login;
pub mod password;
pub mod scram;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tern_codec::ReasonCode;

use crate::config::{AuthConfig, AuthSource};

pub use self::login::{authenticate, Credentials, Granted};

pub use self::acl::{Access, AclFile, ClientAcl, SubscribeVerdict};
pub use self::password::{PasswordFile, PasswordHash};

/// A password or ACL file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct AuthError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl AuthError {
    pub(crate) fn new(path: &Path, line: Option<usize>, message: String) -> AuthError {
        AuthError {
            path: path.to_path_buf(),
            line,
            message,
        }
    }
}

/// Why a CONNECT was refused by authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user, wrong or missing password: CONNACK 0x86 (3.1.1: 0x04).
    BadCredentials,
    /// No user name and anonymous clients are not allowed: CONNACK 0x87 (3.1.1: 0x05).
    AnonymousRefused,
    /// The HTTP callout failed and `on_error = "deny"`: CONNACK 0x88 (3.1.1: 0x03).
    ServiceUnavailable,
}

impl LoginError {
    /// The CONNACK reason code (5.0 numbering).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            LoginError::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            LoginError::AnonymousRefused => ReasonCode::NOT_AUTHORIZED,
            LoginError::ServiceUnavailable => ReasonCode::SERVER_UNAVAILABLE,
        }
    }
}

/// One load of the `[auth]` configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthState {
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// Users and password hashes, when `password_file` is set.
    pub passwords: Option<PasswordFile>,
    /// Rules, when `acl_file` is set.
    pub acl: Option<AclFile>,
    /// The order the sources are tried in.
    pub order: Vec<AuthSource>,
    /// The token verifier, when `[auth.jwt]` is enabled.
    pub jwt: Option<jwt::JwtVerifier>,
    /// The HTTP callout, when `[auth.http]` is enabled.
    pub callout: Option<Arc<callout::HttpCallout>>,
    /// Whether the bridges accept `?token=user:password` (never with JWT on).
    pub allow_password_in_url: bool,
    /// ACL rules carried by logins, per user name; shared by every load (a reload keeps
    /// it: see [`AuthState::keep_claims_of`]).
    pub claims: Arc<claims::ClaimRegistry>,
}

impl AuthState {
    /// Loads the files `config` names (an empty path means none).
    ///
    /// # Errors
    /// [`AuthError`] naming the file, the line and what is wrong.
    pub fn load(config: &AuthConfig) -> Result<AuthState, AuthError> {
        let given = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        let passwords = given(&config.password_file)
            .map(|p| PasswordFile::load(&p))
            .transpose()?;
        let acl = given(&config.acl_file)
            .map(|p| AclFile::load(&p))
            .transpose()?;
        let jwt = config
            .jwt
            .enabled
            .then(|| jwt::JwtVerifier::load(&config.jwt))
            .transpose()?;
        let callout = config
            .http
            .enabled
            .then(|| Arc::new(callout::HttpCallout::new(&config.http)));
        let mut order: Vec<AuthSource> = Vec::new();
        for source in &config.order {
            if !order.contains(source) {
                order.push(*source);
            }
        }
        Ok(AuthState {
            allow_anonymous: config.allow_anonymous,
            passwords,
            acl,
            order,
            allow_password_in_url: config.allow_password_in_url && jwt.is_none(),
            jwt,
            callout,
            claims: Arc::default(),
        })
    }

    /// Takes over `old`'s record of carried ACL rules, so that a reload keeps the rules
    /// connected clients logged in with.
    pub fn keep_claims_of(&mut self, old: &AuthState) {
        self.claims = old.claims.clone();
    }

    /// Whether any source can check credentials (a password file, JWT, the callout).
    pub fn has_sources(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some() || self.callout.is_some()
    }

    /// A state that lets no client in and no message through: what a broker uses when its
    /// auth files cannot be loaded and it was started with [`crate::Broker::new`].
    pub fn deny_all() -> AuthState {
        AuthState {
            allow_anonymous: false,
            passwords: Some(PasswordFile::default()),
            acl: Some(AclFile::default()),
            order: crate::config::sources::default_order(),
            ..AuthState::default()
        }
    }

    /// The SCRAM credentials of `user`, when the password file stores them.
    pub fn scram_credentials(&self, user: &str) -> Option<scram::ScramCredentials> {
        match self.passwords.as_ref()?.get(user)? {
            PasswordHash::ScramSha256(credentials) => Some(credentials.clone()),
            _ => None,
        }
    }

    /// Whether SCRAM-SHA-256 is offered: there is a password file to check it against.
    pub fn offers_scram(&self) -> bool {
        self.passwords.is_some()
    }

    /// The ACL of one client: the ACL file's rules, with what its user's last login carried
    /// ([`claims::combine`]); `None` when nothing restricts it.
    pub fn client_acl(&self, client_id: &str, username: Option<&str>) -> Option<Arc<ClientAcl>> {
        let carried = username.and_then(|u| self.claims.get(u));
        claims::combine(self.acl.as_ref(), carried.as_deref(), client_id, username)
    }
}

/// The auth state in force, swappable as a whole.
#[derive(Debug)]
pub struct Auth {
    current: RwLock<Arc<AuthState>>,
    /// Bumped by every [`Auth::replace`], so connections notice a reload.
    generation: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// Starts with `state`.
    pub fn new(state: AuthState) -> Auth {
        Auth {
            current: RwLock::new(Arc::new(state)),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The state in force.
    pub fn current(&self) -> Arc<AuthState> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `state` in force for new connections; returns the previous one.
    pub fn replace(&self, state: AuthState) -> Arc<AuthState> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut *guard, Arc::new(state));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        previous
    }

    /// How many times the state has been replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(allow_anonymous: bool, with_file: bool) -> AuthState {
        let hash = password::encode_pbkdf2(b"pw", b"0123456789ab", 101);
        AuthState {
            allow_anonymous,
            passwords: with_file.then(|| {
                PasswordFile::parse(&format!("alice:{hash}\n"), Path::new("pw")).expect("parse")
            }),
            acl: None,
            order: crate::config::sources::default_order(),
            ..AuthState::default()
        }
    }

    /// Logs in through [`login::authenticate`] on a throwaway runtime.
    fn login(s: &AuthState, user: Option<&str>, pass: Option<&[u8]>) -> Result<(), LoginError> {
        let credentials = Credentials {
            client_id: "c".into(),
            username: user.map(tern_codec::ByteStr::from),
            password: pass.map(bytes::Bytes::copy_from_slice),
            peer: None,
            protocol: "mqtt5",
        };
        let metrics = crate::metrics::Metrics::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(authenticate(Arc::new(s.clone()), credentials, &metrics))
            .map(|_| ())
    }

    #[test]
    fn login_rules() {
        let s = state(false, true);
        assert_eq!(login(&s, None, None), Err(LoginError::AnonymousRefused));
        assert_eq!(login(&s, Some("alice"), Some(b"pw")), Ok(()));
        assert_eq!(
            login(&s, Some("alice"), Some(b"px")),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            login(&s, Some("alice"), None),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            login(&s, Some("bob"), Some(b"pw")),
            Err(LoginError::BadCredentials)
        );
        let s = state(true, true);
        assert_eq!(login(&s, None, None), Ok(()));
        assert_eq!(
            login(&s, Some("bob"), Some(b"pw")),
            Err(LoginError::BadCredentials)
        );
        let s = state(true, false);
        assert_eq!(login(&s, Some("anyone"), None), Ok(()));
        let s = state(false, false);
        assert_eq!(
            login(&s, Some("anyone"), Some(b"x")),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            LoginError::AnonymousRefused.reason_code().to_v3_connack(),
            0x05
        );
        assert_eq!(
            LoginError::BadCredentials.reason_code().to_v3_connack(),
            0x04
        );
    }

    #[test]
    fn deny_all_lets_nobody_in() {
        let s = AuthState::deny_all();
        assert!(login(&s, None, None).is_err());
        assert!(login(&s, Some("a"), Some(b"b")).is_err());
        let acl = s.client_acl("c", None).expect("acl");
        assert!(!acl.allows_read("a"));
    }

    #[test]
    fn error_display_has_file_and_line() {
        let e = AuthError::new(Path::new("/etc/tern/acl"), Some(3), "bad".into());
        assert_eq!(e.to_string(), "/etc/tern/acl:3: bad");
        let e = AuthError::new(Path::new("/x"), None, "cannot read".into());
        assert_eq!(e.to_string(), "/x: cannot read");
    }

    #[test]
    fn swap() {
        let auth = Auth::new(state(true, false));
        assert!(auth.current().allow_anonymous);
        let old = auth.replace(state(false, false));
        assert!(old.allow_anonymous);
        assert!(!auth.current().allow_anonymous);
    }
}
