//! The keys of the authentication sources beyond the password file (`[auth.jwt]`,
//! `[auth.http]`, the order they are tried in) and of the admin API (`[admin]`).
//!
//! Each section has serde defaults, so a configuration file may give only the keys it
//! changes (a given `[auth.jwt]` table replaces the default one whole). This module owns the
//! keys and their validation, not what the sources do ([`crate::auth`], [`crate::http`]).

use std::path::PathBuf;

use serde::Deserialize;

/// One authentication source, as named in `[auth] order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// The `mosquitto_passwd` file (`password_file`).
    PasswordFile,
    /// JSON Web Tokens (`[auth.jwt]`).
    Jwt,
    /// The HTTP callout (`[auth.http]`).
    Http,
}

impl AuthSource {
    /// The name used in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            AuthSource::PasswordFile => "password_file",
            AuthSource::Jwt => "jwt",
            AuthSource::Http => "http",
        }
    }
}

/// The order tried when `[auth] order` is not given.
pub fn default_order() -> Vec<AuthSource> {
    vec![AuthSource::PasswordFile, AuthSource::Jwt, AuthSource::Http]
}

/// JWT signature algorithms accepted (`none` never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 with `secret_file`.
    HS256,
    /// HMAC SHA-384 with `secret_file`.
    HS384,
    /// HMAC SHA-512 with `secret_file`.
    HS512,
    /// RSA PKCS#1 v1.5 SHA-256 with `public_key_file`.
    RS256,
    /// ECDSA P-256 SHA-256 with `public_key_file`.
    ES256,
}

impl JwtAlgorithm {
    /// Whether the key is a shared secret (HS*), not a public key.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// How ACL rules carried by a token (or an HTTP callout answer) combine with the ACL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAclMode {
    /// The carried rules are the client's whole ACL.
    Replace,
    /// The carried rules are added to the ACL file's (whose `deny` lines still win).
    Add,
}

/// `[auth.jwt]`: JSON Web Tokens in the MQTT password field and on the HTTP bridges.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Whether tokens are accepted.
    pub enabled: bool,
    /// The one algorithm accepted: HS256/384/512, RS256 or ES256.
    pub algorithm: JwtAlgorithm,
    /// HS*: a file holding the shared secret (trailing whitespace ignored).
    pub secret_file: PathBuf,
    /// RS256/ES256: a PEM public key or a JWKS (JSON) file; re-read on reload.
    pub public_key_file: PathBuf,
    /// When not empty, the `aud` claim must contain it.
    pub audience: String,
    /// When not empty, the `iss` claim must equal it.
    pub issuer: String,
    /// The claim that names the user (the MQTT user name, when given, must equal it).
    pub username_claim: String,
    /// The claim holding ACL rules: `{"publish": [..], "subscribe": [..]}` with `%c`/`%u`.
    pub acl_claim: String,
    /// How claim ACL rules combine with the ACL file.
    pub acl_mode: ClaimAclMode,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Whether the HTTP bridges accept `?access_token=` (for `EventSource`, which cannot
    /// set headers). A token in a URL may end up in proxy logs: keep tokens short-lived.
    pub access_token_in_url: bool,
}

impl Default for JwtConfig {
    fn default() -> JwtConfig {
        JwtConfig {
            enabled: false,
            algorithm: JwtAlgorithm::HS256,
            secret_file: PathBuf::new(),
            public_key_file: PathBuf::new(),
            audience: String::new(),
            issuer: String::new(),
            username_claim: "sub".into(),
            acl_claim: "acl".into(),
            acl_mode: ClaimAclMode::Replace,
            leeway_secs: 30,
            access_token_in_url: true,
        }
    }
}

/// What the HTTP callout does when the service cannot be reached or answers badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalloutFailure {
    /// Refuse the client.
    Deny,
    /// Go on to the next source in `[auth] order`.
    Next,
}

/// `[auth.http]`: ask an HTTP service whether a client may connect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// Whether the callout is used.
    pub enabled: bool,
    /// The `http://host:port/path` to POST to (plain HTTP: keep the service local).
    pub url: String,
    /// How long one callout may take (connect, request and answer).
    pub timeout_ms: u64,
    /// How long an answer is reused for the same credentials; 0: no cache.
    pub cache_ttl_ms: u64,
    /// Most answers kept.
    pub cache_max_entries: usize,
    /// What a failed callout means.
    pub on_error: CalloutFailure,
    /// How ACL rules in an answer combine with the ACL file.
    pub acl_mode: ClaimAclMode,
}

impl Default for HttpAuthConfig {
    fn default() -> HttpAuthConfig {
        HttpAuthConfig {
            enabled: false,
            url: String::new(),
            timeout_ms: 2000,
            cache_ttl_ms: 30_000,
            cache_max_entries: 10_000,
            on_error: CalloutFailure::Deny,
            acl_mode: ClaimAclMode::Replace,
        }
    }
}

/// `[admin]`: the admin API under `/api/v1` on the HTTP listener, and `tern ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether `/api/v1` is served (never without a token).
    pub enabled: bool,
    /// A file holding the Bearer token (trailing whitespace ignored); re-read on reload.
    pub token_file: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            enabled: false,
            token_file: PathBuf::new(),
        }
    }
}

/// What is wrong with these sections, as (key, value, what is allowed).
pub(super) fn check(
    jwt: &JwtConfig,
    http: &HttpAuthConfig,
    admin: &AdminConfig,
) -> Result<(), (&'static str, String, &'static str)> {
    if jwt.enabled && jwt.algorithm.is_hmac() && jwt.secret_file.as_os_str().is_empty() {
        return Err((
            "auth.jwt.secret_file",
            "\"\"".into(),
            "a file holding the secret for HS256/384/512",
        ));
    }
    if jwt.enabled && !jwt.algorithm.is_hmac() && jwt.public_key_file.as_os_str().is_empty() {
        return Err((
            "auth.jwt.public_key_file",
            "\"\"".into(),
            "a PEM or JWKS file for RS256/ES256",
        ));
    }
    if jwt.enabled && jwt.username_claim.is_empty() {
        return Err(("auth.jwt.username_claim", "\"\"".into(), "a claim name"));
    }
    if http.enabled && !http.url.starts_with("http://") {
        return Err((
            "auth.http.url",
            format!("{:?}", http.url),
            "an http:// URL (plain HTTP; keep the service local)",
        ));
    }
    if http.enabled && http.timeout_ms == 0 {
        return Err(("auth.http.timeout_ms", "0".into(), "at least 1"));
    }
    if admin.enabled && admin.token_file.as_os_str().is_empty() {
        return Err((
            "admin.token_file",
            "\"\"".into(),
            "a file holding the admin token when admin.enabled",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{AuthSource, Config, JwtAlgorithm};

    fn load(name: &str, text: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("tern-sources-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tern.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(Some(&path)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_and_partial_tables_keep_defaults() {
        let config = Config::default_config();
        assert!(!config.auth.jwt.enabled && !config.auth.http.enabled && !config.admin.enabled);
        assert!(config.auth.allow_password_in_url);
        let config = load(
            "partial",
            "[auth]\norder = [\"jwt\", \"password_file\"]\n\
             [auth.jwt]\nenabled = true\nalgorithm = \"RS256\"\npublic_key_file = \"k.pem\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.auth.order,
            [AuthSource::Jwt, AuthSource::PasswordFile]
        );
        assert_eq!(config.auth.jwt.algorithm, JwtAlgorithm::RS256);
        assert_eq!(config.auth.jwt.username_claim, "sub");
        assert_eq!(config.auth.jwt.leeway_secs, 30);
    }

    #[test]
    fn missing_files_and_bad_values_name_the_key() {
        for (name, text, key) in [
            ("hs", "[auth.jwt]\nenabled = true\n", "auth.jwt.secret_file"),
            (
                "rs",
                "[auth.jwt]\nenabled = true\nalgorithm = \"ES256\"\n",
                "auth.jwt.public_key_file",
            ),
            (
                "url",
                "[auth.http]\nenabled = true\nurl = \"https://x\"\n",
                "auth.http.url",
            ),
            ("admin", "[admin]\nenabled = true\n", "admin.token_file"),
            ("alg", "[auth.jwt]\nalgorithm = \"none\"\n", "none"),
            ("order", "[auth]\norder = [\"ldap\"]\n", "ldap"),
        ] {
            let err = load(name, text).expect_err(name);
            assert!(err.contains(key), "{name}: {err}");
        }
    }
}
