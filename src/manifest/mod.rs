//! The Sandboxfile: its types as written, the schema generated from them, and loading with
//! diagnostics that point at the exact key.
//!
//! Loading goes bytes → UTF-8 → TOML with spans → JSON Schema (every error) → msb's own checks
//! (every problem) → typed [`Sandboxfile`]. Nothing after this module sees an invalid value.

mod check;
mod diagnostic;
mod model;
pub mod schema;
mod source;
mod values;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::de::DeTable;

pub use check::{HostKind, resolve_host_path};
pub use diagnostic::{Invalid, JsonProblem, Problem, Report, Stage, report};
pub use model::{PATCH_OPS, Patch, SandboxConfig, Sandboxfile, Script, ScriptFile, Watch};
pub use values::{
    EnvName, GuestPath, ImageName, Init, LinkTarget, Memory, Mode, Network, Runtime, SandboxName, ScriptName, ValueError,
};

/// The file name msb looks for.
pub const FILE_NAME: &str = "Sandboxfile";

/// A Sandboxfile that loaded and passed every check.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its folder: host paths in it are relative to this.
    pub dir: PathBuf,
    pub file: Sandboxfile,
}

/// Why a Sandboxfile could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ManifestError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] Invalid),

    #[error("no `Sandboxfile` in `{}` or any parent folder", start.display())]
    #[diagnostic(help("create one (see Sandboxfile.example) or pass `-f PATH`"))]
    NotFound { start: PathBuf },

    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Finds `Sandboxfile` in `start` or its nearest parent, as cargo finds `Cargo.toml`.
pub fn find(start: &Path) -> Result<PathBuf, ManifestError> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ManifestError::NotFound { start: start.to_owned() })
}

/// Reads and validates a Sandboxfile.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
    let manifest = parse(path, &bytes)?;
    tracing::debug!(path = %path.display(), "Sandboxfile read and valid");
    Ok(manifest)
}

/// Validates the bytes of a Sandboxfile that lives at `path` (host paths resolve from its folder).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest, Invalid> {
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let text: Arc<str> = String::from_utf8_lossy(bytes).into();
    let invalid = |problems| Invalid::new(path, text.clone(), problems);

    if let Err(err) = std::str::from_utf8(bytes) {
        // The text shown is the lossy copy, where the bad bytes became one U+FFFD.
        let at = err.valid_up_to();
        let span = at..at + char::REPLACEMENT_CHARACTER.len_utf8();
        return Err(invalid(vec![syntax_problem("the file is not valid UTF-8".into(), "not UTF-8", span)]));
    }
    let document = DeTable::parse(&text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        let message = err.message().trim_end().to_owned();
        invalid(vec![syntax_problem(format!("invalid TOML: {message}"), "here", span)])
    })?;

    let (json, spans) = source::to_json(&document);
    let mut problems = schema::validate(&json, &spans);
    let checks = check::check(&json, &spans, &dir);
    // Where the schema and a check refuse the same value, the check knows why in more words; the
    // problem stays a schema problem so that the schema's verdict is still what is reported.
    for found in checks {
        match problems.iter_mut().find(|p| p.stage == Stage::Schema && p.pointer == found.pointer) {
            Some(same) => {
                same.message = found.message;
                same.help = found.help;
            }
            None => problems.push(found),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    let file = Sandboxfile::deserialize(toml::de::Deserializer::from(document)).map_err(|err| {
        // The schema and the checks accept only what the types accept; reaching this is a gap
        // between them, still reported at the right place rather than as a crash.
        let span = err.span().unwrap_or(0..0);
        invalid(vec![Problem {
            stage: Stage::Check,
            pointer: String::new(),
            message: err.message().trim_end().to_owned(),
            label: "here".into(),
            help: None,
            span,
        }])
    })?;
    Ok(Manifest { path: path.to_owned(), dir, file })
}

fn syntax_problem(message: String, label: &str, span: std::ops::Range<usize>) -> Problem {
    Problem { stage: Stage::Syntax, pointer: String::new(), message, label: label.into(), help: None, span }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of Sandboxfiles, good and bad, so that generated files reach past the TOML parser
    /// into the schema and the checks.
    const FRAGMENTS: &[&str] = &[
        "[sandbox.w]\n", "[sandbox.W]\n", "[watch]\n", "[[sandbox.w.patch]]\n", "[sandbox.w.scripts]\n",
        "image = \"alpine\"\n", "image = \"UP:\"\n", "op = \"text\"\n", "op = \"copy_dir\"\n", "op = 3\n",
        "path = \"/a/../b\"\n", "path = \"/etc/x\"\n", "content = \"x\"\n", "mode = \"0644\"\n", "mode = 9\n",
        "src = \"../x\"\n", "dst = \"/d\"\n", "replace = true\n", "cpus = -1\n", "memory = \"1GiB\"\n",
        "init = \"auto\"\n", "\"\" = \"\"\n", "a = { file = \"\" }\n", "ignore = [1]\n", "x = 1.5e999\n",
        "env = { \"~/\" = 1 }\n", "patch = [[]]\n", "sandbox = 0\n", "\u{0}", "\"\n", "[", "\u{feff}",
    ];

    proptest! {
        #[test]
        fn loading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(Path::new("Sandboxfile"), &bytes);
        }

        #[test]
        fn loading_arbitrary_sandboxfiles_never_panics(pieces in proptest::collection::vec(0..FRAGMENTS.len(), 0..24)) {
            let text: String = pieces.iter().map(|&i| FRAGMENTS[i]).collect();
            if let Err(invalid) = parse(Path::new("Sandboxfile"), text.as_bytes()) {
                for problem in invalid.problems() {
                    prop_assert!(problem.span.end <= text.len(), "span {:?} outside the text", problem.span);
                }
            }
        }
    }
}
