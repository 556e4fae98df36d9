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

use oci_spec::distribution::Reference;

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

/// Parses a registry reference: the distribution grammar (`[domain/]path[:tag][@digest]`) and
/// Docker Hub's normalization, giving oci-spec's [`Reference`].
///
/// oci-spec's own `FromStr` compiles a Unicode regex of the grammar on first use, which costs
/// ~45 ms per process (measured, release build): more than a whole warm `msb pull`. So the grammar
/// is checked here by hand, and a property test holds this parser to oci-spec's on every ASCII
/// input: same acceptance, same registry, repository, tag and digest.
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
    if name.is_empty() {
        return Err(ReferenceError::InvalidName { name: name.to_owned() });
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    check_name(name)?;
    let (registry, repository) = split_domain(name);
    if repository.len() > 255 {
        return Err(ReferenceError::NameTooLong);
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_owned()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned()),
    })
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

/// `tag := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    if tag.is_empty() {
        return Err(ReferenceError::EmptyTag);
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = tag.len() <= 128 && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-') && tag.bytes().next().is_some_and(word);
    if valid { Ok(()) } else { Err(ReferenceError::InvalidTag { tag: tag.to_owned() }) }
}

/// `name := [domain '/'] path-component ('/' path-component)*`, where the first part may be read
/// as a domain only when more parts follow.
fn check_name(name: &str) -> Result<(), ReferenceError> {
    let parts: Vec<&str> = name.split('/').collect();
    let paths_valid = |parts: &[&str]| parts.iter().all(|p| is_path_component(p));
    let valid = match parts.as_slice() {
        [] => false,
        [first, rest @ ..] => paths_valid(&parts) || (!rest.is_empty() && is_domain(first) && paths_valid(rest)),
    };
    if valid {
        return Ok(());
    }
    // Say what is wrong: capitals are the usual mistake (the domain may hold them).
    let path = match parts.as_slice() {
        [first, rest @ ..] if !rest.is_empty() && is_domain(first) => &name[first.len() + 1..],
        _ => name,
    };
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase { name: name.to_owned() });
    }
    Err(ReferenceError::InvalidName { name: name.to_owned() })
}

/// `path-component := [a-z0-9]+ (separator [a-z0-9]+)*`, `separator := [_.] | __ | -*`.
fn is_path_component(part: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            if !matches!(separator.as_str(), "" | "." | "_" | "__") && !separator.bytes().all(|c| c == b'-') {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(char::from(b));
        } else {
            return false;
        }
    }
    true
}

/// `domain := component ('.' component)* [':' [0-9]+]`, a component being letters, digits and
/// inner `-`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    host.split('.').all(|c| {
        let bytes = c.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(f), Some(l)) => {
                f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
            _ => false,
        }
    })
}

/// Docker's normalization (distribution's `splitDomain`): the first part is a registry when it
/// has a `.` or a `:` or is `localhost`; else the image is on Docker Hub, under `library/` when
/// it has a single part.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => (left.to_owned(), right.to_owned()),
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_owned();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
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

    /// Holds the hand-written grammar to oci-spec's parser (the oracle) on ASCII inputs.
    fn agrees_with_oci_spec(input: &str) {
        let ours = parse_registry(input);
        let theirs = input.parse::<Reference>();
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (a.registry(), a.repository(), a.tag(), a.digest()),
                    (b.registry(), b.repository(), b.tag(), b.digest()),
                    "{input}"
                );
            }
            (Err(_), Err(_)) => {}
            // Stricter on purpose: sha256 only, lowercase hex.
            (Err(ReferenceError::InvalidDigest { .. } | ReferenceError::UnsupportedDigest { .. }), Ok(_)) => {}
            _ => panic!("`{input}`: ours {ours:?}, oci-spec {theirs:?}"),
        }
    }

    #[test]
    fn grammar_matches_oci_spec_on_known_cases() {
        let long = format!("a/{}", "b".repeat(260));
        let cases = [
            "busybox", "test.com:tag", "test.com:5000", "test.com/repo:tag", "test:5000/repo", "test:5000/repo:tag",
            "sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux:some-long-tag", "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com", "Docker/docker", "docker///docker", "docker.io/docker/Docker", "-docker", "docker-",
            "a_b", "a__b", "a___b", "a-b", "a--b", "a.b", "a..b", "a._b", "a-_b", "_a", "a_", "a:b:c", "a/b:", ":a", "a@", "@a",
            "localhost/a", "localhost:5000/a:b", "Localhost/a", "a:5000x/b", "a.:5/b", "-a.com/b", "a-.com/b", "A.COM/b",
            "index.docker.io/a", "index.docker.io/a/b", "docker.io/a", "127.0.0.1:5000/x/y:t", &long, "a/b/c/d/e:_t", "a:.t", "a:-t",
        ];
        for case in cases {
            agrees_with_oci_spec(case);
        }
        let hex = HEX;
        for case in [format!("a@sha256:{hex}"), format!("a:t@sha256:{hex}"), format!("r.io:1/a@sha256:{hex}")] {
            agrees_with_oci_spec(&case);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn grammar_matches_oci_spec_on_random_strings(input in "[a-cA-C0-9._:/@-]{1,24}") {
            agrees_with_oci_spec(&input);
        }

        #[test]
        fn grammar_matches_oci_spec_on_reference_shapes(
            domain in proptest::option::of("[a-zA-Z0-9-]{1,6}(\\.[a-zA-Z0-9-]{1,4}){0,2}(:[0-9]{0,5})?"),
            paths in proptest::collection::vec("[a-z0-9]{1,3}([._-]{0,3}[a-z0-9A-Z]{1,3}){0,2}", 1..4),
            tag in proptest::option::of("[a-zA-Z0-9_.-]{0,8}"),
        ) {
            let mut input = domain.map(|d| format!("{d}/")).unwrap_or_default();
            input.push_str(&paths.join("/"));
            if let Some(tag) = tag {
                input.push(':');
                input.push_str(&tag);
            }
            agrees_with_oci_spec(&input);
        }
    }
}
