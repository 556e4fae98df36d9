//! Command-line types and their dispatch to the library. Nothing here holds product logic.

/// `println!` that ends quietly when stdout is a closed pipe (`msb plan | head`), as `cat` does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod build;
mod cache;
mod images;
mod publish;
mod sandboxes;
mod up;
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
    /// Pull an image into the store.
    Pull(images::PullArgs),
    /// List the images in the store.
    Images,
    /// Remove an image record from the store (its layers go at the next `cache gc`).
    Rmi(images::RmiArgs),
    /// Load an `oci-archive` or `docker-archive` file into the store.
    Load(images::LoadArgs),
    /// Show each sandbox's image and patch steps: cached, or built and why.
    Plan(build::PlanArgs),
    /// Pull the images and build every patch layer, without booting.
    Build(build::BuildArgs),
    /// Write a sandbox's root, as its processes see it, to a folder or a `.tar` file; or, with
    /// `k8s`, a Kubernetes manifest for its pushed image.
    Export(publish::ExportCommand),
    /// Inspect, verify and clean the store of images and layers.
    Cache(cache::CacheArgs),
    /// Build and boot the Sandboxfile's sandboxes; follow their output until Ctrl-C, or `-d`.
    Up(up::UpArgs),
    /// Boot one sandbox from an image and flags, without a Sandboxfile.
    Run(up::RunArgs),
    /// Run a command (or a script, by name) in a running sandbox.
    Exec(sandboxes::ExecArgs),
    /// Open an interactive shell in a running sandbox.
    Shell(sandboxes::ShellArgs),
    /// List the sandboxes and what they are doing.
    Ls(sandboxes::LsArgs),
    /// Stop sandboxes: their init's stop signal, then SIGKILL after a timeout.
    Stop(sandboxes::StopArgs),
    /// Remove stopped sandboxes and their own layers.
    Rm(sandboxes::RmArgs),
    /// Print a sandbox's output.
    Logs(sandboxes::LogsArgs),
}

/// Which Sandboxfile a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectArgs {
    /// The Sandboxfile [default: `Sandboxfile` in the current folder or the nearest parent]
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

impl ProjectArgs {
    /// Loads the Sandboxfile and opens the store.
    fn open(&self, home: Option<PathBuf>) -> Result<(crate::manifest::Manifest, crate::store::Store), Error> {
        let path = sandboxfile_path(self.file.clone())?;
        let store = crate::store::Store::open(home.as_deref())?;
        let manifest = crate::manifest::load_remembered(&path, &store)?;
        Ok((manifest, store))
    }
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
    init_logging();
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

/// Sends `tracing` events to stderr, filtered by `MSB_LOG` (default: warnings), each with the
/// time since start: `MSB_LOG=debug` shows where a command spends its time. `Targets` rather than
/// `EnvFilter`: it parses without compiling regular expressions, on every command's critical path.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let given = std::env::var(crate::env::MSB_LOG).ok().filter(|v| !v.is_empty());
    let parsed = given.as_deref().map(str::parse::<tracing_subscriber::filter::Targets>);
    let filter = match &parsed {
        Some(Ok(targets)) => targets.clone(),
        _ => tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN),
    };
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::Uptime::default())
        .with_target(false);
    tracing_subscriber::registry().with(format).with(filter).init();
    if let Some(Err(err)) = parsed {
        tracing::warn!("{} is not a log filter ({err}); showing warnings", crate::env::MSB_LOG);
    }
}

/// Prints an error once, for people. An invalid Sandboxfile prints each problem with its own
/// snippet, then one line that sums up.
pub(crate) fn render(err: Error) {
    if let Error::Manifest(ManifestError::Invalid(invalid)) = &err {
        for report in invalid.reports() {
            eprintln!("{report:?}");
        }
        eprintln!("error: {invalid}");
        return;
    }
    // Errors carry their I/O cause in their message, wherever in the store it struck; a full
    // disk is told by the OS's own words (`std::io::Error` ends them with the errno).
    let full_disk = err.to_string().contains(&format!("(os error {})", rustix::io::Errno::NOSPC.raw_os_error()));
    eprintln!("{:?}", miette::Report::new(err));
    if full_disk {
        eprintln!("  help: the disk that holds msb's store is full: `msb cache gc` removes what no Sandboxfile used lately (`msb cache ls` lists it with sizes)");
    }
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
            out!("{}", crate::manifest::schema::schema_json().trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull(args) => images::pull(cli.home, args),
        Command::Images => images::list(cli.home),
        Command::Rmi(args) => images::rmi(cli.home, args),
        Command::Load(args) => images::load(cli.home, args),
        Command::Plan(args) => build::plan(cli.home, args),
        Command::Build(args) => build::build(cli.home, args),
        Command::Export(args) => publish::export(cli.home, args),
        Command::Cache(args) => cache::run(cli.home, args),
        Command::Up(args) => up::up(cli.home, args),
        Command::Run(args) => up::run(cli.home, args),
        Command::Exec(args) => sandboxes::exec(cli.home, args),
        Command::Shell(args) => sandboxes::shell(cli.home, args),
        Command::Ls(args) => sandboxes::ls(cli.home, args),
        Command::Stop(args) => sandboxes::stop(cli.home, args),
        Command::Rm(args) => sandboxes::rm(cli.home, args),
        Command::Logs(args) => sandboxes::logs(cli.home, args),
    }
}
