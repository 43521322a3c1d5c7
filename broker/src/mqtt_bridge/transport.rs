//! The byte stream to a remote: TCP, or TLS over it (rustls 0.23 with *ring*: a CA file,
//! a client certificate, SNI and name check; `insecure` skips verification only when the
//! configuration says so). Owns no MQTT.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::wire::{BoxRead, BoxWrite};
use crate::config::mqtt_bridges::{split_host_port, BridgeTls};
use crate::listener::tls::{load_certs, load_key, load_roots, TlsError};

/// Why the byte stream to a remote could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// TCP connect failed.
    #[error("connect to {remote}: {source}")]
    Connect {
        /// The remote address.
        remote: String,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file could not be used (it names the file).
    #[error("tls: {0}")]
    Pem(#[from] TlsError),
    /// The TLS configuration is unusable.
    #[error("tls: {0}")]
    Config(#[from] rustls::Error),
    /// The name to check is not a DNS name or IP address.
    #[error("tls: invalid server name {0:?}")]
    ServerName(String),
    /// The TLS handshake failed (certificate not trusted, wrong name...).
    #[error("tls handshake with {remote}: {source}")]
    Handshake {
        /// The remote address.
        remote: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A TLS client for one bridge, built once from its settings.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Tls {
    /// The TLS client of `settings`.
    ///
    /// # Errors
    /// A PEM file is missing or unusable.
    pub(crate) fn new(settings: &BridgeTls) -> Result<Tls, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if settings.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &settings.ca_file {
                Some(ca_file) => load_roots(ca_file)?,
                None => rustls::RootCertStore::empty(),
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let certs = load_certs(cert_file)?;
                let key = load_key(key_file)?;
                builder.with_client_auth_cert(certs, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: settings.server_name.clone(),
        })
    }
}

/// Opens the byte stream to `remote` (`host:port`), with TLS when `tls` is given, within
/// `timeout`.
///
/// # Errors
/// [`TransportError`]; a timeout is a [`TransportError::Connect`] of kind `TimedOut`.
pub(crate) async fn open(
    remote: &str,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<(BoxRead, BoxWrite), TransportError> {
    let connect_error = |source| TransportError::Connect {
        remote: remote.to_string(),
        source,
    };
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let (host, port) = split_host_port(remote).ok_or_else(|| {
        connect_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not host:port",
        ))
    })?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| connect_error(timed_out()))?
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        let (read, write) = tcp.into_split();
        return Ok((Box::new(read), Box::new(write)));
    };
    let name = tls.server_name.as_deref().unwrap_or(host).to_string();
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| TransportError::ServerName(name))?;
    let stream = tokio::time::timeout(timeout, tls.connector.connect(server_name, tcp))
        .await
        .map_err(|_| TransportError::Handshake {
            remote: remote.to_string(),
            source: timed_out(),
        })?
        .map_err(|source| TransportError::Handshake {
            remote: remote.to_string(),
            source,
        })?;
    let (read, write) = tokio::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}

/// `insecure = true`: accepts any certificate (signatures are still checked, so the
/// handshake is well formed; who is at the other end is not).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
