//! The `oci` backend: the rootfs view handed to crun (or runc) as a runtime-spec bundle.
//!
//! `config.json` makes the agent PID 1 in new pid, mount, ipc, uts, cgroup and (unless the host
//! network is asked for) network namespaces, with what an init such as systemd needs to run:
//! `container=` in its environment, podman's default capabilities, `/sys/fs/cgroup` read-write,
//! tmpfs on `/run`, `/run/lock` and `/tmp`. The rootfs path exists only in the private mount
//! namespace crun runs in (see `sys`).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_readonly_paths,
};

use super::cgroup::{CgroupLayout, Controller};
use super::state::{BackendKind, SandboxDir, State, Status, StopSignal};
use super::sys::{self, Namespace, PrivateNamespace, ProcessRef};
use super::view::{self, GuestConfig};
use crate::agent::protocol::{GUEST_AGENT, GUEST_DIR, GUEST_RUN};
use super::{Backend, Boot, Network, Pid1, RuntimeError, SandboxSpec, Started};

/// The OCI runtime binary: crun (the default) or runc. Both take the same commands here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    /// A name looked up on `PATH`, or a path.
    pub binary: PathBuf,
}

impl OciRuntime {
    pub fn crun() -> OciRuntime {
        OciRuntime { binary: "crun".into() }
    }

    pub fn runc() -> OciRuntime {
        OciRuntime { binary: "runc".into() }
    }

    /// `crun`, `runc`, or the binary's file name.
    pub fn name(&self) -> String {
        self.binary.file_name().map_or_else(|| self.binary.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// crun refuses hybrid cgroup hosts; runc copes with them.
    fn refuses_hybrid_cgroups(&self) -> bool {
        self.name().starts_with("crun")
    }

    /// crun can leave cgroups alone (`--cgroup-manager=disabled`); runc always makes them.
    fn can_skip_cgroups(&self) -> bool {
        self.name().starts_with("crun")
    }

    /// crun accepts being run from a read-only bind mount of itself in place of the copy it
    /// makes to defend against CVE-2019-5736 (see `start`); runc checks for its own memfd copy.
    fn accepts_sealed_binary(&self) -> bool {
        self.name().starts_with("crun")
    }

    fn command(&self, state_root: &Path) -> Command {
        self.command_of(&self.binary, state_root)
    }

    fn command_of(&self, binary: &Path, state_root: &Path) -> Command {
        let mut command = Command::new(binary);
        command.arg("--root").arg(state_root);
        command
    }

    fn missing(&self, cause: io::Error) -> RuntimeError {
        let package = if self.name().starts_with("runc") { "runc" } else { "crun" };
        RuntimeError::MissingRuntime { binary: self.binary.clone(), package: package.into(), cause }
    }
}

/// crun (or runc) with msb's state root.
#[derive(Debug)]
pub struct OciBackend {
    runtime: OciRuntime,
    state_root: PathBuf,
    /// Read when a boot first needs it: stopping or judging a sandbox does not.
    layout: OnceLock<CgroupLayout>,
}

impl OciBackend {
    /// `state_root` is the runtime's `--root` (`Sandboxes::oci_state_root`).
    pub fn new(runtime: OciRuntime, state_root: PathBuf) -> OciBackend {
        OciBackend { runtime, state_root, layout: OnceLock::new() }
    }

    fn layout(&self) -> &CgroupLayout {
        self.layout.get_or_init(|| {
            let layout = CgroupLayout::detect();
            tracing::info!("{layout}");
            layout
        })
    }

    /// The pid crun wrote to the pid file, once it has.
    fn read_pid(dir: &SandboxDir) -> Option<i32> {
        fs::read_to_string(dir.pid_file()).ok()?.trim().parse().ok()
    }

    /// PID 1 from the pid file, when `state.json` missed it (msb died right after starting it).
    /// A pid read from a file may have been recycled: it counts only for a process that started
    /// before the runtime wrote the file (a recycled pid names a newer process). Not the
    /// container's cgroup: a sandbox without limits has none.
    fn pid_file_init(dir: &SandboxDir) -> Option<ProcessRef> {
        let pid = Self::read_pid(dir)?;
        let written = fs::metadata(dir.pid_file()).and_then(|m| m.modified()).ok()?;
        let init = ProcessRef::of(pid)?;
        // Start times count clock ticks (10 ms): a little slack for the rounding.
        let started = init.started_at()?;
        (started <= written + Duration::from_millis(50)).then_some(init)
    }

    /// Runs `INIT 0` as root through the sandbox's exec server: how runit is asked to halt. An
    /// answer that does not come within `timeout` counts as a refusal (the caller then kills),
    /// so a stuck sandbox cannot hold `msb stop` past its timeout.
    fn halt_runit(&self, dir: &SandboxDir, state: &State, timeout: Duration) -> bool {
        let init = state.init_path.clone().unwrap_or_else(|| "/sbin/init".into());
        let request = crate::agent::ExecRequest {
            argv: vec![init, "0".into()],
            env: Vec::new(),
            workdir: Some("/".into()),
            user: Some("0".into()),
            tty: None,
        };
        let socket = self.agent_socket_path(dir);
        let (done, answer) = std::sync::mpsc::channel();
        // Left behind if it overruns: it ends when the sandbox's exec server does.
        std::thread::spawn(move || done.send(crate::agent::exec(&socket, &request, io::empty(), &mut io::sink(), &mut io::sink())));
        match answer.recv_timeout(timeout) {
            Ok(Ok(exit)) if exit.code() == 0 => true,
            outcome => {
                tracing::info!(sandbox = %state.name, "runit was not asked to halt: {outcome:?}");
                false
            }
        }
    }

    /// Runs a short runtime command (`kill`, `delete`), returning its error output on failure.
    fn run(&self, args: &[&str]) -> Result<(), String> {
        let output = self
            .runtime
            .command(&self.state_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| self.runtime.missing(err).to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }
}

impl Backend for OciBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }

    fn start(&self, boot: Boot<'_>) -> Result<Started, RuntimeError> {
        let Boot { dir, spec, view, init, detach } = boot;
        let cgroups = spec.needs_cgroups() || !self.runtime.can_skip_cgroups();
        // Against CVE-2019-5736 (a container overwriting the runtime's binary through
        // /proc/self/exe), crun bind-mounts itself read-only and executes itself again from there
        // on every start. msb's private mount namespace makes crun's binary read-only in place
        // instead, and says so (`_LIBCONTAINER_CLONED_BINARY`, which crun checks along with the
        // read-only mount): the same protection, one exec of crun fewer, about 1.3 ms a boot.
        let binary = which::which(&self.runtime.binary).map_err(|err| self.runtime.missing(io::Error::new(io::ErrorKind::NotFound, err)))?;
        let sealed = self.runtime.accepts_sealed_binary();
        let hide = if self.runtime.refuses_hybrid_cgroups() { self.layout().mount_to_hide_from_crun().map(Path::to_owned) } else { None };
        let namespace = PrivateNamespace::enter(hide);
        let binds = if sealed { vec![(binary.clone(), binary.clone(), true)] } else { Vec::new() };
        let prepared = Namespace { attach: Some((view, dir.rootfs())), binds };
        // The bundle and the command, made here while the thread makes the namespace.
        let guest = GuestConfig::new(spec, init, None);
        view::write_guest_config(dir, &guest)?;
        let (config, skipped) = bundle_config(dir, spec, self.layout(), cgroups)?;
        warn_skipped_limits(&skipped, self.layout());
        let config_path = dir.bundle().join("config.json");
        let bytes = config_bytes(&config)
            .map_err(|err| RuntimeError::Io { op: "encode", path: config_path.clone(), cause: io::Error::other(err) })?;
        super::state::write_if_changed(&config_path, &bytes)?;
        fs::create_dir_all(&self.state_root).map_err(RuntimeError::io("create", &self.state_root))?;

        let log = OpenOptions::new().append(true).create(true).open(dir.log()).map_err(RuntimeError::io("open", dir.log()))?;
        let log_err = log.try_clone().map_err(RuntimeError::io("open", dir.log()))?;
        let mut command = self.runtime.command_of(&binary, &self.state_root);
        if sealed {
            command.env("_LIBCONTAINER_CLONED_BINARY", "1");
        }
        command.arg("--log").arg(dir.runtime_log());
        if !cgroups {
            command.arg("--cgroup-manager=disabled");
        }
        command.arg("run");
        if detach {
            command.arg("--detach");
        }
        command
            .arg("--bundle")
            .arg(dir.bundle())
            .arg("--pid-file")
            .arg(dir.pid_file())
            .arg(dir.container_id())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C at msb's terminal reaches msb alone, which stops
            // the sandbox in order instead of leaving crun half-killed.
            .process_group(0);
        let mut child = namespace.spawn(prepared, command).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => self.runtime.missing(err),
            _ => RuntimeError::Io { op: "start the sandbox in", path: dir.path().to_owned(), cause: err },
        })?;
        let failed = |status: std::process::ExitStatus| RuntimeError::Oci {
            runtime: self.runtime.name(),
            name: spec.name.clone(),
            message: runtime_message(dir).unwrap_or_else(|| format!("exited with {status}")),
        };

        if detach {
            let status = child.wait().map_err(RuntimeError::io("wait for", &self.runtime.binary))?;
            if !status.success() {
                return Err(failed(status));
            }
            let init = Self::read_pid(dir).and_then(ProcessRef::of);
            let _ = namespace.join();
            return Ok(Started { init, runtime_process: None, child: None, namespace: None });
        }
        tracing::debug!(sandbox = %spec.name, "{} started", self.runtime.name());
        let runtime_process = ProcessRef::of(child.id() as i32);
        // crun writes the pid file once PID 1 exists: a few milliseconds.
        let pid = sys::wait_for_pid_file(&dir.pid_file(), &mut child, Duration::from_secs(30))
            .map_err(RuntimeError::io("wait for", dir.pid_file()))?;
        if pid.is_none() {
            match child.try_wait().map_err(RuntimeError::io("wait for", &self.runtime.binary))? {
                Some(status) if !status.success() => return Err(failed(status)),
                Some(_) => {}
                None => tracing::warn!(sandbox = %spec.name, "{} reported no PID 1 within 30 s", self.runtime.name()),
            }
        }
        Ok(Started { init: pid.and_then(ProcessRef::of), runtime_process, child: Some(child), namespace: Some(namespace) })
    }

    fn stop(&self, dir: &SandboxDir, state: &State, timeout: Duration) -> Result<(), RuntimeError> {
        let init = state.init.or_else(|| Self::pid_file_init(dir));
        if let Some(init) = init.filter(ProcessRef::is_alive) {
            if !timeout.is_zero() {
                // Asking counts against the timeout too (runit is asked through the exec server).
                let asking = std::time::Instant::now();
                let asked = match state.stop_signal {
                    StopSignal::Term => init.signal(rustix::process::Signal::TERM).is_ok(),
                    StopSignal::BusyboxPoweroff => init.signal(rustix::process::Signal::USR2).is_ok(),
                    StopSignal::CtrlAltDel => init.signal(rustix::process::Signal::INT).is_ok(),
                    StopSignal::RunitHalt => self.halt_runit(dir, state, timeout),
                    // A real-time signal: rustix builds those only unsafely, the runtime by number.
                    StopSignal::SystemdPoweroff => {
                        self.run(&["kill", &state.container_id, &state.stop_signal.number().to_string()]).is_ok()
                    }
                };
                if asked && init.wait_gone(timeout.saturating_sub(asking.elapsed())) {
                    tracing::debug!(sandbox = %state.name, "PID 1 stopped on its signal");
                }
            }
            if init.is_alive() {
                tracing::info!(sandbox = %state.name, "killing PID 1 (host pid {})", init.pid);
                init.signal(rustix::process::Signal::KILL).map_err(RuntimeError::io("kill", dir.path()))?;
                init.wait_gone(Duration::from_secs(10));
            }
        }
        // A foreground `crun run` exits once PID 1 has; an orphaned one (its msb was killed) too.
        if let Some(runtime) = state.runtime_process.filter(ProcessRef::is_alive)
            && !runtime.wait_gone(Duration::from_secs(5))
        {
            let _ = runtime.signal(rustix::process::Signal::KILL);
            runtime.wait_gone(Duration::from_secs(5));
        }
        self.remove(dir, state)
    }

    fn state(&self, dir: &SandboxDir, state: &State) -> Status {
        let init = state.init.or_else(|| Self::pid_file_init(dir));
        match init {
            Some(init) if init.is_alive() => Status::Running { init: Some(init), backend: BackendKind::Oci },
            Some(init) => Status::Stale { reason: format!("its PID 1 (host pid {}) has exited", init.pid) },
            None if state.runtime_process.is_some_and(|p| p.is_alive()) => {
                Status::Running { init: None, backend: BackendKind::Oci }
            }
            None => Status::Stale { reason: "it never reported a PID 1".into() },
        }
    }

    /// `delete --force` kills anything left in the container and removes its cgroups and the
    /// runtime's state; it is skipped when the runtime has no state for it (crun's foreground
    /// `run` deletes on exit).
    fn remove(&self, dir: &SandboxDir, state: &State) -> Result<(), RuntimeError> {
        let _ = dir;
        if !self.state_root.join(&state.container_id).exists() {
            return Ok(());
        }
        match self.run(&["delete", "--force", &state.container_id]) {
            Ok(()) => Ok(()),
            Err(_) if !self.state_root.join(&state.container_id).exists() => Ok(()),
            Err(message) => Err(RuntimeError::Oci { runtime: self.runtime.name(), name: state.name.clone(), message }),
        }
    }
}

/// The runtime's last error line from its `--log` file (`runtime.log`), for failures that
/// happen before PID 1 runs.
pub(crate) fn runtime_message(dir: &SandboxDir) -> Option<String> {
    let text = fs::read_to_string(dir.runtime_log()).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    // runc writes logfmt/JSON lines; crun plain text.
    let message = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| line.trim().to_owned());
    Some(message)
}

fn warn_skipped_limits(skipped: &[Controller], layout: &CgroupLayout) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !skipped.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
        let names: Vec<_> = skipped.iter().map(|c| format!("{c:?}").to_lowercase()).collect();
        tracing::warn!("this host's cgroups cannot apply the {} limit: skipped ({layout})", names.join(" and "));
    }
}

/// podman's default capabilities: what an init and ordinary services expect of a container.
pub const CAPABILITIES: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// The CPU period the quota is a share of (100 ms, the kernel's default).
const CPU_PERIOD: u64 = 100_000;

/// The bundle's `config.json` for `spec`, and the limits this host's cgroups cannot apply.
///
/// Without `cgroups` (crun's `--cgroup-manager=disabled`), it asks for none: no resources, no
/// cgroups path, no cgroup filesystem mounted in the sandbox.
pub fn bundle_config(
    dir: &SandboxDir,
    spec: &SandboxSpec,
    layout: &CgroupLayout,
    cgroups: bool,
) -> Result<(Spec, Vec<Controller>), RuntimeError> {
    let invalid = |err: oci_spec::OciSpecError| RuntimeError::Invalid { name: spec.name.clone(), reason: err.to_string() };
    let (args, env, cwd, (uid, gid)) = match &spec.pid1 {
        Pid1::Agent { .. } => (vec![GUEST_AGENT.to_owned()], Vec::new(), "/".to_owned(), (0, 0)),
        Pid1::Command => {
            if spec.process.argv.is_empty() {
                return Err(RuntimeError::Invalid { name: spec.name.clone(), reason: "it has no command to run".into() });
            }
            let user = numeric_user(spec.process.user.as_deref()).ok_or_else(|| RuntimeError::Invalid {
                name: spec.name.clone(),
                reason: "without the agent, `user` must be numeric (`uid` or `uid:gid`)".into(),
            })?;
            (spec.process.argv.clone(), spec.process.env.clone(), spec.process.workdir.clone(), user)
        }
    };
    let mut env: Vec<String> = env.into_iter().filter(|e| !e.starts_with("container=")).collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    // systemd and other inits read `container` to know they run in one.
    env.push("container=msb".into());

    // An init shuts down by calling reboot(2), which in a pid namespace only ends that
    // namespace's init, and needs CAP_SYS_BOOT: without it, sysvinit, openrc-init and runit
    // cannot finish their poweroff and are killed after the stop timeout. The same capability
    // also allows kexec_load, which would replace the host's kernel: the seccomp filter below
    // refuses it (as LXC does).
    let handoff = spec.hands_off_pid1();
    let mut capabilities: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    if handoff {
        capabilities.insert(Capability::SysBoot);
    }
    // As podman: 1M open files, but never above msb's own hard limit (raising it needs
    // CAP_SYS_RESOURCE, which a confined root may lack).
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX).min(1_048_576);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build().map_err(invalid)?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                // The builder would fill these with oci-spec's defaults, CAP_AUDIT_WRITE among them,
                // which is outside the bounding set: crun's capset then fails.
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .map_err(invalid)?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).soft(nofile).hard(nofile).build().map_err(invalid)?,
        ])
        .no_new_privileges(false)
        .build()
        .map_err(invalid)?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if spec.network == Network::Private {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;

    let mut skipped = Vec::new();
    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(invalid)?,
    ]);
    if let Some(cpus) = spec.cpus {
        if layout.can_limit(Controller::Cpu) {
            let cpu = LinuxCpuBuilder::default().quota(i64::from(cpus) * CPU_PERIOD as i64).period(CPU_PERIOD).build();
            resources = resources.cpu(cpu.map_err(invalid)?);
        } else {
            skipped.push(Controller::Cpu);
        }
    }
    if let Some(memory) = spec.memory {
        if layout.can_limit(Controller::Memory) {
            let limit = i64::try_from(memory).unwrap_or(i64::MAX);
            resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build().map_err(invalid)?);
        } else {
            skipped.push(Controller::Memory);
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths());
    if handoff {
        linux = linux.seccomp(no_kexec().map_err(invalid)?);
    }
    if cgroups {
        linux = linux.resources(resources.build().map_err(invalid)?).cgroups_path(PathBuf::from(format!("/{}", dir.container_id())));
    }
    let linux = linux.build().map_err(invalid)?;

    let config = SpecBuilder::default()
        .version("1.0.2")
        .hostname(spec.name.clone())
        .root(RootBuilder::default().path(dir.rootfs()).readonly(false).build().map_err(invalid)?)
        .process(process)
        .mounts(mounts(dir, cgroups).map_err(invalid)?)
        .linux(linux)
        .build()
        .map_err(invalid)?;
    Ok((config, skipped))
}

/// `config.json` as written: the same sandbox gives the same bytes, so an unchanged bundle is not
/// rewritten. oci-spec keeps capabilities in `HashSet`s, whose order changes from one process to
/// the next; they are sorted here.
fn config_bytes(config: &Spec) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::to_value(config)?;
    if let Some(sets) = value.pointer_mut("/process/capabilities").and_then(serde_json::Value::as_object_mut) {
        for names in sets.values_mut().filter_map(serde_json::Value::as_array_mut) {
            names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    serde_json::to_vec_pretty(&value)
}

/// A seccomp filter that allows every system call but the two that load a new kernel. It names
/// every architecture the host's CPU runs (x86_64 also runs x86 and x32 system calls), or a
/// 32-bit call would get past it.
fn no_kexec() -> Result<oci_spec::runtime::LinuxSeccomp, oci_spec::OciSpecError> {
    use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder};
    let architectures = match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    };
    let refuse = LinuxSyscallBuilder::default()
        .names(vec!["kexec_load".to_owned(), "kexec_file_load".to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(rustix::io::Errno::PERM.raw_os_error() as u32)
        .build()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures)
        .syscalls(vec![refuse])
        .build()
}

/// `uid` or `uid:gid` (gid defaults to uid); none is root.
fn numeric_user(user: Option<&str>) -> Option<(u32, u32)> {
    let Some(user) = user else { return Some((0, 0)) };
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

fn mounts(dir: &SandboxDir, cgroups: bool) -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let mount = |destination: &str, typ: &str, source: &Path, options: &[&str]| {
        MountBuilder::default()
            .destination(destination)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
            .build()
    };
    let fs = |destination: &str, typ: &str, options: &[&str]| mount(destination, typ, Path::new(typ), options);
    let mut mounts = vec![
        fs("/proc", "proc", &["nosuid", "noexec", "nodev"])?,
        fs("/dev", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        fs("/dev/pts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"])?,
        mount("/dev/shm", "tmpfs", Path::new("shm"), &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        fs("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        fs("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ];
    if cgroups {
        // Read-write: systemd creates its own cgroups (confined by the cgroup namespace).
        mounts.push(fs("/sys/fs/cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "rw"])?);
    }
    mounts.extend([
        fs("/run", "tmpfs", &["nosuid", "nodev", "mode=755"])?,
        fs("/run/lock", "tmpfs", &["nosuid", "nodev", "noexec", "mode=1777", "size=5m"])?,
        fs("/tmp", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
    ]);
    mounts.push(mount(GUEST_DIR, "bind", &dir.guest(), &["bind", "ro", "nosuid", "nodev"])?);
    mounts.push(mount(GUEST_RUN, "bind", &dir.run_dir(), &["bind", "rw", "nosuid", "nodev", "noexec"])?);
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Init;
    use crate::runtime::ProcessSpec;

    fn spec(pid1: Pid1) -> SandboxSpec {
        SandboxSpec {
            name: "worker".into(),
            lowers: vec!["/layers/b".into(), "/layers/a".into()],
            image_id: "sha256:test".into(),
            process: ProcessSpec { argv: vec!["/bin/echo".into(), "hi".into()], env: vec!["A=1".into(), "container=docker".into()], workdir: "/app".into(), user: Some("1000:100".into()) },
            init: Init::Agent,
            pid1,
            scripts: vec![],
            cpus: Some(2),
            memory: Some(512 << 20),
            network: Network::Private,
        }
    }

    fn hybrid() -> CgroupLayout {
        CgroupLayout::Hybrid { v1_controllers: vec!["cpu".into(), "memory".into()], v2_mount: "/sys/fs/cgroup/unified".into(), v2_controllers: vec!["hugetlb".into()] }
    }

    #[test]
    fn bundle_runs_the_agent_as_pid_1_in_its_own_namespaces() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let (config, skipped) = bundle_config(&dir, &spec(Pid1::Agent { binary: "/opt/msb-agent".into() }), &hybrid(), true).expect("config");
        assert!(skipped.is_empty());
        let json = serde_json::to_value(&config).expect("json");
        assert_eq!(json["process"]["args"], serde_json::json!(["/.msb/agent"]));
        assert_eq!(json["process"]["user"], serde_json::json!({"uid": 0, "gid": 0}));
        assert_eq!(json["hostname"], "worker");
        assert_eq!(json["root"]["path"], "/home/v1/sandboxes/worker/rootfs");
        let env: Vec<&str> = json["process"]["env"].as_array().expect("env").iter().filter_map(|v| v.as_str()).collect();
        assert!(env.contains(&"container=msb") && env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        let namespaces: Vec<&str> = json["linux"]["namespaces"].as_array().expect("ns").iter().filter_map(|n| n["type"].as_str()).collect();
        assert_eq!(namespaces, ["pid", "mount", "ipc", "uts", "cgroup", "network"]);
        let mut caps: Vec<&str> = json["process"]["capabilities"]["bounding"].as_array().expect("caps").iter().filter_map(|c| c.as_str()).collect();
        caps.sort();
        assert_eq!(caps, ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"]);
        assert_eq!(json["process"]["capabilities"]["ambient"], serde_json::json!([]));
        assert_eq!(json["process"]["capabilities"]["inheritable"], serde_json::json!([]));
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(json["linux"]["cgroupsPath"], format!("/{}", dir.container_id()));
    }

    #[test]
    fn the_same_sandbox_gives_the_same_config_bytes() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let spec = spec(Pid1::Agent { binary: "/opt/msb-agent".into() });
        // Each bundle_config builds new capability sets, each with its own hash order.
        let bytes: Vec<Vec<u8>> = (0..8).map(|_| config_bytes(&bundle_config(&dir, &spec, &hybrid(), true).expect("config").0).expect("bytes")).collect();
        assert!(bytes.windows(2).all(|pair| pair[0] == pair[1]));
        let json: serde_json::Value = serde_json::from_slice(&bytes[0]).expect("json");
        let bounding: Vec<&str> = json["process"]["capabilities"]["bounding"].as_array().expect("caps").iter().filter_map(|c| c.as_str()).collect();
        assert!(bounding.is_sorted() && bounding.len() == CAPABILITIES.len(), "{bounding:?}");
    }

    #[test]
    fn bundle_mounts_what_an_init_needs_and_msb_files() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let (config, _) = bundle_config(&dir, &spec(Pid1::Agent { binary: "/opt/msb-agent".into() }), &hybrid(), true).expect("config");
        let mounts = config.mounts().as_ref().expect("mounts");
        let find = |dest: &str| mounts.iter().find(|m| m.destination() == Path::new(dest)).unwrap_or_else(|| panic!("no mount at {dest}"));
        let options = |dest: &str| find(dest).options().clone().unwrap_or_default();
        for (dest, typ) in [("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue"), ("/sys", "sysfs"), ("/sys/fs/cgroup", "cgroup"), ("/run", "tmpfs"), ("/run/lock", "tmpfs"), ("/tmp", "tmpfs")] {
            assert_eq!(find(dest).typ().as_deref(), Some(typ), "{dest}");
        }
        assert!(options("/sys").contains(&"ro".to_owned()));
        assert!(options("/sys/fs/cgroup").contains(&"rw".to_owned()), "systemd needs a writable cgroup mount");
        // One read-only bind for the agent, its configuration and the scripts (it executes them).
        assert_eq!(find("/.msb").source().as_deref(), Some(dir.guest().as_path()));
        assert!(options("/.msb").contains(&"ro".to_owned()) && !options("/.msb").contains(&"noexec".to_owned()));
        assert_eq!(
            [dir.guest_agent(), dir.guest_config(), dir.scripts()].map(|p| p.parent().map(Path::to_path_buf)),
            [Some(dir.guest()), Some(dir.guest()), Some(dir.guest())]
        );
        // And the socket's folder read-write, bound after (inside) it.
        let order: Vec<&Path> = mounts.iter().map(|m| m.destination().as_path()).collect();
        assert_eq!(&order[order.len() - 2..], [Path::new("/.msb"), Path::new("/.msb/run")]);
        assert_eq!(find("/.msb/run").source().as_deref(), Some(dir.run_dir().as_path()));
        assert!(options("/.msb/run").contains(&"rw".to_owned()));
    }

    #[test]
    fn bundle_limits_follow_the_cgroup_layout() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let (config, skipped) = bundle_config(&dir, &spec(Pid1::Command), &hybrid(), true).expect("config");
        assert!(skipped.is_empty());
        let json = serde_json::to_value(&config).expect("json");
        assert_eq!(json["linux"]["resources"]["cpu"], serde_json::json!({"quota": 200000, "period": 100000}));
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 512 << 20);

        let (config, skipped) = bundle_config(&dir, &spec(Pid1::Command), &CgroupLayout::None, true).expect("config");
        assert_eq!(skipped, [Controller::Cpu, Controller::Memory]);
        let json = serde_json::to_value(&config).expect("json");
        assert!(json["linux"]["resources"].get("cpu").is_none() && json["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn a_handed_off_init_may_reboot_its_namespace_but_not_load_a_kernel() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let mut sandbox = spec(Pid1::Agent { binary: "/opt/msb-agent".into() });
        let caps = |json: &serde_json::Value| -> Vec<String> {
            json["process"]["capabilities"]["bounding"].as_array().expect("caps").iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()
        };
        let (config, _) = bundle_config(&dir, &sandbox, &hybrid(), true).expect("config");
        let json = serde_json::to_value(&config).expect("json");
        assert!(!caps(&json).contains(&"CAP_SYS_BOOT".to_owned()) && json["linux"].get("seccomp").is_none(), "the agent needs neither");

        sandbox.init = Init::Auto;
        let (config, _) = bundle_config(&dir, &sandbox, &hybrid(), true).expect("config");
        let json = serde_json::to_value(&config).expect("json");
        for set in ["bounding", "effective", "permitted"] {
            assert!(json["process"]["capabilities"][set].as_array().expect("set").contains(&"CAP_SYS_BOOT".into()), "{set}");
        }
        let seccomp = &json["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(seccomp["syscalls"], serde_json::json!([{"names": ["kexec_load", "kexec_file_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]));
        if std::env::consts::ARCH == "x86_64" {
            // A 32-bit kexec_load must not get past a filter for 64-bit calls only.
            assert_eq!(seccomp["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        }
    }

    #[test]
    fn bundle_without_cgroups_asks_for_none() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let mut sandbox = spec(Pid1::Agent { binary: "/opt/msb-agent".into() });
        (sandbox.cpus, sandbox.memory) = (None, None);
        assert!(!sandbox.needs_cgroups(), "the agent without limits needs no cgroup");
        let (config, _) = bundle_config(&dir, &sandbox, &hybrid(), false).expect("config");
        let json = serde_json::to_value(&config).expect("json");
        let linux = &json["linux"];
        assert!(linux.get("cgroupsPath").is_none(), "{linux}");
        // oci-spec's builder leaves an empty `resources` (crun ignores it without cgroups).
        assert!(linux["resources"].get("cpu").is_none() && linux["resources"].get("memory").is_none(), "{linux}");
        assert_eq!(linux["resources"]["devices"].as_array().map_or(0, Vec::len), 0, "{linux}");
        let mounts = config.mounts().as_ref().expect("mounts");
        assert!(mounts.iter().all(|m| m.destination() != Path::new("/sys/fs/cgroup")), "no cgroup filesystem to write to");
        assert!(mounts.iter().any(|m| m.destination() == Path::new("/sys")));

        for (init, cpus, memory) in [(Init::Auto, None, None), (Init::Agent, Some(1), None), (Init::Agent, None, Some(1 << 30))] {
            (sandbox.init, sandbox.cpus, sandbox.memory) = (init.clone(), cpus, memory);
            assert!(sandbox.needs_cgroups(), "{init:?} {cpus:?} {memory:?}");
        }
    }

    #[test]
    fn bundle_without_the_agent_runs_the_command_itself() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "worker");
        let mut sandbox = spec(Pid1::Command);
        sandbox.network = Network::Host;
        let (config, _) = bundle_config(&dir, &sandbox, &hybrid(), true).expect("config");
        let json = serde_json::to_value(&config).expect("json");
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/echo", "hi"]));
        assert_eq!(json["process"]["cwd"], "/app");
        assert_eq!(json["process"]["user"], serde_json::json!({"uid": 1000, "gid": 100}));
        let env = json["process"]["env"].as_array().expect("env");
        assert!(env.contains(&"container=msb".into()) && !env.contains(&"container=docker".into()));
        let namespaces: Vec<&str> = json["linux"]["namespaces"].as_array().expect("ns").iter().filter_map(|n| n["type"].as_str()).collect();
        assert!(!namespaces.contains(&"network"), "network = host shares the host's");
        assert!(config.mounts().as_ref().expect("mounts").iter().all(|m| m.destination() != Path::new("/.msb/agent")));

        sandbox.process.user = Some("app".into());
        let err = bundle_config(&dir, &sandbox, &hybrid(), true).unwrap_err();
        assert!(err.to_string().contains("must be numeric"), "{err}");
    }
}
