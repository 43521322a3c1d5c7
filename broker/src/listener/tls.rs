//! TLS for the `tls` and `wss` listeners: rustls 0.23 with the *ring* provider (the one
//! crypto provider of the build), TLS 1.2 and 1.3, certificates and keys from PEM files, and
//! optional client-certificate verification (mTLS) against `client_ca_file`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;

/// A TLS setup that could not be built; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration (e.g. key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA set could not be used.
    #[error("client_ca_file: {0}")]
    Verifier(String),
}

/// Installs *ring* as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn pem_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The certificates of a PEM file (at least one). The MQTT bridges' TLS client loads its
/// files with these too.
///
/// # Errors
/// [`TlsError::Pem`] naming the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] naming the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A trust store of the certificates of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] naming the file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| pem_error(path, e))?;
    }
    Ok(roots)
}

/// Builds the acceptor of one listener.
///
/// # Errors
/// [`TlsError`] naming the file that could not be used.
pub fn acceptor(listener: &ListenerConfig) -> Result<TlsAcceptor, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&listener.cert_file, &listener.key_file) else {
        return Err(TlsError::Verifier(
            "cert_file and key_file are required".into(),
        ));
    };
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &listener.client_ca_file {
        Some(ca_file) => {
            let roots = load_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The Common Name of a certificate's subject, if it has one (for
/// `use_identity_as_username`). A minimal DER walk: Certificate -> TBSCertificate -> the
/// sixth field (subject) -> the RDN with OID 2.5.4.3.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, cert_body, _) = der_item(cert)?;
    let (_, mut tbs, _) = der_item(cert_body)?;
    // Optional [0] version, then serial, signature, issuer, validity, subject.
    if tbs.first() == Some(&0xA0) {
        tbs = der_item(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der_item(tbs)?.2;
    }
    let (_, mut subject, _) = der_item(tbs)?;
    while !subject.is_empty() {
        let (_, rdn_set, rest) = der_item(subject)?;
        subject = rest;
        let (_, attribute, _) = der_item(rdn_set)?;
        let (tag, oid, after_oid) = der_item(attribute)?;
        if tag == 0x06 && oid == [0x55, 0x04, 0x03] {
            let (_, value, _) = der_item(after_oid)?;
            return String::from_utf8(value.to_vec()).ok();
        }
    }
    None
}

/// One DER item: (tag, contents, the bytes after it).
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first & 0x80 == 0 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let contents = input.get(header..header.checked_add(len)?)?;
    Some((tag, contents, &input[header + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Tern");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-17");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("sensor-17"));
    }

    #[test]
    fn garbage_has_no_common_name() {
        assert_eq!(common_name(&[0x30, 0x83, 0xFF]), None);
        assert_eq!(common_name(&[]), None);
    }
}
