//! `msb up`, `run`, `exec`, `shell`, `ls`, `stop`, `rm`, `logs` through the `oci` runtime (crun):
//! patched files and scripts seen in the guest, settings merged with the image, exit codes, a
//! shell under a terminal, and nothing left after stop, Ctrl-C or a killed msb.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::test::{Test, fixtures, output_of};

const BUSYBOX: &str = "127.0.0.1:5000/msb-test/busybox:latest";

/// A project with one sandbox `name` on the busybox image; `body` is the rest of its table.
fn project(name: &str, body: &str) -> Test {
    fixtures();
    Test::new().sandboxfile(format!("[sandbox.{name}]\nimage = \"{BUSYBOX}\"\n{body}"))
}

/// A sandbox that stays up until stopped.
const LONG: &str = "command = [\"/bin/sh\", \"-c\", \"echo ready; exec sleep 1000\"]\n";

/// Nothing of the sandboxes of the store `home` is left: no process names it, no mount is under
/// it, no socket is in any `run/` folder, and crun knows no container.
pub(crate) fn assert_nothing_left(home: &Path) {
    let needle = home.display().to_string();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if entry.file_name() == me.as_str() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&needle), "a process is left: {cmdline}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&needle), "a mount is left:\n{mounts}");
    // The paths as msb names them: a sandbox's socket folder is `guest/run`, not `run`.
    let sandboxes = msb::runtime::Sandboxes::new(&home.join("v1"));
    for sandbox in std::fs::read_dir(home.join("v1/sandboxes")).into_iter().flatten().filter_map(Result::ok) {
        let run_dir = sandboxes.dir(&sandbox.file_name().to_string_lossy()).run_dir();
        let run: Vec<_> = std::fs::read_dir(&run_dir).into_iter().flatten().collect();
        assert!(run.is_empty(), "{} still holds {run:?}", run_dir.display());
    }
    let crun = Command::new("crun").arg("--root").arg(sandboxes.oci_state_root()).args(["list", "--quiet"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&crun.stdout).trim(), "", "crun still lists a container");
}

/// Reads `child`'s stdout until a line contains `text`.
fn wait_for_line(child: &mut Child, text: &str) -> String {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "msb ended before printing {text:?}; it printed:\n{seen}");
        seen.push_str(&line);
        if line.contains(text) {
            return seen;
        }
    }
}

/// Waits for `child` to exit, at most `timeout`, and returns its exit code.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("msb did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn up_shows_patched_files_and_scripts_and_exits_with_the_command_s_code() {
    let test = project(
        "worker",
        r#"command = ["/bin/sh", "-c", "cat /etc/greeting.txt; greet; exit 3"]
[sandbox.worker.scripts]
greet = "echo \"a script on PATH at $(command -v greet)\""
[[sandbox.worker.patch]]
op = "text"
path = "/etc/greeting.txt"
content = "Hello from a patched rootfs!\n"
"#,
    );
    let out = test.msb(["up"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "worker | Hello from a patched rootfs!\nworker | a script on PATH at /.msb/scripts/greet\n", "{out:?}");
    assert!(out.stderr.contains("1 text /etc/greeting.txt"), "the plan is shown: {}", out.stderr);
    assert_nothing_left(&test.home());
}

#[test]
fn a_handed_off_init_that_powers_off_or_restarts_exits_0_and_a_failing_one_does_not() {
    let inittab = |action: &str| {
        format!("init = \"/sbin/init\"\n[[sandbox.init.patch]]\nop = \"text\"\npath = \"/etc/inittab\"\ncontent = \"::once:/bin/sh -c 'echo up; {action}'\\n\"\nreplace = true\n")
    };
    let cases = [
        ("poweroff", inittab("poweroff"), 0),
        ("halt", inittab("halt"), 0),
        ("restart", inittab("reboot"), 0),
        ("an init that fails", "init = \"/bin/false\"\n".to_owned(), 1),
    ];
    for (what, body, code) in cases {
        let test = project("init", &body);
        let out = test.msb(["up"]);
        assert_eq!(out.code, code, "{what}: {out:?}");
        if code == 0 {
            assert!(out.stdout.contains("init | up"), "{what}: the inittab ran: {out:?}");
        }
        assert_nothing_left(&test.home());
    }
}

#[test]
fn a_sandbox_of_another_sandboxfile_is_refused_not_shared() {
    let test = project("w", "command = [\"/bin/sh\", \"-c\", \"echo secret of the first > /marker\"]\n").file(
        "other/Sandboxfile",
        format!(
            "[sandbox.w]\nimage = \"{BUSYBOX}\"\ncommand = [\"/bin/sh\", \"-c\", \"if [ -e /marker ]; then cat /marker; else echo no marker; fi\"]\n"
        ),
    );
    assert_eq!(test.msb(["up"]).code, 0);
    // Same name, same layers, another project: it must not boot on the first one's own layer.
    for args in [&["up", "-f", "other/Sandboxfile"][..], &["up", "-d", "-f", "other/Sandboxfile"][..]] {
        let refused = test.msb(args);
        assert_eq!(refused.code, 1, "{args:?}: {refused:?}");
        assert!(refused.stderr.contains("belongs to another Sandboxfile") && refused.stderr.contains("`msb rm w`"), "{}", refused.stderr);
        assert!(!refused.stdout.contains("secret"), "{refused:?}");
    }
    assert_eq!(test.msb(["rm", "w"]).code, 0);
    let fresh = test.msb(["up", "-f", "other/Sandboxfile"]);
    assert_eq!((fresh.code, fresh.stdout.as_str()), (0, "w | no marker\n"), "{fresh:?}");
    assert_nothing_left(&test.home());
}

#[test]
fn several_sandboxes_run_side_by_side_with_their_names() {
    let test = project("a", "command = [\"echo\", \"from a\"]\n")
        .file("Sandboxfile", format!("[sandbox.a]\nimage = \"{BUSYBOX}\"\ncommand = [\"echo\", \"from a\"]\n[sandbox.bbb]\nimage = \"{BUSYBOX}\"\ncommand = [\"echo\", \"from bbb\"]\n"));
    let out = test.msb(["up"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a   | from a", "bbb | from bbb"], "{out:?}");
    let only = test.msb(["up", "bbb"]);
    assert_eq!(only.stdout, "bbb | from bbb\n", "{only:?}");
}

#[test]
fn exec_runs_scripts_by_name_with_the_sandbox_s_settings() {
    let test = project(
        "svc",
        &format!(
            "{LONG}env = {{ GREETING = \"hey\" }}\nworkdir = \"/tmp\"\n[sandbox.svc.scripts]\ngreet = \"echo \\\"$GREETING from $(pwd) as $(id -u)\\\"\"\n"
        ),
    );
    let up = test.msb(["up", "-d"]);
    assert_eq!(up.code, 0, "{up:?}");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["exec", "svc", "--", "greet"], 0, "hey from /tmp as 0\n"),
        (&["exec", "-e", "GREETING=hi", "-w", "/", "-u", "1000", "svc", "--", "greet"], 0, "hi from / as 1000\n"),
        (&["exec", "svc", "--", "sh", "-c", "echo out; exit 7"], 7, "out\n"),
        (&["exec", "svc", "--", "no-such-command"], 127, ""),
        (&["exec", "svc", "--", "cat", "/proc/1/comm"], 0, "agent\n"),
    ];
    for (args, code, stdout) in cases {
        let out = test.msb(*args);
        assert_eq!((out.code, out.stdout.as_str()), (*code, *stdout), "msb {args:?}: {out:?}");
    }
    let mut cat = test.command(["exec", "svc", "--", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    cat.stdin.take().unwrap().write_all(b"piped in\n").unwrap();
    assert_eq!(output_of(cat.wait_with_output().unwrap()).stdout, "piped in\n");

    let ls = test.msb(["ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with("svc") && l.ends_with("running")), "{ls:?}");
    assert_eq!(test.msb(["logs", "svc"]).stdout, "ready\n");
    let again = test.msb(["up", "-d"]);
    assert!(again.stderr.contains("svc: running, up to date"), "{again:?}");

    assert_eq!(test.msb(["rm", "svc"]).code, 1, "a running sandbox is not removed without -f");
    let stop = test.msb(["stop", "svc"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_nothing_left(&test.home());
    let exec = test.msb(["exec", "svc", "--", "true"]);
    assert!(exec.code == 1 && exec.stderr.contains("sandbox `svc` is not running"), "{exec:?}");
    assert_eq!(test.msb(["rm", "svc"]).code, 0);
    assert!(!test.msb(["ls"]).stdout.contains("svc"));
}

#[test]
fn run_merges_flags_with_the_image_config_as_docker_does() {
    fixtures();
    let test = Test::new();
    // The image's config: Cmd ["/bin/sh"], Env PATH=...
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--", "echo", "hi"], 0, "hi\n"),
        (&["--entrypoint", "/bin/echo"], 0, "\n"),
        (&["-e", "A=1", "--", "sh", "-c", "echo $A ${PATH%%:*}"], 0, "1 /.msb/scripts\n"),
        (&["-w", "/tmp", "-u", "1000:1000", "--", "sh", "-c", "pwd; id -u; id -g"], 0, "/tmp\n1000\n1000\n"),
        (&["--script", "hi=echo hi from a script", "--", "hi"], 0, "hi from a script\n"),
        (&["--", "sh", "-c", "exit 4"], 4, ""),
        // What msb tells crun (`_LIBCONTAINER_CLONED_BINARY`) stays out of the sandbox.
        (&["--", "sh", "-c", "env | grep -c LIBCONTAINER"], 1, "0\n"),
        (&["--init", "/bin/nope", "--", "true"], 1, ""),
    ];
    for (args, code, stdout) in cases {
        let mut all = vec!["run", BUSYBOX];
        let (flags, command): (Vec<&str>, Vec<&str>) = match args.iter().position(|a| *a == "--") {
            Some(at) => (args[..at].to_vec(), args[at..].to_vec()),
            None => (args.to_vec(), Vec::new()),
        };
        all.splice(1..1, flags);
        all.extend(command);
        let out = test.msb(&all);
        assert_eq!((out.code, out.stdout.as_str()), (*code, *stdout), "msb {all:?}: {out:?}");
    }
    // One-off sandboxes are removed when they exit.
    assert_eq!(test.msb(["ls"]).stdout.lines().count(), 1, "only the header");
    assert_nothing_left(&test.home());
}

#[test]
fn shell_runs_under_a_terminal() {
    let test = project("sh", LONG);
    assert_eq!(test.msb(["up", "-d"]).code, 0);
    // `script` gives msb a pseudo-terminal, as a user's terminal would. Keys are typed once the
    // prompt shows, and stdin stays open (a terminal has no end of input).
    let command = format!("{} shell sh", crate::test::msb().display());
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("MSB_HOME", test.home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text().contains("# ") {
        assert!(Instant::now() < deadline, "no prompt: {}", text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo answer=$((6*7)); tty; exit 3\r").unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(20));
    drop(stdin);
    reader.join().unwrap();
    assert_eq!(code, Some(3), "{}", text());
    assert!(text().contains("answer=42"), "{}", text());
    assert!(text().contains("/dev/pts/"), "the shell has a terminal: {}", text());
    test.msb(["stop", "sh"]);
    assert_nothing_left(&test.home());
}

#[test]
fn ctrl_c_stops_the_foreground_sandboxes_and_leaves_nothing() {
    let test = project("fg", LONG);
    let mut up = test.command(["up"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_line(&mut up, "fg | ready");
    signal(&up, rustix::process::Signal::INT);
    assert_eq!(wait_exit(&mut up, Duration::from_secs(30)), Some(130));
    assert_nothing_left(&test.home());
    let ls = test.msb(["ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with("fg") && !l.contains("running")), "{ls:?}");
}

#[test]
fn after_msb_is_killed_the_next_command_cleans_up() {
    let test = project("orphan", LONG);
    let mut up = test.command(["up"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_line(&mut up, "orphan | ready");
    signal(&up, rustix::process::Signal::KILL);
    up.wait().unwrap();
    let ls = test.msb(["ls"]);
    assert!(ls.stderr.contains("orphan: cleaned up"), "{ls:?}");
    assert_nothing_left(&test.home());
    // The name is free again.
    let again = test.msb(["up", "-d"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(test.msb(["exec", "orphan", "--", "echo", "back"]).stdout, "back\n");
    test.msb(["stop", "orphan"]);
    assert_nothing_left(&test.home());
}

#[test]
fn layers_of_existing_sandboxes_survive_cache_prune() {
    let test = project("kept", &format!("{LONG}[[sandbox.kept.patch]]\nop = \"text\"\npath = \"/kept\"\ncontent = \"still here\"\n"));
    assert_eq!(test.msb(["up", "-d"]).code, 0);
    test.msb(["stop", "kept"]);
    // Only names count for `prune`; the stopped sandbox keeps its layers until `msb rm`.
    let prune = test.msb(["cache", "prune"]);
    assert!(prune.stdout.starts_with("removed 0 entries"), "{prune:?}");
    test.msb(["rm", "kept"]);
    let prune = test.msb(["cache", "prune"]);
    assert!(prune.stdout.starts_with("removed 1 entries"), "{prune:?}");
}

#[test]
fn a_missing_agent_is_a_clear_error() {
    let test = project("noagent", "command = [\"true\"]\n");
    let mut command = test.command(["up"]);
    command.env("MSB_AGENT", Path::new("/nonexistent/msb-agent"));
    let out = output_of(command.output().unwrap());
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("the agent binary `/nonexistent/msb-agent` cannot be used"), "{out:?}");
}

/// A krun guest boot needs hardware KVM (not kvm_pvm): where the probe fails the test says why
/// and stops; where it passes, the same one-off sandbox boots as a microVM.
#[test]
fn krun_boots_where_hardware_kvm_works() {
    fixtures();
    if let Some(reason) = msb::runtime::krun::probe().failure() {
        println!("SKIPPED krun boot test: {reason}");
        let test = Test::new();
        let out = test.msb(["run", "--runtime", "krun", BUSYBOX, "--", "true"]);
        assert!(out.code == 1 && out.stderr.contains("runtime = \"krun\" cannot run here"), "a clear error, not a hang: {out:?}");
        return;
    }
    let test = Test::new();
    let out = test.msb(["run", "--runtime", "krun", BUSYBOX, "--", "sh", "-c", "echo hi from $(uname -r)"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("hi from "), "{out:?}");
}
