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

/// Remembers the documents the JSON Schema accepted, by a key over the schema and the document,
/// so that loading an unchanged Sandboxfile again skips compiling the schema (about 2 ms, most
/// of what a warm `msb up` spends before it boots). msb's own checks, which look at host files,
/// run every time. The store keeps them (`Store` implements this).
pub trait Verdicts {
    /// Whether the schema accepted the document with this key (hex digits only) before.
    fn accepted(&self, key: &str) -> bool;
    /// Records that it did; failing to is not an error (the next load validates again).
    fn remember(&self, key: &str);
}

/// Reads and validates a Sandboxfile.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    read_and_parse(path, None)
}

/// [`load`], skipping the schema for a document `verdicts` says it accepted before.
pub fn load_remembered(path: &Path, verdicts: &dyn Verdicts) -> Result<Manifest, ManifestError> {
    read_and_parse(path, Some(verdicts))
}

fn read_and_parse(path: &Path, verdicts: Option<&dyn Verdicts>) -> Result<Manifest, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
    let manifest = parse_with(path, &bytes, verdicts)?;
    tracing::debug!(path = %path.display(), "Sandboxfile read and valid");
    Ok(manifest)
}

/// Validates the bytes of a Sandboxfile that lives at `path` (host paths resolve from its folder).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest, Invalid> {
    parse_with(path, bytes, None)
}

fn parse_with(path: &Path, bytes: &[u8], verdicts: Option<&dyn Verdicts>) -> Result<Manifest, Invalid> {
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
    let remembered = verdicts.map(|verdicts| (verdicts, schema::document_key(&json)));
    let known = remembered.as_ref().is_some_and(|(verdicts, key)| verdicts.accepted(key));
    let mut problems = if known { Vec::new() } else { schema::validate(&json, &spans) };
    if let Some((verdicts, key)) = &remembered
        && !known
        && problems.is_empty()
    {
        verdicts.remember(key);
    }
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

    /// Verdicts kept in memory, counting what is asked.
    #[derive(Default)]
    struct Remembered {
        keys: std::cell::RefCell<Vec<String>>,
        /// Claims every document was accepted before.
        trusting: bool,
    }

    impl Verdicts for Remembered {
        fn accepted(&self, key: &str) -> bool {
            self.trusting || self.keys.borrow().iter().any(|k| k == key)
        }
        fn remember(&self, key: &str) {
            self.keys.borrow_mut().push(key.to_owned());
        }
    }

    #[test]
    fn the_schema_verdict_is_remembered_only_for_accepted_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Sandboxfile");
        let verdicts = Remembered::default();
        let write = |text: &str| std::fs::write(&path, text).expect("write");

        write("[sandbox.w]\nimage = \"alpine\"\n");
        load_remembered(&path, &verdicts).expect("valid");
        load_remembered(&path, &verdicts).expect("still valid");
        assert_eq!(verdicts.keys.borrow().len(), 1, "remembered once, then found");

        // Refused by the schema (`replce`): nothing remembered, the same diagnostic as `load`.
        write("[sandbox.w]\nimage = \"alpine\"\n[[sandbox.w.patch]]\nop = \"mkdir\"\npath = \"/a\"\nreplce = true\n");
        let remembered = load_remembered(&path, &verdicts).unwrap_err().to_string();
        assert_eq!(remembered, load(&path).unwrap_err().to_string());
        assert_eq!(verdicts.keys.borrow().len(), 1);

        // A different document is a different key, even when both are valid.
        write("[sandbox.w]\nimage = \"alpine:3\"\n");
        load_remembered(&path, &verdicts).expect("valid");
        assert_eq!(verdicts.keys.borrow().len(), 2);
        assert_ne!(verdicts.keys.borrow()[0], verdicts.keys.borrow()[1]);
    }

    #[test]
    fn a_remembered_verdict_skips_only_the_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Sandboxfile");
        // The schema accepts this; msb's check finds the host file missing, verdict or not.
        std::fs::write(&path, "[sandbox.w]\nimage = \"alpine\"\n[[sandbox.w.patch]]\nop = \"copy_file\"\nsrc = \"missing.pem\"\ndst = \"/etc/x\"\n").expect("write");
        let trusting = Remembered { trusting: true, ..Remembered::default() };
        let err = load_remembered(&path, &trusting).unwrap_err();
        let ManifestError::Invalid(invalid) = err else { panic!("{err}") };
        assert!(invalid.problems().iter().any(|p| p.stage == Stage::Check), "{:?}", invalid.problems());
    }

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
