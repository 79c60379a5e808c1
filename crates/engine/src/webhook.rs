//! The `webhook` connector (SPEC 2.5): each effect is POSTed as JSON to the vendor's endpoint,
//! with the effect's idempotency key in `Idempotency-Key` and an HMAC-SHA256 signature over the
//! timestamp and the body in `Marketgov-Signature: t=<unix seconds>,v1=<hex>`, computed over
//! `"<t>.<body>"` with the shared secret. The receiver verifies the signature, deduplicates by the
//! key and answers 2xx when applied (a charge may answer `{"outcome": "declined"}`); anything else
//! is a failure, retried with backoff behind the connector's circuit breaker.
//!
//! Plain `http://` only, over HTTP/1.1 with one connection per delivery and a timeout: endpoints
//! behind TLS are reached through a local TLS-terminating proxy (TLS in-process is not built).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a delivery may take, connect to last byte.
pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// The most response bytes read.
pub const WEBHOOK_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// A webhook endpoint.
#[derive(Clone)]
pub struct Webhook {
    host: String,
    port: u16,
    path: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Webhook")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .finish()
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // An HMAC key may have any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Webhook {
    /// An endpoint from an `http://host[:port]/path` URL and its shared secret.
    pub fn new(url: &str, secret: &[u8]) -> Result<Self, String> {
        let (host, port, path) = split_url(url)?;
        if secret.is_empty() {
            return Err(format!("{url}: a non-empty secret is required"));
        }
        Ok(Self {
            host,
            port,
            path,
            secret: secret.to_vec(),
        })
    }

    /// POSTs one effect. `Ok(declined)` when the receiver answered 2xx.
    pub async fn deliver(
        &self,
        effect_key: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<bool, String> {
        let exchange = self.exchange(effect_key, body, now_unix);
        match tokio::time::timeout(Duration::from_millis(WEBHOOK_TIMEOUT_MS), exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("webhook: no answer within {WEBHOOK_TIMEOUT_MS} ms")),
        }
    }

    async fn exchange(&self, effect_key: &str, body: &[u8], now_unix: i64) -> Result<bool, String> {
        let headers = format!(
            "Idempotency-Key: {effect_key}\r\nMarketgov-Signature: {}\r\n",
            signature(&self.secret, now_unix, body)
        );
        let (status, reply) = post_json(&self.host, self.port, &self.path, &headers, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!("webhook: answered {status}"));
        }
        let declined = serde_json::from_str::<serde_json::Value>(&reply)
            .ok()
            .is_some_and(|v| v["outcome"].as_str() == Some("declined"));
        Ok(declined)
    }
}

/// Splits an `http://host[:port]/path` URL.
pub(crate) fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// endpoints are supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?,
        ),
        None => (authority.to_owned(), 80),
    };
    if host.is_empty() {
        return Err(format!("{url}: a host is required"));
    }
    Ok((host, port, path))
}

/// One HTTP/1.1 POST of a JSON body with extra header lines, over a fresh connection, bounded in
/// time and response size: answers the status and the response body.
pub(crate) async fn post_json(
    host: &str,
    port: u16,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("http: {e}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("http: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("http: {e}"))?;
            if n == 0 || response.len() >= WEBHOOK_RESPONSE_BYTES_MAX {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&response).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "http: malformed response".to_string())?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    };
    match tokio::time::timeout(Duration::from_millis(WEBHOOK_TIMEOUT_MS), exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("http: no answer within {WEBHOOK_TIMEOUT_MS} ms")),
    }
}

/// The Google Cloud Commerce Partner Procurement API (the `gcp_procurement` connector): the
/// partner's answers to Google, POSTed to `<base>/v1/providers/<provider>/entitlements/<id>:<action>`.
#[derive(Debug, Clone)]
pub struct GcpProcurement {
    host: String,
    port: u16,
    prefix: String,
}

impl GcpProcurement {
    /// An endpoint from its base URL (`http://host[:port][/prefix]`; configurable so that tests
    /// and proxies can stand in for Google).
    pub fn new(base_url: &str) -> Result<Self, String> {
        let (host, port, path) = split_url(base_url)?;
        Ok(Self {
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Sends one answer; `Ok` on 2xx.
    pub async fn send(
        &self,
        provider: &str,
        entitlement: &str,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<(), String> {
        let path = format!(
            "{}/v1/providers/{provider}/entitlements/{entitlement}:{action}",
            self.prefix
        );
        let (status, reply) = post_json(
            &self.host,
            self.port,
            &path,
            "",
            body.to_string().as_bytes(),
        )
        .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "gcp procurement answered {status}: {}",
                reply.chars().take(200).collect::<String>()
            ))
        }
    }
}
