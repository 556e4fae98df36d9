//! The crate's error: every module's error folds into it, and it knows its exit code.
//!
//! Modules never print; `cli` renders an [`Error`] once, with miette.

use miette::Diagnostic;

use crate::manifest::ManifestError;

/// Anything that stops an msb command.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Pull(#[from] crate::store::PullError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Project(#[from] crate::project::ProjectError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl From<crate::runtime::RuntimeError> for Error {
    fn from(err: crate::runtime::RuntimeError) -> Error {
        Error::Sandbox(err.into())
    }
}

impl Error {
    /// 2 for a bad or missing Sandboxfile (the user must edit it), 1 for a failed run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Manifest(ManifestError::Invalid(_) | ManifestError::NotFound { .. }) => 2,
            // `msb exec` of a command that could not run: the shell's 126/127, else 125.
            Error::Sandbox(err) => err.exec_exit_code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1),
            _ => 1,
        }
    }
}
