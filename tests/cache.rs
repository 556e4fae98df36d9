//! `msb cache`: listing, verifying and cleaning the store.

use std::path::Path;

use crate::test::Test;

fn built_project() -> (Test, tempfile::TempDir) {
    let image = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(image.path().join("etc")).unwrap();
    std::fs::write(image.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let test = Test::new().sandboxfile(format!(
        "[sandbox.w]\nimage = \"dir:{}\"\n[[sandbox.w.patch]]\nop = \"text\"\npath = \"/etc/a\"\ncontent = \"a\"\n\
         [[sandbox.w.patch]]\nop = \"append\"\npath = \"/etc/hosts\"\ncontent = \"10.0.0.1 db\\n\"\n",
        image.path().display()
    ));
    let out = test.msb(["build"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    (test, image)
}

fn patch_layers(test: &Test) -> Vec<String> {
    let out = test.msb(["cache", "ls"]);
    out.stdout.lines().filter(|l| l.starts_with("patch-layer")).map(str::to_owned).collect()
}

#[test]
fn verify_finds_a_damaged_patch_layer() {
    let (test, _image) = built_project();
    let ok = test.msb(["cache", "verify"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);

    let layers = test.path().join(".msb-home/v1/layers/sha256");
    let damaged = std::fs::read_dir(&layers)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("etc/a").is_file())
        .expect("the layer of the first patch");
    std::fs::write(damaged.join("etc/a"), "tampered").unwrap();
    let bad = test.msb(["cache", "verify"]);
    assert_eq!(bad.code, 1);
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    assert!(bad.stdout.contains(&format!("patch layer sha256:{name} is damaged")), "{}", bad.stdout);
}

#[test]
fn gc_keeps_what_a_recent_build_used_and_prune_removes_all_patch_layers() {
    let (test, _image) = built_project();
    assert_eq!(patch_layers(&test).len(), 2);
    let gc = test.msb(["cache", "gc"]);
    assert!(gc.stdout.contains("removed 0 entries"), "{}", gc.stdout);
    assert_eq!(patch_layers(&test).len(), 2);

    let prune = test.msb(["cache", "prune"]);
    assert!(prune.stdout.contains("removed 2 entries"), "{}", prune.stdout);
    assert!(patch_layers(&test).is_empty());
    assert!(!Path::new(&test.path().join(".msb-home/v1/tmp")).read_dir().unwrap().any(|e| {
        !e.unwrap().file_name().to_string_lossy().ends_with(".lock")
    }));

    let rebuilt = test.msb(["build"]);
    assert!(rebuilt.stderr.contains("2 of 2 steps built"), "{}", rebuilt.stderr);
    assert_eq!(test.msb(["cache", "verify"]).code, 0);
}
