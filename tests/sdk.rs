//! The Rust SDK: the examples run against the test registry and print what they should; a
//! builder is the Sandboxfile it writes (same validation, same diagnostics, same plan keys).

use std::path::{Path, PathBuf};
use std::process::Command;

use msb::manifest::ManifestError;
use msb::project::Project;
use msb::store::Store;
use msb::{Error, Sandbox};

use crate::test::{Test, fixtures, msb, output_of};

const BUSYBOX: &str = "127.0.0.1:5000/msb-test/busybox:latest";

/// An example program cargo built beside the tests (`cargo test` builds `examples/`).
fn example(name: &str) -> PathBuf {
    msb().with_file_name("examples").join(name)
}

#[test]
fn the_examples_print_what_they_should() {
    fixtures();
    let test = Test::new().file("cert.pem", "-----BEGIN CERTIFICATE-----\nfake\n");
    let cases = [
        (
            "patch",
            "Hello from a patched rootfs!\nCustom message of the day.\n{\"debug\": true}\n-rw-r--r--\n-----BEGIN \n127.0.0.1 myapp.local\n",
        ),
        ("scripts", "hello, world, from /.msb/scripts/greet\nexit status 0\n"),
        (
            "init",
            "PID 1 is init\nthe inittab's sleep runs\nsysinit ran\nThe system is going down NOW!\nSent SIGTERM to all processes\nSent SIGKILL to all processes\nRequesting system poweroff\n",
        ),
    ];
    for (name, expected) in cases {
        let out = output_of(
            Command::new(example(name))
                .current_dir(test.path())
                .env("MSB_HOME", test.home())
                .env("MSB_EXAMPLE_IMAGE", BUSYBOX)
                .output()
                .unwrap_or_else(|err| panic!("run examples/{name}.rs (built by `cargo test`): {err}")),
        );
        // busybox init writes its console lines with a carriage return first.
        assert_eq!((out.code, out.stdout.replace('\r', "").as_str()), (0, expected), "examples/{name}.rs: {out:?}");
    }
    // Each example stops and removes its sandbox.
    assert_eq!(test.msb(["ls"]).stdout.lines().count(), 1, "only the header");
}

/// Every op, every optional key, scripts inline and from a file.
fn everything(dir: &Path) -> msb::SandboxBuilder {
    std::fs::write(dir.join("cert.pem"), "cert\n").unwrap();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "page\n").unwrap();
    std::fs::write(dir.join("serve.sh"), "#!/bin/sh\necho serve\n").unwrap();
    Sandbox::builder("worker")
        .image(BUSYBOX)
        .init(msb::Init::Auto)
        .entrypoint(["/bin/sh", "-c"])
        .command(["serve"])
        .workdir("/app")
        .env("GREETING", "hello")
        .user("1000:1000")
        .cpus(1)
        .memory("256MiB")
        .runtime(msb::Runtime::Oci)
        .script("greet", "echo hi")
        .script_file("serve", "serve.sh")
        .patch(|p| {
            p.text("/etc/greeting.txt", "Hello\n", None, false)
                .text("/etc/motd", "motd\n", Some(0o600), true)
                .file("/app/blob.bin", [0u8, 1, 2, 255], Some(0o644), false)
                .mkdir("/app", Some(0o755))
                .append("/etc/hosts", "127.0.0.1 myapp.local\n")
                .copy_file("cert.pem", "/etc/ssl/cert.pem", Some(0o644), false)
                .copy_dir("site", "/srv/www", false)
                .symlink("/srv/www", "/app/www", true)
                .remove("/etc/issue")
        })
}

fn plan_keys(manifest: &msb::manifest::Manifest, store: &Store) -> Vec<Option<String>> {
    let plans = Project { manifest, store }.plan(&[]).expect("plan");
    plans.iter().flat_map(|plan| plan.steps.iter().map(|step| step.key.clone())).collect()
}

#[test]
fn a_builder_is_the_sandboxfile_it_writes_with_the_same_plan_keys() {
    fixtures();
    let test = Test::new();
    assert_eq!(test.msb(["pull", BUSYBOX]).code, 0, "the image must be in the store for keys");
    let builder = everything(test.path()).project_dir(test.path()).home(test.home());
    let text = builder.sandboxfile();
    std::fs::write(test.path().join("Sandboxfile"), &text).unwrap();
    let validate = test.msb(["validate"]);
    assert_eq!(validate.code, 0, "the written Sandboxfile validates:\n{text}\n{validate:?}");

    let store = Store::open(Some(&test.home())).unwrap();
    let from_file = msb::manifest::load(&test.path().join("Sandboxfile")).unwrap();
    let from_builder = builder.manifest().unwrap();
    assert_eq!(from_builder.file, from_file.file, "one model");
    let keys = plan_keys(&from_file, &store);
    assert_eq!(keys.len(), 9);
    assert!(keys.iter().all(Option::is_some), "{keys:?}");
    assert_eq!(plan_keys(&from_builder, &store), keys);
}

#[test]
fn a_bad_builder_value_gives_the_sandboxfile_s_diagnostic() {
    let test = Test::new();
    type Edit = fn(msb::SandboxBuilder) -> msb::SandboxBuilder;
    let cases: [(&str, Edit); 4] = [
        ("a relative guest path", |b| b.patch(|p| p.text("etc/motd", "x", None, false))),
        ("a mode that is not permission bits", |b| b.patch(|p| p.mkdir("/app", Some(0o17777)))),
        ("a source outside the project", |b| b.patch(|p| p.copy_file("../../etc/passwd", "/etc/x", None, false))),
        ("a memory without a unit", |b| b.memory("512")),
    ];
    for (what, edit) in cases {
        let builder = edit(Sandbox::builder("worker").image(BUSYBOX));
        let problems = match builder.manifest() {
            Err(Error::Manifest(ManifestError::Invalid(invalid))) => invalid.problems().iter().map(|p| p.message.clone()).collect::<Vec<_>>(),
            other => panic!("{what}: expected an invalid Sandboxfile, got {other:?}"),
        };
        assert!(!problems.is_empty(), "{what}");
        std::fs::write(test.path().join("Sandboxfile"), builder.sandboxfile()).unwrap();
        let validate = test.msb(["validate"]);
        assert_eq!(validate.code, 2, "{what}: {validate:?}");
        for message in &problems {
            assert!(validate.stderr.contains(message.as_str()), "{what}: `msb validate` says\n{}\nnot {message:?}", validate.stderr);
        }
    }
}
