//! The store's errors. Each names what the user asked for (the image), and the blob or layer and
//! file concerned, so a failed pull says where to look without a debug log.
//!
//! Causes are part of each message (`cause` fields, not `#[source]`), so a rendered error is one
//! sentence instead of the same text repeated down a chain.

use std::io;
use std::path::PathBuf;

use super::digest::Digest;
use super::unpack::UnpackError;

/// A failure of the store itself: its folders and files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot find a folder for the store: set MSB_HOME, XDG_CACHE_HOME or HOME")]
    NoHome,
    #[error("cannot {op} `{}`: {cause}", path.display())]
    Io { op: &'static str, path: PathBuf, cause: io::Error },
    #[error("the store file `{}` is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("image `{image}` is not in the store")]
    NotFound { image: String },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |cause| StoreError::Io { op, path, cause }
    }
}

/// Why an image could not be pulled or loaded. When a pull fails, nothing it started is
/// published: the store is as it was, plus litter in `tmp/` that the next pull removes.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image `{image}` is not in the store, and `--pull never` forbids pulling it")]
    NotPresent { image: String },
    #[error("cannot pull `{image}` from {registry}: {reason}")]
    Registry {
        image: String,
        registry: String,
        reason: String,
        /// A refused connection, a timeout, a 5xx or a 429: trying again may help.
        transient: bool,
    },
    #[error("cannot get credentials for {registry} from the docker config: {reason}")]
    Credentials { registry: String, reason: String },
    #[error("image `{image}`: the {what} {digest} is damaged: {reason}")]
    Verify { image: String, what: &'static str, digest: String, reason: String },
    #[error("image `{image}`: layer {layer} unpacks to a tar whose digest is {actual}, but the config says {expected}")]
    DiffId { image: String, layer: Digest, expected: Digest, actual: Digest },
    #[error("image `{image}`, layer {layer}: {cause}")]
    Unpack { image: String, layer: Digest, cause: UnpackError },
    #[error("image `{image}`, layer {layer}: cannot decompress it: {cause}")]
    Decompress { image: String, layer: Digest, cause: io::Error },
    #[error("image `{image}`: {reason}")]
    Invalid { image: String, reason: String },
    #[error("image `{image}` has no image for {host}; it has: {available}")]
    NoPlatform { image: String, host: String, available: String },
    #[error("image `{image}`: cannot read `{}`: {cause}", path.display())]
    Local { image: String, path: PathBuf, cause: io::Error },
    #[error("cannot start the pull: {reason}")]
    Runtime { reason: String },
}

impl PullError {
    /// Whether trying again may help.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, PullError::Registry { transient: true, .. })
    }
}
