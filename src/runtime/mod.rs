//! Booting sandboxes: one [`Backend`] trait, two backends (`oci` through crun or runc, `krun`
//! through libkrun), the same rootfs view and the same agent.
//!
//! The caller (`msb up`, `msb run`) merges the Sandboxfile with the image into a [`SandboxSpec`],
//! picks a backend with [`choose_backend`], and calls [`Sandboxes::start`]. Everything a running
//! sandbox owns lives in its folder ([`SandboxDir`]) and in processes and mount namespaces that
//! die with it: a killed msb leaves a `state.json` whose processes are gone, or whose supervisor
//! is gone, and [`Sandboxes::cleanup_stale`] (run by every command) removes what is left.

pub mod cgroup;
pub mod krun;
pub mod oci;
pub mod state;
mod sys;
pub mod view;

#[cfg(test)]
mod e2e;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;

pub use cgroup::CgroupLayout;
pub use oci::OciRuntime;
pub use state::{BackendKind, SandboxDir, State, Status, StopSignal};
pub use sys::ProcessRef;
pub use view::{GuestConfig, ResolvedInit};

pub use crate::manifest::Network;
use crate::manifest::{Init, Runtime, SandboxConfig};
use crate::store::RuntimeConfig;
use crate::store::lock::Lock;

/// The agent's socket file name, in `run/` on the host and `/.msb/run` in the guest.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";
/// How long `stop` waits for PID 1 before killing it, unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sandbox could not be booted, stopped or cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot {op} `{}`: {cause}", path.display())]
    Io { op: &'static str, path: PathBuf, cause: io::Error },
    #[error("cannot run `{}`: {cause}; install it with `apt-get install {package}`", binary.display())]
    MissingRuntime { binary: PathBuf, package: String, cause: io::Error },
    #[error("{runtime} could not start sandbox `{name}`: {message}")]
    Oci { runtime: String, name: String, message: String },
    #[error("sandbox `{name}` is already running (PID 1 is host pid {pid})")]
    AlreadyRunning { name: String, pid: i32 },
    #[error("sandbox `{name}` is being started or stopped by another msb")]
    Busy { name: String },
    #[error("sandbox `{name}` does not exist")]
    NotFound { name: String },
    #[error(
        "sandbox `{name}` belongs to another Sandboxfile, `{}`, and keeps what it wrote in its own layer; \
         remove it with `msb rm {name}` (its layer goes with it), or give this one another name",
        owner.display()
    )]
    OtherSandboxfile { name: String, owner: PathBuf },
    #[error("runtime = \"krun\" cannot run here: {reason}")]
    KrunUnavailable { reason: String },
    #[error("sandbox `{name}`: {reason}")]
    Init { name: String, reason: String },
    #[error("sandbox `{name}`: {reason}")]
    Invalid { name: String, reason: String },
    #[error("the state of sandbox `{name}` (`{}`) is damaged: {reason}", path.display())]
    Damaged { name: String, path: PathBuf, reason: String },
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RuntimeError {
        let path = path.into();
        move |cause| RuntimeError::Io { op, path, cause }
    }
}

/// The sandbox's main command, after merging the Sandboxfile with the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessSpec {
    /// Entrypoint followed by command; may be empty (the agent then only serves exec).
    pub argv: Vec<String>,
    /// `KEY=value`, image variables first, the Sandboxfile's overriding them.
    pub env: Vec<String>,
    pub workdir: String,
    /// `name`, `uid` or `uid:gid`; none is root.
    pub user: Option<String>,
}

impl ProcessSpec {
    /// Merges as Docker does: the Sandboxfile's `entrypoint` replaces the image's ENTRYPOINT *and*
    /// drops its CMD; `command` replaces CMD; `env` overrides and extends Env; `workdir` and `user`
    /// replace WorkingDir and User.
    pub fn merge(image: &RuntimeConfig, sandbox: &SandboxConfig) -> ProcessSpec {
        let entrypoint = sandbox.entrypoint.as_ref().or(image.entrypoint.as_ref()).cloned().unwrap_or_default();
        let command = match (&sandbox.command, &sandbox.entrypoint) {
            (Some(command), _) => command.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => image.cmd.clone().unwrap_or_default(),
        };
        let mut env: IndexMap<String, String> = IndexMap::new();
        for entry in &image.env {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            env.insert(key.to_owned(), value.to_owned());
        }
        for (key, value) in &sandbox.env {
            env.insert(key.as_str().to_owned(), value.clone());
        }
        let non_empty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
        ProcessSpec {
            argv: entrypoint.into_iter().chain(command).collect(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: sandbox.workdir.as_ref().map(|w| w.as_str().to_owned()).or(non_empty(&image.working_dir)).unwrap_or_else(|| "/".into()),
            user: sandbox.user.clone().or(non_empty(&image.user)),
        }
    }
}

/// What runs as the container's PID 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Pid1 {
    /// msb's agent (the normal case), from this host file, bound at `/.msb/agent`.
    Agent { binary: PathBuf },
    /// The main command itself, with no agent (no exec socket): for tests, benchmarks, and hosts
    /// where the agent is not built.
    Command,
}

/// Everything a backend needs to boot one sandbox. Built by the caller from the Sandboxfile, the
/// image record and the patch plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxSpec {
    /// The sandbox's name: its folder, hostname and (with a hash) container id.
    pub name: String,
    /// The rootfs layers, topmost first: patch layers newest first, then `Store::lowers(image)`.
    pub lowers: Vec<PathBuf>,
    /// The image's ChainID. The lowers name the same folders when a `dir:` image's folder is
    /// edited; this does not, so that the edited image is a different boot.
    pub image_id: String,
    pub process: ProcessSpec,
    pub init: Init,
    pub pid1: Pid1,
    /// Script name and full body (shebang included), written to `/.msb/scripts/NAME`.
    pub scripts: Vec<(String, Vec<u8>)>,
    pub cpus: Option<u8>,
    /// Bytes.
    pub memory: Option<u64>,
    pub network: Network,
}

impl SandboxSpec {
    /// Names this exact boot: equal digests boot the same sandbox, so a running one need not be
    /// restarted (`msb up` again, `--watch` after an edit that changed nothing it runs).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::store::Digest::of(&json).to_string()
    }

    /// Whether the sandbox needs cgroups of its own: for a limit, or for an init (systemd makes
    /// its own). msb's agent needs none: the pid namespace already ends every process of the
    /// sandbox with its PID 1, and creating and removing a cgroup in each v1 hierarchy costs a
    /// boot several milliseconds (an RCU grace period per move into a cgroup).
    pub fn needs_cgroups(&self) -> bool {
        self.hands_off_pid1() || self.cpus.is_some() || self.memory.is_some()
    }

    /// Whether PID 1 is handed to an init (`init = "auto"` or a path) rather than kept by the agent.
    pub fn hands_off_pid1(&self) -> bool {
        self.init != Init::Agent
    }
}

/// How a sandbox is started.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub backend: BackendKind,
    /// Return once it runs, leaving it to run on its own; else the caller supervises it with
    /// [`Running::wait`].
    pub detach: bool,
    /// crun (default) or runc, for the `oci` backend.
    pub oci_runtime: OciRuntime,
    /// The Sandboxfile booting it. A sandbox's folder and its own layer are its Sandboxfile's:
    /// another Sandboxfile with a sandbox of the same name is refused, not handed that layer.
    pub owner: Option<PathBuf>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions { backend: BackendKind::Oci, detach: false, oci_runtime: OciRuntime::crun(), owner: None }
    }
}

/// The backend `runtime = ...` leads to on this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: BackendKind,
    /// One line for the user: "krun: hardware KVM works" or "oci (crun): krun cannot run guests
    /// here: ...".
    pub reason: String,
}

/// Picks the backend: `oci` as asked; `krun` only when the probe passes (else a clear error);
/// `auto` is krun when the probe passes, else oci, saying why.
pub fn choose_backend(requested: Runtime) -> Result<Choice, RuntimeError> {
    if requested == Runtime::Oci {
        // No need to look at the host's KVM: a probe reads several files of /proc and /sys.
        return choose_with(requested, &krun::Probe::fixed(None));
    }
    choose_with(requested, &krun::probe())
}

fn choose_with(requested: Runtime, probe: &krun::Probe) -> Result<Choice, RuntimeError> {
    match (requested, probe.failure()) {
        (Runtime::Oci, _) => Ok(Choice { backend: BackendKind::Oci, reason: "oci: runtime = \"oci\"".into() }),
        (Runtime::Krun | Runtime::Auto, None) => {
            Ok(Choice { backend: BackendKind::Krun, reason: "krun: hardware KVM can run guests here".into() })
        }
        (Runtime::Krun, Some(reason)) => Err(RuntimeError::KrunUnavailable { reason }),
        (Runtime::Auto, Some(reason)) => {
            Ok(Choice { backend: BackendKind::Oci, reason: format!("oci: krun cannot run guests here: {reason}") })
        }
    }
}

/// What a backend returns once the sandbox runs.
#[derive(Debug, Default)]
pub struct Started {
    pub init: Option<ProcessRef>,
    pub runtime_process: Option<ProcessRef>,
    /// Foreground only: the process whose exit is the sandbox's (`crun run`, the VMM).
    pub child: Option<Child>,
    /// Foreground oci only: the thread holding crun's mount namespace, let go once crun exits.
    pub(crate) namespace: Option<sys::PrivateNamespace>,
}

/// One boot, as handed to a backend: the folder is prepared, the view mounted (detached) and the
/// init resolved in it.
#[derive(Debug)]
pub struct Boot<'a> {
    pub dir: &'a SandboxDir,
    pub spec: &'a SandboxSpec,
    pub view: std::os::fd::OwnedFd,
    pub init: Option<ResolvedInit>,
    pub detach: bool,
}

/// A way to run sandboxes. Methods get the sandbox's folder and recorded state; they never
/// print (they log with `tracing`) and never leave a process, mount or socket behind on error.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Boots a prepared sandbox.
    fn start(&self, boot: Boot<'_>) -> Result<Started, RuntimeError>;
    /// Asks PID 1 to stop with the init's own signal, waits up to `timeout`, then kills; then
    /// removes the runtime's state. A zero timeout kills at once.
    fn stop(&self, dir: &SandboxDir, state: &State, timeout: Duration) -> Result<(), RuntimeError>;
    /// Kills at once and removes the runtime's state.
    fn kill(&self, dir: &SandboxDir, state: &State) -> Result<(), RuntimeError> {
        self.stop(dir, state, Duration::ZERO)
    }
    /// Whether its processes still run.
    fn state(&self, dir: &SandboxDir, state: &State) -> Status;
    /// Removes what the runtime keeps about the sandbox (crun's state, its cgroups); the
    /// processes must be gone.
    fn remove(&self, dir: &SandboxDir, state: &State) -> Result<(), RuntimeError>;
    /// The guest's stdout and stderr (or console).
    fn log_path(&self, dir: &SandboxDir) -> PathBuf {
        dir.log()
    }
    /// The host end of the agent's socket.
    fn agent_socket_path(&self, dir: &SandboxDir) -> PathBuf {
        dir.agent_socket()
    }
}

/// The sandboxes of one msb home: `<MSB_HOME>/v1/sandboxes/`.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    root: PathBuf,
}

impl Sandboxes {
    /// `msb_root` is the store's versioned folder (`Store::root()`).
    pub fn new(msb_root: &Path) -> Sandboxes {
        Sandboxes { root: msb_root.to_owned() }
    }

    pub fn dir(&self, name: &str) -> SandboxDir {
        SandboxDir::new(&self.root, name)
    }

    /// crun's (and runc's) `--root`: their state for msb's containers, apart from the host's.
    pub fn oci_state_root(&self) -> PathBuf {
        self.root.join("oci")
    }

    fn backend(&self, kind: BackendKind, oci_runtime: Option<&Path>) -> Box<dyn Backend> {
        match kind {
            BackendKind::Oci => Box::new(oci::OciBackend::new(
                oci_runtime.map(|b| OciRuntime { binary: b.to_owned() }).unwrap_or_else(OciRuntime::crun),
                self.oci_state_root(),
            )),
            BackendKind::Krun => Box::new(krun::KrunBackend),
        }
    }

    fn backend_of(&self, state: &State) -> Box<dyn Backend> {
        self.backend(state.backend, state.oci_runtime.as_deref())
    }

    /// Boots `spec`. A stale state left by a killed msb is cleaned first; a running sandbox of
    /// the same name is an error. Detached: returns once PID 1 runs. Foreground: the returned
    /// [`Running`] supervises it; call [`Running::wait`] (dropping it unwaited kills the sandbox).
    pub fn start(&self, spec: &SandboxSpec, options: &StartOptions) -> Result<Running, RuntimeError> {
        let dir = self.dir(&spec.name);
        fs::create_dir_all(dir.path()).map_err(RuntimeError::io("create", dir.path()))?;
        let lock = lock(&dir, false)?.ok_or_else(|| RuntimeError::Busy { name: spec.name.clone() })?;
        if let Some(owner) = &options.owner
            && !self.check_owner(&spec.name, owner)?
        {
            fs::write(dir.owner_file(), owner.as_os_str().as_encoded_bytes()).map_err(RuntimeError::io("write", dir.owner_file()))?;
        }
        if let Some(state) = dir.read_state()? {
            match self.judge(&dir, &state) {
                Status::Running { init, .. } => {
                    return Err(RuntimeError::AlreadyRunning { name: spec.name.clone(), pid: init.map_or(0, |i| i.pid) });
                }
                Status::Busy => return Err(RuntimeError::Busy { name: spec.name.clone() }),
                Status::Stale { reason } => {
                    tracing::info!(sandbox = %spec.name, "cleaning up what a previous msb left: {reason}");
                    self.clean(&dir, &state)?;
                }
                _ => {}
            }
        }
        let backend = self.backend(options.backend, Some(&options.oci_runtime.binary));
        view::prepare_dir(&dir, spec)?;
        // While the sandbox boots and runs; joined by `Running`.
        let trash = dir.clone();
        let emptying = std::thread::spawn(move || {
            if let Err(err) = trash.empty_trash() {
                tracing::debug!(sandbox = trash.name(), "the trash is left for the next boot: {err}");
            }
        });
        let view = view::mount(&dir, &spec.lowers)?;
        tracing::debug!(sandbox = %spec.name, "rootfs view mounted");
        let init = view::resolve_init(&view, &spec.init, &spec.process.argv)
            .map_err(|reason| RuntimeError::Init { name: spec.name.clone(), reason })?;
        let supervisor_lock = if options.detach {
            None
        } else {
            Some(Lock::exclusive(&dir.supervisor_lock_file()).map_err(RuntimeError::io("lock", dir.supervisor_lock_file()))?)
        };
        let mut state = State {
            name: spec.name.clone(),
            backend: options.backend,
            oci_runtime: (options.backend == BackendKind::Oci).then(|| options.oci_runtime.binary.clone()),
            container_id: dir.container_id(),
            started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            detached: options.detach,
            init: None,
            runtime_process: None,
            supervisor: if options.detach { None } else { ProcessRef::of(std::process::id() as i32) },
            stop_signal: init.as_ref().map_or(StopSignal::Term, |i| i.stop_signal),
            init_path: init.as_ref().map(|i| i.path.clone()),
            exit_code: None,
            stopped: false,
            spec_digest: Some(spec.digest()),
        };
        // Recorded before the runtime starts, so a crash from here on is found and cleaned.
        dir.write_state(&state)?;
        let boot = Boot { dir: &dir, spec, view, init, detach: options.detach };
        let started = match backend.start(boot) {
            Ok(started) => started,
            Err(err) => {
                let _ = backend.kill(&dir, &state);
                let _ = self.finish(&dir, &mut state, None);
                return Err(err);
            }
        };
        tracing::debug!(sandbox = %spec.name, pid = ?started.init.map(|p| p.pid), "PID 1 started");
        state.init = started.init;
        state.runtime_process = started.runtime_process;
        dir.write_state(&state)?;
        drop(lock);
        Ok(Running {
            sandboxes: self.clone(),
            dir,
            state,
            backend,
            child: started.child,
            namespace: started.namespace,
            emptying: Some(emptying),
            _supervisor_lock: supervisor_lock,
        })
    }

    /// Refuses `name` to the Sandboxfile `owner` when it belongs to another one. A sandbox that
    /// does not exist yet, or was made before msb recorded owners, is anyone's. `true` when
    /// `owner` is recorded already (a boot records it otherwise).
    pub fn check_owner(&self, name: &str, owner: &Path) -> Result<bool, RuntimeError> {
        match fs::read(self.dir(name).owner_file()) {
            Ok(recorded) if recorded == owner.as_os_str().as_encoded_bytes() => Ok(true),
            Ok(recorded) => {
                Err(RuntimeError::OtherSandboxfile { name: name.to_owned(), owner: PathBuf::from(OsString::from_vec(recorded)) })
            }
            Err(_) => Ok(false),
        }
    }

    /// What the sandbox is doing; does not clean anything.
    pub fn status(&self, name: &str) -> Result<Status, RuntimeError> {
        let dir = self.dir(name);
        let Some(state) = dir.read_state()? else { return Ok(Status::Absent) };
        match lock(&dir, false)? {
            None => Ok(Status::Busy),
            Some(_lock) => Ok(self.judge(&dir, &state)),
        }
    }

    /// The [`SandboxSpec::digest`] of the running sandbox `name`; `None` when it does not run.
    pub fn running_digest(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        if !matches!(self.status(name)?, Status::Running { .. }) {
            return Ok(None);
        }
        Ok(self.dir(name).read_state()?.and_then(|state| state.spec_digest))
    }

    /// The layers each sandbox with a folder was last booted on: roots for `cache gc`, since a
    /// sandbox's own layer only makes sense over them.
    pub fn layers_in_use(&self) -> Result<Vec<PathBuf>, RuntimeError> {
        let mut layers = Vec::new();
        for name in self.names()? {
            let path = self.dir(&name).lowers_file();
            let Ok(bytes) = fs::read(&path) else { continue };
            let lowers: Vec<PathBuf> = serde_json::from_slice(&bytes)
                .map_err(|err| RuntimeError::Damaged { name: name.clone(), path: path.clone(), reason: err.to_string() })?;
            layers.extend(lowers);
        }
        Ok(layers)
    }

    /// Every sandbox with a folder, by name.
    pub fn list(&self) -> Result<Vec<(String, Status)>, RuntimeError> {
        let mut out = Vec::new();
        for name in self.names()? {
            let status = self.status(&name)?;
            out.push((name, status));
        }
        Ok(out)
    }

    fn names(&self) -> Result<Vec<String>, RuntimeError> {
        let path = self.root.join("sandboxes");
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(cause) => return Err(RuntimeError::Io { op: "list", path, cause }),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Cleans every sandbox a killed msb left, or whose detached PID 1 ended on its own
    /// (processes, crun state, sockets), returning their names and why. Cheap when there is nothing to do: one small file read per sandbox. Every msb
    /// command should call it first.
    pub fn cleanup_stale(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        let mut cleaned = Vec::new();
        for name in self.names()? {
            let dir = self.dir(&name);
            let Some(state) = dir.read_state()? else { continue };
            if state.stopped {
                continue;
            }
            let Some(_lock) = lock(&dir, false)? else { continue };
            if let Status::Stale { reason } = self.judge(&dir, &state) {
                tracing::info!(sandbox = %name, "cleaning up: {reason}");
                self.clean(&dir, &state)?;
                cleaned.push((name, reason));
            }
        }
        Ok(cleaned)
    }

    /// Stops a running sandbox: its init's poweroff signal, `timeout`, then SIGKILL; then its
    /// runtime state and socket are removed. Stopping a stopped sandbox does nothing.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let dir = self.dir(name);
        let Some(mut state) = dir.read_state()? else { return Err(RuntimeError::NotFound { name: name.into() }) };
        if state.stopped {
            return Ok(());
        }
        let _lock = lock(&dir, true)?;
        self.backend_of(&state).stop(&dir, &state, timeout)?;
        self.finish(&dir, &mut state, None)
    }

    /// Kills a sandbox at once (SIGKILL) and cleans up after it.
    pub fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.stop(name, Duration::ZERO)
    }

    /// Kills the sandbox if it runs, then deletes its folder, its own layer included.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(name);
        if !dir.path().exists() {
            return Err(RuntimeError::NotFound { name: name.into() });
        }
        if let Some(state) = dir.read_state()? {
            let _lock = lock(&dir, true)?;
            let backend = self.backend_of(&state);
            backend.kill(&dir, &state)?;
        }
        fs::remove_dir_all(dir.path()).map_err(RuntimeError::io("remove", dir.path()))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir(name).log()
    }

    pub fn agent_socket(&self, name: &str) -> PathBuf {
        self.dir(name).agent_socket()
    }

    /// Classifies a recorded state. Call with the sandbox's lock held.
    fn judge(&self, dir: &SandboxDir, state: &State) -> Status {
        if state.stopped {
            return Status::Exited { exit_code: state.exit_code };
        }
        if !state.detached {
            // The foreground msb holds `supervisor.lock` for its whole life.
            match Lock::try_exclusive(&dir.supervisor_lock_file()) {
                Ok(Some(_)) => {
                    let who = state.supervisor.map_or(String::new(), |s| format!(" (pid {})", s.pid));
                    return Status::Stale { reason: format!("the msb that ran it{who} is gone") };
                }
                // Alive: it cleans up after its sandbox itself.
                Ok(None) => {
                    return match self.backend_of(state).state(dir, state) {
                        Status::Stale { .. } => Status::Busy,
                        status => status,
                    };
                }
                Err(err) => return Status::Stale { reason: format!("cannot check its supervisor: {err}") },
            }
        }
        self.backend_of(state).state(dir, state)
    }

    /// Kills and removes everything of a stale sandbox but its own layer.
    fn clean(&self, dir: &SandboxDir, state: &State) -> Result<(), RuntimeError> {
        self.backend_of(state).kill(dir, state)?;
        let mut state = state.clone();
        self.finish(dir, &mut state, None)
    }

    /// Marks the sandbox stopped and removes its socket folder's content.
    fn finish(&self, dir: &SandboxDir, state: &mut State, exit_code: Option<i32>) -> Result<(), RuntimeError> {
        if !dir.path().exists() {
            return Ok(()); // removed meanwhile (`msb rm` of a running sandbox)
        }
        state::empty_dir(&dir.run_dir())?;
        let _ = dir.discard(&dir.pid_file());
        state.stopped = true;
        state.exit_code = exit_code.or(state.exit_code);
        dir.write_state(state)
    }
}

/// The sandbox's lock: `wait` blocks until it is free; else `None` when someone holds it for
/// more than a moment (a process forked by another thread holds a copy of every open lock
/// until it execs, so a lock just released may look held for a few milliseconds).
fn lock(dir: &SandboxDir, wait: bool) -> Result<Option<Lock>, RuntimeError> {
    let path = dir.lock_file();
    if wait {
        return Lock::exclusive(&path).map(Some).map_err(RuntimeError::io("lock", path));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match Lock::try_exclusive(&path).map_err(RuntimeError::io("lock", &path))? {
            Some(lock) => return Ok(Some(lock)),
            None if std::time::Instant::now() >= deadline => return Ok(None),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A started sandbox. Foreground: it supervises the sandbox until [`Running::wait`] returns;
/// dropping it unwaited kills the sandbox.
#[derive(Debug)]
pub struct Running {
    sandboxes: Sandboxes,
    dir: SandboxDir,
    state: State,
    backend: Box<dyn Backend>,
    child: Option<Child>,
    namespace: Option<sys::PrivateNamespace>,
    /// The thread emptying the sandbox's trash.
    emptying: Option<std::thread::JoinHandle<()>>,
    _supervisor_lock: Option<Lock>,
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} backend", self.kind())
    }
}

impl Running {
    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn log_path(&self) -> PathBuf {
        self.backend.log_path(&self.dir)
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.backend.agent_socket_path(&self.dir)
    }

    /// Foreground: writes each line of the sandbox's output to `out`, after `prefix` (`up` gives
    /// `"NAME | "`), while it runs (when `out` is given), waits for PID 1 to exit, cleans up (once
    /// it returns, nothing of the sandbox is mounted: the next boot can mount its layer), and
    /// returns its exit code (128+N when killed by signal N). Detached: returns `None` at once.
    pub fn wait(mut self, out: Option<&mut dyn Write>, prefix: &str) -> Result<Option<i32>, RuntimeError> {
        let Some(mut child) = self.child.take() else { return Ok(None) };
        let status = follow(&self.log_path(), prefix, &mut child, out);
        // crun has exited: the namespace is torn down on its thread while the exit is recorded.
        let mut namespace = self.namespace.take();
        if let Some(namespace) = &mut namespace {
            namespace.close();
        }
        self.join_emptying();
        // The lock goes once the namespace is gone: the next boot of this sandbox, in this msb
        // or another, takes it before it touches the sandbox's layer, and so never mounts it
        // beside this boot's last mount of it.
        let held = lock(&self.dir, true)?;
        let recorded = status.and_then(|status| self.record_exit(status));
        drop(namespace);
        drop(held);
        recorded
    }

    /// After PID 1 and the runtime have exited, with the sandbox's lock held: cleans up and
    /// returns PID 1's exit code.
    fn record_exit(&mut self, status: ExitStatus) -> Result<Option<i32>, RuntimeError> {
        let code = self.reboot_as_exit(exit_code(status));
        tracing::debug!(sandbox = %self.state.name, code, "PID 1 exited");
        // `msb stop` (or Ctrl-C) from elsewhere has already stopped it and cleaned up.
        let stopped_by_another = self.dir.read_state()?.is_some_and(|state| state.stopped);
        // PID 1 has exited; this removes crun's state if `crun run` could not.
        self.backend.kill(&self.dir, &self.state)?;
        if let Some(err) = self.backend_failure(&status).filter(|_| !stopped_by_another) {
            self.sandboxes.finish(&self.dir, &mut self.state, None)?;
            return Err(err);
        }
        self.sandboxes.finish(&self.dir, &mut self.state, Some(code))?;
        tracing::debug!(sandbox = %self.state.name, "cleaned up");
        Ok(Some(code))
    }

    /// A handed-off init that calls reboot(2) ends its PID namespace, and the kernel reports it
    /// killed by SIGINT (poweroff, halt) or SIGHUP (restart); `crun run` exits 128+N. That is how
    /// such an init stops on purpose, so it is a clean exit, 0. Nothing else ends a namespace's
    /// init with those signals: the kernel drops every signal it has no handler for, except
    /// SIGKILL and SIGSTOP from outside. A restart is not done: the sandbox stays stopped.
    fn reboot_as_exit(&self, code: i32) -> i32 {
        const POWEROFF: i32 = 128 + 2; // SIGINT
        const RESTART: i32 = 128 + 1; // SIGHUP
        if self.state.init_path.is_none() || self.backend.kind() != BackendKind::Oci {
            return code;
        }
        match code {
            POWEROFF => tracing::info!(sandbox = %self.state.name, "its init powered off"),
            RESTART => tracing::info!(sandbox = %self.state.name, "its init asked for a restart; msb does not restart a sandbox"),
            _ => return code,
        }
        0
    }

    fn join_emptying(&mut self) {
        if let Some(thread) = self.emptying.take() {
            let _ = thread.join();
        }
    }

    /// The OCI runtime failed before PID 1 ran (no pid file): its own message is the error.
    fn backend_failure(&self, status: &ExitStatus) -> Option<RuntimeError> {
        if status.success() || self.backend.kind() != BackendKind::Oci || self.dir.pid_file().exists() {
            return None;
        }
        let message = oci::runtime_message(&self.dir).unwrap_or_else(|| format!("exited with {status}"));
        Some(RuntimeError::Oci { runtime: self.state.oci_runtime.as_deref().map_or("crun".into(), |b| b.display().to_string()), name: self.state.name.clone(), message })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut held = None;
        if let Some(mut child) = self.child.take() {
            tracing::info!(sandbox = %self.state.name, "its supervisor is going away: stopping it");
            held = lock(&self.dir, true).ok();
            let _ = self.backend.kill(&self.dir, &self.state);
            let _ = child.kill();
            let _ = child.wait();
            let _ = self.sandboxes.finish(&self.dir, &mut self.state, None);
        }
        // As in `wait`: the lock goes once the namespace is gone.
        drop(self.namespace.take());
        drop(held);
        self.join_emptying();
    }
}

/// 128+N for a death by signal N, as shells report it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// Streams `log` line by line, each after `prefix`, until `child` exits; then drains the rest.
/// Each line is one write, so sandboxes followed from several threads never mix within a line.
fn follow(log: &Path, prefix: &str, child: &mut Child, mut out: Option<&mut dyn Write>) -> Result<ExitStatus, RuntimeError> {
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
    let mut file = fs::File::open(log).map_err(RuntimeError::io("read", log))?;
    let mut pending = Vec::new();
    let emit = |bytes: &[u8], pending: &mut Vec<u8>, last: bool, out: &mut Option<&mut dyn Write>| {
        pending.extend_from_slice(bytes);
        let Some(out) = out.as_mut() else {
            pending.clear();
            return;
        };
        let mut line = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            line.extend(pending.drain(..=end));
            let _ = out.write_all(&line);
        }
        if last && !pending.is_empty() {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            line.append(pending);
            line.push(b'\n');
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let exited = child.try_wait().map_err(RuntimeError::io("wait for", log))?;
        loop {
            let n = file.read(&mut buffer).map_err(RuntimeError::io("read", log))?;
            if n == 0 {
                break;
            }
            emit(&buffer[..n], &mut pending, false, &mut out);
        }
        if let Some(status) = exited {
            emit(&[], &mut pending, true, &mut out);
            return Ok(status);
        }
        // Wake when the child exits (its pidfd turns readable) or every 50 ms for new output.
        let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
        match &pidfd {
            Some(fd) => {
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(failure: Option<&str>) -> krun::Probe {
        krun::Probe::fixed(failure.map(str::to_owned))
    }

    #[test]
    fn runtime_choice_is_honest() {
        let kvm_pvm = probe(Some("/dev/kvm is kvm_pvm"));
        let auto = choose_with(Runtime::Auto, &kvm_pvm).expect("auto");
        assert_eq!(auto.backend, BackendKind::Oci);
        assert!(auto.reason.contains("kvm_pvm"), "{}", auto.reason);
        let err = choose_with(Runtime::Krun, &kvm_pvm).unwrap_err();
        assert_eq!(err.to_string(), "runtime = \"krun\" cannot run here: /dev/kvm is kvm_pvm");
        assert_eq!(choose_with(Runtime::Oci, &kvm_pvm).expect("oci").backend, BackendKind::Oci);
        assert_eq!(choose_with(Runtime::Auto, &probe(None)).expect("kvm").backend, BackendKind::Krun);
        assert_eq!(choose_with(Runtime::Krun, &probe(None)).expect("kvm").backend, BackendKind::Krun);
    }

    fn sandbox(toml_text: &str) -> SandboxConfig {
        toml::from_str(&format!("image = \"alpine\"\n{toml_text}")).expect("sandbox config")
    }

    #[test]
    fn process_merges_like_docker() {
        let image = RuntimeConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: vec!["PATH=/usr/bin".into(), "A=1".into()],
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
        };
        let plain = ProcessSpec::merge(&image, &sandbox(""));
        assert_eq!(plain.argv, ["/entry", "serve"]);
        assert_eq!(plain.env, ["PATH=/usr/bin", "A=1"]);
        assert_eq!((plain.workdir.as_str(), plain.user.as_deref()), ("/srv", Some("app")));

        let command = ProcessSpec::merge(&image, &sandbox("command = [\"--port\", \"80\"]\nenv = { A = \"2\", B = \"3\" }"));
        assert_eq!(command.argv, ["/entry", "--port", "80"]);
        assert_eq!(command.env, ["PATH=/usr/bin", "A=2", "B=3"]);

        let entry = ProcessSpec::merge(&image, &sandbox("entrypoint = [\"/bin/sh\"]\nworkdir = \"/app\"\nuser = \"0\""));
        assert_eq!(entry.argv, ["/bin/sh"], "a new entrypoint drops the image's CMD");
        assert_eq!((entry.workdir.as_str(), entry.user.as_deref()), ("/app", Some("0")));

        let bare = ProcessSpec::merge(&RuntimeConfig::default(), &sandbox(""));
        assert_eq!((bare.argv.len(), bare.workdir.as_str(), bare.user), (0, "/", None));
    }
}
