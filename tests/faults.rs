//! Faults lose nothing. `msb` is killed (SIGKILL) at random points of a registry pull, of an
//! unpack from local archives, of a patch build and of an `up -d`; a registry sends wrong bytes,
//! truncated bodies, HTTP 500s or nothing at all; the store's disk fills up; two builds, and two
//! ups, share layers at once. After each, `msb cache verify` finds the store intact, nothing
//! half-made is published, nothing is left running or mounted, `tmp/` is empty after the next
//! run, and that next run succeeds.
//!
//! Kill points come from fixed-seed generators, spread over the time an undisturbed run of the
//! same command takes; a failure names its phase, seed, trial and delay.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::fake_registry::{FakeRegistry, Image, REFRESH_TOKEN, Serve};
use crate::images::{Home, registry};
use crate::test::fixtures;

/// A small linear congruential generator (Knuth's MMIX constants): fixed seeds, no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A fraction in `[0, 1)`.
    fn fraction(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }

    /// `len` bytes that do not compress.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// How long `command` takes when nothing disturbs it; it must succeed.
fn undisturbed(mut command: Command) -> Duration {
    let started = Instant::now();
    let output = command.output().expect("run msb");
    assert!(output.status.success(), "the undisturbed run failed: {}", String::from_utf8_lossy(&output.stderr));
    started.elapsed()
}

/// The quicker of two undisturbed runs made by `command` (a load spike in one of them would
/// put most kill points after the end).
fn calibrate(mut command: impl FnMut() -> Command) -> Duration {
    undisturbed(command()).min(undisturbed(command()))
}

/// Runs `command` and sends it SIGKILL after `delay`, unless it finished before (then it must
/// have succeeded). Returns whether it was killed.
fn kill_after(mut command: Command, delay: Duration) -> bool {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn msb");
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait().expect("wait").is_some() {
            let output = child.wait_with_output().expect("wait");
            assert!(output.status.success(), "finished before the kill, and failed: {}", String::from_utf8_lossy(&output.stderr));
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            child.kill().expect("SIGKILL msb");
            child.wait().expect("reap msb");
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
    }
}

/// `msb cache verify` finds nothing wrong.
fn assert_intact(home: &Home, context: &str) {
    let output = home.run(&["cache", "verify"]);
    assert!(
        output.status.success(),
        "{context}: cache verify failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// After a run that finished, `tmp/` holds nothing and no mount points into the store.
fn assert_clean(home: &Home, context: &str) {
    assert!(home.entries("tmp").is_empty(), "{context}: tmp/ holds {:?}", home.entries("tmp"));
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let store = home.path().display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&store) && !l.contains(" tmpfs ")).collect();
    assert!(left.is_empty(), "{context}: mounts left: {left:?}");
}

/// Kills `msb pull` of each source in turn at seeded random points, into a fresh store each
/// time; then the store must be intact and the same pull must succeed.
fn kill_pulls(phase: &str, seed: u64, trials: usize, sources: &[String]) {
    let mut rng = Lcg(seed);
    let full: Vec<Duration> = sources
        .iter()
        .map(|source| {
            let home = Home::new();
            calibrate(|| {
                // Each calibration pull starts from an empty store.
                let _ = fs::remove_dir_all(home.path().join("v1"));
                home.command(&["pull", source])
            })
        })
        .collect();
    let mut killed = 0;
    for trial in 0..trials {
        let which = trial % sources.len();
        let source = &sources[which];
        let delay = full[which].mul_f64(rng.fraction());
        let context = format!("{phase} trial {trial} (seed {seed:#x}): `msb pull {source}` killed after {delay:?}");
        let home = Home::new();
        killed += usize::from(kill_after(home.command(&["pull", source]), delay));
        assert_intact(&home, &context);
        home.ok(&["pull", source]);
        assert_intact(&home, &context);
        assert_clean(&home, &context);
        home.record(source);
    }
    assert!(killed >= trials / 3, "{phase}: only {killed} of {trials} runs were killed before they finished");
}

#[test]
fn a_registry_pull_killed_anywhere_leaves_an_intact_store_and_the_next_pull_succeeds() {
    fixtures();
    kill_pulls("pull", 0x5eed_0001, 16, &[registry("layered:oci"), registry("busybox:zstd")]);
}

#[test]
fn an_unpack_killed_anywhere_leaves_an_intact_store_and_the_next_pull_succeeds() {
    let fixtures = fixtures();
    let sources = [
        format!("oci:{}", fixtures.join("layered-oci").display()),
        format!("docker-archive:{}", fixtures.join("busybox.docker.tar").display()),
    ];
    kill_pulls("unpack", 0x5eed_0002, 16, &sources);
}

/// A Sandboxfile folder whose one sandbox's patches write a few MB: a copy_dir of incompressible
/// files, a copy_file, and small ops around them, then a `mkdir` of a folder of the caller's.
/// `revision` changes the first step, so every step of every revision is built anew.
struct Project {
    dir: TempDir,
    sandbox: String,
    /// More keys of the sandbox's table (`command = …`).
    settings: String,
}

impl Project {
    fn new(rng: &mut Lcg, dir_bytes: usize) -> Project {
        let dir = tempfile::Builder::new().prefix("msb-faults-").tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("site/assets")).expect("mkdir");
        let files = 12;
        for i in 0..files {
            let sub = if i % 2 == 0 { "site" } else { "site/assets" };
            fs::write(dir.path().join(format!("{sub}/page{i}.bin")), rng.bytes(dir_bytes / files)).expect("write");
        }
        std::os::unix::fs::symlink("page0.bin", dir.path().join("site/index.bin")).expect("symlink");
        fs::write(dir.path().join("blob.bin"), rng.bytes(256 << 10)).expect("write");
        Project { dir, sandbox: "worker".into(), settings: String::new() }
    }

    /// Names the sandbox and adds keys to its table.
    fn sandbox(mut self, name: &str, settings: &str) -> Project {
        self.sandbox = name.to_owned();
        self.settings = settings.to_owned();
        self
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the Sandboxfile of `revision`, whose last step makes the folder `last`.
    fn revision(&self, revision: &str, last: &str) -> &Self {
        let image = fixtures().join("busybox-oci");
        let text = format!(
            r#"[sandbox.{name}]
image = "oci:{image}"
{settings}
[[sandbox.{name}.patch]]
op = "text"
path = "/etc/revision"
content = "{revision}\n"

[[sandbox.{name}.patch]]
op = "copy_dir"
src = "site"
dst = "/srv/site"

[[sandbox.{name}.patch]]
op = "copy_file"
src = "blob.bin"
dst = "/opt/blob.bin"

[[sandbox.{name}.patch]]
op = "append"
path = "/etc/motd"
content = "revision {revision}\n"

[[sandbox.{name}.patch]]
op = "remove"
path = "/etc/hosts"

[[sandbox.{name}.patch]]
op = "symlink"
target = "/srv/site"
link = "/srv/current"

[[sandbox.{name}.patch]]
op = "mkdir"
path = "{last}"
"#,
            name = self.sandbox,
            settings = self.settings,
            image = image.display()
        );
        fs::write(self.path().join("Sandboxfile"), text).expect("write the Sandboxfile");
        self
    }

    /// `msb ARGS` in the project's folder, with the store `home`.
    fn msb(&self, home: &Home, args: &[&str]) -> Command {
        let mut command = home.command(args);
        command.current_dir(self.path());
        command
    }

    fn build(&self, home: &Home) -> Command {
        self.msb(home, &["build"])
    }
}

#[test]
fn a_patch_build_killed_anywhere_leaves_an_intact_store_and_the_next_build_succeeds() {
    let seed = 0x5eed_0003;
    let mut rng = Lcg(seed);
    let home = Home::new();
    let project = Project::new(&mut rng, 2 << 20);
    // The image goes in first: the kills are for the patch steps.
    project.revision("image", "/app");
    undisturbed(project.build(&home));
    let mut calibration = 0;
    let full = calibrate(|| {
        calibration += 1;
        project.revision(&format!("calibration {calibration}"), "/app");
        project.build(&home)
    });
    let trials = 20;
    let mut killed = 0;
    for trial in 0..trials {
        let delay = full.mul_f64(rng.fraction());
        let context = format!("patch trial {trial} (seed {seed:#x}): `msb build` killed after {delay:?}");
        project.revision(&format!("trial {trial}"), "/app");
        killed += usize::from(kill_after(project.build(&home), delay));
        assert_intact(&home, &context);
        let output = project.build(&home).output().expect("run msb");
        assert!(output.status.success(), "{context}: the next build failed: {}", String::from_utf8_lossy(&output.stderr));
        assert_intact(&home, &context);
        assert_clean(&home, &context);
        // Drop this revision's layers, so each verify hashes a few MB rather than all of them.
        home.ok(&["cache", "prune"]);
    }
    assert!(killed >= trials / 3, "only {killed} of {trials} builds were killed before they finished");
}

/// Gives `to` the same patch sources as `from`: the same step keys.
fn same_sources(from: &Project, to: &Project) {
    for name in ["site", "blob.bin"] {
        let (source, copy) = (from.path().join(name), to.path().join(name));
        let _ = fs::remove_dir_all(&copy).or_else(|_| fs::remove_file(&copy));
        let status = Command::new("cp").arg("-a").arg(&source).arg(&copy).status().expect("cp");
        assert!(status.success(), "cp -a {}", source.display());
    }
}

/// Starts the commands at once and waits for them all.
fn together<const N: usize>(commands: [Command; N]) -> Vec<std::process::Output> {
    let children: Vec<_> = commands
        .into_iter()
        .map(|mut c| c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn msb"))
        .collect();
    children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect()
}

#[test]
fn two_builds_sharing_layers_at_once_both_succeed_and_build_each_layer_once() {
    let mut rng = Lcg(0x5eed_0004);
    let home = Home::new();
    let (first, second) = (Project::new(&mut rng, 2 << 20), Project::new(&mut rng, 2 << 20));
    same_sources(&first, &second);
    home.ok(&["pull", &format!("oci:{}", fixtures().join("busybox-oci").display())]);
    let image_layers = home.entries("layers/sha256").len();
    for round in 0..4 {
        let revision = format!("round {round}");
        first.revision(&revision, "/app");
        second.revision(&revision, "/data");
        for output in together([first.build(&home), second.build(&home)]) {
            assert!(output.status.success(), "round {round}: {}", String::from_utf8_lossy(&output.stderr));
        }
        // Six shared steps and one of each: one layer per key, each with its checksum.
        let patch_layers = home.entries("layers/sha256").len() - image_layers;
        assert_eq!(patch_layers, 8 * (round + 1), "round {round}: layers {:?}", home.entries("layers/sha256"));
        assert_intact(&home, &format!("round {round}"));
        assert_clean(&home, &format!("round {round}"));
        for project in [&first, &second] {
            let plan = home.command(&["plan"]).current_dir(project.path()).output().expect("run msb");
            let plan = String::from_utf8_lossy(&plan.stdout);
            assert_eq!(plan.matches(" cached").count(), 8, "round {round}: everything is cached:\n{plan}");
        }
    }
}

/// A tmpfs mounted over a folder (the store's disk, made small), unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().expect("mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs { dir: dir.to_owned() }
    }

    /// Frees space the way a user would: the disk grows.
    fn grow(&self, size: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.dir).status().expect("mount");
        assert!(status.success(), "remount {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The store's published entries (blobs, layers, image records, names).
fn published(home: &Home) -> Vec<String> {
    ["blobs/sha256", "layers/sha256", "images/sha256", "refs"].iter().flat_map(|d| home.entries(d)).collect()
}

#[test]
fn a_full_disk_fails_a_pull_clearly_publishes_nothing_and_the_pull_works_once_space_is_freed() {
    let home = Home::new();
    let disk = Tmpfs::mount(home.path(), "8m");
    let server = FakeRegistry::start(Image::new(&Lcg(0x5eed_0005).bytes(12 << 20)), Serve::Good);
    let output = home.run(&["pull", &server.name()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "names ENOSPC: {stderr}");
    assert!(stderr.contains("`msb cache gc`"), "says what frees space: {stderr}");
    assert!(published(&home).is_empty(), "published: {:?}", published(&home));
    assert!(home.entries("tmp").is_empty(), "tmp/ holds {:?}", home.entries("tmp"));
    assert_intact(&home, "after ENOSPC");
    disk.grow("64m");
    home.ok(&["pull", &server.name()]);
    assert_intact(&home, "after the pull");
    assert_clean(&home, "after the pull");
}

#[test]
fn a_full_disk_fails_a_build_clearly_publishes_no_layer_and_the_build_works_once_space_is_freed() {
    let home = Home::new();
    let disk = Tmpfs::mount(home.path(), "8m");
    let project = Project::new(&mut Lcg(0x5eed_0006), 12 << 20);
    project.revision("full disk", "/app");
    let output = project.build(&home).output().expect("run msb");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "names ENOSPC: {stderr}");
    assert!(stderr.contains("`msb cache gc`"), "says what frees space: {stderr}");
    // The image went in; the step that did not fit, and those after it, did not.
    let layers = home.entries("layers/sha256");
    assert!(!layers.is_empty() && layers.len() <= 2, "layers: {layers:?}");
    assert!(home.entries("tmp").is_empty(), "tmp/ holds {:?}", home.entries("tmp"));
    assert_intact(&home, "after ENOSPC");
    disk.grow("64m");
    let output = project.build(&home).output().expect("run msb");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_intact(&home, "after the build");
    assert_clean(&home, "after the build");
}

/// How long the fake registry may stall before msb gives up on a request (seconds).
const TIMEOUT: &str = "0.5";

#[test]
fn registry_faults_end_in_a_clear_error_publish_nothing_and_the_next_pull_works() {
    fixtures();
    let cases = [
        (Serve::WrongBytes, "is damaged: its content has digest"),
        (Serve::Truncated, "the registry sends"),
        (Serve::ClosesEarly, "cannot pull"),
        (Serve::ServerError, "HTTP 500"),
    ];
    pull_fails_cleanly(&cases);
}

#[test]
fn a_stalled_registry_times_out_clearly_publishes_nothing_and_the_next_pull_works() {
    fixtures();
    let silence = format!("the registry sent nothing for {TIMEOUT} s");
    pull_fails_cleanly(&[(Serve::StallsHead, &silence), (Serve::StallsBody, &silence), (Serve::Stalls, &silence)]);
}

/// Each pull from a fake registry serving as `cases` say fails with its message (exit 1), leaves
/// nothing published and the store intact; then a pull from the real registry works.
fn pull_fails_cleanly(cases: &[(Serve, &str)]) {
    let image = Image::new(b"content of the layer");
    for &(serve, expected) in cases {
        let home = Home::new();
        let server = FakeRegistry::start(image.clone(), serve);
        let output = home.command(&["pull", &server.name()]).env(msb::env::MSB_REGISTRY_TIMEOUT, TIMEOUT).output().expect("run msb");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{serve:?}: {stderr}");
        assert!(stderr.contains(expected), "{serve:?}: {stderr}");
        assert!(stderr.contains(&server.name()), "{serve:?}: names the image: {stderr}");
        assert!(published(&home).is_empty(), "{serve:?}: published {:?}", published(&home));
        assert!(home.entries("tmp").is_empty(), "{serve:?}: tmp/ holds {:?}", home.entries("tmp"));
        assert_intact(&home, &format!("{serve:?}"));
        home.ok(&["pull", &registry("busybox:latest")]);
        assert_intact(&home, &format!("{serve:?}, then the real registry"));
    }
}

#[test]
fn transient_registry_faults_are_retried_and_a_slow_transfer_is_not_cut() {
    for serve in [Serve::FailsOnce, Serve::Slow] {
        let home = Home::new();
        let server = FakeRegistry::start(Image::new(&Lcg(0x5eed_0007).bytes(64 << 10)), serve);
        let output = home.command(&["pull", &server.name()]).env(msb::env::MSB_REGISTRY_TIMEOUT, TIMEOUT).output().expect("run msb");
        assert!(output.status.success(), "{serve:?}: {}", String::from_utf8_lossy(&output.stderr));
        home.record(&server.name());
        assert_intact(&home, &format!("{serve:?}"));
        assert_clean(&home, &format!("{serve:?}"));
    }
}

#[test]
fn a_stalled_token_endpoint_times_out_clearly() {
    let server = FakeRegistry::start(Image::new(b"token"), Serve::TokenStalls);
    let docker = tempfile::tempdir().expect("tempdir");
    let config = format!(r#"{{"auths":{{"127.0.0.1:{}":{{"identitytoken":"{REFRESH_TOKEN}"}}}}}}"#, server.port);
    fs::write(docker.path().join("config.json"), config).expect("write config.json");
    let home = Home::new();
    let output = home
        .command(&["pull", &server.name()])
        .env("DOCKER_CONFIG", docker.path())
        .env(msb::env::MSB_REGISTRY_TIMEOUT, TIMEOUT)
        .output()
        .expect("run msb");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("the token request failed: the registry sent nothing for {TIMEOUT} s")), "{stderr}");
    assert!(published(&home).is_empty(), "published: {:?}", published(&home));
}

/// A sandbox that stays up until stopped.
const LONG: &str = "command = [\"/bin/sh\", \"-c\", \"echo ready; exec sleep 1000\"]\n";

/// The sandbox `name` runs and its root is the project's: `/etc/revision` holds `revision`.
fn assert_running(project: &Project, home: &Home, name: &str, revision: &str, context: &str) {
    let output = project.msb(home, &["exec", name, "--", "cat", "/etc/revision"]).output().expect("run msb");
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{revision}\n"), "{context}: exec in `{name}`: {output:?}");
}

#[test]
fn an_up_killed_anywhere_leaves_nothing_behind_and_the_next_up_succeeds() {
    let seed = 0x5eed_0009;
    let mut rng = Lcg(seed);
    let home = Home::new();
    let project = Project::new(&mut rng, 1 << 20).sandbox("boot", LONG);
    project.revision("boot", "/app");
    let stop = |context: &str| {
        let output = project.msb(&home, &["stop", "boot"]).output().expect("run msb");
        assert!(output.status.success(), "{context}: msb stop: {}", String::from_utf8_lossy(&output.stderr));
        crate::up::assert_nothing_left(home.path());
    };
    // The first `up` pulls and builds; the kills are for the boot of a built sandbox.
    undisturbed(project.msb(&home, &["up", "-d"]));
    stop("first up");
    let full = calibrate(|| {
        // Each calibration run stops the one before it.
        let _ = project.msb(&home, &["stop", "boot"]).output();
        project.msb(&home, &["up", "-d"])
    });
    stop("calibration");
    let trials = 16;
    let mut killed = 0;
    for trial in 0..trials {
        let delay = full.mul_f64(rng.fraction());
        let context = format!("boot trial {trial} (seed {seed:#x}): `msb up -d` killed after {delay:?}");
        killed += usize::from(kill_after(project.msb(&home, &["up", "-d"]), delay));
        let output = project.msb(&home, &["up", "-d"]).output().expect("run msb");
        assert!(output.status.success(), "{context}: the next up failed: {}", String::from_utf8_lossy(&output.stderr));
        assert_running(&project, &home, "boot", "boot", &context);
        stop(&context);
        assert_intact(&home, &context);
    }
    assert!(killed >= trials / 3, "only {killed} of {trials} ups were killed before they finished");
}

#[test]
fn two_ups_sharing_layers_at_once_both_boot_and_build_each_layer_once() {
    let mut rng = Lcg(0x5eed_000a);
    let home = Home::new();
    let left = Project::new(&mut rng, 1 << 20).sandbox("left", LONG);
    let right = Project::new(&mut rng, 1 << 20).sandbox("right", LONG);
    same_sources(&left, &right);
    left.revision("shared", "/left");
    right.revision("shared", "/right");
    for output in together([left.msb(&home, &["up", "-d"]), right.msb(&home, &["up", "-d"])]) {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_running(&left, &home, "left", "shared", "left");
    assert_running(&right, &home, "right", "shared", "right");
    // One image layer, six shared steps and one of each.
    assert_eq!(home.entries("layers/sha256").len(), 1 + 8, "layers: {:?}", home.entries("layers/sha256"));
    for (project, name) in [(&left, "left"), (&right, "right")] {
        let output = project.msb(&home, &["stop", name]).output().expect("run msb");
        assert!(output.status.success(), "msb stop {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
    crate::up::assert_nothing_left(home.path());
    assert_intact(&home, "after two ups");
}
