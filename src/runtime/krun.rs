//! The `krun` backend: a libkrun microVM whose root is the sandbox's rootfs view over virtio-fs.
//!
//! [`probe`] decides, honestly, whether this host can run libkrun guests. `/dev/kvm` existing is
//! not enough: on the machines msb is developed on it is `kvm_pvm`, a software (paravirtual)
//! hypervisor in which real guest kernels die with `KVM_EXIT_INTERNAL_ERROR`.
//!
//! libkrun takes over the process that boots the VM (`krun_start_enter` never returns), so the
//! VMM runs in a child: msb re-executes itself with [`VMM_ENV`] naming the VM's [`VmConfig`], and
//! `main` hands over to [`vmm_from_env`]. That child makes a private mount namespace, mounts the
//! view there, binds msb's files into it (the agent also at `/init.krun`, the path libkrun's
//! kernel command line boots, so the agent is PID 1 and mounts /proc and the rest itself), and
//! enters the VM.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{BackendKind, SandboxDir, State, Status};
use super::sys::ProcessRef;
use super::view::{self, GuestConfig};
use crate::agent::protocol::{GUEST_DIR, GUEST_RUN};
use super::{Backend, Boot, Pid1, RuntimeError, SandboxSpec, Started};

/// Set (to a `vm.json` path) in the environment of the msb child that becomes the VMM.
pub const VMM_ENV: &str = crate::env::MSB_KRUN_VMM;
/// The guest vsock port the agent listens on; libkrun maps it to the host's `run/agent.sock`.
pub const AGENT_VSOCK_PORT: u32 = 7000;
/// The guest kernel library libkrun loads at run time.
pub const LIBKRUNFW: &str = "libkrunfw.so.5";
/// The path libkrun's kernel command line runs as init (`init=/init.krun`).
const KRUN_INIT: &str = "/init.krun";
const DEFAULT_MEMORY_MIB: u32 = 512;

/// One finding of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Whether libkrun guests can run here, and every reason they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub checks: Vec<Check>,
}

impl Probe {
    /// Why guests cannot run here (every failed check, in order), or `None` when they can.
    pub fn failure(&self) -> Option<String> {
        let failed: Vec<&str> = self.checks.iter().filter(|c| !c.ok).map(|c| c.detail.as_str()).collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    /// Whether `/dev/kvm` is the kvm_pvm software hypervisor.
    pub fn is_kvm_pvm(&self) -> bool {
        self.checks.iter().any(|c| c.what == "kvm implementation" && c.detail.contains("kvm_pvm"))
    }

    /// A probe with a fixed verdict, for tests of what depends on it.
    pub fn fixed(failure: Option<String>) -> Probe {
        let check = match failure {
            Some(detail) => Check { what: "fixed", ok: false, detail },
            None => Check { what: "fixed", ok: true, detail: "ok".into() },
        };
        Probe { checks: vec![check] }
    }
}

/// What the probe reads from the host, gathered apart so the decision is testable.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `Ok` when `/dev/kvm` opens read-write; else why not.
    pub dev_kvm: Result<(), String>,
    pub arch: String,
    pub cpuinfo: String,
    /// Folders present under `/sys/module` among kvm, kvm_intel, kvm_amd, kvm_pvm.
    pub sys_modules: Vec<String>,
    /// `/proc/modules` (absent when the kernel has no loadable modules).
    pub proc_modules: String,
    pub libkrunfw: Option<PathBuf>,
    /// Whether this msb was built with the `krun` feature (libkrun linked in).
    pub compiled: bool,
}

impl HostFacts {
    /// Reads this host.
    pub fn read() -> HostFacts {
        let dev_kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|err| match err.kind() {
                io::ErrorKind::NotFound => "/dev/kvm does not exist (no KVM in this kernel, or not passed to this machine)".to_owned(),
                io::ErrorKind::PermissionDenied => "/dev/kvm is not accessible to this user: add it to the `kvm` group".to_owned(),
                _ => format!("/dev/kvm cannot be opened: {err}"),
            });
        let sys_modules = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .map(str::to_owned)
            .collect();
        HostFacts {
            dev_kvm,
            arch: std::env::consts::ARCH.to_owned(),
            cpuinfo: fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            sys_modules,
            proc_modules: fs::read_to_string("/proc/modules").unwrap_or_default(),
            libkrunfw: find_library(LIBKRUNFW),
            compiled: cfg!(all(feature = "krun", target_os = "linux")),
        }
    }
}

/// Probes this host.
pub fn probe() -> Probe {
    probe_with(&HostFacts::read())
}

/// The checks, in order: /dev/kvm access, the CPU's virtualization flags, the KVM
/// implementation, the guest kernel library, libkrun being built in.
pub fn probe_with(host: &HostFacts) -> Probe {
    let mut checks = Vec::new();
    checks.push(match &host.dev_kvm {
        Ok(()) => Check { what: "/dev/kvm", ok: true, detail: "/dev/kvm opens read-write".into() },
        Err(why) => Check { what: "/dev/kvm", ok: false, detail: why.clone() },
    });
    let x86 = matches!(host.arch.as_str(), "x86_64" | "x86");
    let flags: Vec<&str> = host
        .cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let hw_flag = ["vmx", "svm"].into_iter().find(|f| flags.contains(f));
    if x86 {
        checks.push(match hw_flag {
            Some(flag) => Check { what: "cpu", ok: true, detail: format!("the CPU has hardware virtualization ({flag})") },
            None => Check {
                what: "cpu",
                ok: false,
                detail: "the CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo; on a cloud VM, \
                         nested virtualization is off)"
                    .into(),
            },
        });
    }
    let has = |m: &str| host.sys_modules.iter().any(|s| s == m);
    let loaded = |m: &str| host.proc_modules.lines().any(|l| l.split_whitespace().next() == Some(m));
    let vendor = ["kvm_intel", "kvm_amd"].into_iter().find(|m| has(m) || loaded(m));
    checks.push(match (has("kvm_pvm") || loaded("kvm_pvm"), vendor) {
        (true, None) => Check {
            what: "kvm implementation",
            ok: false,
            detail: "/dev/kvm is served by kvm_pvm, a software (paravirtual) hypervisor in which guest kernels die \
                     with KVM_EXIT_INTERNAL_ERROR"
                .into(),
        },
        (_, Some(vendor)) => Check { what: "kvm implementation", ok: true, detail: format!("/dev/kvm is served by {vendor}") },
        (false, None) if x86 && host.dev_kvm.is_ok() => Check {
            what: "kvm implementation",
            ok: false,
            detail: "/dev/kvm is served by neither kvm_intel nor kvm_amd: not hardware KVM".into(),
        },
        (false, None) => Check { what: "kvm implementation", ok: host.dev_kvm.is_ok(), detail: "no KVM module".into() },
    });
    checks.push(match &host.libkrunfw {
        Some(path) => Check { what: "libkrunfw", ok: true, detail: format!("guest kernel: {}", path.display()) },
        None => Check {
            what: "libkrunfw",
            ok: false,
            detail: format!("{LIBKRUNFW} (libkrun's guest kernel) is not installed: install Debian's `libkrunfw5` package (in sid only; it installs on bookworm with dpkg)"),
        },
    });
    if !host.compiled {
        checks.push(Check { what: "libkrun", ok: false, detail: "this msb was built without the `krun` feature (libkrun)".into() });
    }
    Probe { checks }
}

/// Looks for a shared library where the dynamic loader would: `LD_LIBRARY_PATH`, the folders
/// of `/etc/ld.so.conf.d`, and the usual system folders.
fn find_library(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Ok(entries) = fs::read_dir("/etc/ld.so.conf.d") {
        for entry in entries.filter_map(Result::ok) {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            dirs.extend(text.lines().map(str::trim).filter(|l| l.starts_with('/')).map(PathBuf::from));
        }
    }
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    for base in ["/lib", "/usr/lib", "/usr/local/lib"] {
        dirs.push(Path::new(base).join(&triplet));
        dirs.push(base.into());
    }
    dirs.extend(["/lib64", "/usr/lib64", "/usr/local/lib64"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// What the VMM child needs: the view to mount and bind, and libkrun's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub cpus: u8,
    pub memory_mib: u32,
    /// Layers of the view, topmost first, and the sandbox's own layer.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the view is mounted in the VMM's private namespace: the virtio-fs root.
    pub root: PathBuf,
    /// `(host source, guest path, read-only)`, made inside `root` after mounting it.
    pub binds: Vec<(PathBuf, String, bool)>,
    /// The environment of PID 1 (libkrun passes it on the kernel command line).
    pub env: Vec<String>,
    /// libkrun listens on `agent_socket` and forwards each connection to this guest port.
    pub vsock_port: u32,
    pub agent_socket: PathBuf,
    /// The guest console (the agent's and its children's output).
    pub console: PathBuf,
}

/// The VM for `spec`. Needs the agent: a VM has no other way to run the sandbox's command.
pub fn vm_config(dir: &SandboxDir, spec: &SandboxSpec) -> Result<VmConfig, RuntimeError> {
    let Pid1::Agent { binary } = &spec.pid1 else {
        return Err(RuntimeError::Invalid { name: spec.name.clone(), reason: "the krun backend needs the agent as PID 1".into() });
    };
    let memory_mib = match spec.memory {
        Some(bytes) => u32::try_from(bytes >> 20).unwrap_or(u32::MAX).max(64),
        None => DEFAULT_MEMORY_MIB,
    };
    Ok(VmConfig {
        cpus: spec.cpus.unwrap_or(1).max(1),
        memory_mib,
        lowers: spec.lowers.clone(),
        upper: dir.upper(),
        work: dir.work(),
        root: dir.rootfs(),
        binds: vec![
            (binary.clone(), KRUN_INIT.into(), true),
            (dir.guest(), GUEST_DIR.into(), true),
            (dir.run_dir(), GUEST_RUN.into(), false),
        ],
        env: vec!["container=msb".into(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        vsock_port: AGENT_VSOCK_PORT,
        agent_socket: dir.agent_socket(),
        console: dir.log(),
    })
}

/// libkrun microVMs.
#[derive(Debug)]
pub struct KrunBackend;

impl Backend for KrunBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Krun
    }

    fn start(&self, boot: Boot<'_>) -> Result<Started, RuntimeError> {
        let Boot { dir, spec, view, init, detach } = boot;
        if let Some(reason) = probe().failure() {
            return Err(RuntimeError::KrunUnavailable { reason });
        }
        drop(view); // the VMM child mounts its own, in its own namespace
        let config = vm_config(dir, spec)?;
        view::write_guest_config(dir, &GuestConfig::new(spec, init, Some(config.vsock_port)))?;
        let path = dir.path().join("vm.json");
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::Io { op: "encode", path: path.clone(), cause: io::Error::other(e) })?;
        fs::write(&path, bytes).map_err(RuntimeError::io("write", &path))?;
        let exe = std::env::current_exe().map_err(RuntimeError::io("find", "the msb executable"))?;
        let log = fs::OpenOptions::new().append(true).create(true).open(dir.log()).map_err(RuntimeError::io("open", dir.log()))?;
        let log_err = log.try_clone().map_err(RuntimeError::io("open", dir.log()))?;
        let child = Command::new(&exe)
            .env(VMM_ENV, &path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(RuntimeError::io("start", &exe))?;
        let runtime_process = ProcessRef::of(child.id() as i32);
        Ok(Started { init: None, runtime_process, child: (!detach).then_some(child), namespace: None })
    }

    /// The guest's PID 1 is out of the host's reach: the VMM gets SIGTERM, then SIGKILL.
    fn stop(&self, dir: &SandboxDir, state: &State, timeout: Duration) -> Result<(), RuntimeError> {
        if let Some(vmm) = state.runtime_process.filter(ProcessRef::is_alive) {
            if !timeout.is_zero() {
                let _ = vmm.signal(rustix::process::Signal::TERM);
                vmm.wait_gone(timeout);
            }
            if vmm.is_alive() {
                vmm.signal(rustix::process::Signal::KILL).map_err(RuntimeError::io("kill", dir.path()))?;
                vmm.wait_gone(Duration::from_secs(10));
            }
        }
        self.remove(dir, state)
    }

    fn state(&self, _dir: &SandboxDir, state: &State) -> Status {
        match state.runtime_process {
            Some(vmm) if vmm.is_alive() => Status::Running { init: None, backend: BackendKind::Krun },
            Some(vmm) => Status::Stale { reason: format!("its VMM (pid {}) has exited", vmm.pid) },
            None => Status::Stale { reason: "its VMM never started".into() },
        }
    }

    /// The VMM's namespace and mounts died with it; only libkrun's socket file remains.
    fn remove(&self, dir: &SandboxDir, _state: &State) -> Result<(), RuntimeError> {
        super::state::remove_file_if_present(&dir.agent_socket())
    }
}

/// In `main`, first thing: when this process was started as a sandbox's VMM, runs the VM and
/// returns the exit code to exit with (it returns only on failure: libkrun exits the process
/// when the guest powers off).
pub fn vmm_from_env() -> Option<i32> {
    let path = std::env::var_os(VMM_ENV)?;
    Some(match run_vmm(Path::new(&path)) {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("msb: krun VMM: {err}");
            1
        }
    })
}

fn run_vmm(path: &Path) -> Result<std::convert::Infallible, String> {
    let text = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: VmConfig = serde_json::from_slice(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    // A single-threaded fresh process: the private namespace is the whole process's.
    super::sys::enter_private_mount_namespace().map_err(|e| format!("cannot make a private mount namespace: {e}"))?;
    let lowers: Vec<&Path> = config.lowers.iter().map(PathBuf::as_path).collect();
    let view = crate::sys::overlay::mount(&lowers, Some(crate::sys::overlay::Upper { upper: &config.upper, work: &config.work }))
        .map_err(|e| format!("cannot mount the rootfs view: {e}"))?;
    let mut binds = Vec::new();
    for (source, guest, read_only) in &config.binds {
        binds.push((source.clone(), config.root.join(guest.trim_start_matches('/')), *read_only));
    }
    super::sys::prepare(super::sys::Namespace { attach: Some((view, config.root.clone())), binds: Vec::new() })
        .map_err(|e| e.to_string())?;
    // Mount points live in the sandbox's own layer.
    for (source, target, _) in &binds {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        if source.is_dir() {
            fs::create_dir_all(target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        } else if !target.exists() {
            fs::write(target, b"").map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        }
    }
    super::sys::prepare(super::sys::Namespace { attach: None, binds }).map_err(|e| e.to_string())?;
    enter(&config)
}

#[cfg(all(feature = "krun", target_os = "linux"))]
fn enter(config: &VmConfig) -> Result<std::convert::Infallible, String> {
    ffi::enter(config)
}

#[cfg(not(all(feature = "krun", target_os = "linux")))]
fn enter(_config: &VmConfig) -> Result<std::convert::Infallible, String> {
    Err("this msb was built without the `krun` feature (libkrun)".into())
}

/// The calls into libkrun. libkrun's C API takes C strings and NULL-terminated arrays of them
/// and copies what it keeps, so each call only needs its arguments alive for its duration.
#[cfg(all(feature = "krun", target_os = "linux"))]
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{CString, c_char};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::VmConfig;

    fn cstring(s: &[u8]) -> Result<CString, String> {
        CString::new(s).map_err(|_| "a path or variable holds a NUL byte".to_owned())
    }

    fn path(p: &Path) -> Result<CString, String> {
        cstring(p.as_os_str().as_bytes())
    }

    fn check(what: &str, code: i32) -> Result<u32, String> {
        u32::try_from(code).map_err(|_| format!("libkrun {what} failed: {}", std::io::Error::from_raw_os_error(-code)))
    }

    pub(super) fn enter(config: &VmConfig) -> Result<std::convert::Infallible, String> {
        let ctx = check("krun_create_ctx", ::krun::krun_create_ctx())?;
        check("krun_set_vm_config", ::krun::krun_set_vm_config(ctx, config.cpus, config.memory_mib))?;
        let root = path(&config.root)?;
        let socket = path(&config.agent_socket)?;
        let console = path(&config.console)?;
        let env: Vec<CString> = config.env.iter().map(|e| cstring(e.as_bytes())).collect::<Result<_, _>>()?;
        let mut envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: every pointer is a NUL-terminated string owned by this frame, alive across the
        // call; `envp` is NULL-terminated as libkrun requires; libkrun copies what it keeps.
        unsafe {
            check("krun_set_root", ::krun::krun_set_root(ctx, root.as_ptr()))?;
            check("krun_set_env", ::krun::krun_set_env(ctx, envp.as_ptr()))?;
            check("krun_add_vsock_port2", ::krun::krun_add_vsock_port2(ctx, config.vsock_port, socket.as_ptr(), true))?;
            check("krun_set_console_output", ::krun::krun_set_console_output(ctx, console.as_ptr()))?;
        }
        // On success this never returns: libkrun runs the VM and exits the process with the
        // guest's exit code.
        let code = ::krun::krun_start_enter(ctx);
        Err(format!("libkrun could not start the VM: {}", std::io::Error::from_raw_os_error(-code)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Init;
    use crate::runtime::{Network, ProcessSpec};

    fn facts() -> HostFacts {
        HostFacts {
            dev_kvm: Ok(()),
            arch: "x86_64".into(),
            cpuinfo: "processor\t: 0\nflags\t\t: fpu vme svm sse2\n".into(),
            sys_modules: vec!["kvm".into(), "kvm_amd".into()],
            proc_modules: String::new(),
            libkrunfw: Some("/usr/lib/x86_64-linux-gnu/libkrunfw.so.5".into()),
            compiled: true,
        }
    }

    #[test]
    fn hardware_kvm_passes() {
        assert_eq!(probe_with(&facts()).failure(), None);
    }

    #[test]
    fn each_missing_piece_is_named() {
        type Change = fn(&mut HostFacts);
        let cases: [(&str, Change); 6] = [
            ("does not exist", |h| h.dev_kvm = Err("/dev/kvm does not exist".into())),
            ("no vmx or svm", |h| h.cpuinfo = "flags : fpu sse2 hypervisor\n".into()),
            ("kvm_pvm", |h| h.sys_modules = vec!["kvm".into(), "kvm_pvm".into()]),
            ("neither kvm_intel nor kvm_amd", |h| h.sys_modules = vec!["kvm".into()]),
            ("`libkrunfw5`", |h| h.libkrunfw = None),
            ("without the `krun` feature", |h| h.compiled = false),
        ];
        for (expected, change) in cases {
            let mut host = facts();
            change(&mut host);
            let failure = probe_with(&host).failure().unwrap_or_default();
            assert!(failure.contains(expected), "{expected}: {failure}");
        }
    }

    /// This machine: `/dev/kvm` is kvm_pvm. The probe must say so and must not claim KVM works.
    #[test]
    fn this_host_is_not_taken_for_hardware_kvm() {
        let host = HostFacts::read();
        let probe = probe_with(&host);
        println!("krun probe: {:?}", probe.failure());
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(probe.is_kvm_pvm(), "{probe:?}");
            assert!(probe.failure().is_some_and(|f| f.contains("kvm_pvm")));
        }
        if !host.cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm") {
            assert!(probe.failure().is_some(), "no hardware virtualization, yet the probe passed");
        }
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            name: "vm".into(),
            lowers: vec!["/layers/top".into(), "/layers/base".into()],
            image_id: "sha256:test".into(),
            process: ProcessSpec { argv: vec!["/bin/sh".into()], env: vec![], workdir: "/".into(), user: None },
            init: Init::Agent,
            pid1: Pid1::Agent { binary: "/opt/msb-agent".into() },
            scripts: vec![],
            cpus: Some(2),
            memory: Some(1 << 30),
            network: Network::Private,
        }
    }

    #[test]
    fn vm_config_boots_the_agent_on_the_view() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "vm");
        let config = vm_config(&dir, &spec()).expect("config");
        assert_eq!((config.cpus, config.memory_mib), (2, 1024));
        assert_eq!(config.root, Path::new("/home/v1/sandboxes/vm/rootfs"));
        assert_eq!(config.lowers, spec().lowers);
        assert_eq!(config.upper, dir.upper());
        let bind = |guest: &str| config.binds.iter().find(|b| b.1 == guest).cloned().unwrap_or_else(|| panic!("{guest}"));
        assert_eq!(bind("/init.krun"), ("/opt/msb-agent".into(), "/init.krun".into(), true), "the agent is PID 1");
        assert_eq!(bind("/.msb"), (dir.guest(), "/.msb".into(), true), "the agent, its configuration and the scripts");
        assert_eq!(bind("/.msb/run"), (dir.run_dir(), "/.msb/run".into(), false));
        assert_eq!((config.vsock_port, config.agent_socket.clone()), (AGENT_VSOCK_PORT, dir.agent_socket()));
        assert_eq!(config.console, dir.log());
        assert!(config.env.contains(&"container=msb".to_owned()));
        let json = serde_json::to_string(&config).expect("json");
        assert_eq!(serde_json::from_str::<VmConfig>(&json).expect("round trip"), config);
    }

    #[test]
    fn vm_config_defaults_and_refusals() {
        let dir = SandboxDir::new(Path::new("/home/v1"), "vm");
        let mut sandbox = spec();
        (sandbox.cpus, sandbox.memory) = (None, None);
        let config = vm_config(&dir, &sandbox).expect("config");
        assert_eq!((config.cpus, config.memory_mib), (1, DEFAULT_MEMORY_MIB));
        sandbox.pid1 = Pid1::Command;
        assert!(vm_config(&dir, &sandbox).unwrap_err().to_string().contains("needs the agent"));
    }
}
