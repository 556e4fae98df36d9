//! `msb up --watch`: edits to the Sandboxfile, a script, a copied file and a file in a copied
//! folder re-run only what they change; an invalid edit keeps the old run; a burst of saves gives
//! one re-run; a long session leaks no process or descriptor.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::test::{Test, fixtures};

const BUSYBOX: &str = "127.0.0.1:5000/msb-test/busybox:latest";

/// `worker` prints its script's output, a copied file and a file of a copied folder, then exits;
/// `other` stays up.
fn project() -> Test {
    fixtures();
    Test::new()
        .file("greet.sh", "echo \"greet v1\"\n")
        .file("cert.pem", "cert v1\n")
        .file("site/index.html", "page v1\n")
        .sandboxfile(format!(
            r#"[sandbox.worker]
image = "{BUSYBOX}"
command = ["/bin/sh", "-c", "greet; cat /etc/cert.pem /srv/index.html"]
[sandbox.worker.scripts]
greet = {{ file = "greet.sh" }}
[[sandbox.worker.patch]]
op = "copy_file"
src = "cert.pem"
dst = "/etc/cert.pem"
[[sandbox.worker.patch]]
op = "copy_dir"
src = "site"
dst = "/srv"
[sandbox.other]
image = "{BUSYBOX}"
command = ["/bin/sh", "-c", "echo other v1; exec sleep 1000"]
"#
        ))
}

/// A running `msb up --watch`, its output going to files the test reads as they grow.
struct Watching {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Watching {
    fn start(test: &Test) -> Watching {
        let (stdout, stderr) = (test.path().join(".out"), test.path().join(".err"));
        let child = test
            .command(["up", "--watch"])
            .stdout(Stdio::from(fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        let watching = Watching { child, stdout, stderr };
        watching.wait_err("watching");
        watching
    }

    fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, ok: impl Fn(&Watching) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok(self) {
            assert!(Instant::now() < deadline, "waited for {what}\nstdout:\n{}\nstderr:\n{}", self.out(), self.err());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_out(&self, text: &str) {
        self.wait_until(text, |w| w.out().contains(text));
    }

    fn wait_err(&self, text: &str) {
        self.wait_until(text, |w| w.err().contains(text));
    }

    fn count_out(&self, text: &str) -> usize {
        self.out().matches(text).count()
    }

    /// Open descriptors of the msb process.
    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().count()
    }

    fn interrupt(mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "msb up --watch did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes (other than this test) whose command line names `path`.
fn processes_naming(path: &Path) -> usize {
    let needle = path.display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .count()
}

/// Saves as vim does: a new file renamed over the old one.
fn save_by_rename(path: &Path, content: &str) {
    let temp = path.with_extension("tmp-save");
    fs::write(&temp, content).unwrap();
    fs::rename(&temp, path).unwrap();
}

#[test]
fn each_edit_reruns_only_what_it_changes() {
    let test = project();
    let watching = Watching::start(&test);
    watching.wait_out("worker | page v1");
    watching.wait_out("other  | other v1");

    // A script: no layer rebuilt, worker re-runs.
    fs::write(test.path().join("greet.sh"), "echo \"greet v2\"\n").unwrap();
    watching.wait_out("worker | greet v2");
    assert!(watching.err().contains("scripts changed (no layer rebuilt), restarting worker"), "{}", watching.err());

    // A copied file, saved by rename: steps 1..2 rebuilt.
    save_by_rename(&test.path().join("cert.pem"), "cert v2\n");
    watching.wait_out("worker | cert v2");
    let err = watching.err();
    assert!(err.contains("patch 1 source cert.pem changed → rebuilding 1..2, restarting worker"), "{err}");
    assert!(err.contains("1 copy_file cert.pem → /etc/cert.pem  build (source cert.pem changed)"), "{err}");

    // A file in a copied folder: only step 2.
    fs::write(test.path().join("site/index.html"), "page v2\n").unwrap();
    watching.wait_out("worker | page v2");
    let err = watching.err();
    assert!(err.contains("patch 2 source site changed → rebuilding 2..2, restarting worker"), "{err}");
    assert!(err.contains("1 copy_file cert.pem → /etc/cert.pem  cached"), "{err}");

    // Nothing so far touched `other`.
    assert_eq!(watching.count_out("other  | other v1"), 1, "{}", watching.out());

    // An invalid edit: the diagnostic, and `other` keeps running.
    let sandboxfile = test.path().join("Sandboxfile");
    let good = fs::read_to_string(&sandboxfile).unwrap();
    fs::write(&sandboxfile, good.replace("op = \"copy_dir\"", "op = \"copy_dri\"")).unwrap();
    watching.wait_err("the Sandboxfile is invalid: the sandboxes keep running as they were");
    assert!(watching.err().contains("did you mean `copy_dir`?"), "{}", watching.err());
    let ls = test.msb(["ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with("other") && l.ends_with("running")), "{ls:?}");

    // The fix, with a change to `other` only: `other` restarts, `worker` does not.
    let worker_runs = watching.count_out("worker | greet v2");
    fs::write(&sandboxfile, good.replace("other v1", "other v2")).unwrap();
    watching.wait_out("other  | other v2");
    assert!(watching.err().contains("settings changed, restarting other"), "{}", watching.err());
    assert_eq!(watching.count_out("worker | greet v2"), worker_runs, "worker must not re-run:\n{}", watching.out());

    // Removing a sandbox from the file stops it.
    let without_other = good.replace("other v1", "other v2");
    let without_other = &without_other[..without_other.find("[sandbox.other]").unwrap()];
    fs::write(&sandboxfile, without_other).unwrap();
    watching.wait_err("other removed → stopping it");
    assert_eq!(watching.interrupt(), Some(130));
    assert_eq!(processes_naming(&test.home()), 0);
}

#[test]
fn a_burst_of_saves_gives_one_rerun_after_it() {
    let test = project();
    let watching = Watching::start(&test);
    watching.wait_out("worker | page v1");
    let script = test.path().join("greet.sh");
    for i in 1..=100 {
        fs::write(&script, format!("echo \"burst {i}\"\n")).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    watching.wait_out("worker | burst 100");
    // Let any late re-run show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(watching.err().matches("restarting worker").count(), 1, "{}", watching.err());
    assert_eq!(watching.out().matches("worker | burst").count(), 1, "{}", watching.out());
    assert_eq!(watching.interrupt(), Some(130));
}

#[test]
fn two_hundred_edit_cycles_leak_no_process_or_descriptor() {
    let test = project();
    let watching = Watching::start(&test);
    watching.wait_out("worker | page v1");
    let script = test.path().join("greet.sh");
    // Each cycle waits for the re-run's output and its exit (the first run exited before).
    let cycle = |i: usize| {
        fs::write(&script, format!("echo \"cycle {i}\"\n")).unwrap();
        watching.wait_out(&format!("worker | cycle {i}\n"));
        watching.wait_until("the run's exit", |w| w.err().matches("worker exited with code 0").count() >= i + 2);
    };
    cycle(0);
    let (fds, processes) = (watching.fds(), processes_naming(&test.home()));
    for i in 1..=200 {
        cycle(i);
    }
    assert_eq!(watching.fds(), fds, "descriptors of msb before and after 200 re-runs");
    assert_eq!(processes_naming(&test.home()), processes, "processes before and after 200 re-runs");
    assert_eq!(watching.interrupt(), Some(130));
}
