//! `marketgov`: the command line.
//!
//! Owns argument parsing and wiring; decisions live in `marketgov-core`. Exit codes: 0 success,
//! 1 a command failed (the message says why), 2 bad usage (clap's own code).

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use marketgov_core::diagram;

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
        /// Print each event's full result as one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The governors' state machines.
    Governors {
        #[command(subcommand)]
        command: GovernorsCommand,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiagramFormat {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marketgov: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { json } => demo::run(json, &mut std::io::stdout().lock()),
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
