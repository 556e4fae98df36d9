//! A sandbox of a Sandboxfile, from its built layers to a running sandbox: the boot spec (the
//! Sandboxfile merged with its image), the backend, the agent, and commands run in it.
//!
//! `msb up`, `msb run` and the SDK all boot through here, so a sandbox starts the same way
//! whoever asks.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{self, ClientError, ExecRequest, Exit};
use crate::manifest::{Manifest, SandboxConfig};
use crate::project::Built;
use crate::runtime::{
    self, Choice, OciRuntime, Pid1, ProcessSpec, Running, RuntimeError, SandboxSpec, Sandboxes, StartOptions, Status,
};

/// How long a detached sandbox's agent may take to answer after boot.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sandbox could not be booted or reached.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SandboxError {
    #[error("the agent binary `{}` cannot be used: {reason}", path.display())]
    #[diagnostic(help(
        "build it beside msb with `cargo build --release --bin msb-agent` (it is linked statically), or point ${} at one",
        crate::env::MSB_AGENT
    ))]
    Agent { path: PathBuf, reason: String },
    #[error("cannot read the scripts of sandbox `{name}`: {cause}")]
    Scripts { name: String, cause: std::io::Error },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("sandbox `{name}` is not running ({status})")]
    #[diagnostic(help("start it with `msb up -d {name}`; `msb ls` lists the sandboxes"))]
    NotRunning { name: String, status: String },
    #[error("sandbox `{name}`: {error}")]
    Exec { name: String, error: ClientError },
    #[error("sandbox `{name}` is running")]
    #[diagnostic(help("stop it first with `msb stop {name}`, or remove it anyway with `msb rm -f {name}`"))]
    Running { name: String },
}

impl SandboxError {
    /// `msb exec`'s exit code when the command did not run: the shell's 126/127, else 125 (as
    /// `docker exec`).
    pub fn exec_exit_code(&self) -> Option<i32> {
        match self {
            SandboxError::Exec { error, .. } => Some(error.exit_code()),
            _ => None,
        }
    }
}

/// The agent binary, checked: it must exist and be static (it runs in roots without our libc).
pub fn agent_binary() -> Result<PathBuf, SandboxError> {
    let path = agent::installed();
    let fail = |reason: String| SandboxError::Agent { path: path.clone(), reason };
    match agent::is_static_executable(&path) {
        Ok(true) => Ok(path),
        Ok(false) => Err(fail("it is dynamically linked, and sandboxes do not have the host's libraries".into())),
        Err(err) => Err(fail(err.to_string())),
    }
}

/// What the runtime boots for `built`: the Sandboxfile's settings merged with its image's config,
/// its layers, its scripts, with `agent` as PID 1.
pub fn boot_spec(manifest: &Manifest, config: &SandboxConfig, built: &Built, agent: &Path) -> Result<SandboxSpec, SandboxError> {
    let name = built.name.as_str().to_owned();
    let scripts = crate::project::scripts(manifest, config).map_err(|cause| SandboxError::Scripts { name: name.clone(), cause })?;
    Ok(SandboxSpec {
        name,
        lowers: built.lowers.clone(),
        image_id: built.image.chain_id.to_string(),
        process: ProcessSpec::merge(&built.image.config, config),
        init: config.init.clone(),
        pid1: Pid1::Agent { binary: agent.to_owned() },
        scripts,
        cpus: config.cpus,
        memory: config.memory.as_ref().map(|m| m.bytes()),
        network: config.network,
    })
}

/// Picks the backend for `config.runtime` and boots `spec`. Detached, it returns once the agent
/// answers (or PID 1 has already exited), so `msb exec` works right after.
pub fn start(
    sandboxes: &Sandboxes,
    manifest: &Manifest,
    config: &SandboxConfig,
    spec: &SandboxSpec,
    detach: bool,
) -> Result<(Running, Choice), SandboxError> {
    let choice = runtime::choose_backend(config.runtime)?;
    let options =
        StartOptions { backend: choice.backend, detach, oci_runtime: OciRuntime::crun(), owner: Some(manifest.path.clone()) };
    let running = sandboxes.start(spec, &options)?;
    if detach {
        wait_ready(sandboxes, &spec.name)?;
    }
    Ok((running, choice))
}

/// What [`up_detached`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// It was running with this very boot spec: left alone.
    UpToDate,
    /// It was not running; the backend chosen and why.
    Started(Choice),
    /// It was running with another boot spec: stopped, then started again.
    Restarted(Choice),
}

/// Starts a built sandbox in the background, as `msb up -d` and the SDK do: a sandbox already
/// running with the same boot spec is left alone, one running with another is restarted.
pub fn up_detached(sandboxes: &Sandboxes, manifest: &Manifest, built: &Built, agent: &Path) -> Result<Detached, SandboxError> {
    let config = &manifest.file.sandbox[&built.name];
    let spec = boot_spec(manifest, config, built, agent)?;
    // Before comparing specs: another Sandboxfile's sandbox is neither up to date nor restarted.
    sandboxes.check_owner(&spec.name, &manifest.path)?;
    let restart = match sandboxes.running_digest(&spec.name)? {
        Some(digest) if digest == spec.digest() => return Ok(Detached::UpToDate),
        Some(_) => {
            sandboxes.stop(&spec.name, runtime::DEFAULT_STOP_TIMEOUT)?;
            true
        }
        None => false,
    };
    let (_, choice) = start(sandboxes, manifest, config, &spec, true)?;
    Ok(if restart { Detached::Restarted(choice) } else { Detached::Started(choice) })
}

/// Waits until the agent of `name` answers, or its PID 1 is gone (a main command that already
/// finished is not an error: its output is in the log).
pub fn wait_ready(sandboxes: &Sandboxes, name: &str) -> Result<(), SandboxError> {
    let socket = sandboxes.agent_socket(name);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match agent::ping(&socket) {
            Ok(_) => return Ok(()),
            Err(error @ ClientError::VersionMismatch(_)) => return Err(SandboxError::Exec { name: name.into(), error }),
            Err(error) if Instant::now() >= deadline => return Err(SandboxError::Exec { name: name.into(), error }),
            Err(_) => {}
        }
        if !matches!(sandboxes.status(name)?, Status::Running { .. } | Status::Busy) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `request` in the running sandbox `name`, streaming `stdin` to it and its output to
/// `stdout`/`stderr`.
pub fn exec<R: Read + Send + 'static>(
    sandboxes: &Sandboxes,
    name: &str,
    request: &ExecRequest,
    stdin: R,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Exit, SandboxError> {
    let session = session(sandboxes, name, request)?;
    session.run(stdin, stdout, stderr).map_err(|error| SandboxError::Exec { name: name.into(), error })
}

/// Starts `request` in the running sandbox `name`, for callers that also signal or resize it.
pub fn session(sandboxes: &Sandboxes, name: &str, request: &ExecRequest) -> Result<agent::Session, SandboxError> {
    match sandboxes.status(name)? {
        Status::Running { .. } => {}
        other => return Err(SandboxError::NotRunning { name: name.into(), status: describe(&other) }),
    }
    agent::Session::start(&sandboxes.agent_socket(name), request).map_err(|error| SandboxError::Exec { name: name.into(), error })
}

/// One word or phrase for a status, as `msb ls` shows it.
pub fn describe(status: &Status) -> String {
    match status {
        Status::Absent => "absent".into(),
        Status::Busy => "starting or stopping".into(),
        Status::Running { .. } => "running".into(),
        Status::Exited { exit_code: Some(code) } => format!("exited ({code})"),
        Status::Exited { exit_code: None } => "stopped".into(),
        Status::Stale { reason } => format!("stale: {reason}"),
    }
}
