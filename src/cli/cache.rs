//! `msb cache ls | verify | gc | prune`: the store's entries, their integrity, and freeing space.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use indicatif::{HumanBytes, HumanDuration};

use super::Format;
use crate::error::Error;
use crate::store::Store;
use crate::store::cache::{self, Entry, Kind};

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List blobs, image layers and patch layers with their size and last use.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Re-hash blobs and patch layers and check image records; exit 1 on any damage.
    Verify,
    /// Remove what no named image and no Sandboxfile built within `--days` uses.
    Gc {
        /// How long a build keeps what it used.
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        days: u64,
    },
    /// Remove everything that no named image uses (every patch layer included).
    Prune,
}

pub(super) fn run(home: Option<PathBuf>, args: CacheArgs) -> Result<ExitCode, Error> {
    let store = Store::open(home.as_deref())?;
    match args.command {
        CacheCommand::Ls { format: Format::Json } => {
            out!("{}", serde_json::to_string_pretty(&cache::list(&store)?).unwrap_or_default());
        }
        CacheCommand::Ls { format: Format::Human } => {
            out!("{:<12} {:<19} {:>10}  LAST USED", "KIND", "DIGEST", "SIZE");
            for entry in cache::list(&store)? {
                out!("{}", row(&entry));
            }
        }
        CacheCommand::Verify => {
            let problems = cache::verify(&store)?;
            for problem in &problems {
                out!("{problem}");
            }
            if !problems.is_empty() {
                eprintln!("error: the store has {} problem(s)", problems.len());
                return Ok(ExitCode::FAILURE);
            }
            out!("the store is intact");
        }
        CacheCommand::Gc { days } => collect(&store, Some(Duration::from_secs(days * 86_400)))?,
        CacheCommand::Prune => collect(&store, None)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Layers that sandboxes (running or stopped, until `msb rm`) boot on are kept like named ones.
fn collect(store: &Store, keep_for: Option<Duration>) -> Result<(), Error> {
    // First: a sandbox starting meanwhile records its layers before its build lets go of them.
    let collection = cache::Collection::begin(store)?;
    let in_use = crate::runtime::Sandboxes::new(store.root()).layers_in_use()?;
    report(&collection.collect(keep_for, &in_use)?);
    Ok(())
}

fn row(entry: &Entry) -> String {
    let kind = match entry.kind {
        Kind::Blob => "blob",
        Kind::ImageLayer => "image-layer",
        Kind::PatchLayer => "patch-layer",
    };
    let used = match entry.last_used.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(ago) => format!("{} ago", HumanDuration(ago)),
        None => "-".into(),
    };
    let digest = entry.digest.to_string();
    format!("{kind:<12} {:<19} {:>10}  {used}", &digest[..19.min(digest.len())], HumanBytes(entry.bytes).to_string())
}

fn report(removed: &[Entry]) {
    let bytes: u64 = removed.iter().map(|e| e.bytes).sum();
    out!("removed {} entries, {} freed", removed.len(), HumanBytes(bytes));
}
