//! Authentication (user names and passwords from a `mosquitto_passwd` file) and
//! authorisation (a Mosquitto `acl_file`), configured in `[auth]`.
//!
//! - [`password`]: the password file, the hashes it may hold, and `tern passwd`.
//! - [`acl`]: the ACL file and the per-client checks.
//! - [`scram`]: SCRAM-SHA-256, the enhanced authentication method (MQTT 5 AUTH).
//!
//! [`AuthState`] is what one load of `[auth]` produced; the broker keeps it in an [`Auth`],
//! which can be swapped as a whole (for SIGHUP reload). A connection takes the state in force
//! at CONNECT: its password is checked against it, and its [`ClientAcl`] is built from it.
//! Subscriptions and bridge rings capture the [`ClientAcl`] they were granted under, so a
//! reload re-applies the ACL to them ([`crate::reload`]).

pub mod acl;
pub mod password;
pub mod scram;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tern_codec::{ByteStr, ReasonCode};

use crate::config::AuthConfig;

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
}

impl LoginError {
    /// The CONNACK reason code (5.0 numbering).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            LoginError::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            LoginError::AnonymousRefused => ReasonCode::NOT_AUTHORIZED,
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
        Ok(AuthState {
            allow_anonymous: config.allow_anonymous,
            passwords,
            acl,
        })
    }

    /// A state that lets no client in and no message through: what a broker uses when its
    /// auth files cannot be loaded and it was started with [`crate::Broker::new`].
    pub fn deny_all() -> AuthState {
        AuthState {
            allow_anonymous: false,
            passwords: Some(PasswordFile::default()),
            acl: Some(AclFile::default()),
        }
    }

    /// Checks CONNECT's user name and password.
    ///
    /// No user name: allowed only with `allow_anonymous`. A user name with a password file:
    /// the user must be in it and the password must match. A user name without a password
    /// file: nothing to check it against, so allowed only with `allow_anonymous` (the name
    /// then only selects an ACL section, as in Mosquitto).
    ///
    /// # Errors
    /// The [`LoginError`] to answer with.
    pub fn login(&self, username: Option<&str>, password: Option<&[u8]>) -> Result<(), LoginError> {
        let Some(user) = username else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(LoginError::AnonymousRefused)
            };
        };
        match (&self.passwords, password) {
            (None, _) if self.allow_anonymous => Ok(()),
            (Some(file), Some(password)) if file.verify(user, password) => Ok(()),
            _ => Err(LoginError::BadCredentials),
        }
    }

    /// Whether [`AuthState::login`] for `username` would run an expensive hash (Argon2id,
    /// many PBKDF2 iterations), so should run off the async workers.
    pub fn login_is_expensive(&self, username: Option<&str>) -> bool {
        match (&self.passwords, username) {
            (Some(file), Some(user)) => file.get(user).is_some_and(PasswordHash::is_expensive),
            _ => false,
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

    /// The ACL of one client, or `None` when no ACL file is configured (everything allowed).
    pub fn client_acl(&self, client_id: &str, username: Option<&str>) -> Option<Arc<ClientAcl>> {
        self.acl
            .as_ref()
            .map(|file| Arc::new(file.for_client(client_id, username)))
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

/// Checks CONNECT's credentials against `state`, running expensive hashes on the blocking
/// pool so a CONNECT does not stall other connections.
///
/// # Errors
/// The [`LoginError`] to answer with.
pub async fn authenticate(
    state: Arc<AuthState>,
    username: Option<ByteStr>,
    password: Option<Bytes>,
) -> Result<(), LoginError> {
    if !state.login_is_expensive(username.as_deref()) {
        return state.login(username.as_deref(), password.as_deref());
    }
    tokio::task::spawn_blocking(move || state.login(username.as_deref(), password.as_deref()))
        .await
        .unwrap_or(Err(LoginError::BadCredentials))
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
        }
    }

    #[test]
    fn login_rules() {
        let s = state(false, true);
        assert_eq!(s.login(None, None), Err(LoginError::AnonymousRefused));
        assert_eq!(s.login(Some("alice"), Some(b"pw")), Ok(()));
        assert_eq!(
            s.login(Some("alice"), Some(b"px")),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            s.login(Some("alice"), None),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            s.login(Some("bob"), Some(b"pw")),
            Err(LoginError::BadCredentials)
        );
        let s = state(true, true);
        assert_eq!(s.login(None, None), Ok(()));
        assert_eq!(
            s.login(Some("bob"), Some(b"pw")),
            Err(LoginError::BadCredentials)
        );
        let s = state(true, false);
        assert_eq!(s.login(Some("anyone"), None), Ok(()));
        let s = state(false, false);
        assert_eq!(
            s.login(Some("anyone"), Some(b"x")),
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
        assert!(s.login(None, None).is_err());
        assert!(s.login(Some("a"), Some(b"b")).is_err());
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
