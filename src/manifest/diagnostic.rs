//! Problems found in a Sandboxfile, rendered for people (miette) and for tools (JSON).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;

use super::source::line_column;

/// Which pass found a problem. `schema` problems are exactly the JSON Schema's verdict, so an
/// independent validator can be compared with msb on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The bytes are not TOML (or not UTF-8).
    Syntax,
    /// The JSON Schema refuses the document.
    Schema,
    /// One of msb's own rules that a schema cannot express (host files exist, image references).
    Check,
}

/// One problem, anchored at a span of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub stage: Stage,
    /// JSON pointer of the offending key or value (empty for the whole file).
    pub pointer: String,
    pub message: String,
    /// The short text under the caret.
    pub label: String,
    pub help: Option<String>,
    pub span: Range<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = LabeledSpan::new_with_span(Some(self.label.clone()), self.span.clone());
        Some(Box::new(std::iter::once(span)))
    }
}

/// A Sandboxfile that cannot be used, with every problem found in it.
#[derive(Debug)]
pub struct Invalid(Box<Parts>);

/// Boxed so that `Result<_, Invalid>` stays small on the happy path.
#[derive(Debug)]
pub struct Parts {
    path: PathBuf,
    source: NamedSource<Arc<str>>,
    text: Arc<str>,
    problems: Vec<Problem>,
}

impl std::ops::Deref for Invalid {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Invalid {
    pub(super) fn new(path: &Path, text: Arc<str>, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.span.start, p.span.end));
        problems.dedup();
        let source = NamedSource::new(path.display().to_string(), text.clone()).with_language("TOML");
        Invalid(Box::new(Parts { path: path.to_owned(), source, text, problems }))
    }
}

impl Parts {

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One report per problem, each with the file's text, for printing one after the other.
    pub fn reports(&self) -> impl Iterator<Item = miette::Report> + '_ {
        self.problems.iter().map(|p| miette::Report::new(p.clone()).with_source_code(self.source.clone()))
    }

    /// The machine-readable form `msb validate --format json` prints.
    pub fn to_json(&self) -> Report<'_> {
        report(&self.path, &self.text, &self.problems)
    }
}

/// `msb validate --format json`: one entry per problem, with 1-based lines and columns.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub file: String,
    pub valid: bool,
    pub problems: Vec<JsonProblem<'a>>,
}

#[derive(Debug, Serialize)]
pub struct JsonProblem<'a> {
    pub stage: Stage,
    pub pointer: &'a str,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub message: &'a str,
    pub help: Option<&'a str>,
}

/// Builds the JSON report; a valid file is one with no problems.
pub fn report<'a>(path: &Path, text: &str, problems: &'a [Problem]) -> Report<'a> {
    let problems = problems
        .iter()
        .map(|p| {
            let (line, column) = line_column(text, p.span.start);
            let (end_line, end_column) = line_column(text, p.span.end);
            JsonProblem {
                stage: p.stage,
                pointer: &p.pointer,
                line,
                column,
                end_line,
                end_column,
                message: &p.message,
                help: p.help.as_deref(),
            }
        })
        .collect::<Vec<_>>();
    Report { file: path.display().to_string(), valid: problems.is_empty(), problems }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.len() {
            1 => write!(f, "`{}` is not valid", self.path.display()),
            n => write!(f, "`{}` is not valid: {n} problems", self.path.display()),
        }
    }
}

impl std::error::Error for Invalid {}

impl Diagnostic for Invalid {
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// "did you mean `replace`?" when one of `candidates` is close to what was written.
pub(super) fn did_you_mean<'a>(written: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(written, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `a`, `b` or `c`: the accepted values, for help lines.
pub(super) fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let values: Vec<String> = values.into_iter().map(|v| format!("`{v}`")).collect();
    match values.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["path", "content", "mode", "replace"];
        assert_eq!(did_you_mean("replce", keys), Some("replace"));
        assert_eq!(did_you_mean("contnet", keys), Some("content"));
        assert_eq!(did_you_mean("xyz", keys), None);
    }

    #[test]
    fn lists_accepted_values_in_prose() {
        assert_eq!(one_of(["a"]), "`a`");
        assert_eq!(one_of(["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
