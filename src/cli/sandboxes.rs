//! `msb exec`, `shell`, `ls`, `stop`, `rm` and `logs`: the sandboxes of this msb home, by name.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};

use super::Format;
use crate::agent::{ExecRequest, terminal};
use crate::error::Error;
use crate::runtime::{RuntimeError, Sandboxes, Status};
use crate::sandbox;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox.
    pub name: String,
    /// The command and its arguments (a script's name runs the script).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// Pass stdin even when it is a terminal (it always is when redirected).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run under a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    #[command(flatten)]
    pub settings: ExecSettings,
}

#[derive(Debug, Args)]
pub struct ExecSettings {
    /// An environment variable (repeatable), over the sandbox's.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory [default: the sandbox's]
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// The user [default: the sandbox's]
    #[arg(short, long)]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The sandbox.
    pub name: String,
    /// The shell [default: bash if the image has it, else sh]
    #[arg(last = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub settings: ExecSettings,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Seconds to wait for PID 1 after its stop signal before killing it.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Remove running sandboxes too (they are killed).
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing new output until the sandbox stops.
    #[arg(short, long)]
    pub follow: bool,
}

/// Every sandbox command starts here: what a killed msb left is cleaned before anything else.
pub(super) fn open(home: Option<PathBuf>) -> Result<Sandboxes, Error> {
    let store = Store::open(home.as_deref())?;
    let sandboxes = Sandboxes::new(store.root());
    clean_stale(&sandboxes)?;
    Ok(sandboxes)
}

pub(super) fn clean_stale(sandboxes: &Sandboxes) -> Result<(), Error> {
    for (name, reason) in sandboxes.cleanup_stale()? {
        eprintln!("{name}: cleaned up ({reason})");
    }
    Ok(())
}

pub(super) fn exec(home: Option<PathBuf>, args: ExecArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    let stdin_is_terminal = io::stdin().is_terminal();
    let pass_stdin = args.interactive || args.tty || !stdin_is_terminal;
    run_in(&sandboxes, &args.name, args.command, &args.settings, args.tty, pass_stdin)
}

pub(super) fn shell(home: Option<PathBuf>, args: ShellArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    let command = if args.command.is_empty() {
        let pick = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";
        vec!["/bin/sh".to_owned(), "-c".to_owned(), pick.to_owned()]
    } else {
        args.command
    };
    run_in(&sandboxes, &args.name, command, &args.settings, true, true)
}

/// Runs `argv` in `name`, relaying stdio, signals and (with a tty) the terminal's size; exits
/// with the command's exit code.
fn run_in(sandboxes: &Sandboxes, name: &str, argv: Vec<String>, settings: &ExecSettings, tty: bool, pass_stdin: bool) -> Result<ExitCode, Error> {
    let size = tty.then(|| terminal::size(io::stdout().as_fd()).or_else(|| terminal::size(io::stdin().as_fd())));
    let request = ExecRequest {
        argv,
        env: settings.env.clone(),
        workdir: settings.workdir.clone(),
        user: settings.user.clone(),
        tty: size.map(|s| s.unwrap_or(crate::agent::WindowSize { rows: 24, cols: 80 })),
    };
    let session = sandbox::session(sandboxes, name, &request)?;
    let control = session.control();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGWINCH])
        .map_err(|cause| RuntimeError::Io { op: "watch signals of", path: "msb".into(), cause })?;
    let handle = signals.handle();
    let relay = thread::spawn(move || {
        for signal in signals.forever() {
            let _ = match signal {
                SIGWINCH => match terminal::size(io::stdout().as_fd()) {
                    Some(size) => control.resize(size),
                    None => Ok(()),
                },
                other => control.signal(other),
            };
        }
    });
    // Keys go to the sandbox's terminal as typed (Ctrl-C included) while it runs.
    let raw = (tty && io::stdin().is_terminal()).then(|| terminal::RawMode::enable(io::stdin().as_fd()).ok()).flatten();
    let stdin: Box<dyn Read + Send> = if pass_stdin { Box::new(io::stdin()) } else { Box::new(io::empty()) };
    let result = session.run(stdin, &mut io::stdout(), &mut io::stderr());
    drop(raw);
    handle.close();
    let _ = relay.join();
    let exit = result.map_err(|error| sandbox::SandboxError::Exec { name: name.into(), error })?;
    Ok(ExitCode::from(u8::try_from(exit.code()).unwrap_or(1)))
}

pub(super) fn ls(home: Option<PathBuf>, args: LsArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    let list = sandboxes.list()?;
    match args.format {
        Format::Json => {
            let rows: Vec<_> = list
                .iter()
                .map(|(name, status)| serde_json::json!({"name": name, "status": sandbox::describe(status), "backend": backend(status)}))
                .collect();
            out!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        }
        Format::Human => {
            let width = list.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(4);
            out!("{:width$}  {:<7}  STATUS", "NAME", "BACKEND");
            for (name, status) in &list {
                out!("{name:width$}  {:<7}  {}", backend(status), sandbox::describe(status));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn backend(status: &Status) -> String {
    match status {
        Status::Running { backend, .. } => backend.to_string(),
        _ => "-".into(),
    }
}

pub(super) fn stop(home: Option<PathBuf>, args: StopArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    for name in &args.names {
        sandboxes.stop(name, Duration::from_secs(args.time))?;
        eprintln!("{name}: stopped");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rm(home: Option<PathBuf>, args: RmArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    for name in &args.names {
        if !args.force && matches!(sandboxes.status(name)?, Status::Running { .. }) {
            return Err(sandbox::SandboxError::Running { name: name.clone() }.into());
        }
        sandboxes.remove(name)?;
        eprintln!("{name}: removed");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn logs(home: Option<PathBuf>, args: LogsArgs) -> Result<ExitCode, Error> {
    let sandboxes = open(home)?;
    if matches!(sandboxes.status(&args.name)?, Status::Absent) {
        return Err(RuntimeError::NotFound { name: args.name }.into());
    }
    let path = sandboxes.log_path(&args.name);
    let mut file = fs::File::open(&path).map_err(RuntimeError::io("read", &path))?;
    let mut stdout = io::stdout().lock();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(RuntimeError::io("read", &path))?;
        if n > 0 {
            if stdout.write_all(&buffer[..n]).is_err() {
                return Ok(ExitCode::SUCCESS); // a closed pipe (`msb logs | head`)
            }
            continue;
        }
        let _ = stdout.flush();
        // At the end: done, unless following a sandbox that still runs (then read what it adds).
        if !args.follow || !matches!(sandboxes.status(&args.name)?, Status::Running { .. } | Status::Busy) {
            return Ok(ExitCode::SUCCESS);
        }
        thread::sleep(Duration::from_millis(100));
    }
}
