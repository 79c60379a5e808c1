//! `marketgov`: the command line.
//!
//! Owns argument parsing and wiring; decisions live in `marketgov-core`. Exit codes: 0 success,
//! 1 a command failed (the message says why), 2 bad usage (clap's own code).

mod bench;
mod config;
mod demo;
mod ingest;
mod serve;

/// glibc's allocator spent about a fifth of all CPU in the bench (many small, short-lived
/// allocations freed on other threads); mimalloc's thread-local free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use marketgov_core::diagram;
use marketgov_engine::StoreKind;

#[derive(Debug, Parser)]
#[command(
    name = "marketgov",
    version,
    about = "A durable governance engine for marketplace customer lifecycles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a scripted marketplace day through the governors and prints every decision.
    Demo {
        /// Print each logged event as one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Keep the store here instead of in a temporary directory that is removed afterwards.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// The governors' state machines.
    Governors {
        #[command(subcommand)]
        command: GovernorsCommand,
    },
    /// Serves the HTTP API (SPEC 3.2) on the embedded store.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "MARKETGOV_LISTEN")]
        listen: std::net::SocketAddr,
        /// The data directory (created on first start).
        #[arg(long, default_value = "./marketgov-data", env = "MARKETGOV_DATA_DIR")]
        data_dir: PathBuf,
        /// `system`, or `manual` (tests and demos; loopback only; adds POST /v1/admin/clock).
        #[arg(long, value_enum, default_value_t = ClockKind::System, env = "MARKETGOV_CLOCK")]
        clock: ClockKind,
        /// Where a manual clock starts (RFC 3339; default: the system time at start).
        #[arg(long, env = "MARKETGOV_CLOCK_START")]
        clock_start: Option<String>,
        /// A configuration file (default: `./marketgov.toml` when present).
        #[arg(long, env = "MARKETGOV_CONFIG")]
        config: Option<PathBuf>,
        /// Shards customers are hashed onto.
        #[arg(long, default_value_t = 64, env = "MARKETGOV_SHARDS")]
        shards: usize,
        /// Customer and product streams kept in memory, all shards together.
        #[arg(
            long,
            default_value_t = 20_000,
            env = "MARKETGOV_STREAMS_IN_MEMORY_MAX"
        )]
        streams_in_memory_max: usize,
        /// A snapshot every this many events per stream.
        #[arg(long, default_value_t = 64, env = "MARKETGOV_SNAPSHOT_EVERY_EVENTS")]
        snapshot_every_events: u64,
        /// How long idempotency keys are kept, in hours.
        #[arg(long, default_value_t = 24, env = "MARKETGOV_IDEMPOTENCY_WINDOW_HOURS")]
        idempotency_window_hours: i64,
        /// Effects one tenant may start per second.
        #[arg(
            long,
            default_value_t = 10_000,
            env = "MARKETGOV_TENANT_EFFECTS_PER_SECOND"
        )]
        tenant_effects_per_second: u32,
        /// Burst of the per-tenant effect rate.
        #[arg(long, default_value_t = 20_000, env = "MARKETGOV_TENANT_EFFECTS_BURST")]
        tenant_effects_burst: u32,
        /// Base URL of the Google Cloud Commerce Partner Procurement API (http://; unset: answers
        /// to Google are recorded by the sandbox connector).
        #[arg(long, env = "MARKETGOV_GCP_PROCUREMENT_URL")]
        gcp_procurement_url: Option<String>,
        /// The embedded store of a new data directory: `sqlite` (the default) or `log` (the
        /// log-structured store, not yet the default: docs/store-log.md). A directory that holds
        /// a store keeps its kind; asking for the other kind is refused (no migration yet).
        #[arg(long, value_enum, env = "MARKETGOV_STORE")]
        store: Option<StoreChoice>,
    },
    /// Decides inputs given as JSON lines on stdin on the durable store, acknowledging each once synced.
    Ingest {
        /// The data directory.
        #[arg(long, default_value = "./marketgov-data", env = "MARKETGOV_DATA_DIR")]
        data_dir: PathBuf,
        /// Inputs decided concurrently.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Runs the built-in load generator (SPEC 5): in process on a fresh embedded store, or
    /// against a running server with `--target`.
    Bench {
        /// Customers in the workload (about ten events each).
        #[arg(long, default_value_t = 2000)]
        customers: usize,
        /// Customers run concurrently (one request in flight each).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seed of the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `inproc` (the engine in this process) or `http` (needs `--target`).
        #[arg(long, value_enum, default_value_t = BenchMode::Inproc)]
        mode: BenchMode,
        /// A running server, `http://HOST:PORT` (implies `--mode http`).
        #[arg(long)]
        target: Option<String>,
        /// The key the HTTP workload authenticates with (admin or tenant key).
        #[arg(long, env = "MARKETGOV_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Pace the workload at this many events per second (default: closed loop, as fast as
        /// answers come); latency is then measured from each event's scheduled time.
        #[arg(long)]
        rate: Option<u64>,
        /// Shards of the engine (in process).
        #[arg(long, default_value_t = 64)]
        shards: usize,
        /// Streams kept in memory (in process).
        #[arg(long, default_value_t = 20_000)]
        streams_in_memory_max: usize,
        /// A snapshot every this many events per stream (in process; as `serve`'s).
        #[arg(long, default_value_t = 64)]
        snapshot_every_events: u64,
        /// A customer dropped from memory with a timer pending and at least this many events
        /// since its newest snapshot is snapshotted as it is dropped (in process; 0: never).
        #[arg(long, default_value_t = 4)]
        snapshot_on_eviction_events: u64,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Keep the store here (in process; default: a temporary directory, removed afterwards).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The embedded store of the in-process run: `sqlite` (the default store) or `log` (the
        /// log-structured store, not yet the default: docs/store-log.md).
        #[arg(long, value_enum, default_value_t = StoreChoice::Sqlite)]
        store: StoreChoice,
        /// The log-structured store writes each batch into a prepared segment with `O_DIRECT`,
        /// past the page cache (in process; docs/store-log.md: less CPU on a long run, but
        /// records just written are read back from the disk).
        #[arg(long)]
        direct_writes: bool,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates a key for a tenant and prints it (it is shown once; only its hash is stored):
    /// through a running server's admin API with `--server`, or directly on a stopped server's
    /// data directory.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A running server, e.g. `http://127.0.0.1:8080` (uses `MARKETGOV_ADMIN_KEY`, or the
        /// admin key in `--data-dir`).
        #[arg(long)]
        server: Option<String>,
        /// The data directory.
        #[arg(long, default_value = "./marketgov-data", env = "MARKETGOV_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies the hash chain and the signed checkpoints; exits 1 and names the first bad position
    /// when anything was changed, removed, reordered or inserted.
    Verify {
        /// The data directory.
        #[arg(long, default_value = "./marketgov-data", env = "MARKETGOV_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Prints the public key that verifies the checkpoints (hex).
    PublicKey {
        /// The data directory.
        #[arg(long, default_value = "./marketgov-data", env = "MARKETGOV_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum GovernorsCommand {
    /// Prints every governor's state diagram, generated from its transition table.
    Diagram {
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
        format: DiagramFormat,
    },
    /// Writes docs/governors.md and docs/cases.md from the transition tables.
    Docs {
        /// Directory to write into.
        #[arg(long, default_value = "docs")]
        out_dir: PathBuf,
    },
}

/// The embedded store: of an in-process bench, or of a new data directory for `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreChoice {
    Sqlite,
    Log,
}

impl StoreChoice {
    fn kind(self) -> StoreKind {
        match self {
            StoreChoice::Sqlite => StoreKind::Sqlite,
            StoreChoice::Log => StoreKind::Log,
        }
    }
}

/// Where `marketgov bench` sends its workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchMode {
    Inproc,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClockKind {
    System,
    Manual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiagramFormat {
    Mermaid,
    Dot,
}

/// mimalloc's settings for this process, given to it the only way safe code can: through its
/// environment, read when it starts, so the process starts itself again once with them (a user's
/// own `MIMALLOC_*` settings are kept). Measured (docs/PERFORMANCE.md, "Seventh session"): peak
/// memory of the 10^6 bench 175 -> 137 MiB at the same speed. Freed memory goes back to the system
/// at once instead of 10 ms later (`PURGE_DELAY`), and arenas are committed as they are used
/// (`ARENA_EAGER_COMMIT`).
const ALLOCATOR_SETTINGS: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];
/// Set in the restarted process, so that it does not start itself again.
const ALLOCATOR_SET: &str = "MARKETGOV_ALLOCATOR_SET";

/// Starts this process again with [`ALLOCATOR_SETTINGS`] unless it already has them; returns
/// (and the process goes on as it is) only when that is not possible.
fn restart_with_allocator_settings() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ALLOCATOR_SET).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env(ALLOCATOR_SET, "1");
    for (name, value) in ALLOCATOR_SETTINGS {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    // `exec` returns only if it failed; then this process simply goes on as it is.
    let _ = command.exec();
}

fn main() -> ExitCode {
    restart_with_allocator_settings();
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let cli = match layer_config(cli, &matches) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("marketgov: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marketgov: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keys_create(
    tenant: &str,
    server: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let key = match server {
        Some(url) => {
            let admin = match std::env::var("MARKETGOV_ADMIN_KEY") {
                Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
                _ => std::fs::read_to_string(data_dir.join(serve::ADMIN_KEY_FILE))
                    .map(|k| k.trim().to_owned())
                    .map_err(|e| anyhow::anyhow!("no admin key: set MARKETGOV_ADMIN_KEY or point --data-dir at the server's data ({e})"))?,
            };
            let body = serde_json::json!({"tenant": tenant}).to_string();
            let (status, reply) = serve::post(url, "/v1/admin/keys", &admin, &body)?;
            if status != 200 {
                anyhow::bail!("the server answered {status}: {reply}");
            }
            let reply: serde_json::Value = serde_json::from_str(&reply)?;
            reply["key"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no key in the answer"))?
        }
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let app = open_existing(data_dir)?;
                Ok::<_, anyhow::Error>(app.create_api_key(tenant).await?)
            })?
        }
    };
    println!("{key}");
    Ok(())
}

/// Applies `marketgov.toml` under the environment and flags (SPEC 3.5).
fn layer_config(mut cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<Cli> {
    let Command::Serve {
        listen,
        data_dir,
        clock,
        clock_start,
        config,
        shards,
        streams_in_memory_max,
        snapshot_every_events,
        idempotency_window_hours,
        tenant_effects_per_second,
        tenant_effects_burst,
        gcp_procurement_url,
        store,
    } = &mut cli.command
    else {
        return Ok(cli);
    };
    let Some(m) = matches.subcommand_matches("serve") else {
        return Ok(cli);
    };
    let file = config::load(config.as_deref())?;
    let d = |id: &str| config::defaulted(m, id);
    if let (true, Some(v)) = (d("listen"), &file.listen) {
        *listen = v.parse().with_context(|| format!("listen = {v:?}"))?;
    }
    if let (true, Some(v)) = (d("data_dir"), file.data_dir.clone()) {
        *data_dir = v;
    }
    if let (true, Some(v)) = (d("clock"), &file.clock) {
        *clock = <ClockKind as ValueEnum>::from_str(v, true)
            .map_err(|e| anyhow::anyhow!("clock = {v:?}: {e}"))?;
    }
    if let (true, Some(v)) = (clock_start.is_none(), file.clock_start.clone()) {
        *clock_start = Some(v);
    }
    if let (true, Some(v)) = (d("shards"), file.shards) {
        *shards = v;
    }
    if let (true, Some(v)) = (d("streams_in_memory_max"), file.streams_in_memory_max) {
        *streams_in_memory_max = v;
    }
    if let (true, Some(v)) = (d("snapshot_every_events"), file.snapshot_every_events) {
        *snapshot_every_events = v;
    }
    if let (true, Some(v)) = (d("idempotency_window_hours"), file.idempotency_window_hours) {
        *idempotency_window_hours = v;
    }
    if let (true, Some(v)) = (
        d("tenant_effects_per_second"),
        file.tenant_effects_per_second,
    ) {
        *tenant_effects_per_second = v;
    }
    if let (true, Some(v)) = (d("tenant_effects_burst"), file.tenant_effects_burst) {
        *tenant_effects_burst = v;
    }
    if let (true, Some(v)) = (store.is_none(), &file.store) {
        *store = Some(
            <StoreChoice as ValueEnum>::from_str(v, true)
                .map_err(|e| anyhow::anyhow!("store = {v:?}: {e}"))?,
        );
    }
    if let (true, Some(v)) = (
        gcp_procurement_url.is_none(),
        file.gcp_procurement_url.clone(),
    ) {
        *gcp_procurement_url = Some(v);
    }
    Ok(cli)
}

/// Opens an existing data directory (refusing to create one where none is).
fn open_existing(data_dir: &std::path::Path) -> anyhow::Result<marketgov_engine::App> {
    if !data_dir.join(marketgov_engine::AUDIT_KEY_FILE).exists() {
        anyhow::bail!(
            "{} holds no marketgov data (no {})",
            data_dir.display(),
            marketgov_engine::AUDIT_KEY_FILE
        );
    }
    Ok(marketgov_engine::App::open(
        marketgov_engine::EngineOptions::new(data_dir),
    )?)
}

/// Verifies a stopped store's audit log. The store is opened without its own tail check, so that
/// what is wrong is named by the verifier (position and reason) instead of refusing to open.
fn audit_verify(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !data_dir.join(marketgov_engine::AUDIT_KEY_FILE).exists() {
        anyhow::bail!(
            "{} holds no marketgov data (no {})",
            data_dir.display(),
            marketgov_engine::AUDIT_KEY_FILE
        );
    }
    let public_key = marketgov_engine::audit_signer(data_dir)?.public_key();
    let report = if marketgov_engine::embedded_kind_in(data_dir) == Some(StoreKind::Log) {
        let mut options = marketgov_store_log::Options::new(data_dir);
        options.verify_tail_entries = 0;
        let store = marketgov_store_log::LogStore::open(options)?;
        marketgov_engine::verify_store(&store, &public_key)?
    } else {
        let mut options = marketgov_store_sqlite::Options::new(data_dir);
        options.verify_tail_entries = 0;
        let store = marketgov_store_sqlite::SqliteStore::open(options)?;
        marketgov_engine::verify_store(&store, &public_key)?
    };
    println!("{}", serde_json::to_string(&report)?);
    match report.first_bad {
        None => Ok(()),
        Some(bad) => anyhow::bail!(
            "audit log fails at entry {}: {}",
            bad.seq,
            bad.reason.name()
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { json, data_dir } => {
            demo::run(json, data_dir, &mut std::io::stdout().lock())
        }
        Command::Governors {
            command: GovernorsCommand::Diagram { format },
        } => {
            let format = match format {
                DiagramFormat::Mermaid => diagram::Format::Mermaid,
                DiagramFormat::Dot => diagram::Format::Dot,
            };
            print!("{}", diagram::governors(format));
            Ok(())
        }
        Command::Bench {
            customers,
            concurrency,
            seed,
            mode,
            target,
            api_key,
            rate,
            shards,
            streams_in_memory_max,
            snapshot_every_events,
            snapshot_on_eviction_events,
            json,
            data_dir,
            store,
            direct_writes,
        } => {
            if mode == BenchMode::Http && target.is_none() {
                anyhow::bail!("--mode http needs --target http://HOST:PORT");
            }
            bench::run(bench::Settings {
                customers,
                concurrency,
                seed,
                json,
                data_dir,
                shards,
                streams_in_memory_max,
                snapshot_every_events,
                snapshot_on_eviction_events,
                target,
                api_key,
                rate,
                store: store.kind(),
                direct_writes,
            })
        }
        Command::Ingest {
            data_dir,
            concurrency,
        } => ingest::run(data_dir, concurrency),
        Command::Keys {
            command:
                KeysCommand::Create {
                    tenant,
                    server,
                    data_dir,
                },
        } => keys_create(&tenant, server.as_deref(), &data_dir),
        Command::Serve {
            listen,
            data_dir,
            clock,
            clock_start,
            shards,
            streams_in_memory_max,
            snapshot_every_events,
            idempotency_window_hours,
            tenant_effects_per_second,
            tenant_effects_burst,
            gcp_procurement_url,
            store,
            ..
        } => serve::run(serve::Settings {
            listen,
            data_dir,
            manual: clock == ClockKind::Manual,
            clock_start,
            shards,
            streams_in_memory_max,
            snapshot_every_events,
            idempotency_window_hours,
            tenant_effects_per_second,
            tenant_effects_burst,
            gcp_procurement_url,
            store: store.map(StoreChoice::kind),
        }),
        Command::Audit {
            command: AuditCommand::Verify { data_dir },
        } => audit_verify(&data_dir),
        Command::Audit {
            command: AuditCommand::PublicKey { data_dir },
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let _guard = runtime.enter();
            let app = open_existing(&data_dir)?;
            println!("{}", app.audit_public_key()?);
            Ok(())
        }
        Command::Governors {
            command: GovernorsCommand::Docs { out_dir },
        } => {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            for (name, text) in [
                ("governors.md", diagram::governors_markdown()),
                ("cases.md", diagram::cases_markdown()),
            ] {
                let path = out_dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
