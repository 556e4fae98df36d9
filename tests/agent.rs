//! The agent end to end: the real static binary as PID 1 of fresh PID, mount, UTS and IPC
//! namespaces (`unshare`), chrooted into a busybox-only root built here, driven through msb's own
//! client. Needs root, `unshare` and Debian's busybox-static.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use msb::agent::protocol::{Frame, Hello, PROTOCOL_VERSION, read_frame, write_frame};
use msb::agent::{AgentConfig, ClientError, ExecRequest, Exit, InitMode, Listen, Session, WindowSize, client};
use tempfile::TempDir;

const SOCKET: &str = "/.msb/run/agent.sock";

/// The agent as cargo built it: static (see `src/agent/build.rs`), so it runs in a root without
/// libc.
fn agent() -> &'static Path {
    let agent = Path::new(env!("CARGO_BIN_EXE_msb-agent"));
    match msb::agent::is_static_executable(agent) {
        Ok(true) => agent,
        Ok(false) => panic!("{} is linked dynamically: see the warning of src/agent/build.rs", agent.display()),
        Err(err) => panic!("{}: {err}", agent.display()),
    }
}

/// A sandbox root with busybox, a passwd with `app` (1000, also in group `extra` 2000), the agent
/// and its configuration.
struct Root {
    dir: TempDir,
}

impl Root {
    fn new() -> Root {
        assert!(rustix::process::geteuid().is_root(), "the agent's end-to-end tests need root");
        let dir = tempfile::Builder::new().prefix("msb-agent-").tempdir().expect("tempdir");
        let root = Root { dir };
        for d in ["bin", "sbin", "etc", "srv", "root", "home/app", ".msb/scripts", ".msb/run"] {
            fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("copy /bin/busybox (apt-get install busybox-static)");
        let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            symlink("busybox", root.path().join("bin").join(applet)).expect("applet");
        }
        symlink("/bin/busybox", root.path().join("sbin/init")).expect("init");
        root.file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644);
        root.file("/etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n", 0o644);
        root.file("/.msb/scripts/hello", "#!/bin/sh\necho hello from script \"$@\"\n", 0o755);
        // Bound over this file at boot, as msb does.
        fs::write(root.path().join(".msb/agent"), "").expect("agent mount point");
        root
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, guest_path: &str, content: &str, mode: u32) {
        let path = self.path().join(guest_path.trim_start_matches('/'));
        fs::write(&path, content).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Starts the agent as PID 1 with `config`: the agent is bound into the root inside the new
    /// mount namespace (gone with it), then `chroot` execs it, still PID 1.
    fn boot(self, config: AgentConfig) -> Guest {
        fs::write(self.path().join(".msb/config.json"), serde_json::to_vec_pretty(&config).expect("json")).expect("config");
        let log = |name: &str| fs::File::create(self.path().join(name)).expect("log");
        let started = Instant::now();
        let child = Command::new("unshare")
            .args(["--fork", "--pid", "--mount", "--uts", "--ipc", "--kill-child", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$1" "$2/.msb/agent" && exec chroot "$2" /.msb/agent"#)
            .arg("sh")
            .arg(agent())
            .arg(self.path())
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("run unshare");
        Guest { socket: self.path().join(SOCKET.trim_start_matches('/')), root: self, child, started }
    }
}

fn config(argv: &[&str]) -> AgentConfig {
    AgentConfig {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["FOO=bar".into()],
        workdir: "/srv".into(),
        user: None,
        init: InitMode::Agent,
        listen: Listen::Unix(SOCKET.into()),
        hostname: Some("sandbox".into()),
    }
}

/// A booted agent; killed with its whole PID namespace when dropped.
struct Guest {
    root: Root,
    child: Child,
    socket: PathBuf,
    started: Instant,
}

#[derive(Debug)]
struct Output {
    exit: Exit,
    stdout: String,
    stderr: String,
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..ExecRequest::default() }
}

impl Guest {
    fn ready(self) -> Guest {
        if let Err(err) = client::wait_ready(&self.socket, Duration::from_secs(10)) {
            panic!("the agent did not come up: {err}\n{}", self.logs());
        }
        self
    }

    fn exec(&self, argv: &[&str]) -> Output {
        self.run(request(argv), b"")
    }

    fn run(&self, request: ExecRequest, stdin: &[u8]) -> Output {
        self.try_run(request, stdin).unwrap_or_else(|err| panic!("exec failed: {err}\n{}", self.logs()))
    }

    fn try_run(&self, request: ExecRequest, stdin: &[u8]) -> Result<Output, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let exit = client::exec(&self.socket, &request, Cursor::new(stdin.to_vec()), &mut stdout, &mut stderr)?;
        Ok(Output { exit, stdout: String::from_utf8_lossy(&stdout).into(), stderr: String::from_utf8_lossy(&stderr).into() })
    }

    /// The host pid of the namespace's PID 1 (unshare's only child).
    fn pid1(&self) -> i32 {
        let pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("unshare's children");
        children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("PID 1 runs")
    }

    fn signal_pid1(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid1()).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits for PID 1 to exit (with its namespace).
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit within {timeout:?}\n{}", self.logs());
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.root.path().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.log("stdout.log"), self.log("stderr.log"))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Killing PID 1 ends the namespace; unshare reaps it and exits. Killing unshare alone
        // (--kill-child) would leave PID 1 to whatever reaps orphans on the host.
        let pid = self.child.id();
        let pid1 = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for pid in pid1.split_whitespace().filter_map(|p| rustix::process::Pid::from_raw(p.parse().ok()?)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_is_static() {
    let agent = agent();
    assert_eq!(msb::agent::is_static_executable(agent).ok(), Some(true));
    let root = Root::new();
    fs::copy(agent, root.path().join(".msb/agent")).expect("copy the agent");
    // Runs where there is no libc at all.
    assert!(!root.path().join("lib").exists());
    let output = Command::new("chroot").arg(root.path()).args(["/.msb/agent", "--version"]).output().expect("chroot");
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(version.starts_with("msb-agent ") && version.contains(&format!("protocol {PROTOCOL_VERSION}")), "{version}");
}

#[test]
fn exec_relays_output_and_exit_codes() {
    let guest = Root::new().boot(config(&[])).ready();
    let first = guest.exec(&["echo", "hi"]);
    eprintln!("agent start to first exec answered: {:?}", guest.started.elapsed());
    assert_eq!((first.exit, first.stdout.as_str(), first.stderr.as_str()), (Exit::Code(0), "hi\n", ""));
    let out = guest.exec(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((out.exit, out.stdout.as_str(), out.stderr.as_str()), (Exit::Code(7), "out\n", "err\n"));
    assert_eq!(guest.exec(&["sh", "-c", "kill -9 $$"]).exit, Exit::Signal(9));
    assert_eq!(Exit::Signal(9).code(), 137);
    match guest.try_run(request(&["no-such-command"]), b"") {
        Err(err @ ClientError::CannotRun { exit_code: 127, .. }) => assert_eq!(err.to_string(), "`no-such-command`: command not found"),
        other => panic!("{other:?}"),
    }
    // A background child holding stdout open does not keep the exec from ending.
    let started = Instant::now();
    let out = guest.exec(&["sh", "-c", "sleep 5 & echo started"]);
    assert_eq!((out.exit, out.stdout.as_str()), (Exit::Code(0), "started\n"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    match guest.try_run(ExecRequest { workdir: Some("/nowhere".into()), ..request(&["true"]) }, b"") {
        Err(err @ ClientError::CannotRun { exit_code: 126, .. }) => {
            assert_eq!(err.to_string(), "workdir `/nowhere` is not a directory in the sandbox")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stdin_is_streamed() {
    let guest = Root::new().boot(config(&[])).ready();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = client::exec(&guest.socket, &request(&["cat"]), Cursor::new(data.clone()), &mut stdout, &mut stderr).expect("exec");
    assert_eq!(exit, Exit::Code(0));
    assert!(stdout == data, "cat gave back {} bytes of {}", stdout.len(), data.len());
    let out = guest.run(request(&["sh", "-c", "read line; echo \"got $line\"; wc -l"]), b"first\nsecond\nthird\n");
    assert_eq!(out.stdout, "got first\n2\n");
}

#[test]
fn scripts_run_by_name() {
    let guest = Root::new().boot(config(&[])).ready();
    let out = guest.exec(&["hello", "world"]);
    assert_eq!((out.exit, out.stdout.as_str()), (Exit::Code(0), "hello from script world\n"));
    let out = guest.exec(&["sh", "-c", "echo $PATH"]);
    assert!(out.stdout.starts_with("/.msb/scripts:"), "{}", out.stdout);
}

#[test]
fn env_workdir_and_user_apply() {
    let guest = Root::new().boot(config(&[])).ready();
    let show = "echo $FOO $BAR; pwd; id -u; id -G; echo $HOME";
    let out = guest.run(ExecRequest { env: vec!["BAR=baz".into()], ..request(&["sh", "-c", show]) }, b"");
    assert_eq!(out.stdout, "bar baz\n/srv\n0\n0\n/root\n");
    let as_app = ExecRequest { user: Some("app".into()), workdir: Some("/etc".into()), ..request(&["sh", "-c", show]) };
    assert_eq!(guest.run(as_app, b"").stdout, "bar\n/etc\n1000\n1000 2000\n/home/app\n");
    let numeric = ExecRequest { user: Some("4242:2000".into()), ..request(&["sh", "-c", "id -u; id -g; echo $HOME"]) };
    assert_eq!(guest.run(numeric, b"").stdout, "4242\n2000\n/\n");
    match guest.try_run(ExecRequest { user: Some("bob".into()), ..request(&["true"]) }, b"") {
        Err(err @ ClientError::CannotRun { exit_code: 126, .. }) => {
            assert_eq!(err.to_string(), "user `bob` is not in the guest's /etc/passwd")
        }
        other => panic!("{other:?}"),
    }

    // The sandbox's user is every exec's default, and the main command's.
    let guest = Root::new().boot(AgentConfig { user: Some("app".into()), ..config(&["sh", "-c", "id -u > /tmp/main-uid; sleep 100"]) }).ready();
    assert_eq!(guest.exec(&["id", "-u"]).stdout, "1000\n");
    thread::sleep(Duration::from_millis(100));
    assert_eq!(guest.exec(&["cat", "/tmp/main-uid"]).stdout, "1000\n");
}

#[test]
fn pty_exec_has_a_terminal_of_the_requested_size() {
    let guest = Root::new().boot(config(&[])).ready();
    let tty = Some(WindowSize { rows: 33, cols: 101 });
    let out = guest.run(ExecRequest { tty, ..request(&["sh", "-c", "tty; stty size; echo err >&2; echo $TERM"]) }, b"");
    assert_eq!(out.exit, Exit::Code(0));
    // One stream, with the terminal's line endings.
    assert!(out.stdout.starts_with("/dev/pts/") && out.stdout.ends_with("\r\n33 101\r\nerr\r\nxterm\r\n"), "{:?}", out.stdout);
    assert_eq!(out.stderr, "");

    // A resize reaches the terminal (and its SIGWINCH the command); typed input is echoed.
    let session = Session::start(&guest.socket, &ExecRequest { tty, ..request(&["sh", "-c", "read line; stty size; echo \"[$line]\""]) })
        .expect("start");
    session.control().resize(WindowSize { rows: 40, cols: 120 }).expect("resize");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = session.run(Cursor::new(b"typed\n".to_vec()), &mut stdout, &mut stderr).expect("run");
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(String::from_utf8_lossy(&stdout), "typed\r\n40 120\r\n[typed]\r\n");
    // A job-control shell: its controlling terminal is the pty.
    let out = guest.run(ExecRequest { tty, ..request(&["sh", "-c", "cat /proc/self/stat | cut -d' ' -f7"]) }, b"");
    assert_ne!(out.stdout.trim(), "0", "no controlling terminal");
}

#[test]
fn signals_reach_a_running_exec() {
    let guest = Root::new().boot(config(&[])).ready();
    let started = Instant::now();
    let session = Session::start(&guest.socket, &request(&["sleep", "100"])).expect("start");
    assert!(session.pid() > 1);
    session.control().signal(15).expect("signal");
    let exit = session.run(std::io::empty(), &mut Vec::new(), &mut Vec::new()).expect("run");
    assert_eq!(exit, Exit::Signal(15));
    // The whole process group: the shell and its child.
    let script = "trap 'echo trapped; exit 3' TERM; sleep 100 & wait";
    let session = Session::start(&guest.socket, &request(&["sh", "-c", script])).expect("start");
    thread::sleep(Duration::from_millis(100));
    session.control().signal(15).expect("signal");
    let mut stdout = Vec::new();
    let exit = session.run(std::io::empty(), &mut stdout, &mut Vec::new()).expect("run");
    assert_eq!((exit, String::from_utf8_lossy(&stdout).as_ref()), (Exit::Code(3), "trapped\n"));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let out = guest.exec(&["sh", "-c", "pidof sleep || echo none"]);
    assert_eq!(out.stdout, "none\n");
}

#[test]
fn a_host_that_hangs_up_kills_its_exec() {
    let guest = Root::new().boot(config(&[])).ready();
    let gone = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !guest.exec(&["sh", "-c", "pidof sleep || true"]).stdout.is_empty() {
            assert!(Instant::now() < deadline, "{what} outlived its connection");
            thread::sleep(Duration::from_millis(20));
        }
    };
    let session = Session::start(&guest.socket, &request(&["sleep", "100"])).expect("start");
    drop(session);
    gone("an exec");

    // An interactive shell running a job in the terminal's foreground: both go.
    let mut stream = UnixStream::connect(&guest.socket).expect("connect");
    write_frame(&mut stream, &Frame::Hello(Hello::new("msb"))).expect("hello");
    assert!(matches!(read_frame(&mut stream), Ok(Some(Frame::Hello(_)))));
    let shell = ExecRequest { tty: Some(WindowSize { rows: 24, cols: 80 }), ..request(&["sh", "-i"]) };
    write_frame(&mut stream, &Frame::Exec(shell)).expect("exec");
    assert!(matches!(read_frame(&mut stream), Ok(Some(Frame::Started { .. }))));
    write_frame(&mut stream, &Frame::Stdin(b"sleep 100\n".to_vec())).expect("stdin");
    let deadline = Instant::now() + Duration::from_secs(5);
    while guest.exec(&["sh", "-c", "pidof sleep || true"]).stdout.is_empty() {
        assert!(Instant::now() < deadline, "the shell never ran sleep");
        thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    gone("a terminal's foreground job");
    let shells = guest.exec(&["sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done"]).stdout;
    assert!(!shells.contains("sh\0-i"), "{shells:?}");
}

#[test]
fn the_exec_server_is_restarted_if_it_dies() {
    let guest = Root::new().boot(config(&[])).ready();
    // The exec's parent is the server.
    match guest.try_run(request(&["sh", "-c", "kill -9 $PPID; sleep 1"]), b"") {
        Err(ClientError::Disconnected | ClientError::Protocol(_)) => {}
        other => panic!("{other:?}"),
    }
    if let Err(err) = client::wait_ready(&guest.socket, Duration::from_secs(5)) {
        panic!("no new exec server: {err}\n{}", guest.logs());
    }
    assert_eq!(guest.exec(&["echo", "back"]).stdout, "back\n");
    assert!(guest.log("stderr.log").contains("msb-agent: the exec server exited (status 137); restarting it"), "{}", guest.logs());
}

#[test]
fn execs_run_concurrently() {
    let guest = Root::new().boot(config(&[])).ready();
    let started = Instant::now();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let guest = &guest;
                scope.spawn(move || guest.exec(&["sh", "-c", &format!("sleep 0.5; echo {i}")]))
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.join().expect("thread").stdout, format!("{i}\n"));
        }
    });
    assert!(started.elapsed() < Duration::from_millis(1500), "not concurrent: {:?}", started.elapsed());
}

#[test]
fn orphans_are_reaped() {
    let guest = Root::new().boot(config(&[])).ready();
    guest.exec(&["sh", "-c", "for i in 1 2 3 4 5; do (sleep 0.1 &); done"]);
    thread::sleep(Duration::from_millis(500));
    // The state is the field after the parenthesized command name.
    let stat = guest.exec(&["sh", "-c", "cat /proc/[0-9]*/stat"]).stdout;
    let zombies: Vec<&str> = stat.lines().filter(|l| l.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))).collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    assert!(stat.lines().count() >= 3, "{stat}");
}

#[test]
fn pid1_mounts_what_processes_expect() {
    let guest = Root::new().boot(config(&[])).ready();
    let mounts = guest.exec(&["cat", "/proc/mounts"]).stdout;
    for expected in ["proc /proc proc", "sysfs /sys sysfs", "tmpfs /dev tmpfs", "devpts /dev/pts devpts", "shm /dev/shm tmpfs", "tmpfs /run tmpfs", "tmpfs /tmp tmpfs"] {
        assert!(mounts.contains(expected), "no `{expected}` in\n{mounts}");
    }
    // Not devtmpfs: that would be the host's /dev.
    let out = guest.exec(&["sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c; readlink /dev/fd; readlink /dev/ptmx; ls /dev; hostname; cat /proc/1/comm"]);
    assert_eq!(out.stderr, "");
    assert_eq!(out.stdout, "4\n/proc/self/fd\npts/ptmx\nfd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\nsandbox\nagent\n");
}

#[test]
fn the_main_command_decides_the_exit_code() {
    let mut guest = Root::new().boot(config(&["sh", "-c", "echo main-out; echo main-err >&2; exit 5"]));
    assert_eq!(guest.wait(Duration::from_secs(10)).code(), Some(5));
    assert_eq!((guest.log("stdout.log").as_str(), guest.log("stderr.log").as_str()), ("main-out\n", "main-err\n"));
    let mut guest = Root::new().boot(config(&["sh", "-c", "kill -9 $$"]));
    assert_eq!(guest.wait(Duration::from_secs(10)).code(), Some(137));
    let mut guest = Root::new().boot(config(&["no-such-command"]));
    assert_eq!(guest.wait(Duration::from_secs(10)).code(), Some(127));
    assert_eq!(guest.log("stderr.log"), "msb-agent: `no-such-command`: command not found\n");
}

#[test]
fn signals_are_forwarded_to_the_main_command() {
    let script = "trap 'echo got-term; exit 9' TERM; echo ready; while true; do sleep 0.05; done";
    let mut guest = Root::new().boot(config(&["sh", "-c", script])).ready();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !guest.log("stdout.log").contains("ready") {
        assert!(Instant::now() < deadline, "{}", guest.logs());
        thread::sleep(Duration::from_millis(10));
    }
    guest.signal_pid1(rustix::process::Signal::TERM);
    assert_eq!(guest.wait(Duration::from_secs(5)).code(), Some(9));
    assert_eq!(guest.log("stdout.log"), "ready\ngot-term\n");
}

#[test]
fn without_a_command_the_agent_serves_until_sigterm() {
    let mut guest = Root::new().boot(config(&[])).ready();
    assert_eq!(guest.exec(&["true"]).exit, Exit::Code(0));
    guest.signal_pid1(rustix::process::Signal::HUP);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(guest.exec(&["true"]).exit, Exit::Code(0), "SIGHUP does not stop it");
    guest.signal_pid1(rustix::process::Signal::TERM);
    assert_eq!(guest.wait(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn init_handoff_to_busybox_init() {
    let root = Root::new();
    root.file("/etc/inittab", "::sysinit:/bin/echo sysinit-ran\n::respawn:/bin/sleep 1000\n", 0o644);
    let guest = root.boot(AgentConfig { init: InitMode::Path("/sbin/init".into()), ..config(&[]) }).ready();
    assert_eq!(guest.exec(&["cat", "/proc/1/comm"]).stdout, "init\n");
    let out = guest.exec(&["sh", "-c", "echo $container; cat /proc/1/environ"]);
    assert!(out.stdout.starts_with("\n") && out.stdout.contains("container=msb"), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while guest.exec(&["sh", "-c", "pidof sleep || true"]).stdout.is_empty() {
        assert!(Instant::now() < deadline, "the respawn entry never ran\n{}", guest.logs());
        thread::sleep(Duration::from_millis(20));
    }
    assert!(guest.log("stdout.log").contains("sysinit-ran"), "{}", guest.logs());
    // Execs keep working beside the init, with a terminal too.
    let tty = Some(WindowSize { rows: 24, cols: 80 });
    assert!(guest.run(ExecRequest { tty, ..request(&["tty"]) }, b"").stdout.starts_with("/dev/pts/"));
    assert_eq!(guest.exec(&["hello"]).stdout, "hello from script\n");
}

#[test]
fn a_missing_init_exits_127_before_forking() {
    let mut guest = Root::new().boot(AgentConfig { init: InitMode::Path("/sbin/nope".into()), ..config(&[]) });
    assert_eq!(guest.wait(Duration::from_secs(10)).code(), Some(127));
    assert_eq!(guest.log("stderr.log"), "msb-agent: cannot hand PID 1 to init `/sbin/nope`: it does not exist in the sandbox\n");
    assert!(!guest.socket.exists(), "nothing was started");
}

#[test]
fn a_protocol_mismatch_or_garbage_is_refused_and_harmless() {
    let guest = Root::new().boot(config(&[])).ready();
    let mut stream = UnixStream::connect(&guest.socket).expect("connect");
    write_frame(&mut stream, &Frame::Hello(Hello { protocol: PROTOCOL_VERSION + 1, software: "msb 9.9.9".into() })).expect("hello");
    let Ok(Some(Frame::Hello(theirs))) = read_frame(&mut stream) else { panic!("no hello") };
    assert_eq!(theirs.protocol, PROTOCOL_VERSION);
    match read_frame(&mut stream) {
        Ok(Some(Frame::Error(failure))) => {
            assert!(failure.message.starts_with(&format!("msb 9.9.9 speaks agent protocol {}", PROTOCOL_VERSION + 1)), "{}", failure.message)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(read_frame(&mut stream), Ok(None)), "the agent hangs up");

    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x01\xff\xff\xff\xff", b"\x01\x00\x00\x00\x03{}}", b"\x02\x00\x00\x00\x00"] {
        let mut stream = UnixStream::connect(&guest.socket).expect("connect");
        stream.write_all(garbage).expect("write");
        stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    assert_eq!(guest.exec(&["echo", "still", "here"]).stdout, "still here\n");
    assert!(guest.log("stderr.log").contains("msb-agent: "), "{}", guest.logs());
}
