//! Where an image comes from: a registry reference or a local source named with skopeo's
//! transport names (`oci:`, `oci-archive:`, `docker-archive:`, `dir:`).
//!
//! Registry references are parsed by oci-spec's reference parser (the distribution grammar, with
//! Docker Hub's `docker.io/library/` and `:latest` defaults). Only when that parser refuses a string
//! does this module look at it again, to say in a sentence *what* is wrong.
//!
//! Relative paths of local sources stay as written: resolving them (against the Sandboxfile's
//! folder, or the current folder on the command line) is the caller's job.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::distribution::{ParseError, Reference};

/// An image source, as written in a Sandboxfile or on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A registry reference, normalized: `alpine` is `docker.io/library/alpine:latest`.
    Registry(Reference),
    /// `oci:DIR[:TAG]`: an OCI image layout folder; without a tag its index must hold one image.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:TAR`: an OCI image layout in a tar file.
    OciArchive(PathBuf),
    /// `docker-archive:TAR`: the output of `docker save`.
    DockerArchive(PathBuf),
    /// `dir:ROOTFS`: a plain folder used as the root, read-only.
    Dir(PathBuf),
}

/// The transports, by the name written before the colon.
const OCI: &str = "oci:";
const OCI_ARCHIVE: &str = "oci-archive:";
const DOCKER_ARCHIVE: &str = "docker-archive:";
const DIR: &str = "dir:";
/// skopeo's name for the registry transport; accepted, never printed.
const DOCKER: &str = "docker://";

/// Why a string is not an image source. Each message is a sentence about the string as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("it contains whitespace or a control character")]
    Whitespace,
    #[error("the path is empty after `{transport}`")]
    EmptyPath { transport: &'static str },
    #[error("the tag is empty after `:`")]
    EmptyTag,
    #[error("the tag `{tag}` is invalid: a tag is at most 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")]
    InvalidTag { tag: String },
    #[error("the repository name must be lowercase (`{name}`)")]
    Uppercase { name: String },
    #[error("the digest is empty after `@`")]
    EmptyDigest,
    #[error("the digest `{digest}` is not `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest { digest: String },
    #[error("the digest algorithm of `{digest}` is not supported (only sha256 is)")]
    UnsupportedDigest { digest: String },
    #[error("the repository name must not be more than 255 characters")]
    NameTooLong,
    #[error("the repository name `{name}` is invalid: each `/`-separated part is lowercase letters and digits, joined by `.`, `_`, `__` or `-`")]
    InvalidName { name: String },
}

impl ReferenceError {
    /// An example of the expected form, for the line under the message.
    pub fn help(&self) -> Option<String> {
        let text = match self {
            ReferenceError::EmptyPath { transport } => match *transport {
                OCI => "write `oci:DIR` or `oci:DIR:TAG`, e.g. `oci:./images/app:latest`",
                OCI_ARCHIVE => "write `oci-archive:FILE`, e.g. `oci-archive:./app.oci.tar`",
                DOCKER_ARCHIVE => "write `docker-archive:FILE`, e.g. `docker-archive:./app.tar` (from `docker save`)",
                _ => "write `dir:FOLDER`, e.g. `dir:./rootfs`",
            },
            ReferenceError::EmptyTag | ReferenceError::InvalidTag { .. } => {
                "write `NAME:TAG`, e.g. `alpine:3.20`, or leave the tag out for `:latest`"
            }
            ReferenceError::EmptyDigest
            | ReferenceError::InvalidDigest { .. }
            | ReferenceError::UnsupportedDigest { .. } => {
                "write `NAME@sha256:` and the 64 hex digits of the digest, e.g. `alpine@sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1`"
            }
            _ => {
                "write a registry reference such as `alpine:3.20`, `ghcr.io/org/app:1.0` or `127.0.0.1:5000/team/app@sha256:…`, or `oci:DIR`, `oci-archive:TAR`, `docker-archive:TAR`, `dir:ROOTFS`"
            }
        };
        Some(text.to_owned())
    }
}

impl ImageSource {
    /// The registry reference, for a registry source.
    pub fn registry(&self) -> Option<&Reference> {
        match self {
            ImageSource::Registry(reference) => Some(reference),
            _ => None,
        }
    }

    /// The local path, for a local source.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciLayout { dir, .. } => Some(dir),
            ImageSource::OciArchive(path) | ImageSource::DockerArchive(path) | ImageSource::Dir(path) => Some(path),
        }
    }

    /// The same source with a relative local path resolved against `base`.
    pub fn resolve_against(&self, base: &Path) -> ImageSource {
        let join = |path: &Path| if path.is_absolute() { path.to_owned() } else { base.join(path) };
        match self {
            ImageSource::Registry(_) => self.clone(),
            ImageSource::OciLayout { dir, tag } => ImageSource::OciLayout { dir: join(dir), tag: tag.clone() },
            ImageSource::OciArchive(path) => ImageSource::OciArchive(join(path)),
            ImageSource::DockerArchive(path) => ImageSource::DockerArchive(join(path)),
            ImageSource::Dir(path) => ImageSource::Dir(join(path)),
        }
    }
}

impl FromStr for ImageSource {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace);
        }
        let path = |rest: &str, transport: &'static str| {
            if rest.is_empty() { Err(ReferenceError::EmptyPath { transport }) } else { Ok(PathBuf::from(rest)) }
        };
        if let Some(rest) = s.strip_prefix(OCI_ARCHIVE) {
            return Ok(ImageSource::OciArchive(path(rest, OCI_ARCHIVE)?));
        }
        if let Some(rest) = s.strip_prefix(DOCKER_ARCHIVE) {
            return Ok(ImageSource::DockerArchive(path(rest, DOCKER_ARCHIVE)?));
        }
        if let Some(rest) = s.strip_prefix(DIR) {
            return Ok(ImageSource::Dir(path(rest, DIR)?));
        }
        if let Some(rest) = s.strip_prefix(OCI) {
            // As skopeo: the folder ends at the first `:`; what follows names an image of its index.
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) => {
                    if tag.is_empty() {
                        return Err(ReferenceError::EmptyTag);
                    }
                    (dir, Some(tag.to_owned()))
                }
                None => (rest, None),
            };
            return Ok(ImageSource::OciLayout { dir: path(dir, OCI)?, tag });
        }
        let s = s.strip_prefix(DOCKER).unwrap_or(s);
        parse_registry(s).map(ImageSource::Registry)
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(reference) => write!(f, "{reference}"),
            ImageSource::OciLayout { dir, tag: Some(tag) } => write!(f, "{OCI}{}:{tag}", dir.display()),
            ImageSource::OciLayout { dir, tag: None } => write!(f, "{OCI}{}", dir.display()),
            ImageSource::OciArchive(path) => write!(f, "{OCI_ARCHIVE}{}", path.display()),
            ImageSource::DockerArchive(path) => write!(f, "{DOCKER_ARCHIVE}{}", path.display()),
            ImageSource::Dir(path) => write!(f, "{DIR}{}", path.display()),
        }
    }
}

/// Parses a registry reference with oci-spec, and explains a refusal.
fn parse_registry(s: &str) -> Result<Reference, ReferenceError> {
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };
    // A `:` after the last `/` starts the tag (a `:` before it is a registry's port).
    let last_part = name_and_tag.rsplit('/').next().unwrap_or(name_and_tag);
    let (name, tag) = match last_part.split_once(':') {
        Some((_, tag)) => (&name_and_tag[..name_and_tag.len() - tag.len() - 1], Some(tag)),
        None => (name_and_tag, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    match s.parse::<Reference>() {
        Ok(reference) => Ok(reference),
        Err(err) => Err(explain(err, name, tag, digest)),
    }
}

/// Digests are store keys: only lowercase sha256 is accepted, whatever the grammar allows.
fn check_digest(digest: &str) -> Result<(), ReferenceError> {
    if digest.is_empty() {
        return Err(ReferenceError::EmptyDigest);
    }
    let invalid = || ReferenceError::InvalidDigest { digest: digest.to_owned() };
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(()),
        Some(("sha256", _)) | None => Err(invalid()),
        Some(("sha384" | "sha512", _)) => Err(ReferenceError::UnsupportedDigest { digest: digest.to_owned() }),
        Some(_) => Err(invalid()),
    }
}

/// Turns oci-spec's terse error into the sentence a user needs, by looking at which part of the
/// reference is at fault.
fn explain(err: ParseError, name: &str, tag: Option<&str>, digest: Option<&str>) -> ReferenceError {
    match err {
        ParseError::NameTooLong => return ReferenceError::NameTooLong,
        ParseError::DigestInvalidFormat | ParseError::DigestInvalidLength => {
            return ReferenceError::InvalidDigest { digest: digest.unwrap_or_default().to_owned() };
        }
        ParseError::DigestUnsupported => {
            return ReferenceError::UnsupportedDigest { digest: digest.unwrap_or_default().to_owned() };
        }
        ParseError::NameEmpty => return ReferenceError::Empty,
        _ => {}
    }
    if let Some(tag) = tag {
        if tag.is_empty() {
            return ReferenceError::EmptyTag;
        }
        let valid = tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !tag.starts_with(['.', '-']);
        if !valid {
            return ReferenceError::InvalidTag { tag: tag.to_owned() };
        }
    }
    // The registry part (before the first `/`, when it looks like a host) may hold capitals.
    let path = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => name,
    };
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return ReferenceError::Uppercase { name: name.to_owned() };
    }
    ReferenceError::InvalidName { name: name.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";

    #[test]
    fn good_references_normalize_and_round_trip() {
        let digest_ref = format!("x@sha256:{HEX}");
        let digest_norm = format!("docker.io/library/x@sha256:{HEX}");
        let tag_digest = format!("ghcr.io/a/b:1@sha256:{HEX}");
        let cases: &[(&str, &str)] = &[
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.20", "docker.io/library/alpine:3.20"),
            ("docker.io/alpine", "docker.io/library/alpine:latest"),
            ("docker://alpine", "docker.io/library/alpine:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("ghcr.io/a/b:1", "ghcr.io/a/b:1"),
            ("127.0.0.1:5000/x/y:t", "127.0.0.1:5000/x/y:t"),
            (&digest_ref, &digest_norm),
            (&tag_digest, &tag_digest),
            ("localhost:5000/a", "localhost:5000/a:latest"),
            ("REGISTRY.example.com/a/b", "REGISTRY.example.com/a/b:latest"),
            ("oci:./layout", "oci:./layout"),
            ("oci:/abs/layout:v1", "oci:/abs/layout:v1"),
            ("oci-archive:img.tar", "oci-archive:img.tar"),
            ("docker-archive:../saved.tar", "docker-archive:../saved.tar"),
            ("dir:rootfs", "dir:rootfs"),
        ];
        for (input, normalized) in cases {
            let source: ImageSource = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(source.to_string(), *normalized, "{input}");
            let again: ImageSource = normalized.parse().unwrap_or_else(|e| panic!("{normalized}: {e}"));
            assert_eq!(again, source, "{input} round trip");
        }
    }

    #[test]
    fn transports_keep_their_parts() {
        assert_eq!(
            "oci:dir:tag".parse::<ImageSource>(),
            Ok(ImageSource::OciLayout { dir: "dir".into(), tag: Some("tag".into()) })
        );
        assert_eq!("oci:dir".parse::<ImageSource>(), Ok(ImageSource::OciLayout { dir: "dir".into(), tag: None }));
        assert_eq!("dir:/r".parse::<ImageSource>(), Ok(ImageSource::Dir("/r".into())));
        let resolved = "oci-archive:a.tar".parse::<ImageSource>().map(|s| s.resolve_against(Path::new("/p")));
        assert_eq!(resolved, Ok(ImageSource::OciArchive("/p/a.tar".into())));
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "the image reference is empty"),
            ("UPPER/Case:tag", "the repository name must be lowercase (`UPPER/Case`)"),
            ("alpine:", "the tag is empty after `:`"),
            ("alpine:-x", "the tag `-x` is invalid: a tag is at most 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"),
            ("a@sha256:short", "the digest `sha256:short` is not `sha256:` followed by 64 lowercase hex digits"),
            ("a@", "the digest is empty after `@`"),
            ("a@md5:abc", "the digest `md5:abc` is not `sha256:` followed by 64 lowercase hex digits"),
            ("oci:", "the path is empty after `oci:`"),
            ("oci:dir:", "the tag is empty after `:`"),
            ("dir:", "the path is empty after `dir:`"),
            ("oci-archive:", "the path is empty after `oci-archive:`"),
            ("docker-archive:", "the path is empty after `docker-archive:`"),
            ("al pine", "it contains whitespace or a control character"),
            ("a//b", "the repository name `a//b` is invalid: each `/`-separated part is lowercase letters and digits, joined by `.`, `_`, `__` or `-`"),
        ];
        for (input, message) in cases {
            let err = input.parse::<ImageSource>().expect_err(input);
            assert_eq!(err.to_string(), *message, "{input}");
            assert!(err.help().is_some());
        }
        let upper = format!("a@sha256:{}", HEX.to_uppercase());
        assert!(matches!(upper.parse::<ImageSource>(), Err(ReferenceError::InvalidDigest { .. })));
        let sha512 = format!("a@sha512:{HEX}{HEX}");
        assert!(matches!(sha512.parse::<ImageSource>(), Err(ReferenceError::UnsupportedDigest { .. })));
    }
}
