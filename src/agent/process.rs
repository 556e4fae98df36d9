//! Starting a command in the guest, for the main command and for execs alike: its environment
//! (`/.msb/scripts` first on `PATH`), working directory, user and terminal.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use indexmap::IndexMap;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask};
use rustix::process::{Gid, Uid};

use super::protocol::GUEST_SCRIPTS;
use super::user::{Identity, UserError};

/// `PATH` when the image sets none (Docker's default).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command could not be started. The messages are what the user sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("no command to run")]
    NoCommand,
    #[error(transparent)]
    User(#[from] UserError),
    #[error("workdir `{0}` is not a directory in the sandbox")]
    Workdir(String),
    #[error("cannot open a terminal: {0}")]
    Terminal(io::Error),
    #[error("`{0}`: command not found")]
    NotFound(String),
    #[error("cannot run `{program}`: {cause}")]
    Spawn { program: String, cause: io::Error },
}

impl LaunchError {
    /// What a shell would exit with: 127 when the command does not exist, else 126.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) | LaunchError::NoCommand => 127,
            _ => 126,
        }
    }
}

/// The environment of a command: `base` (the sandbox's), then `extra` (the exec's) over it, then
/// `PATH` with `/.msb/scripts` first (so scripts run by name), `HOME` from the user and `TERM`
/// for terminals when they are not set.
pub(crate) fn environment(base: &[String], extra: &[String], home: &str, tty: bool) -> Vec<(String, String)> {
    let mut env: IndexMap<String, String> = IndexMap::new();
    for entry in base.iter().chain(extra) {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        if !key.is_empty() {
            env.insert(key.to_owned(), value.to_owned());
        }
    }
    let path = env.get("PATH").filter(|p| !p.is_empty()).map_or(DEFAULT_PATH, String::as_str);
    let path: Vec<&str> = std::iter::once(GUEST_SCRIPTS).chain(path.split(':').filter(|dir| *dir != GUEST_SCRIPTS)).collect();
    env.insert("PATH".into(), path.join(":"));
    env.entry("HOME".into()).or_insert_with(|| home.to_owned());
    if tty {
        env.entry("TERM".into()).or_insert_with(|| "xterm".into());
    }
    env.into_iter().collect()
}

/// A command for `argv` with exactly `env`, in `workdir`, as `identity`. With `terminal` (a pty's
/// slave) the command gets it as stdin, stdout, stderr and controlling terminal, in a new
/// session; without, it gets its own process group (signals reach it and its children) and the
/// caller sets its stdio.
pub(crate) fn command(
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    identity: &Identity,
    terminal: Option<&OwnedFd>,
) -> Result<Command, LaunchError> {
    let (program, args) = argv.split_first().ok_or(LaunchError::NoCommand)?;
    if !Path::new(workdir).is_dir() {
        return Err(LaunchError::Workdir(workdir.to_owned()));
    }
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v))).current_dir(workdir);
    let mut setup = ChildSetup { terminal: None, identity: None };
    match terminal {
        Some(slave) => {
            let dup = || slave.try_clone().map_err(LaunchError::Terminal);
            command.stdin(Stdio::from(dup()?)).stdout(Stdio::from(dup()?)).stderr(Stdio::from(dup()?));
            setup.terminal = Some(dup()?);
        }
        None => {
            command.process_group(0);
        }
    }
    let current = rustix::process::geteuid();
    if current.is_root() || current.as_raw() != identity.uid {
        setup.identity = Some((
            Uid::from_raw(identity.uid),
            Gid::from_raw(identity.gid),
            identity.groups.iter().map(|&g| Gid::from_raw(g)).collect(),
        ));
    }
    setup.install(&mut command);
    Ok(command)
}

/// Explains a failed spawn of `argv[0]` as a shell would.
pub(crate) fn spawn_error(program: &str, cause: io::Error, env: &[(String, String)]) -> LaunchError {
    let path = env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    match cause.kind() {
        // ENOENT for a file that exists: its `#!` interpreter or its ELF loader is missing.
        io::ErrorKind::NotFound if locate(program, path).is_none() => LaunchError::NotFound(program.to_owned()),
        io::ErrorKind::NotFound => LaunchError::Spawn {
            program: program.to_owned(),
            cause: io::Error::other("its interpreter (`#!` line) or dynamic loader does not exist in the sandbox"),
        },
        _ => LaunchError::Spawn { program: program.to_owned(), cause },
    }
}

/// Where `program` is found: itself when it has a `/`, else the first match on `path`.
fn locate(program: &str, path: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| program.into());
    }
    path.split(':').map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program)).find(|p| p.is_file())
}

/// Signals whose disposition a command must not inherit.
const RESET_SIGNALS: [Signal; 12] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPIPE,
    Signal::SIGALRM,
    Signal::SIGCHLD,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// What the child does between fork and exec, where std's `Command` cannot: take a controlling
/// terminal, and set supplementary groups before dropping root.
struct ChildSetup {
    terminal: Option<OwnedFd>,
    identity: Option<(Uid, Gid, Vec<Gid>)>,
}

impl ChildSetup {
    fn install(self, command: &mut Command) {
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // calls are allowed. It only borrows memory prepared before the fork and makes system
        // calls (sigprocmask, sigaction, setsid, ioctl, setgroups, setgid, setuid): no
        // allocation, no lock.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || self.apply());
        }
    }

    fn apply(&self) -> io::Result<()> {
        // PID 1 blocks the signals it reads from a signalfd, and the runtime may have left some
        // ignored: a command starts with none blocked and default dispositions (std resets
        // neither).
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        for signal in RESET_SIGNALS {
            // SAFETY: SIG_DFL installs no handler; sigaction is async-signal-safe.
            #[allow(unsafe_code)]
            unsafe {
                nix::sys::signal::signal(signal, SigHandler::SigDfl)?;
            }
        }
        if let Some(terminal) = &self.terminal {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(terminal)?;
        }
        if let Some((uid, gid, groups)) = &self.identity {
            rustix::thread::set_thread_groups(groups)?;
            rustix::thread::set_thread_gid(*gid)?;
            rustix::thread::set_thread_uid(*uid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(base: &[&str], extra: &[&str], tty: bool) -> Vec<String> {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        environment(&owned(base), &owned(extra), "/home/app", tty).into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn scripts_come_first_on_path() {
        assert_eq!(env(&[], &[], false), [format!("PATH=/.msb/scripts:{DEFAULT_PATH}"), "HOME=/home/app".into()]);
        assert_eq!(env(&["PATH=/bin"], &[], false)[0], "PATH=/.msb/scripts:/bin");
        assert_eq!(env(&["PATH=/bin:/.msb/scripts"], &[], false)[0], "PATH=/.msb/scripts:/bin");
        assert_eq!(env(&["PATH=/bin"], &["PATH=/opt/bin:/bin"], false)[0], "PATH=/.msb/scripts:/opt/bin:/bin");
        assert_eq!(env(&["PATH="], &[], false)[0], format!("PATH=/.msb/scripts:{DEFAULT_PATH}"));
    }

    #[test]
    fn exec_env_overrides_the_sandbox_env_in_place() {
        let got = env(&["A=1", "HOME=/root", "B=2=3"], &["A=x", "C", "=skipped"], true);
        assert_eq!(got, ["A=x", "HOME=/root", "B=2=3", "C=", &format!("PATH=/.msb/scripts:{DEFAULT_PATH}"), "TERM=xterm"]);
        assert!(env(&["TERM=dumb"], &[], true).contains(&"TERM=dumb".to_string()));
    }

    #[test]
    fn launch_errors_say_what_a_shell_says() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin".to_string())];
        let not_found = spawn_error("no-such-command", io::ErrorKind::NotFound.into(), &env);
        assert_eq!((not_found.to_string().as_str(), not_found.exit_code()), ("`no-such-command`: command not found", 127));
        let denied = spawn_error("/etc", io::ErrorKind::PermissionDenied.into(), &env);
        assert_eq!(denied.exit_code(), 126);
        assert!(denied.to_string().starts_with("cannot run `/etc`: "), "{denied}");
        let no_loader = spawn_error("sh", io::ErrorKind::NotFound.into(), &env);
        assert!(no_loader.to_string().contains("interpreter"), "{no_loader}");
        let identity = Identity { uid: 0, gid: 0, groups: vec![0], home: "/".into() };
        let err = command(&["true".into()], &env, "/nonexistent", &identity, None).unwrap_err();
        assert_eq!(err.to_string(), "workdir `/nonexistent` is not a directory in the sandbox");
        assert!(matches!(command(&[], &env, "/", &identity, None), Err(LaunchError::NoCommand)));
    }
}
