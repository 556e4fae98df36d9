//! Choosing the image of a multi-platform index that runs on this host.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An OCI platform: `os`, `architecture` and an optional `variant` (`arm64/v8`, `arm/v7`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this msb was built for, with Rust's architecture names mapped to OCI's
    /// (`x86_64` → `amd64`, `aarch64` → `arm64`...).
    pub fn host() -> Platform {
        let (architecture, variant) = oci_arch(std::env::consts::ARCH);
        Platform { os: std::env::consts::OS.to_owned(), architecture, variant }
    }

    /// How well an image for `candidate` suits this platform: `None` when it cannot run here,
    /// else higher is better (exact variant, then no variant, then an older ARM variant).
    pub fn score(&self, candidate: &Platform) -> Option<u8> {
        if candidate.os != self.os || normalize_arch(&candidate.architecture) != self.architecture {
            return None;
        }
        let variant = candidate.variant.as_deref().filter(|v| !v.is_empty());
        match (variant, self.variant.as_deref()) {
            (None, _) => Some(2),
            (Some(v), Some(host)) if v == host => Some(3),
            // ARM is backwards compatible: a v6 image runs on a v7 host.
            (Some(v), Some(host)) if self.architecture == "arm" && arm_level(v) < arm_level(host) => Some(1),
            (Some("v8"), None) if self.architecture == "arm64" => Some(3),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Picks the best entry for `host` among `candidates` (the first of equally good ones).
pub fn select<'a>(host: &Platform, candidates: impl IntoIterator<Item = &'a Platform>) -> Option<usize> {
    let mut best: Option<(usize, u8)> = None;
    for (index, candidate) in candidates.into_iter().enumerate() {
        if let Some(score) = host.score(candidate)
            && best.is_none_or(|(_, best_score)| score > best_score) {
                best = Some((index, score));
            }
    }
    best.map(|(index, _)| index)
}

/// Rust's `std::env::consts::ARCH` to an OCI architecture and the variant that goes with it.
fn oci_arch(rust: &str) -> (String, Option<String>) {
    let (arch, variant) = match rust {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8".to_owned())),
        "arm" => ("arm", Some(if cfg!(target_feature = "v7") { "v7" } else { "v6" }.to_owned())),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips64" => ("mips64", None),
        other => (other, None),
    };
    (arch.to_owned(), variant)
}

/// Some images spell architectures the kernel's way.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        other => other,
    }
}

fn arm_level(variant: &str) -> u32 {
    variant.strip_prefix('v').and_then(|n| n.parse().ok()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform { os: os.into(), architecture: arch.into(), variant: variant.map(Into::into) }
    }

    #[test]
    fn host_names_are_oci_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, p("linux", "amd64", None));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, p("linux", "arm64", Some("v8")));
        }
    }

    #[test]
    fn selects_the_host_platform_from_an_index() {
        let index = [
            p("unknown", "unknown", None),
            p("linux", "arm", Some("v6")),
            p("linux", "arm", Some("v7")),
            p("linux", "arm64", Some("v8")),
            p("linux", "amd64", None),
            p("windows", "amd64", None),
        ];
        let cases = [
            (p("linux", "amd64", None), Some(4)),
            (p("linux", "arm64", Some("v8")), Some(3)),
            (p("linux", "arm", Some("v7")), Some(2)),
            (p("linux", "arm", Some("v6")), Some(1)),
            (p("linux", "s390x", None), None),
            (p("freebsd", "amd64", None), None),
        ];
        for (host, expected) in cases {
            assert_eq!(select(&host, &index), expected, "{host}");
        }
    }

    #[test]
    fn variants_and_spellings() {
        let arm64 = p("linux", "arm64", Some("v8"));
        assert_eq!(arm64.score(&p("linux", "arm64", None)), Some(2));
        assert_eq!(arm64.score(&p("linux", "aarch64", Some("v8"))), Some(3));
        assert_eq!(arm64.score(&p("linux", "arm64", Some("v9"))), None);
        let amd64 = p("linux", "amd64", None);
        assert_eq!(amd64.score(&p("linux", "x86_64", None)), Some(2));
        assert_eq!(amd64.score(&p("linux", "amd64", Some("v3"))), None);
        let arm7 = p("linux", "arm", Some("v7"));
        assert_eq!(arm7.score(&p("linux", "arm", Some("v8"))), None);
        // The exact variant wins over none, whatever the order.
        assert_eq!(select(&arm64, &[p("linux", "arm64", None), arm64.clone()]), Some(1));
    }
}
