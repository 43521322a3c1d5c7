//! A minimal HTTP/1.1 client (hyper, one connection per request, plain `http://` only):
//! what the HTTP authentication callout ([`crate::auth::callout`]) and `tern ctl`
//! ([`crate::ctl`]) need. No pooling, no TLS, no redirects; the whole exchange is bounded
//! by a timeout and the answer by [`MAX_BODY_BYTES`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// The largest answer body read.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The URL is not `http://host[:port]/...`.
    #[error("bad URL {0:?}: expected http://host:port/path")]
    BadUrl(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The exchange did not finish within the timeout.
    #[error("timed out")]
    Timeout,
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The answer body was too large or broke off.
    #[error("reading the answer: {0}")]
    Body(String),
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// Sends one request to `url` and reads the answer, all within `timeout`.
///
/// # Errors
/// [`HttpClientError`].
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Answer, HttpClientError> {
    tokio::time::timeout(timeout, exchange(method, url, headers, body))
        .await
        .map_err(|_| HttpClientError::Timeout)?
}

async fn exchange(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<Answer, HttpClientError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| HttpClientError::BadUrl(url.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(HttpClientError::BadUrl(url.to_string()));
    }
    let host = uri
        .host()
        .ok_or_else(|| HttpClientError::BadUrl(url.to_string()))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(HttpClientError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP client connection ended with an error");
        }
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.unwrap_or_default()))?;
    let response = sender.send_request(request).await;
    let result = match response {
        Ok(response) => {
            let status = response.status();
            Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map(|collected| Answer {
                    status,
                    body: collected.to_bytes(),
                })
                .map_err(|e| HttpClientError::Body(e.to_string()))
        }
        Err(e) => Err(HttpClientError::Http(e)),
    };
    driver.abort();
    result
}
