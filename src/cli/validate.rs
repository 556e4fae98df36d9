//! `msb validate`: the Sandboxfile's verdict, for people or for editors and CI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Format;
use crate::error::Error;
use crate::manifest::{self, ManifestError};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The Sandboxfile [default: `Sandboxfile` in the current folder or the nearest parent]
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// `json` prints every problem with its line and column, for editors and CI.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub(super) fn run(args: ValidateArgs) -> Result<ExitCode, Error> {
    let path = super::sandboxfile_path(args.file)?;
    let result = manifest::load(&path);
    if args.format == Format::Json {
        let report = match &result {
            Ok(_) => manifest::report(&path, "", &[]),
            Err(ManifestError::Invalid(invalid)) => invalid.to_json(),
            Err(_) => return result.map(|_| ExitCode::SUCCESS).map_err(Error::from),
        };
        out!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }
    let loaded = result?;
    let count = loaded.file.sandbox.len();
    let noun = if count == 1 { "sandbox" } else { "sandboxes" };
    out!("{}: valid ({count} {noun})", path.display());
    Ok(ExitCode::SUCCESS)
}
