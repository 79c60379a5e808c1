//! `marketgov serve`: the HTTP API on the embedded store.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use marketgov_engine::{key_hash, new_key, App, EngineOptions, ManualClock};
use marketgov_server::ServerState;

/// The admin key's file inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// What `serve` runs with, after layering (see `config.rs`).
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub manual: bool,
    pub clock_start: Option<String>,
    pub shards: usize,
    pub streams_in_memory_max: usize,
    pub snapshot_every_events: u64,
    pub idempotency_window_hours: i64,
    pub tenant_effects_per_second: u32,
    pub tenant_effects_burst: u32,
    pub gcp_procurement_url: Option<String>,
    /// The store a new data directory gets (`None`: the default, or what the directory holds).
    pub store: Option<marketgov_engine::StoreKind>,
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let (listen, data_dir, manual, clock_start) = (
        settings.listen,
        settings.data_dir.clone(),
        settings.manual,
        settings.clock_start.clone(),
    );
    if settings.shards == 0
        || settings.streams_in_memory_max == 0
        || settings.snapshot_every_events == 0
        || settings.idempotency_window_hours <= 0
    {
        bail!("shards, streams_in_memory_max, snapshot_every_events and idempotency_window_hours must be positive");
    }
    if manual && !listen.ip().is_loopback() {
        bail!("--clock manual is for tests and demos and is refused unless listening on loopback (got {listen})");
    }
    if let (Some(asked), Some(held)) = (
        settings.store,
        marketgov_engine::embedded_kind_in(&data_dir),
    ) {
        if asked != held {
            bail!(
                "{} holds a {} store and --store {} was asked for: a directory keeps the kind \
                 it was created with (moving a store from one kind to the other is not built)",
                data_dir.display(),
                held.name(),
                asked.name()
            );
        }
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let admin_key = admin_key(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut options = EngineOptions::new(&data_dir);
        options.shards = settings.shards;
        options.streams_in_memory_max = settings.streams_in_memory_max;
        options.snapshot_every_events = settings.snapshot_every_events;
        options.idempotency_window_ms = settings.idempotency_window_hours.saturating_mul(3_600_000);
        options.tenant_effects_per_second = settings.tenant_effects_per_second;
        options.tenant_effects_burst = settings.tenant_effects_burst;
        if let Some(kind) = settings.store {
            options.store_kind = kind;
        }
        if let Some(url) = &settings.gcp_procurement_url {
            options.gcp_procurement = Some(
                marketgov_engine::GcpProcurement::new(url)
                    .map_err(|e| anyhow::anyhow!("--gcp-procurement-url: {e}"))?,
            );
        }
        if manual {
            let start = match clock_start {
                Some(text) => text
                    .parse()
                    .with_context(|| format!("--clock-start {text}"))?,
                None => jiff::Timestamp::now(),
            };
            options.clock = Arc::new(ManualClock::starting_at(start));
        }
        let app = App::open(options).with_context(|| format!("opening {}", data_dir.display()))?;
        // Timers that came due while the server was down fire at once.
        app.fire_due_timers().await?;
        let state = ServerState {
            app,
            admin_key_hash: key_hash(&admin_key),
            manual_clock: manual,
        };
        eprintln!(
            "marketgov: serving on http://{listen} (data in {}, clock {})",
            data_dir.display(),
            if manual { "manual" } else { "system" }
        );
        marketgov_server::serve(state, listen)
            .await
            .with_context(|| format!("serving on {listen}"))?;
        eprintln!("marketgov: stopped");
        Ok(())
    })
}

/// The admin key: `MARKETGOV_ADMIN_KEY` when set, else `<data-dir>/admin.key`, created (mode
/// 0600) on first start.
fn admin_key(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("MARKETGOV_ADMIN_KEY") {
        if !key.trim().is_empty() {
            return Ok(key.trim().to_owned());
        }
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = new_key()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{key}")
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("marketgov: created the admin key in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A minimal HTTP/1.1 POST over plain TCP (the admin API is served on plain HTTP): answers the
/// status and the body.
pub fn post(base: &str, path: &str, bearer: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{base}: only http:// is supported"))?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
