//! Command-line types and their dispatch to the library. Nothing here holds product logic.

mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Error;
use crate::manifest::ManifestError;

/// Run sandboxes described by a committed Sandboxfile.
#[derive(Debug, Parser)]
#[command(name = "msb", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where msb keeps images, layers and sandbox state [default: $XDG_CACHE_HOME/msb]
    #[arg(long, global = true, env = "MSB_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a Sandboxfile against the schema and msb's own rules.
    Validate(validate::ValidateArgs),
    /// Print the Sandboxfile JSON Schema.
    Schema,
}

/// How machine-readable output is wanted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Parses the process arguments, runs the command and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Wrapping helps on a terminal; in logs and editors' captures it only splits messages.
    let wrap = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = miette::set_hook(Box::new(move |_| Box::new(miette::MietteHandlerOpts::new().wrap_lines(wrap).build())));
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            render(err);
            ExitCode::from(code)
        }
    }
}

/// Prints an error once, for people. An invalid Sandboxfile prints each problem with its own
/// snippet, then one line that sums up.
fn render(err: Error) {
    if let Error::Manifest(ManifestError::Invalid(invalid)) = &err {
        for report in invalid.reports() {
            eprintln!("{report:?}");
        }
        eprintln!("error: {invalid}");
        return;
    }
    eprintln!("{:?}", miette::Report::new(err));
}

/// The Sandboxfile a command works on: the one given, or the nearest one upwards.
fn sandboxfile_path(given: Option<PathBuf>) -> Result<PathBuf, Error> {
    match given {
        Some(path) => Ok(path),
        None => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            Ok(crate::manifest::find(&cwd)?)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Schema => {
            println!("{}", crate::manifest::schema::schema_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}
