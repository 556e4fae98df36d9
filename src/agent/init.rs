//! The agent's entry point. As PID 1 it mounts what processes expect, names the host, binds the
//! exec socket and starts the exec server, then either stays PID 1 and supervises the main
//! command (`init = agent`) or execs the image's init so that it becomes PID 1 (`init = path`).
//!
//! The exec server is always a separate process (`msb-agent --serve`, the listening socket as
//! its stdin): PID 1's `waitpid(-1)` reaping would otherwise steal its children's exit statuses,
//! and under a handed-off init it must live beside PID 1 anyway.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use super::process::{self, LaunchError};
use super::protocol::{AgentConfig, GUEST_CONFIG, InitMode, Listen, PROTOCOL_VERSION};
use super::{mounts, server, user};

/// The agent could not set the sandbox up (the runtime convention for "the runtime failed").
const EXIT_SETUP: i32 = 125;
/// The init (or main command) does not exist, as a shell says it.
const EXIT_NOT_FOUND: i32 = 127;

/// Signals PID 1 passes on to the main command's process group.
const FORWARDED: [NixSignal; 6] =
    [NixSignal::SIGTERM, NixSignal::SIGINT, NixSignal::SIGHUP, NixSignal::SIGQUIT, NixSignal::SIGUSR1, NixSignal::SIGUSR2];

#[derive(Debug, PartialEq, Eq)]
enum Args {
    /// Boot the sandbox from this configuration.
    Boot { config: PathBuf },
    /// Serve exec requests on the listening socket given as stdin.
    Serve { config: PathBuf },
    Version,
    Help,
}

const USAGE: &str = "usage: msb-agent [--config PATH]   boot a sandbox (as its PID 1) from PATH (default /.msb/config.json)
       msb-agent --version";

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let (mut config, mut serve) = (PathBuf::from(GUEST_CONFIG), false);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--serve") => serve = true,
            Some("--config") => config = args.next().ok_or("`--config` needs a path")?.into(),
            Some("--version" | "-V") => return Ok(Args::Version),
            Some("--help" | "-h") => return Ok(Args::Help),
            _ => return Err(format!("unknown argument `{}`", arg.to_string_lossy())),
        }
    }
    Ok(if serve { Args::Serve { config } } else { Args::Boot { config } })
}

/// Runs the agent; never returns.
pub fn main() -> ! {
    let pid1 = rustix::process::getpid().is_init();
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(args) => args,
        // A kernel passes what it does not understand on its command line to init: boot anyway.
        Err(err) if pid1 => {
            eprintln!("msb-agent: {err} (ignored)");
            Args::Boot { config: GUEST_CONFIG.into() }
        }
        Err(err) => fail(2, format!("{err}\n{USAGE}")),
    };
    match args {
        Args::Version => {
            println!("msb-agent {} (agent protocol {PROTOCOL_VERSION})", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        Args::Help => {
            println!("{USAGE}");
            std::process::exit(0)
        }
        Args::Serve { config } => serve(&config),
        Args::Boot { config } => boot(&config, pid1),
    }
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("msb-agent: {message}");
    std::process::exit(code)
}

fn load(path: &Path) -> Result<AgentConfig, String> {
    let bytes = fs::read(path).map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|err| format!("`{}` is not an agent configuration: {err}", path.display()))
}

/// Checked before anything is forked: a missing init must fail the boot, visibly.
fn check_init(path: &str) -> Result<(), String> {
    let why = match fs::metadata(path) {
        _ if !path.starts_with('/') => "the path must be absolute".to_owned(),
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => return Ok(()),
        Ok(meta) if !meta.is_file() => "it is not a file".to_owned(),
        Ok(_) => "it is not executable".to_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => "it does not exist in the sandbox".to_owned(),
        Err(err) => err.to_string(),
    };
    Err(format!("cannot hand PID 1 to init `{path}`: {why}"))
}

/// The init's arguments: the rest of `argv` when it starts with the init (an image whose
/// entrypoint is its init), else none (the init decides what runs).
fn init_args<'a>(argv: &'a [String], init: &str) -> &'a [String] {
    match argv.split_first() {
        Some((first, rest)) if first == init => rest,
        _ => &[],
    }
}

fn describe(listen: &Listen) -> String {
    match listen {
        Listen::Unix(path) => format!("`{path}`"),
        Listen::Vsock(port) => format!("vsock port {port}"),
    }
}

fn boot(config_path: &Path, pid1: bool) -> ! {
    let config = load(config_path).unwrap_or_else(|err| fail(EXIT_SETUP, err));
    if let InitMode::Path(init) = &config.init {
        check_init(init).unwrap_or_else(|err| fail(EXIT_NOT_FOUND, err));
    }
    if pid1 {
        mounts::setup();
        if let Some(hostname) = config.hostname.as_deref().filter(|h| !h.is_empty()) {
            mounts::set_hostname(hostname);
        }
    } else if config.init == InitMode::Agent {
        // Outside a PID namespace (a test, a debug run): orphans still come to the agent.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    }
    let listener = server::bind(&config.listen)
        .unwrap_or_else(|err| fail(EXIT_SETUP, format!("cannot listen on {}: {err}", describe(&config.listen))));
    match &config.init {
        InitMode::Agent => supervise(&config, config_path, listener),
        InitMode::Path(init) => hand_off(&config, init, config_path, listener),
    }
}

/// Starts `msb-agent --serve` with the listening socket as its stdin.
fn start_server(config_path: &Path, listener: &OwnedFd) -> io::Result<Pid> {
    // The real path, so the server's name in `ps` is the agent's, not `exe`.
    let exe = std::env::current_exe().ok().filter(|p| p.exists()).unwrap_or_else(|| "/proc/self/exe".into());
    let child = Command::new(exe)
        .arg("--serve")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::from(listener.try_clone()?))
        .spawn()?;
    Ok(Pid::from_child(&child))
}

/// The exec server's process.
fn serve(config_path: &Path) -> ! {
    // Its own session, out of reach of what the init does to its process group; but it dies
    // with its parent (the sandbox's PID 1; outside a namespace, a debug run's agent).
    let _ = rustix::process::setsid();
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // Started by PID 1, which blocks the signals it reads from a signalfd.
    let _ = SigSet::empty().thread_set_mask();
    let config = load(config_path).unwrap_or_else(|err| fail(EXIT_SETUP, err));
    let listener = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|err| fail(EXIT_SETUP, format!("no listening socket on stdin: {err}")));
    if matches!(config.init, InitMode::Path(_)) {
        wait_for_handoff();
    }
    let err = server::serve(listener, config);
    fail(EXIT_SETUP, format!("the exec server stopped: {err}"))
}

/// Waits until the parent (PID 1) has exec'd the init, so that an exec answered is an exec
/// beside the init (connections meanwhile wait in the socket's backlog).
fn wait_for_handoff() {
    let parent = format!("/proc/{}/exe", rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get()));
    let identity = |path: &str| fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let (ours, started) = (identity("/proc/self/exe"), Instant::now());
    while ours.is_some() && identity(&parent) == ours {
        if started.elapsed() > Duration::from_secs(10) {
            eprintln!("msb-agent: the init has not started after 10s; serving exec anyway");
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Hands PID 1 to the init; the exec server started first keeps running beside it.
fn hand_off(config: &AgentConfig, init: &str, config_path: &Path, listener: OwnedFd) -> ! {
    if let Err(err) = start_server(config_path, &listener) {
        eprintln!("msb-agent: cannot start the exec server: {err}; booting `{init}` without exec");
    }
    drop(listener);
    let home = user::resolve_in_guest(None).map(|id| id.home).unwrap_or_else(|_| "/".into());
    // systemd checks `container=` to behave as a container's init.
    let env = process::environment(&config.env, &["container=msb".into()], &home, false);
    let err = Command::new(init).args(init_args(&config.argv, init)).env_clear().envs(env).current_dir("/").exec();
    fail(EXIT_NOT_FOUND, format!("cannot exec init `{init}`: {err}"))
}

fn start_main(config: &AgentConfig) -> Result<Pid, LaunchError> {
    let identity = user::resolve_in_guest(config.user.as_deref())?;
    let env = process::environment(&config.env, &[], &identity.home, false);
    // As Docker does for the main command: a missing workdir is created.
    let _ = fs::create_dir_all(&config.workdir);
    let mut command = process::command(&config.argv, &env, &config.workdir, &identity, None)?;
    let program = config.argv.first().map(String::as_str).unwrap_or_default();
    let child = command.spawn().map_err(|cause| process::spawn_error(program, cause, &env))?;
    Ok(Pid::from_child(&child))
}

fn exit_code(status: WaitStatus) -> i32 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}

/// PID 1 with `init = agent`: reaps every process that ends up its child, forwards signals to
/// the main command, starts the exec server when the first exec connects (and again if it dies),
/// and exits with the main command's code. Without a main command it serves exec until SIGTERM,
/// SIGINT or SIGQUIT, then exits 0.
///
/// The server is started on demand: a sandbox nobody execs into (`msb up` of a command that
/// finishes) never pays for it, and PID 1 is not held in a spawn of it (about a millisecond)
/// while the main command may already be waiting to be reaped. A connection waits in the
/// socket's backlog meanwhile.
///
/// Signals are blocked and read from a signalfd: one thread, no handler, nothing lost (a
/// namespace's PID 1 only gets the signals it handles or blocks).
fn supervise(config: &AgentConfig, config_path: &Path, listener: OwnedFd) -> ! {
    let mut mask = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([NixSignal::SIGCHLD]) {
        mask.add(signal);
    }
    if let Err(err) = mask.thread_block() {
        fail(EXIT_SETUP, format!("cannot block signals: {err}"));
    }
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .unwrap_or_else(|err| fail(EXIT_SETUP, format!("cannot open a signalfd: {err}")));
    let main = if config.argv.is_empty() {
        None
    } else {
        Some(start_main(config).unwrap_or_else(|err| fail(err.exit_code(), err)))
    };
    let mut server: Option<Pid> = None;
    // When the server last started; one that dies within a second waits that long to restart.
    let mut server_started: Option<Instant> = None;
    loop {
        loop {
            // `wait`, not `waitpid(None)`: that is pid 0, this process group only.
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) if Some(pid) == main => std::process::exit(exit_code(status)),
                Ok(Some((pid, status))) if Some(pid) == server => {
                    eprintln!("msb-agent: the exec server exited (status {}); restarting it", exit_code(status));
                    server = None;
                }
                Ok(Some(_)) => {}
                Err(Errno::INTR) => {}
                // No child has exited (or none is left).
                Ok(None) | Err(_) => break,
            }
        }
        let mut fds = vec![PollFd::new(&signals, PollFlags::IN)];
        if server.is_none() {
            fds.push(PollFd::new(&listener, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(err) => {
                eprintln!("msb-agent: waiting for signals and connections: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
        let (signalled, connected) = (!fds[0].revents().is_empty(), fds.get(1).is_some_and(|fd| !fd.revents().is_empty()));
        if connected {
            if server_started.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                thread::sleep(Duration::from_secs(1));
            }
            server = start_server(config_path, &listener).map_err(|err| eprintln!("msb-agent: cannot start the exec server: {err}")).ok();
            server_started = Some(Instant::now());
        }
        if !signalled {
            continue;
        }
        match signals.read_signal() {
            Ok(Some(info)) => {
                let number = info.ssi_signo as i32;
                match (main, Signal::from_named_raw(number)) {
                    (_, None) => {}
                    (_, Some(Signal::CHILD)) => {}
                    (Some(main), Some(signal)) => {
                        if rustix::process::kill_process_group(main, signal).is_err() {
                            let _ = rustix::process::kill_process(main, signal);
                        }
                    }
                    (None, Some(Signal::TERM | Signal::INT | Signal::QUIT)) => std::process::exit(0),
                    (None, Some(_)) => {}
                }
            }
            Ok(None) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => {
                eprintln!("msb-agent: reading signals: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn arguments() {
        assert_eq!(args(&[]), Ok(Args::Boot { config: GUEST_CONFIG.into() }));
        assert_eq!(args(&["--config", "/c.json"]), Ok(Args::Boot { config: "/c.json".into() }));
        assert_eq!(args(&["--serve", "--config", "/c.json"]), Ok(Args::Serve { config: "/c.json".into() }));
        assert_eq!(args(&["--version"]), Ok(Args::Version));
        assert_eq!(args(&["--config"]), Err("`--config` needs a path".into()));
        assert_eq!(args(&["quiet"]), Err("unknown argument `quiet`".into()));
    }

    #[test]
    fn inits_are_checked_before_boot() {
        assert_eq!(check_init("/bin/sh"), Ok(()));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        fs::write(&file, "").expect("write");
        let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
        let cases = [
            (path(&dir.path().join("missing")), "it does not exist in the sandbox"),
            (path(dir.path()), "it is not a file"),
            (path(&file), "it is not executable"),
            ("sbin/init".to_owned(), "the path must be absolute"),
        ];
        for (init, why) in cases {
            assert_eq!(check_init(&init), Err(format!("cannot hand PID 1 to init `{init}`: {why}")));
        }
    }

    #[test]
    fn an_entrypoint_that_is_the_init_gives_it_its_arguments() {
        let argv: Vec<String> = ["/sbin/init", "--log-level=debug"].map(String::from).to_vec();
        assert_eq!(init_args(&argv, "/sbin/init"), ["--log-level=debug".to_owned()]);
        assert!(init_args(&argv, "/lib/systemd/systemd").is_empty());
        assert!(init_args(&[], "/sbin/init").is_empty());
    }
}
