//! `msb plan`, `msb build` and `msb export`: patches applied in order on an image that is never
//! touched, cached by content, rebuilt from the first changed step on, and confined to the guest.
//!
//! The image here is a `dir:` root made by each test, so these tests need no registry; the
//! registry's images are covered by `images`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::test::Test;

/// A small root: files with owners and modes, a folder with content, and hostile symlinks.
fn rootfs(at: &Path) -> PathBuf {
    let root = at.join("rootfs");
    for dir in ["etc", "usr/share/doc/pkg", "data", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/motd"), "image motd\n").unwrap();
    std::fs::set_permissions(root.join("etc/motd"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("etc/motd"), Some(1000), Some(1000)).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(root.join("usr/share/doc/pkg/README"), "old doc").unwrap();
    std::fs::write(root.join("data/a"), "a").unwrap();
    std::os::unix::fs::symlink("/", root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("x")).unwrap();
    root
}

/// Every entry under `dir` with its type, mode, owner and content, to compare trees.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let meta = e.path().symlink_metadata().unwrap();
            let content = if meta.is_file() {
                std::fs::read_to_string(e.path()).unwrap_or_default()
            } else if meta.is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            let key = e.path().strip_prefix(dir).unwrap().display().to_string();
            (key, format!("{:o} {}:{} {content}", meta.mode(), meta.uid(), meta.gid()))
        })
        .collect()
}

fn project(rootfs: &Path, patches: &str) -> Test {
    Test::new()
        .sandboxfile(format!("[sandbox.worker]\nimage = \"dir:{}\"\n{patches}", rootfs.display()))
        .file("cert.pem", "cert v1\n")
        .file("site/index.html", "<p>v1</p>\n")
        .file("site/css/main.css", "body {}\n")
}

const ALL_OPS: &str = r#"
[[sandbox.worker.patch]]
op = "text"
path = "/etc/greeting.txt"
content = "Hello from a patched rootfs!\n"

[[sandbox.worker.patch]]
op = "text"
path = "/etc/motd"
content = "Custom message of the day.\n"
replace = true

[[sandbox.worker.patch]]
op = "mkdir"
path = "/app"
mode = "0750"

[[sandbox.worker.patch]]
op = "file"
path = "/app/blob.bin"
content = "AAECAw=="
mode = "0600"

[[sandbox.worker.patch]]
op = "copy_file"
src = "cert.pem"
dst = "/etc/ssl/cert.pem"

[[sandbox.worker.patch]]
op = "copy_dir"
src = "site"
dst = "/data"

[[sandbox.worker.patch]]
op = "append"
path = "/etc/hosts"
content = "127.0.0.1 myapp.local\n"

[[sandbox.worker.patch]]
op = "symlink"
target = "/data"
link = "/app/www"

[[sandbox.worker.patch]]
op = "remove"
path = "/usr/share/doc"

[[sandbox.worker.patch]]
op = "text"
path = "/usr/share/doc/new.txt"
content = "new doc\n"
"#;

fn plan_json(test: &Test) -> Vec<Value> {
    let out = test.msb(["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plans: Value = serde_json::from_str(&out.stdout).unwrap();
    plans[0]["steps"].as_array().unwrap().clone()
}

fn statuses(steps: &[Value]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s["reason"]["kind"].as_str() {
            Some(reason) => format!("build:{reason}"),
            None => s["status"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[test]
fn build_then_export_shows_every_patch_and_leaves_the_image_untouched() {
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    let before = snapshot(&root);
    let test = project(&root, ALL_OPS);
    let out = test.msb(["build"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("10 of 10 steps built"), "{}", out.stderr);

    let export = test.path().join("export");
    let out = test.msb(["export", "worker", export.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let tree = snapshot(&export);
    let expect = [
        ("etc/greeting.txt", "100644 0:0 Hello from a patched rootfs!\n"),
        ("etc/motd", "100644 0:0 Custom message of the day.\n"),
        ("app", "40750 0:0 "),
        ("etc/ssl/cert.pem", "100644 0:0 cert v1\n"),
        ("data/a", "100644 0:0 a"),
        ("data/index.html", "100644 0:0 <p>v1</p>\n"),
        ("data/css/main.css", "100644 0:0 body {}\n"),
        ("etc/hosts", "100644 0:0 127.0.0.1 localhost\n127.0.0.1 myapp.local\n"),
        ("app/www", "120777 0:0 /data"),
        ("usr/share/doc/new.txt", "100644 0:0 new doc\n"),
    ];
    for (path, want) in expect {
        assert_eq!(tree.get(path).map(String::as_str), Some(want), "{path} in {tree:#?}");
    }
    assert_eq!(std::fs::read(export.join("app/blob.bin")).unwrap(), [0, 1, 2, 3]);
    assert!(!tree.contains_key("usr/share/doc/pkg/README"), "the removed folder's content stays hidden");
    assert_eq!(snapshot(&root), before, "the image folder was changed");

    let again = test.msb(["build"]);
    assert!(again.stderr.contains("0 of 10 steps built, 10 cached"), "{}", again.stderr);
}

#[test]
fn editing_sources_one_by_one_rebuilds_exactly_the_expected_steps() {
    let image = tempfile::tempdir().unwrap();
    let test = project(&rootfs(image.path()), ALL_OPS);
    assert!(statuses(&plan_json(&test)).iter().all(|s| s.starts_with("build")));
    assert_eq!(test.msb(["build"]).code, 0);
    assert!(statuses(&plan_json(&test)).iter().all(|s| s == "cached"));

    let cached = |n: usize| vec!["cached".to_owned(); n];
    let rebuilt_from = |first: usize, reason: &str| {
        let mut expected = cached(first - 1);
        expected.push(format!("build:{reason}"));
        expected.extend(vec!["build:earlier_step_changed".to_owned(); 10 - first]);
        expected
    };

    std::fs::write(test.path().join("cert.pem"), "cert v2\n").unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt_from(5, "source_changed"));
    assert_eq!(test.msb(["build"]).code, 0);

    std::fs::write(test.path().join("site/css/main.css"), "body { color: red }\n").unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt_from(6, "source_changed"));
    assert_eq!(test.msb(["build"]).code, 0);

    let edited = std::fs::read_to_string(test.path().join("Sandboxfile")).unwrap().replace("myapp.local", "other.local");
    std::fs::write(test.path().join("Sandboxfile"), edited).unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt_from(7, "op_changed"));
    assert_eq!(test.msb(["build"]).code, 0);
    assert_eq!(statuses(&plan_json(&test)), cached(10));
}

#[test]
fn keys_are_the_same_for_the_same_sandboxfile_in_two_folders() {
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    let keys = |test: &Test| -> Vec<String> {
        test.msb(["build"]);
        plan_json(test).iter().map(|s| s["key"].as_str().unwrap().to_owned()).collect()
    };
    let (a, b) = (project(&root, ALL_OPS), project(&root, ALL_OPS));
    assert_eq!(keys(&a), keys(&b));
    std::fs::write(b.path().join("site/index.html"), "<p>v1!</p>\n").unwrap();
    let (ka, kb) = (keys(&a), keys(&b));
    assert_eq!(ka[..5], kb[..5]);
    assert!(ka[5..].iter().zip(&kb[5..]).all(|(x, y)| x != y));
}

#[test]
fn patch_errors_name_the_patch_the_path_and_the_cause() {
    let cases = [
        ("[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/etc/motd\"\ncontent = \"x\"\n", "patch 1 (`text`): `/etc/motd` already exists in the image or an earlier patch; add `replace = true`"),
        ("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/a\"\n[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/b\"\ncontent = \"\"\n[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/b\"\n", "patch 3 (`mkdir`): `/b` exists and is not a folder"),
        ("[[sandbox.worker.patch]]\nop = \"append\"\npath = \"/etc/nope\"\ncontent = \"x\"\n", "patch 1 (`append`): `/etc/nope` does not exist"),
        ("[[sandbox.worker.patch]]\nop = \"copy_dir\"\nsrc = \"site\"\ndst = \"/data\"\n[[sandbox.worker.patch]]\nop = \"copy_dir\"\nsrc = \"site\"\ndst = \"/data\"\n", "patch 2 (`copy_dir`): `/data/css/main.css` already exists"),
    ];
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    for (patches, message) in cases {
        let out = project(&root, patches).args(["build"]).run();
        assert_eq!(out.code, 1, "{patches}\n{}", out.stderr);
        assert!(out.stderr.contains("sandbox `worker`") && out.stderr.contains(message), "wanted {message:?} in:\n{}", out.stderr);
    }
}

#[test]
fn copy_dir_refuses_a_special_file() {
    let image = tempfile::tempdir().unwrap();
    let test = project(&rootfs(image.path()), "[[sandbox.worker.patch]]\nop = \"copy_dir\"\nsrc = \"site\"\ndst = \"/srv\"\n");
    let fifo = test.path().join("site/pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = test.msb(["build"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is a FIFO: copy_dir copies files, folders and symlinks only"), "{}", out.stderr);
}

#[test]
fn hostile_image_symlinks_never_lead_a_patch_to_the_host() {
    let marker = format!("msb-escape-{}", std::process::id());
    let image = tempfile::tempdir().unwrap();
    let patches = format!(
        "[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/etc-link/tmp/{marker}\"\ncontent = \"x\"\n\
         [[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/x/tmp/{marker}-dir\"\n\
         [[sandbox.worker.patch]]\nop = \"copy_file\"\nsrc = \"cert.pem\"\ndst = \"/x/x/etc-link/{marker}.pem\"\n"
    );
    let test = project(&rootfs(image.path()), &patches);
    let out = test.msb(["build"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for host in [format!("/tmp/{marker}"), format!("/tmp/{marker}-dir"), format!("/{marker}.pem")] {
        assert!(!Path::new(&host).exists(), "{host} was written on the host");
    }
    let export = test.path().join("export");
    assert_eq!(test.msb(["export", "worker", export.to_str().unwrap()]).code, 0);
    assert!(export.join(format!("tmp/{marker}")).is_file());
    assert!(export.join(format!("tmp/{marker}-dir")).is_dir());
    assert!(export.join(format!("{marker}.pem")).is_file());
}

#[test]
fn export_to_a_tar_file() {
    let image = tempfile::tempdir().unwrap();
    let test = project(&rootfs(image.path()), ALL_OPS);
    let tar_path = test.path().join("root.tar");
    let out = test.msb(["export", "worker", tar_path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listing = std::process::Command::new("tar").arg("tf").arg(&tar_path).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "etc/greeting.txt"), "{listing}");
    assert!(!listing.lines().any(|l| l.starts_with("usr/share/doc/pkg")), "{listing}");
}

#[test]
fn plan_of_an_unknown_sandbox_lists_the_known_ones() {
    let image = tempfile::tempdir().unwrap();
    let out = project(&rootfs(image.path()), "").args(["plan", "wroker"]).run();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no sandbox named `wroker`") && out.stderr.contains("`worker`"), "{}", out.stderr);
}

#[test]
fn sandboxes_are_planned_in_the_order_of_the_file() {
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    let out = Test::new()
        .sandboxfile(format!("[sandbox.zeta]\nimage = \"dir:{0}\"\n[sandbox.alpha]\nimage = \"dir:{0}\"\n", root.display()))
        .args(["plan", "--format", "json"])
        .run();
    let plans: Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = plans.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["zeta", "alpha"]);
}

#[test]
fn export_refuses_a_destination_inside_what_it_reads() {
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    let test = project(&root, ALL_OPS);
    assert_eq!(test.msb(["build"]).code, 0);
    let before = snapshot(&root);
    let store = test.path().join(".msb-home/v1");
    std::os::unix::fs::symlink(&root, test.path().join("root-link")).unwrap();
    let cases = [
        (root.join("out"), root.clone(), "the folder of the sandbox's `dir:` image"),
        (root.join("data/root.tar"), root.clone(), "the folder of the sandbox's `dir:` image"),
        (test.path().join("root-link/../rootfs/out"), root.clone(), "the folder of the sandbox's `dir:` image"),
        (store.join("export"), store.clone(), "msb's store"),
    ];
    for (dest, inside, what) in cases {
        let out = test.msb(["export", "worker", dest.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{}: {}", dest.display(), out.stderr);
        let message = format!("cannot export to `{}`: it is inside `{}`, {what}", dest.display(), inside.display());
        assert!(out.stderr.contains(&message), "wanted {message:?} in:\n{}", out.stderr);
    }
    assert_eq!(snapshot(&root), before, "the image folder was changed");
    assert!(!store.join("export").exists());
}

#[test]
fn editing_a_dir_image_rebuilds_the_steps_on_it() {
    let image = tempfile::tempdir().unwrap();
    let root = rootfs(image.path());
    let test = project(&root, ALL_OPS);
    assert_eq!(test.msb(["build"]).code, 0);
    assert_eq!(statuses(&plan_json(&test)), vec!["cached"; 10]);

    let mut rebuilt = vec!["build:image_changed".to_owned()];
    rebuilt.extend(vec!["build:earlier_step_changed".to_owned(); 9]);
    // A file of the same size, rewritten: only its mtime tells.
    std::fs::write(root.join("data/a"), "b").unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt);
    let out = test.msb(["build"]);
    assert!(out.stderr.contains("10 of 10 steps built"), "{}", out.stderr);

    // A new entry, and a mode change.
    std::fs::write(root.join("etc/new"), "").unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt);
    assert_eq!(test.msb(["build"]).code, 0);
    std::fs::set_permissions(root.join("etc/new"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(statuses(&plan_json(&test)), rebuilt);
    assert_eq!(test.msb(["build"]).code, 0);
    assert_eq!(statuses(&plan_json(&test)), vec!["cached"; 10]);
}
