//! `msb validate` and `msb schema`: every kind of bad input gets a diagnostic at the right line,
//! exit code 2, and the schema's verdict agrees with an independent validator.

use std::process::Command;

use serde_json::Value;

use crate::test::{Test, repo};

/// One invalid Sandboxfile: what is wrong, the line msb must point at, and words the message must
/// contain.
struct Case {
    name: &'static str,
    text: &'static [u8],
    line: usize,
    message: &'static str,
}

const HEADER: &str = "[sandbox.worker]\nimage = \"alpine:3.20\"\n";

/// Prefixes a patch table (starting at line 3) with a valid sandbox header.
macro_rules! with_header {
    ($rest:expr) => {
        concat!("[sandbox.worker]\nimage = \"alpine:3.20\"\n", $rest).as_bytes()
    };
}

const CASES: &[Case] = &[
    Case { name: "toml syntax error", text: b"[sandbox.worker\nimage = \"x\"\n", line: 1, message: "invalid TOML" },
    Case { name: "duplicate key", text: with_header!("image = \"busybox\"\n"), line: 3, message: "duplicate key" },
    Case { name: "unknown top-level key", text: b"[sandboxes.worker]\nimage = \"alpine\"\n", line: 1, message: "unknown key `sandboxes`" },
    Case { name: "unknown sandbox key", text: with_header!("imagee = \"x\"\n"), line: 3, message: "unknown key `imagee` in sandbox `worker`" },
    Case { name: "typo in patch field", text: with_header!("[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/a\"\ncontent = \"x\"\nreplce = true\n"), line: 7, message: "unknown key `replce` in patch 1 (`text`)" },
    Case { name: "unknown op", text: with_header!("[[sandbox.worker.patch]]\nop = \"txt\"\npath = \"/a\"\n"), line: 4, message: "unknown op `txt`" },
    Case { name: "missing op", text: with_header!("[[sandbox.worker.patch]]\npath = \"/a\"\n"), line: 3, message: "has no `op`" },
    Case { name: "mode as an integer", text: with_header!("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/a\"\nmode = 644\n"), line: 6, message: "must be a string, found the integer `644`" },
    Case { name: "replace as a string", text: with_header!("[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/a\"\ncontent = \"\"\nreplace = \"yes\"\n"), line: 7, message: "must be a boolean" },
    Case { name: "mode out of range", text: with_header!("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/a\"\nmode = \"17777\"\n"), line: 6, message: "`17777` is not an octal mode" },
    Case { name: "mode with a non-octal digit", text: with_header!("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/a\"\nmode = \"0999\"\n"), line: 6, message: "not an octal mode" },
    Case { name: "relative guest path", text: with_header!("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"etc/x\"\n"), line: 5, message: "guest path `etc/x` is not absolute" },
    Case { name: "dot-dot guest path", text: with_header!("[[sandbox.worker.patch]]\nop = \"remove\"\npath = \"/a/../b\"\n"), line: 5, message: "has a `..` component" },
    Case { name: "NUL in guest path", text: with_header!("[[sandbox.worker.patch]]\nop = \"remove\"\npath = \"/a\\u0000b\"\n"), line: 5, message: "NUL" },
    Case { name: "root as guest path", text: with_header!("[[sandbox.worker.patch]]\nop = \"remove\"\npath = \"/\"\n"), line: 5, message: "is the root itself" },
    Case { name: "trailing slash in guest path", text: with_header!("[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"/app/\"\n"), line: 5, message: "empty component" },
    Case { name: "empty script name", text: with_header!("[sandbox.worker.scripts]\n\"\" = \"echo\"\n"), line: 4, message: "script name is empty" },
    Case { name: "script name with a slash", text: with_header!("[sandbox.worker.scripts]\n\"bin/setup\" = \"echo\"\n"), line: 4, message: "contains `/`" },
    Case { name: "duplicate script name", text: with_header!("[sandbox.worker.scripts]\nsetup = \"a\"\nsetup = \"b\"\n"), line: 5, message: "duplicate key" },
    Case { name: "relative init path", text: with_header!("init = \"sbin/init\"\n"), line: 3, message: "`sbin/init` is not an init mode" },
    Case { name: "init of the wrong type", text: with_header!("init = 1\n"), line: 3, message: "`init` of sandbox `worker`" },
    Case { name: "missing patch content", text: with_header!("[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/a\"\n"), line: 3, message: "missing `content` in patch 1 (`text`)" },
    Case { name: "missing image", text: b"[sandbox.worker]\ncpus = 1\n", line: 1, message: "missing `image` in sandbox `worker`" },
    Case { name: "missing host source", text: with_header!("[[sandbox.worker.patch]]\nop = \"copy_file\"\nsrc = \"cert.pem\"\ndst = \"/etc/cert.pem\"\n"), line: 5, message: "host path `cert.pem` cannot be read: it does not exist" },
    Case { name: "missing script file", text: with_header!("[sandbox.worker.scripts]\nserve = { file = \"serve.sh\" }\n"), line: 4, message: "host path `serve.sh` cannot be read" },
    Case { name: "host path climbing out", text: with_header!("[[sandbox.worker.patch]]\nop = \"copy_dir\"\nsrc = \"../elsewhere\"\ndst = \"/srv\"\n"), line: 5, message: "leaves the Sandboxfile's folder" },
    Case { name: "absolute host path", text: with_header!("[[sandbox.worker.patch]]\nop = \"copy_file\"\nsrc = \"/etc/passwd\"\ndst = \"/etc/x\"\n"), line: 5, message: "is absolute" },
    Case { name: "uppercase image reference", text: b"[sandbox.worker]\nimage = \"UPPER/Case:tag\"\n", line: 2, message: "not a valid image reference" },
    Case { name: "image reference with an empty tag", text: b"[sandbox.worker]\nimage = \"alpine:\"\n", line: 2, message: "not a valid image reference" },
    Case { name: "size without a unit", text: with_header!("memory = \"512\"\n"), line: 3, message: "`512` is not a size with a unit" },
    Case { name: "size that is not a number", text: with_header!("memory = \"lots\"\n"), line: 3, message: "not a size with a unit" },
    Case { name: "memory below the minimum", text: with_header!("memory = \"1MiB\"\n"), line: 3, message: "below the minimum" },
    Case { name: "zero cpus", text: with_header!("cpus = 0\n"), line: 3, message: "must be at least 1, found the integer `0`" },
    Case { name: "non-UTF-8 bytes", text: b"[sandbox.worker]\nimage = \"alp\xffine\"\n", line: 2, message: "not valid UTF-8" },
    Case { name: "empty file", text: b"", line: 1, message: "no sandbox is defined" },
    Case { name: "empty sandbox table", text: b"[sandbox]\n", line: 1, message: "no sandbox is defined" },
    Case { name: "unknown runtime", text: with_header!("runtime = \"kvm\"\n"), line: 3, message: "cannot be the string `kvm`" },
    Case { name: "uppercase sandbox name", text: b"[sandbox.Worker]\nimage = \"alpine\"\n", line: 1, message: "`Worker` is not a valid sandbox name" },
    Case { name: "bad environment variable name", text: with_header!("env = { 1X = \"y\" }\n"), line: 3, message: "`1X` is not a valid environment variable name" },
    Case { name: "entrypoint as a string", text: with_header!("entrypoint = \"/bin/sh\"\n"), line: 3, message: "must be an array" },
    Case { name: "file content not base64", text: with_header!("[[sandbox.worker.patch]]\nop = \"file\"\npath = \"/a\"\ncontent = \"!!!\"\n"), line: 6, message: "not valid base64" },
    Case { name: "unknown watch key", text: with_header!("[watch]\nignores = [\"*.log\"]\n"), line: 4, message: "unknown key `ignores`" },
    Case { name: "patch that is not a table", text: with_header!("patch = [\"text\"]\n"), line: 3, message: "must be a table" },
];

#[test]
fn each_invalid_case_exits_2_with_a_diagnostic_at_its_line() {
    assert!(CASES.len() >= 30);
    let mut failures = Vec::new();
    for case in CASES {
        let test = Test::new().sandboxfile(case.text).file("copied.txt", "x").args(["validate", "--format", "json"]);
        let json = test.run();
        let human = Test::new().sandboxfile(case.text).args(["validate"]).run();
        let report: Value = match serde_json::from_str(&json.stdout) {
            Ok(report) => report,
            Err(err) => {
                failures.push(format!("{}: json output does not parse ({err}): {}{}", case.name, json.stdout, json.stderr));
                continue;
            }
        };
        let problems = report["problems"].as_array().cloned().unwrap_or_default();
        let found = problems.iter().any(|p| {
            p["line"].as_u64() == Some(case.line as u64)
                && p["message"].as_str().is_some_and(|m| m.contains(case.message))
        });
        if json.code != 2 || human.code != 2 || !found {
            failures.push(format!(
                "{}: exit codes {} (json) and {} (human), wanted 2; wanted line {} with {:?}, got {problems:#?}",
                case.name, json.code, human.code, case.line, case.message
            ));
        }
        if !human.stderr.contains(&format!("Sandboxfile:{}:", case.line)) || !human.stderr.contains(case.message) {
            failures.push(format!("{}: human output lacks the line or message:\n{}", case.name, human.stderr));
        }
        if human.stderr.contains("panicked") {
            failures.push(format!("{}: msb panicked:\n{}", case.name, human.stderr));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n\n"));
}

#[test]
fn unknown_keys_and_ops_come_with_a_suggestion() {
    let out = Test::new()
        .sandboxfile(with_header!("[[sandbox.worker.patch]]\nop = \"copy-file\"\nsrc = \"a\"\ndst = \"/a\"\n\n[[sandbox.worker.patch]]\nop = \"text\"\npath = \"/b\"\ncontent = \"\"\nreplce = true\n"))
        .args(["validate"])
        .run();
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("did you mean `copy_file`?"), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean `replace`?"), "{}", out.stderr);
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let out = Test::new()
        .sandboxfile(with_header!("cpus = 0\nmemory = \"x\"\n[[sandbox.worker.patch]]\nop = \"mkdir\"\npath = \"rel\"\n"))
        .args(["validate", "--format", "json"])
        .run();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let lines: Vec<u64> = report["problems"].as_array().unwrap().iter().map(|p| p["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [3, 4, 7], "{}", out.stdout);
    assert!(out.stderr.is_empty() || !out.stderr.contains("panicked"));
}

#[test]
fn validate_finds_the_sandboxfile_in_a_parent_folder() {
    let test = Test::new().sandboxfile(HEADER).file("deep/down/keep", "").args(["validate"]);
    let out = test.run_in(&test.path().join("deep/down"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("valid (1 sandbox)"), "{}", out.stdout);
}

#[test]
fn validate_without_a_sandboxfile_says_where_it_looked() {
    let out = Test::new().args(["validate"]).run();
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no `Sandboxfile` in"), "{}", out.stderr);
}

#[test]
fn the_example_sandboxfile_is_valid() {
    let out = Test::new().args(["validate", "-f", repo().join("Sandboxfile.example").to_str().unwrap()]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn msb_schema_prints_the_committed_schema() {
    let out = Test::new().args(["schema"]).run();
    let committed = std::fs::read_to_string(repo().join("schema/sandboxfile.schema.json")).unwrap();
    assert_eq!(out.code, 0);
    assert!(
        out.stdout == committed,
        "schema/sandboxfile.schema.json is stale: run `cargo run -- schema > schema/sandboxfile.schema.json`"
    );
}

/// Python's `jsonschema` reads the committed schema on its own; on every example and every
/// invalid case its verdict must be msb's schema verdict (files that are not TOML are skipped:
/// no schema sees them).
#[test]
fn an_independent_validator_agrees_with_msb_on_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![(repo().join("Sandboxfile.example"), read_msb_verdict(&repo().join("Sandboxfile.example")))];
    for (i, case) in CASES.iter().enumerate() {
        let path = dir.path().join(format!("case-{i}")).join("Sandboxfile");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, case.text).unwrap();
        files.push((path.clone(), read_msb_verdict(&path)));
    }
    let output = Command::new("python3")
        .arg(repo().join("tests/jsonschema_verdict.py"))
        .arg(repo().join("schema/sandboxfile.schema.json"))
        .args(files.iter().map(|(path, _)| path))
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let verdicts = String::from_utf8(output.stdout).unwrap();
    let verdicts: Vec<&str> = verdicts.lines().collect();
    assert_eq!(verdicts.len(), files.len());
    let mut compared = 0;
    for ((path, msb), python) in files.iter().zip(verdicts) {
        let Some(msb) = msb else { continue };
        if python == "not-toml" {
            continue;
        }
        compared += 1;
        assert_eq!(python, *msb, "python and msb disagree on {}: {}", path.display(), std::fs::read_to_string(path).unwrap_or_default());
    }
    assert!(compared >= 30, "only {compared} files compared");
}

/// msb's schema verdict on a file: `valid`, `invalid`, or `None` when it is not TOML at all.
fn read_msb_verdict(path: &std::path::Path) -> Option<&'static str> {
    let out = Test::new().args(["validate", "--format", "json", "-f", path.to_str().unwrap()]).run();
    let report: Value = serde_json::from_str(&out.stdout).ok()?;
    let stages: Vec<&str> = report["problems"].as_array()?.iter().filter_map(|p| p["stage"].as_str()).collect();
    if stages.contains(&"syntax") {
        return None;
    }
    Some(if stages.contains(&"schema") { "invalid" } else { "valid" })
}
