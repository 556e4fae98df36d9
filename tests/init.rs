//! Init handoff through the CLI and crun: PID 1 is the image's init (systemd, OpenRC under
//! sysvinit, runit, s6, busybox init), `msb exec` and scripts work beside it, and `msb stop`
//! leaves nothing behind.
//!
//! The images are built from Debian packages by `tests/fixtures/inits.sh` (debootstrap minbase
//! plus one layer per init).

use std::process::Command;
use std::sync::OnceLock;

use crate::test::{Test, fixtures, repo};
use crate::up::assert_nothing_left;

/// Builds and pushes the init images once per test run (the script is idempotent).
fn init_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        fixtures();
        let status = Command::new("bash").arg(repo().join("tests/fixtures/inits.sh")).status().expect("run inits.sh");
        assert!(status.success(), "tests/fixtures/inits.sh failed");
    });
}

/// Boots `table` (a sandbox table without its header) as sandbox `name`, then checks what PID 1
/// is, that exec and a script run beside it, and that stop leaves nothing.
///
/// `stops_itself`: the init shuts down when asked (its signal, or `runit-init 0`), before the
/// stop timeout's kill.
fn hands_pid1_to(name: &str, table: &str, comm: &str, beside: &str, stops_itself: bool, check: impl Fn(&Test)) {
    init_images();
    let test = Test::new().sandboxfile(format!(
        "[sandbox.{name}]\n{table}\n[sandbox.{name}.scripts]\nwho = \"echo \\\"PID 1 is $(cat /proc/1/comm), I am $$\\\"\"\n"
    ));
    let up = test.msb(["up", "-d"]);
    assert_eq!(up.code, 0, "{up:?}");
    // An init exec'd through a link (`/sbin/init` -> systemd) is named after the link until it
    // renames itself, a few milliseconds into its start: give it a moment.
    let wait_for_name = format!("for i in $(seq 50); do c=$(cat /proc/1/comm); [ \"$c\" = '{comm}' ] && break; sleep 0.1; done; echo $c");
    let pid1 = test.msb(["exec", name, "--", "sh", "-c", &wait_for_name]);
    assert_eq!((pid1.code, pid1.stdout.as_str()), (0, format!("{comm}\n").as_str()), "{pid1:?}\nlogs:\n{}", test.msb(["logs", name]).stdout);
    let script = test.msb(["exec", name, "--", "who"]);
    assert!(script.code == 0 && script.stdout.starts_with(&format!("PID 1 is {comm}, I am ")), "{script:?}");
    // What the init started runs beside the exec server (e.g. a supervised service).
    let found = test.msb(["exec", name, "--", "sh", "-c", &format!("for i in $(seq 100); do grep -qx '{beside}' /proc/[0-9]*/comm && exit 0; sleep 0.1; done; exit 1")]);
    assert_eq!(found.code, 0, "no `{beside}` process beside PID 1: {found:?}");
    // It may reboot its own namespace (CAP_SYS_BOOT, for its shutdown), under a seccomp filter
    // that refuses kexec.
    let status = test.msb(["exec", name, "--", "grep", "-E", "^(Seccomp|CapEff):", "/proc/1/status"]);
    assert!(status.stdout.contains("Seccomp:\t2"), "no seccomp filter on PID 1: {status:?}");
    let effective = status.stdout.lines().find_map(|l| l.strip_prefix("CapEff:\t")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    assert!(effective.is_some_and(|caps| caps & (1 << 22) != 0), "no CAP_SYS_BOOT: {status:?}");
    check(&test);
    let stop = test.command(["stop", name]).env("MSB_LOG", "info").output().expect("run msb stop");
    let stop = crate::test::output_of(stop);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(!stop.stderr.contains("killing PID 1"), stops_itself, "{stop:?}");
    assert_nothing_left(&test.home());
    let ls = test.msb(["ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with(name) && !l.contains("running")), "{ls:?}");
}

#[test]
fn systemd_is_pid_1_with_its_journal() {
    let table = "image = \"127.0.0.1:5000/msb-test/init:systemd\"\ninit = \"auto\"";
    hands_pid1_to("systemd", table, "systemd", "systemd-journal", true, |_| {});
}

#[test]
fn sysvinit_runs_openrc_as_pid_1() {
    let table = "image = \"127.0.0.1:5000/msb-test/init:openrc\"\ninit = \"auto\"";
    // sysvinit's inittab runs OpenRC's runlevels, then its gettys.
    hands_pid1_to("openrc", table, "init", "getty", true, |test| {
        let level = test.msb(["exec", "openrc", "--", "cat", "/run/openrc/softlevel"]);
        assert_eq!(level.stdout, "default", "OpenRC reached its default runlevel: {level:?}");
    });
}

#[test]
fn runit_is_pid_1() {
    let table = "image = \"127.0.0.1:5000/msb-test/init:runit\"\ninit = \"auto\"";
    hands_pid1_to("runit", table, "runit", "runsvdir", true, |_| {});
}

#[test]
fn s6_svscan_is_pid_1_by_its_absolute_path() {
    let table = "image = \"127.0.0.1:5000/msb-test/init:s6\"\ninit = \"/usr/bin/s6-svscan\"\ncommand = [\"/usr/bin/s6-svscan\", \"/etc/s6/scan\"]";
    hands_pid1_to("s6", table, "s6-svscan", "s6-supervise", true, |_| {});
}

#[test]
fn busybox_init_runs_a_patched_inittab() {
    let table = "image = \"127.0.0.1:5000/msb-test/busybox:latest\"\ninit = \"/sbin/init\"\n\
        [[sandbox.bbinit.patch]]\nop = \"text\"\npath = \"/etc/inittab\"\ncontent = \"::respawn:/bin/sleep 3600\\n\"\nreplace = true";
    hands_pid1_to("bbinit", table, "init", "sleep", true, |_| {});
}
