//! Unit tests of [`super::JwtVerifier`]: each way a token is refused, and JWKS key ids.

use std::path::PathBuf;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hs_verifier(dir: &str) -> JwtVerifier {
    let dir = std::env::temp_dir().join(format!("tern-jwt-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write");
    let config = JwtConfig {
        enabled: true,
        secret_file: path,
        leeway_secs: 0,
        ..JwtConfig::default()
    };
    JwtVerifier::load(&config).expect("load")
}

fn hs_token(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

#[test]
fn hs256_valid_expired_not_yet_valid_and_bad_signature() {
    let v = hs_verifier("hs");
    let good = hs_token(&json!({"sub": "alice", "exp": now() + 60}));
    let ok = v.verify(good.as_bytes(), None).expect("valid");
    assert_eq!(ok.username, "alice");
    assert!(v.verify(good.as_bytes(), Some("alice")).is_ok());
    assert_eq!(
        v.verify(good.as_bytes(), Some("bob")).err(),
        Some(JwtError::UsernameMismatch)
    );
    let expired = hs_token(&json!({"sub": "alice", "exp": now() - 10}));
    assert_eq!(
        v.verify(expired.as_bytes(), None).err(),
        Some(JwtError::Expired)
    );
    let early = hs_token(&json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}));
    assert_eq!(
        v.verify(early.as_bytes(), None).err(),
        Some(JwtError::NotYetValid)
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another secret, long enough!!!!"),
    )
    .expect("encode");
    assert_eq!(
        v.verify(forged.as_bytes(), None).err(),
        Some(JwtError::BadSignature)
    );
    let no_exp = hs_token(&json!({"sub": "alice"}));
    assert_eq!(
        v.verify(no_exp.as_bytes(), None).err(),
        Some(JwtError::BadClaims)
    );
    assert_eq!(
        v.verify(b"not.a.token", None).err(),
        Some(JwtError::Malformed)
    );
}

#[test]
fn none_and_other_algorithms_are_refused() {
    let v = hs_verifier("none");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "exp": now() + 60}))
    );
    assert_eq!(
        v.verify(none.as_bytes(), None).err(),
        Some(JwtError::WrongAlgorithm)
    );
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "alice", "exp": now() + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    assert_eq!(
        v.verify(hs512.as_bytes(), None).err(),
        Some(JwtError::WrongAlgorithm)
    );
}

fn rs_verifier(file: &str) -> JwtVerifier {
    let config = JwtConfig {
        enabled: true,
        algorithm: JwtAlgorithm::RS256,
        public_key_file: fixtures().join(file),
        audience: "tern".into(),
        issuer: "issuer".into(),
        ..JwtConfig::default()
    };
    JwtVerifier::load(&config).expect("load")
}

fn rs_token(key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixtures().join(key)).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("pem"),
    )
    .expect("encode")
}

#[test]
fn rs256_pem_audience_issuer_and_hs_rs_confusion() {
    let v = rs_verifier("rsa1.pub");
    let claims = json!({"sub": "dev1", "exp": now() + 60, "aud": "tern", "iss": "issuer",
        "acl": {"publish": ["d/%c/up"]}});
    let token = rs_token("rsa1.pk8", None, &claims);
    let ok = v.verify(token.as_bytes(), None).expect("valid");
    assert!(ok.acl.is_some());
    let wrong_aud = rs_token(
        "rsa1.pk8",
        None,
        &json!({"sub": "d", "exp": now() + 60, "aud": "x", "iss": "issuer"}),
    );
    assert_eq!(
        v.verify(wrong_aud.as_bytes(), None).err(),
        Some(JwtError::BadClaims)
    );
    let other_key = rs_token("rsa2.pk8", None, &claims);
    assert_eq!(
        v.verify(other_key.as_bytes(), None).err(),
        Some(JwtError::BadSignature)
    );
    // HS/RS confusion: an HMAC keyed with the (public) RSA key must not pass.
    let public = std::fs::read(fixtures().join("rsa1.pub")).expect("pub");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public),
    )
    .expect("encode");
    assert_eq!(
        v.verify(confused.as_bytes(), None).err(),
        Some(JwtError::WrongAlgorithm)
    );
}

#[test]
fn jwks_selects_the_key_by_kid() {
    let v = rs_verifier("rsa1.jwks");
    let claims = json!({"sub": "dev1", "exp": now() + 60, "aud": "tern", "iss": "issuer"});
    assert!(v
        .verify(rs_token("rsa1.pk8", Some("rsa1"), &claims).as_bytes(), None)
        .is_ok());
    assert!(v
        .verify(rs_token("rsa1.pk8", None, &claims).as_bytes(), None)
        .is_ok());
    assert_eq!(
        v.verify(rs_token("rsa2.pk8", Some("rsa2"), &claims).as_bytes(), None)
            .err(),
        Some(JwtError::UnknownKey)
    );
}

#[test]
fn load_errors_name_the_file() {
    let config = JwtConfig {
        enabled: true,
        algorithm: JwtAlgorithm::RS256,
        public_key_file: PathBuf::from("/nonexistent/key.pem"),
        ..JwtConfig::default()
    };
    let err = JwtVerifier::load(&config).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    assert!(looks_like_token("a.b.c"));
    assert!(!looks_like_token("user:pass"));
}

#[test]
fn es256_with_a_pem_public_key() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let dir = std::env::temp_dir().join(format!("tern-jwt-es-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let public = dir.join("ec.pub");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let config = JwtConfig {
        enabled: true,
        algorithm: JwtAlgorithm::ES256,
        public_key_file: public,
        ..JwtConfig::default()
    };
    let v = JwtVerifier::load(&config).expect("load");
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("pem");
    let claims = json!({"sub": "ec", "exp": now() + 60});
    let token = encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("encode");
    assert_eq!(
        v.verify(token.as_bytes(), None).expect("valid").username,
        "ec"
    );
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let signing = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).expect("pem");
    let forged = encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("encode");
    assert_eq!(
        v.verify(forged.as_bytes(), None).err(),
        Some(JwtError::BadSignature)
    );
}
