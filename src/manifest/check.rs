//! msb's own rules, which a JSON Schema cannot express or can only express as an opaque pattern:
//! every value goes through the same `parse` as its type, host files must exist inside the
//! project, image references must parse.
//!
//! The checks read the same JSON the schema read, so they run even when the schema found problems
//! and the user sees everything at once.

use std::path::{Component, Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::diagnostic::{Problem, Stage};
use super::schema::describe;
use super::source::{Spans, escape};
use super::values::{
    EnvName, GuestPath, ImageName, Init, LinkTarget, Memory, Mode, SandboxName, ScriptName, ValueError,
};

/// Runs every check over the document. `base` is the Sandboxfile's folder, against which host
/// paths are resolved.
pub(super) fn check(instance: &Value, spans: &Spans, base: &Path) -> Vec<Problem> {
    let mut checks = Checks { instance, spans, base, problems: Vec::new() };
    if let Some(sandboxes) = instance.get("sandbox").and_then(Value::as_object) {
        for (name, sandbox) in sandboxes {
            checks.sandbox(name, sandbox);
        }
    }
    checks.problems
}

struct Checks<'a> {
    instance: &'a Value,
    spans: &'a Spans,
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Checks<'_> {
    fn sandbox(&mut self, name: &str, sandbox: &Value) {
        let at = format!("/sandbox/{}", escape(name));
        self.key(&at, SandboxName::parse(name).err());
        self.value(&at, "image", ImageName::parse);
        self.value(&at, "init", Init::parse);
        self.value(&at, "workdir", GuestPath::parse);
        self.value(&at, "memory", Memory::parse);
        if let Some(env) = sandbox.get("env").and_then(Value::as_object) {
            for key in env.keys() {
                self.key(&format!("{at}/env/{}", escape(key)), EnvName::parse(key).err());
            }
        }
        if let Some(scripts) = sandbox.get("scripts").and_then(Value::as_object) {
            for (script, body) in scripts {
                let pointer = format!("{at}/scripts/{}", escape(script));
                self.key(&pointer, ScriptName::parse(script).err());
                if let Some(file) = body.get("file").and_then(Value::as_str) {
                    self.host_path(&format!("{pointer}/file"), file, HostKind::File);
                }
            }
        }
        if let Some(patches) = sandbox.get("patch").and_then(Value::as_array) {
            for (index, patch) in patches.iter().enumerate() {
                self.patch(&format!("{at}/patch/{index}"), patch);
            }
        }
    }

    fn patch(&mut self, at: &str, patch: &Value) {
        for key in ["path", "dst", "link"] {
            self.value(at, key, GuestPath::parse);
        }
        self.value(at, "target", LinkTarget::parse);
        self.value(at, "mode", Mode::parse);
        let op = patch.get("op").and_then(Value::as_str);
        if op == Some("file") {
            self.value(at, "content", |s| {
                base64::engine::general_purpose::STANDARD.decode(s).map(|_| ()).map_err(|err| ValueError {
                    message: format!("`content` is not valid base64: {err}"),
                    help: Some("encode the bytes with `base64 -w0 FILE`; for text use `op = \"text\"`".into()),
                })
            });
        }
        if let Some(src) = patch.get("src").and_then(Value::as_str) {
            let kind = if op == Some("copy_dir") { HostKind::Dir } else { HostKind::File };
            self.host_path(&format!("{at}/src"), src, kind);
        }
    }

    /// Checks the string at `at/key`, when there is one (types are the schema's business).
    fn value<T>(&mut self, at: &str, key: &str, parse: impl Fn(&str) -> Result<T, ValueError>) {
        let pointer = format!("{at}/{key}");
        if let Some(Err(err)) = self.instance.pointer(&pointer).and_then(Value::as_str).map(parse) {
            self.push(pointer.clone(), self.spans.value(&pointer), err, "invalid value");
        }
    }

    /// Reports a bad key (a name) on the key itself.
    fn key(&mut self, pointer: &str, err: Option<ValueError>) {
        if let Some(err) = err {
            self.push(pointer.to_owned(), self.spans.key(pointer), err, "invalid name");
        }
    }

    fn host_path(&mut self, pointer: &str, written: &str, kind: HostKind) {
        if let Err(err) = resolve_host_path(self.base, written, kind) {
            self.push(pointer.to_owned(), self.spans.value(pointer), err, "host path");
        }
    }

    fn push(&mut self, pointer: String, span: std::ops::Range<usize>, err: ValueError, label: &str) {
        let at = describe(&pointer, self.instance);
        self.problems.push(Problem {
            stage: Stage::Check,
            message: format!("{at}: {}", err.message),
            pointer,
            label: label.into(),
            help: err.help,
            span,
        });
    }
}

/// What a host path must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    File,
    Dir,
}

/// Resolves a host path written in a Sandboxfile against its folder.
///
/// Like a build context, a Sandboxfile reads only files of its own project: a path is relative,
/// does not climb out with `..`, and does not leave through a symlink. A repository cloned from
/// elsewhere cannot make msb copy `~/.ssh` into a sandbox.
pub fn resolve_host_path(base: &Path, written: &str, kind: HostKind) -> Result<PathBuf, ValueError> {
    let help = "host paths are relative to the Sandboxfile's folder and stay inside it, such as `./certs/ca.pem`";
    let refuse = |message: String| Err(ValueError { message, help: Some(help.into()) });
    if written.is_empty() {
        return refuse("host path is empty".into());
    }
    let path = Path::new(written);
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir => return refuse(format!("host path `{written}` leaves the Sandboxfile's folder")),
            Component::RootDir | Component::Prefix(_) => {
                return refuse(format!("host path `{written}` is absolute"));
            }
        }
    }
    let full = base.join(path);
    let real = match full.canonicalize() {
        Ok(real) => real,
        Err(err) => {
            return Err(ValueError {
                message: format!("host path `{written}` cannot be read: {}", io_reason(&err)),
                help: Some(format!("the path is resolved from `{}`", base.display())),
            });
        }
    };
    let real_base = base.canonicalize().unwrap_or_else(|_| base.to_owned());
    if !real.starts_with(&real_base) {
        return refuse(format!("host path `{written}` leads outside the Sandboxfile's folder through a symlink"));
    }
    let is_right_kind = match kind {
        HostKind::File => real.is_file(),
        HostKind::Dir => real.is_dir(),
    };
    if !is_right_kind {
        let expected = if kind == HostKind::File { "a file" } else { "a folder" };
        return refuse(format!("host path `{written}` is not {expected}"));
    }
    Ok(full)
}

fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "it does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => err.to_string(),
    }
}
