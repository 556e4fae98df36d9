//! End to end through crun (root): a busybox layer, a sandbox, its output, exit code, limits,
//! and that nothing is left after stop, after a kill, or after its supervisor is SIGKILLed.
//!
//! Needs crun and Debian's busybox-static (`/bin/busybox`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

const BUSYBOX: &str = "/bin/busybox";

/// A home with one busybox image layer in it.
struct Home {
    dir: tempfile::TempDir,
    layer: PathBuf,
}

impl Home {
    fn new() -> Home {
        assert!(Path::new(BUSYBOX).exists(), "these tests need Debian's busybox-static ({BUSYBOX})");
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = dir.path().join("layer");
        fs::create_dir_all(layer.join("bin")).expect("mkdir");
        for d in ["etc", "proc", "sys", "dev", "tmp", "run"] {
            fs::create_dir_all(layer.join(d)).expect("mkdir");
        }
        fs::copy(BUSYBOX, layer.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "echo", "cat", "ls", "sleep", "hostname", "id", "touch"] {
            symlink("busybox", layer.join("bin").join(applet)).expect("link");
        }
        fs::write(layer.join("etc/motd"), "from the image\n").expect("motd");
        Home { dir, layer }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("v1")
    }

    fn sandboxes(&self) -> Sandboxes {
        Sandboxes::new(&self.root())
    }

    fn spec(&self, name: &str, script: &str) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            lowers: vec![self.layer.clone()],
            image_id: "sha256:test".into(),
            process: ProcessSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                env: vec!["GREETING=hi".into()],
                workdir: "/".into(),
                user: None,
            },
            init: Init::Agent,
            pid1: Pid1::Command,
            scripts: vec![("hello".into(), b"#!/bin/sh\necho hello from a script\n".to_vec())],
            cpus: None,
            memory: None,
            network: Network::Private,
        }
    }

    /// What crun still knows about (`crun list` on msb's state root): must be nothing.
    fn crun_list(&self) -> String {
        let out = Command::new("crun")
            .arg("--root")
            .arg(self.sandboxes().oci_state_root())
            .arg("list")
            .arg("--quiet")
            .output()
            .expect("crun list");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Asserts that nothing of sandbox `name` is left: process, crun state, cgroup, mount, socket.
    fn assert_clean(&self, name: &str, init: Option<ProcessRef>) {
        let dir = self.sandboxes().dir(name);
        if let Some(init) = init {
            assert!(!init.is_alive(), "PID 1 (host pid {}) still runs", init.pid);
        }
        assert_eq!(self.crun_list(), "", "crun still lists a container");
        let id = dir.container_id();
        for controller in ["memory", "cpu", "pids", "systemd"] {
            let cgroup = Path::new("/sys/fs/cgroup").join(controller).join(&id);
            assert!(!cgroup.exists(), "{} is left", cgroup.display());
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&self.dir.path().display().to_string()), "a mount under the home is left:\n{mounts}");
        let run: Vec<_> = fs::read_dir(dir.run_dir()).map(|d| d.filter_map(Result::ok).collect()).unwrap_or_default();
        assert!(run.is_empty(), "run/ still holds {run:?}");
        assert!(no_process_mentions(self.dir.path()), "a process still names the home in its command line");
    }
}

/// A failed test must not leave its sandboxes running once its home is gone.
impl Drop for Home {
    fn drop(&mut self) {
        let sandboxes = self.sandboxes();
        for (name, _) in sandboxes.list().unwrap_or_default() {
            let _ = sandboxes.kill(&name);
        }
    }
}

/// No process has `path` in its command line (a crun or shim left behind).
fn no_process_mentions(path: &Path) -> bool {
    let needle = path.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else { return true };
    let me = std::process::id().to_string();
    entries.filter_map(Result::ok).filter(|e| e.file_name() != me.as_str()).all(|e| {
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        !String::from_utf8_lossy(&cmdline).contains(&needle)
    })
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn foreground_streams_output_and_propagates_the_exit_code() {
    let home = Home::new();
    let spec = home.spec("fg", "echo hi; echo $GREETING from $(hostname) >&2; exit 3");
    let running = home.sandboxes().start(&spec, &StartOptions::default()).expect("start");
    let mut out = Vec::new();
    let code = running.wait(Some(&mut out), &format!("{} | ", spec.name)).expect("wait");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("fg | hi\n") && text.contains("fg | hi from fg\n"), "{text}");
    assert_eq!(home.sandboxes().status("fg").expect("status"), Status::Exited { exit_code: Some(3) });
    home.assert_clean("fg", None);
}

#[test]
fn each_boot_has_a_fresh_log_and_keeps_the_sandbox_layer_and_the_trash_holds_one_boot() {
    let home = Home::new();
    let boot = |script: &str| {
        let running = home.sandboxes().start(&home.spec("again", script), &StartOptions::default()).expect("start");
        running.wait(None, "").expect("wait")
    };
    assert_eq!(boot("echo first; echo kept > /etc/kept"), Some(0));
    assert_eq!(boot("echo second; cat /etc/kept"), Some(0));
    let dir = home.sandboxes().dir("again");
    assert_eq!(fs::read_to_string(dir.log()).expect("log"), "second\nkept\n");
    // What the second boot replaced (the first one's log, pid file and overlay scratch folder)
    // was removed while it ran; its own pid file waits for the next boot.
    let trash: Vec<String> = fs::read_dir(dir.path().join("trash")).expect("trash").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    assert!(trash.len() == 1 && trash[0].ends_with("init.pid"), "{trash:?}");
    home.assert_clean("again", None);
}

#[test]
fn a_boot_that_takes_the_lock_after_the_last_one_finds_its_layer_unmounted() {
    let home = Home::new();
    let spec = home.spec("next", "sleep 0.1");
    let dir = home.sandboxes().dir("next");
    for round in 0..5 {
        let running = home.sandboxes().start(&spec, &StartOptions::default()).expect("start");
        let waiter = std::thread::spawn(move || running.wait(None, ""));
        // As the next boot (from another msb, say) would: the exit is recorded, then the lock.
        wait_until("the exit recorded", Duration::from_secs(10), || dir.read_state().ok().flatten().is_some_and(|s| s.stopped));
        let held = super::lock(&dir, true).expect("lock");
        assert!(!crate::sys::overlay::in_use(&home.layer, &dir.upper(), &dir.work()), "round {round}: the last boot's mount is still there");
        drop(held);
        assert_eq!(waiter.join().expect("the waiting thread").expect("wait"), Some(0));
    }
    home.assert_clean("next", None);
}

#[test]
fn the_guest_sees_the_view_msb_files_and_limits() {
    let home = Home::new();
    let mut spec = home.spec(
        "view",
        "cat /etc/motd; echo changed > /etc/motd; /.msb/scripts/hello; cat /.msb/config.json; echo; \
         ls /.msb; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
         touch /.msb/run/ready; echo $container",
    );
    spec.memory = Some(256 << 20);
    spec.cpus = Some(1);
    let running = home.sandboxes().start(&spec, &StartOptions::default()).expect("start");
    let mut out = Vec::new();
    assert_eq!(running.wait(Some(&mut out), &format!("{} | ", spec.name)).expect("wait"), Some(0));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("view | from the image\n"), "{text}");
    assert!(text.contains("view | hello from a script\n"), "{text}");
    assert!(text.contains("\"hostname\": \"view\"") && text.contains("\"/.msb/run/agent.sock\""), "{text}");
    assert!(text.contains("view | config.json\nview | run\nview | scripts\n"), "{text}");
    assert!(text.contains(&format!("view | {}\n", 256 << 20)), "memory limit: {text}");
    assert!(text.contains("view | 100000\n"), "cpu quota: {text}");
    assert!(text.contains("view | msb\n"), "container=msb: {text}");
    // Writes land in the sandbox's own layer, never in the image's.
    let dir = home.sandboxes().dir("view");
    assert_eq!(fs::read_to_string(dir.upper().join("etc/motd")).expect("upper"), "changed\n");
    assert_eq!(fs::read_to_string(home.layer.join("etc/motd")).expect("image"), "from the image\n");
    home.assert_clean("view", None);
}

#[test]
fn detached_runs_until_stopped_and_stop_leaves_nothing() {
    let home = Home::new();
    let sandboxes = home.sandboxes();
    let spec = home.spec("bg", "echo started; exec sleep 1000");
    let options = StartOptions { detach: true, ..StartOptions::default() };
    let running = sandboxes.start(&spec, &options).expect("start");
    let init = running.state().init.expect("a PID 1");
    assert_eq!(running.wait(None, "").expect("wait"), None, "detached: nothing to wait for");
    assert!(matches!(sandboxes.status("bg").expect("status"), Status::Running { .. }));
    assert!(matches!(sandboxes.start(&spec, &options), Err(RuntimeError::AlreadyRunning { .. })));
    wait_until("its output", Duration::from_secs(5), || {
        fs::read_to_string(sandboxes.log_path("bg")).unwrap_or_default().contains("started")
    });
    assert_ne!(home.crun_list(), "");
    // `sleep` as PID 1 ignores SIGTERM: stop must fall back to SIGKILL after the timeout.
    let t = Instant::now();
    sandboxes.stop("bg", Duration::from_millis(300)).expect("stop");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(sandboxes.status("bg").expect("status"), Status::Exited { exit_code: None });
    home.assert_clean("bg", Some(init));
    sandboxes.stop("bg", Duration::from_secs(1)).expect("stopping a stopped sandbox is fine");
    sandboxes.remove("bg").expect("rm");
    assert!(!sandboxes.dir("bg").path().exists());
    assert_eq!(sandboxes.status("bg").expect("status"), Status::Absent);
}

#[test]
fn the_network_is_private_unless_host_is_asked_for() {
    let home = Home::new();
    let layout = CgroupLayout::detect();
    let host_links = fs::read_to_string("/proc/net/dev").expect("net").lines().count();
    for (network, name) in [(Network::Private, "netpriv"), (Network::Host, "nethost")] {
        let mut spec = home.spec(name, "cat /proc/net/dev");
        spec.network = network;
        let running = home.sandboxes().start(&spec, &StartOptions::default()).expect("start");
        let mut out = Vec::new();
        assert_eq!(running.wait(Some(&mut out), &format!("{} | ", spec.name)).expect("wait"), Some(0));
        let text = String::from_utf8_lossy(&out);
        let links = text.lines().count();
        match network {
            // Two header lines and `lo`.
            Network::Private => assert!(links == 3 && text.contains(" lo:"), "{text}"),
            Network::Host => assert_eq!(links, host_links, "{text}"),
        }
        home.assert_clean(name, None);
    }
    assert_eq!(CgroupLayout::detect(), layout, "hiding the cgroup2 mount from crun must not touch the host");
}

#[test]
fn an_init_that_is_not_in_the_image_is_refused_before_boot() {
    let home = Home::new();
    let mut spec = home.spec("noinit", "true");
    spec.init = Init::Auto;
    let err = home.sandboxes().start(&spec, &StartOptions::default()).unwrap_err();
    assert!(matches!(err, RuntimeError::Init { .. }) && err.to_string().contains("found no init"), "{err}");
    home.assert_clean("noinit", None);
    assert_eq!(home.sandboxes().status("noinit").expect("status"), Status::Absent);
}

#[test]
fn a_crun_failure_is_reported_with_crun_s_message() {
    let home = Home::new();
    let mut spec = home.spec("bad", "true");
    spec.process.argv = vec!["/no/such/program".into()];
    let options = StartOptions { detach: true, ..StartOptions::default() };
    let err = home.sandboxes().start(&spec, &options).unwrap_err();
    assert!(matches!(err, RuntimeError::Oci { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    home.assert_clean("bad", None);
}

#[test]
fn a_missing_runtime_names_its_package() {
    let home = Home::new();
    let options = StartOptions { oci_runtime: OciRuntime { binary: "/nonexistent/crun".into() }, ..StartOptions::default() };
    let err = home.sandboxes().start(&home.spec("nort", "true"), &options).unwrap_err();
    assert!(err.to_string().contains("apt-get install crun"), "{err}");
}

#[test]
fn runc_runs_the_same_bundle() {
    if Command::new("runc").arg("--version").output().is_err() {
        println!("SKIPPED runc test: runc is not installed");
        return;
    }
    let home = Home::new();
    let options = StartOptions { oci_runtime: OciRuntime::runc(), ..StartOptions::default() };
    let running = home.sandboxes().start(&home.spec("viarunc", "echo via runc; exit 4"), &options).expect("start");
    let mut out = Vec::new();
    assert_eq!(running.wait(Some(&mut out), "viarunc | ").expect("wait"), Some(4));
    assert!(String::from_utf8_lossy(&out).contains("viarunc | via runc\n"));
    let leftover = Command::new("runc").arg("--root").arg(home.sandboxes().oci_state_root()).args(["list", "-q"]).output().expect("runc list");
    assert_eq!(String::from_utf8_lossy(&leftover.stdout).trim(), "");
}

/// The supervising msb of the next test; does nothing unless that test runs it.
#[test]
fn supervisor_child() {
    let Some(root) = std::env::var_os("MSB_TEST_SUPERVISOR_ROOT") else { return };
    let layer = std::env::var_os("MSB_TEST_SUPERVISOR_LAYER").expect("layer");
    let home = Home { dir: tempfile::tempdir().expect("unused"), layer: layer.into() };
    let spec = home.spec("orphan", "echo up; exec sleep 1000");
    let running = Sandboxes::new(Path::new(&root)).start(&spec, &StartOptions::default()).expect("start");
    let _ = running.wait(None, "");
}

#[test]
fn after_the_supervisor_is_killed_the_next_command_cleans_up() {
    let home = Home::new();
    let sandboxes = home.sandboxes();
    let exe = std::env::current_exe().expect("test binary");
    let supervisor = Command::new(exe)
        .args(["--exact", "runtime::e2e::supervisor_child", "--nocapture", "--test-threads=1"])
        .env("MSB_TEST_SUPERVISOR_ROOT", home.root())
        .env("MSB_TEST_SUPERVISOR_LAYER", &home.layer)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("supervisor");
    // Should this test fail half-way, the supervisor and its sandbox must not outlive it.
    struct Reap(std::process::Child, Sandboxes);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = self.1.cleanup_stale();
        }
    }
    let mut supervisor = Reap(supervisor, sandboxes.clone());
    let dir = sandboxes.dir("orphan");
    wait_until("the sandbox to run", Duration::from_secs(20), || {
        matches!(dir.read_state(), Ok(Some(State { init: Some(init), .. })) if init.is_alive())
            && fs::read_to_string(dir.log()).unwrap_or_default().contains("up")
    });
    let init = dir.read_state().expect("state").and_then(|s| s.init).expect("init");
    let status = sandboxes.status("orphan").expect("status");
    assert!(matches!(status, Status::Running { .. }), "{status:?}");
    supervisor.0.kill().expect("SIGKILL the supervisor");
    supervisor.0.wait().expect("reap");
    assert!(init.is_alive(), "the sandbox outlives a killed supervisor until the next command");
    assert!(matches!(sandboxes.status("orphan").expect("status"), Status::Stale { .. }));

    let cleaned = sandboxes.cleanup_stale().expect("cleanup");
    assert_eq!(cleaned.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["orphan"]);
    home.assert_clean("orphan", Some(init));
    assert_eq!(sandboxes.status("orphan").expect("status"), Status::Exited { exit_code: None });
    assert!(sandboxes.cleanup_stale().expect("again").is_empty());
}

#[test]
fn dropping_an_unwaited_foreground_sandbox_stops_it() {
    let home = Home::new();
    let running = home.sandboxes().start(&home.spec("dropped", "exec sleep 1000"), &StartOptions::default()).expect("start");
    let dir = home.sandboxes().dir("dropped");
    wait_until("PID 1", Duration::from_secs(10), || fs::read_to_string(dir.pid_file()).is_ok());
    let init = dir.read_state().expect("state").and_then(|s| s.init);
    drop(running);
    home.assert_clean("dropped", init);
}

/// The agent binary `cargo test` builds beside the test binaries, if it was built. A dynamically
/// linked one (a debug build) gets its loader and libraries copied into the test layer.
fn agent_for(home: &Home) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let agent = exe.parent()?.parent()?.join("msb-agent");
    if !agent.exists() {
        return None;
    }
    if !crate::agent::is_static_executable(&agent).unwrap_or(false) {
        let ldd = Command::new("ldd").arg(&agent).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
            if let Some(path) = path {
                let target = home.layer.join(path.strip_prefix("/").expect("absolute"));
                fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                fs::copy(&path, &target).expect("copy a library");
            }
        }
    }
    Some(agent)
}

#[test]
fn the_agent_as_pid_1_runs_the_command_serves_exec_and_stops_on_sigterm() {
    let home = Home::new();
    let Some(agent) = agent_for(&home) else {
        println!("SKIPPED agent test: msb-agent is not built (`cargo test` builds it; `cargo test --lib` does not)");
        return;
    };
    let sandboxes = home.sandboxes();

    // Foreground: the main command's output and exit code come through the agent.
    let mut spec = home.spec("agentfg", "echo hi from $(cat /proc/1/comm); exit 5");
    spec.pid1 = Pid1::Agent { binary: agent.clone() };
    let running = sandboxes.start(&spec, &StartOptions::default()).expect("start");
    let mut out = Vec::new();
    let code = running.wait(Some(&mut out), &format!("{} | ", spec.name)).expect("wait");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(5), "{text}");
    assert!(text.contains("agentfg | hi from agent\n"), "{text}");
    home.assert_clean("agentfg", None);

    // Detached: exec through the socket, a script by name, then a clean stop.
    let mut spec = home.spec("agentbg", "exec sleep 1000");
    spec.pid1 = Pid1::Agent { binary: agent };
    let options = StartOptions { detach: true, ..StartOptions::default() };
    let running = sandboxes.start(&spec, &options).expect("start");
    let init = running.state().init;
    let socket = running.agent_socket();
    crate::agent::wait_ready(&socket, Duration::from_secs(10)).expect("the agent answers");
    let request = crate::agent::ExecRequest { argv: vec!["hello".into()], ..Default::default() };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = crate::agent::exec(&socket, &request, std::io::empty(), &mut stdout, &mut stderr).expect("exec");
    assert_eq!((exit.code(), String::from_utf8_lossy(&stdout).as_ref()), (0, "hello from a script\n"), "{}", String::from_utf8_lossy(&stderr));
    let t = Instant::now();
    sandboxes.stop("agentbg", Duration::from_secs(10)).expect("stop");
    assert!(t.elapsed() < Duration::from_secs(5), "the agent should stop on SIGTERM, not wait for SIGKILL: {:?}", t.elapsed());
    home.assert_clean("agentbg", init);
    assert!(!socket.exists());
}
