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
        if host.is_empty() || secret.is_empty() {
            return Err(format!("{url}: a host and a non-empty secret are required"));
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
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Idempotency-Key: {effect_key}\r\nMarketgov-Signature: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host,
            body.len(),
            signature(&self.secret, now_unix, body)
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("webhook: {e}"))?;
            if n == 0 || response.len() >= WEBHOOK_RESPONSE_BYTES_MAX {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&response);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "webhook: malformed response".to_string())?;
        if !(200..300).contains(&status) {
            return Err(format!("webhook: answered {status}"));
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let declined = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v["outcome"].as_str() == Some("declined"));
        Ok(declined)
    }
}
