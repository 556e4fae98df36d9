//! `msb build --push` and `msb export k8s`: a sandbox pushed to a real registry (127.0.0.1:5000,
//! from `tests/fixtures/`), pulled back by other tools (`skopeo copy`, `umoci unpack`), compared
//! entry by entry with `msb export`, run by plain `crun`, pushed again after an edit (the
//! registry's own log counts the uploads), and described to Kubernetes (checked by
//! `kubernetes-validate`, with the schemas it bundles).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::test::{Test, repo};
use crate::tree::Compare;

const REGISTRY: &str = "127.0.0.1:5000";

/// Starts the registry and pushes the fixture images (idempotent, shared with `images`).
fn fixtures() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new("bash").arg(repo().join("tests/fixtures/images.sh")).status().expect("run images.sh");
        assert!(status.success(), "tests/fixtures/images.sh failed");
    });
}

/// A repository no other test (or earlier run) has pushed to.
fn fresh_repo(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("msb-test/publish-{what}-{}-{nanos}", std::process::id())
}

const SANDBOX: &str = r#"
[sandbox.worker]
image = "127.0.0.1:5000/msb-test/busybox:latest"
command = ["/bin/sh", "-c", "cat /etc/greeting.txt; ls /data; hi; id -u; pwd; echo $GREETING; test -e /etc/motd || echo no motd"]
workdir = "/data"
env = { GREETING = "hello env" }
cpus = 1
memory = "256MiB"

[sandbox.worker.scripts]
hi = "echo hi from a script"

[[sandbox.worker.patch]]
op = "text"
path = "/etc/greeting.txt"
content = "Hello from a patched rootfs!\n"

[[sandbox.worker.patch]]
op = "remove"
path = "/etc/motd"

[[sandbox.worker.patch]]
op = "copy_dir"
src = "site"
dst = "/data"

[[sandbox.worker.patch]]
op = "append"
path = "/etc/hosts"
content = "127.0.0.1 myapp.local\n"
"#;

/// What the sandbox's command prints, wherever it runs.
const EXPECTED_OUTPUT: &str = "Hello from a patched rootfs!\ncss\nindex.html\nhi from a script\n0\n/data\nhello env\nno motd\n";

fn project() -> Test {
    Test::new().sandboxfile(SANDBOX).file("site/index.html", "<p>v1</p>\n").file("site/css/main.css", "body {}\n")
}

/// Runs `msb build worker --push REF` with `extra` flags; returns `REF@DIGEST` and stderr.
fn push(test: &Test, reference: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["build", "worker", "--push", reference];
    args.extend_from_slice(extra);
    let out = test.msb(&args);
    assert_eq!(out.code, 0, "msb {args:?}:\n{}", out.stderr);
    let pinned = out.stdout.trim().to_owned();
    assert!(pinned.starts_with(reference) && pinned.contains("@sha256:"), "{pinned}");
    (pinned, out.stderr)
}

/// The digest of the busybox fixture's only layer blob.
fn base_layer() -> String {
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "docker://127.0.0.1:5000/msb-test/busybox:latest"]));
    let manifest: Value = serde_json::from_str(&raw).expect("manifest");
    manifest["layers"][0]["digest"].as_str().expect("a layer").to_owned()
}

/// The counts of msb's closing line: `N blob(s) uploaded (…), M mounted, P already there`.
fn report(stderr: &str) -> (usize, usize, usize) {
    let line = stderr.lines().find(|l| l.starts_with("pushed `")).unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let number_before = |word: &str| -> usize {
        let head = &line[..line.find(word).unwrap_or_else(|| panic!("no `{word}` in {line}"))];
        head.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty()).and_then(|n| n.parse().ok()).expect("a count")
    };
    (number_before(" blob(s) uploaded"), number_before(" mounted"), number_before(" already there"))
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `skopeo copy` from the registry into an OCI layout, then `umoci unpack` into a bundle.
fn pull_back(reference: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    run(Command::new("skopeo").args(["copy", "--quiet", "--src-tls-verify=false"]).arg(format!("docker://{reference}")).arg(format!("oci:{}:image", layout.display())));
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:image", layout.display())).arg(&bundle));
    bundle
}

/// `msb export` against what other tools unpacked of the pushed image: every entry but the
/// root folder and `/.msb` (which export leaves out), without mtimes.
fn assert_same_tree(exported: &Path, unpacked: &Path) {
    let compare = Compare { root: false, mtimes: false, skip: Some(".msb") };
    crate::tree::assert_same_tree("export vs pushed", ("msb export", exported), ("the pushed image", unpacked), compare, 10);
}

/// `crun run` of a bundle, in a private mount namespace without the cgroup v2 mount of hybrid
/// hosts, which crun 1.8 refuses (see DESIGN.md).
fn crun(bundle: &Path, id: &str) -> String {
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&config).expect("config.json")).expect("json");
    // umoci asks for a terminal; a test has none.
    spec["process"]["terminal"] = Value::Bool(false);
    fs::write(&config, serde_json::to_vec(&spec).expect("json")).expect("write config.json");
    let script = format!(
        "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle '{}' '{id}'",
        bundle.display()
    );
    run(Command::new("unshare").args(["-m", "sh", "-c", &script]))
}

/// Counts the registry's log lines for `method` on `/v2/<repo>/blobs/uploads/` answered 201,
/// written after `from` bytes of the log. The access log is written just after each response, so
/// it is read until `expected` lines are there (or a second has passed) and then once more.
fn registry_log(from: u64, repo: &str, method: &str, expected: usize) -> usize {
    let log = registry_log_path();
    let needle = format!("\"{method} /v2/{repo}/blobs/uploads/");
    let count = || {
        let text = fs::read(&log).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).into_owned();
        tail.lines().filter(|l| l.contains(&needle) && l.contains("\" 201 ")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while count() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    count()
}

fn registry_log_path() -> PathBuf {
    let dir = std::env::var("MSB_TEST_REGISTRY_DIR").unwrap_or_else(|_| "/tmp/msb-test-registry".into());
    PathBuf::from(dir).join("registry.log")
}

fn log_size() -> u64 {
    fs::metadata(registry_log_path()).map(|m| m.len()).expect("the registry's log (started by tests/fixtures/registry.sh)")
}

#[test]
fn pushed_sandbox_pulls_back_as_its_export_and_runs_under_plain_crun() {
    fixtures();
    let test = project();
    let reference = format!("{REGISTRY}/{}:v1", fresh_repo("roundtrip"));
    let (pinned, stderr) = push(&test, &reference, &["--no-agent"]);
    // The base layer is never uploaded: mounted from the base image's repository, or found
    // already there (distribution's blob cache answers for blobs of any repository).
    let base = base_layer();
    let line = stderr.lines().find(|l| l.starts_with(&format!("layer {}", &base[7..19]))).unwrap_or_default();
    assert!(line.ends_with("mounted from msb-test/busybox") || line.ends_with("already present"), "{stderr}");

    // The registry serves the manifest msb computed.
    let inspect = run(Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{reference}")));
    let inspect: Value = serde_json::from_str(&inspect).expect("skopeo inspect");
    assert_eq!(pinned.rsplit_once('@').map(|(_, d)| d), inspect["Digest"].as_str());

    let export = test.path().join("export");
    let out = test.msb(["export", "worker", export.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bundle = pull_back(&reference, test.path());
    let rootfs = bundle.join("rootfs");
    assert_same_tree(&export, &rootfs);
    let script = rootfs.join(".msb/scripts/hi");
    assert_eq!(fs::read_to_string(&script).expect("the script"), "#!/bin/sh\necho hi from a script");
    let meta = fs::metadata(&script).expect("stat");
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o755, 0, 0));
    assert!(!rootfs.join(".msb/agent").exists(), "--no-agent bakes no agent");

    // `msb up` (not wired into the CLI yet) runs this command; plain crun must print the same.
    let output = crun(&bundle, &format!("msb-publish-{}", std::process::id()));
    assert_eq!(output, EXPECTED_OUTPUT);
}

#[test]
fn whiteouts_and_opaque_folders_survive_the_round_trip() {
    fixtures();
    // Patch layers full of overlayfs whiteouts (a file, a folder) and an opaque folder (removed,
    // then written again), whose OCI forms other tools must apply the same way.
    let sandboxfile = r#"
[sandbox.worker]
image = "127.0.0.1:5000/msb-test/busybox:latest"

[[sandbox.worker.patch]]
op = "remove"
path = "/etc/passwd"

[[sandbox.worker.patch]]
op = "remove"
path = "/root"

[[sandbox.worker.patch]]
op = "remove"
path = "/usr/bin"

[[sandbox.worker.patch]]
op = "text"
path = "/usr/bin/fresh"
content = "only me\n"
mode = "0750"

[[sandbox.worker.patch]]
op = "symlink"
target = "../usr/bin/fresh"
link = "/etc/to-fresh"

[[sandbox.worker.patch]]
op = "mkdir"
path = "/root"
mode = "0700"
"#;
    let test = Test::new().sandboxfile(sandboxfile);
    let reference = format!("{REGISTRY}/{}:v1", fresh_repo("whiteouts"));
    push(&test, &reference, &["--no-agent"]);
    let export = test.path().join("export");
    let out = test.msb(["export", "worker", export.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rootfs = pull_back(&reference, test.path()).join("rootfs");
    assert_same_tree(&export, &rootfs);
    assert!(!rootfs.join("etc/passwd").exists());
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(rootfs.join(dir)).expect("read_dir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(names("usr/bin"), ["fresh"], "the image's old content stays hidden under the opaque folder");
    assert!(names("root").is_empty());
}

#[test]
fn a_dir_root_is_packed_into_a_layer_of_its_own() {
    fixtures();
    // A `dir:` image has no blobs: its folder becomes the image's first layer.
    let fixtures = PathBuf::from(std::env::var("MSB_TEST_FIXTURES").unwrap_or_else(|_| "/tmp/msb-fixtures".into()));
    let sandboxfile = format!(
        "[sandbox.worker]\nimage = \"dir:{}\"\ncommand = [\"/bin/cat\", \"/etc/greeting.txt\"]\n\n[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/etc/greeting.txt\"\ncontent = \"from a folder\\n\"\n",
        fixtures.join("busybox-rootfs").display()
    );
    let test = Test::new().sandboxfile(sandboxfile);
    let reference = format!("{REGISTRY}/{}:v1", fresh_repo("dir"));
    push(&test, &reference, &["--no-agent"]);
    let export = test.path().join("export");
    let out = test.msb(["export", "worker", export.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bundle = pull_back(&reference, test.path());
    assert_same_tree(&export, &bundle.join("rootfs"));
    assert_eq!(crun(&bundle, &format!("msb-publish-dir-{}", std::process::id())), "from a folder\n");
}

#[test]
fn pushing_after_one_edit_uploads_only_the_changed_layer_and_the_config() {
    fixtures();
    let test = project();
    let repo = fresh_repo("edit");
    let reference = format!("{REGISTRY}/{repo}:v1");

    let before = log_size();
    let (first, stderr) = push(&test, &reference, &["--no-agent"]);
    // The base layer, 4 patch layers, the /.msb layer and the config: each uploaded, mounted or
    // found (blobs other tests pushed are found), and the registry saw exactly msb's uploads.
    let (uploaded, mounted, present) = report(&stderr);
    assert_eq!(uploaded + mounted + present, 7, "{stderr}");
    assert_eq!(registry_log(before, &repo, "PUT", uploaded), uploaded, "{stderr}");

    // Edit the first patch (to text no other run pushed): steps 2-4 are rebuilt on a new parent
    // but hold the same files, so their blobs are the same; only the edited layer and the config
    // are new.
    let edited = SANDBOX.replace("Hello from a patched rootfs!", &format!("Hello from {repo}!"));
    fs::write(test.path().join("Sandboxfile"), edited).expect("edit");
    let before = log_size();
    let (second, stderr) = push(&test, &reference, &["--no-agent"]);
    assert_ne!(first, second);
    assert!(stderr.contains("4 of 4 steps built"), "{stderr}");
    assert_eq!(report(&stderr), (2, 0, 5), "{stderr}");
    assert_eq!(registry_log(before, &repo, "PUT", 2), 2, "exactly the edited layer and the config are uploaded");

    // Nothing changed: nothing is uploaded, and the digest is the same.
    let before = log_size();
    let (third, stderr) = push(&test, &reference, &["--no-agent"]);
    assert_eq!(second, third);
    assert_eq!(report(&stderr), (0, 0, 7), "{stderr}");
    assert_eq!(registry_log(before, &repo, "PUT", 0), 0);
}

#[test]
fn building_twice_gives_the_same_manifest_digest() {
    fixtures();
    // Two projects in two folders with two fresh stores: every layer is built twice.
    let (a, b) = (project(), project());
    let (first, _) = push(&a, &format!("{REGISTRY}/{}:a", fresh_repo("repro")), &["--no-agent"]);
    let (second, _) = push(&b, &format!("{REGISTRY}/{}:b", fresh_repo("repro")), &["--no-agent"]);
    let digest = |pinned: &str| pinned.rsplit_once('@').map(|(_, d)| d.to_owned());
    assert_eq!(digest(&first), digest(&second));
}

#[test]
fn with_an_agent_the_image_starts_it_on_a_baked_config() {
    fixtures();
    // A stand-in agent (the real one is another binary): prints the config it would read.
    let test = project().file("fake-agent", "#!/bin/sh\ncat /.msb/config.json\n");
    let agent = test.path().join("fake-agent");
    fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let reference = format!("{REGISTRY}/{}:v1", fresh_repo("agent"));
    push(&test, &reference, &["--agent", agent.to_str().expect("utf-8")]);

    let config = run(Command::new("skopeo").args(["inspect", "--config", "--tls-verify=false"]).arg(format!("docker://{reference}")));
    let config: Value = serde_json::from_str(&config).expect("image config");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/.msb/agent"]));
    assert!(config["config"].get("Cmd").is_none() && config["config"].get("User").is_none(), "{config}");
    assert_eq!(config["config"]["WorkingDir"], "/data");
    assert!(config.get("created").is_none(), "no timestamps: {config}");

    let bundle = pull_back(&reference, test.path());
    let agent_meta = fs::metadata(bundle.join("rootfs/.msb/agent")).expect("the agent");
    assert_eq!(agent_meta.mode() & 0o7777, 0o755);
    let guest: Value = serde_json::from_str(&crun(&bundle, &format!("msb-publish-agent-{}", std::process::id()))).expect("the baked config");
    assert_eq!(guest["argv"][0], "/bin/sh");
    assert_eq!(guest["workdir"], "/data");
    assert!(guest["env"].as_array().expect("env").contains(&Value::from("GREETING=hello env")), "{guest}");
    assert_eq!(guest["listen"], serde_json::json!({"unix": "/.msb/run/agent.sock"}));
}

#[test]
fn push_refuses_what_it_cannot_publish() {
    let test = project();
    let out = test.msb(["build", "worker", "--push", "127.0.0.1:5000/x:1", "--agent", "/nonexistent/msb-agent"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("the guest agent is not at `/nonexistent/msb-agent`") && out.stderr.contains("--no-agent"), "{}", out.stderr);

    let two = Test::new()
        .sandboxfile("[sandbox.a]\nimage = \"dir:rootfs\"\n[sandbox.b]\nimage = \"dir:rootfs\"\n")
        .file("rootfs/etc/hostname", "x\n");
    let out = two.msb(["build", "--push", "127.0.0.1:5000/x:1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("`--push` publishes one sandbox, and 2 are selected"), "{}", out.stderr);

    let out = test.msb(["export", "k8s", "worker"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("has not been pushed") && out.stderr.contains("--image"), "{}", out.stderr);
    let out = test.msb(["export", "k8s", "worker", "--image", "x", "--runtime-class", "Kata"]);
    assert!(out.stderr.contains("cannot name a RuntimeClass"), "{}", out.stderr);
}

/// `kubernetes-validate` (PyPI; its schemas are bundled, no cluster is asked) on a manifest.
fn kubernetes_validate(file: &Path) -> std::process::Output {
    Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(file)
        .output()
        .expect("run python3 -m kubernetes_validate (pip install kubernetes-validate; see .ci/setup)")
}

fn validate_k8s(file: &Path) {
    let output = kubernetes_validate(file);
    assert!(
        output.status.success(),
        "{} does not validate:\n{}{}\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        fs::read_to_string(file).unwrap_or_default()
    );
}

#[test]
fn kubernetes_manifests_of_the_pushed_image_validate() {
    fixtures();
    let test = project();
    let reference = format!("{REGISTRY}/{}:v1", fresh_repo("k8s"));
    let (pinned, _) = push(&test, &reference, &["--no-agent"]);

    let cases: [(&str, &[&str]); 4] = [
        ("pod.yaml", &[]),
        ("pod-kata.yaml", &["--runtime-class", "kata"]),
        ("deployment.yaml", &["--replicas", "3", "--runtime-class", "crun-krun"]),
        ("deployment.json", &["--replicas", "2", "--format", "json"]),
    ];
    for (file, flags) in cases {
        let mut args = vec!["export", "k8s", "worker"];
        args.extend_from_slice(flags);
        let out = test.msb(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains(&pinned), "the pushed image, pinned by digest:\n{}", out.stdout);
        let path = test.path().join(file);
        fs::write(&path, &out.stdout).expect("write");
        validate_k8s(&path);
    }
    // The validator is no rubber stamp: one unknown field fails it.
    let broken = test.path().join("broken.yaml");
    let pod = fs::read_to_string(test.path().join("pod.yaml")).expect("pod.yaml");
    fs::write(&broken, pod.replace("  - name: worker\n", "  - name: worker\n    bogus: 1\n")).expect("write");
    assert!(!kubernetes_validate(&broken).status.success(), "an unknown field must not validate");

    let pod = test.msb(["export", "k8s", "worker", "--format", "json", "--runtime-class", "kata"]);
    let pod: Value = serde_json::from_str(&pod.stdout).expect("json");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(pod["spec"]["runtimeClassName"], "kata");
    assert_eq!(container["resources"]["limits"], serde_json::json!({"cpu": "1", "memory": "256Mi"}));
    assert_eq!(container["env"], serde_json::json!([{"name": "GREETING", "value": "hello env"}]));
    let deployment = test.msb(["export", "k8s", "worker", "--replicas", "3", "--format", "json", "--image", "example.org/w:1"]);
    let deployment: Value = serde_json::from_str(&deployment.stdout).expect("json");
    assert_eq!((deployment["kind"].as_str(), deployment["spec"]["replicas"].as_i64()), (Some("Deployment"), Some(3)));
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], "example.org/w:1");
}
