//! Configuration layering (SPEC 3.5): defaults < `marketgov.toml` < environment (`MARKETGOV_*`) <
//! command-line flags. clap resolves flags, environment and defaults and says which one a value
//! came from; a value that came from a default is replaced by the file's, when the file sets it.
//! Every option, with its default, is listed in `docs/configuration.md`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

/// The file's options (all optional; unknown keys are refused so typos are caught).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub clock: Option<String>,
    pub clock_start: Option<String>,
    pub shards: Option<usize>,
    pub streams_in_memory_max: Option<usize>,
    pub snapshot_every_events: Option<u64>,
    pub idempotency_window_hours: Option<i64>,
    pub tenant_effects_per_second: Option<u32>,
    pub tenant_effects_burst: Option<u32>,
    pub gcp_procurement_url: Option<String>,
    pub store: Option<String>,
}

/// The default file, read when present and no `--config` is given.
pub const DEFAULT_FILE: &str = "marketgov.toml";

/// Reads `path`, or `./marketgov.toml` if it exists, or nothing.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let path = match path {
        Some(p) => p.to_owned(),
        None if Path::new(DEFAULT_FILE).exists() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(FileConfig::default()),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Whether the value of `id` was left at its default (so the file may set it).
pub fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    !matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}
