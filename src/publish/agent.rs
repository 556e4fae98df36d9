//! The agent binary baked into an image at `/.msb/agent`: where it is found, and whether it can
//! run in any root.
//!
//! An image has no host libraries: an agent linked against the host's glibc (what a plain
//! `cargo build` makes) dies in a busybox or Alpine image with a bare "not found". So an ELF
//! agent must have no program interpreter (`PT_INTERP`), and be built for the image's
//! architecture; both are read from its ELF header, before anything is pushed.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::agent::elf::Elf;

/// Why an agent binary cannot be baked in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// Not there, not a file, or not executable.
    Missing,
    /// Why it would not run in the image.
    Wrong(String),
}

/// Checks that `path` is an executable that can run in an image for `architecture` (OCI's name:
/// `amd64`, `arm64`...). Files that are not ELF (a script standing in for the agent) are taken as
/// they are.
pub fn check(path: &Path, architecture: &str) -> Result<(), Unfit> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {}
        _ => return Err(Unfit::Missing),
    }
    let mut head = Vec::new();
    let file = fs::File::open(path).map_err(|_| Unfit::Missing)?;
    // The program headers of an executable follow its ELF header closely.
    file.take(64 * 1024).read_to_end(&mut head).map_err(|_| Unfit::Missing)?;
    let Some(elf) = Elf::parse(&head) else { return Ok(()) };
    if elf.interpreter {
        return Err(Unfit::Wrong("it is dynamically linked (it needs a program interpreter, which images do not have)".into()));
    }
    match elf.architecture() {
        Some(arch) if arch != architecture => {
            Err(Unfit::Wrong(format!("it is built for {arch}, and the image is for {architecture}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::elf::tests::elf;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn only_static_agents_of_the_image_architecture_are_baked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let static_amd64 = write(dir.path(), "static", &elf(62, 1), 0o755);
        assert_eq!(check(&static_amd64, "amd64"), Ok(()));
        assert!(matches!(check(&static_amd64, "arm64"), Err(Unfit::Wrong(r)) if r.contains("built for amd64")));
        let dynamic = write(dir.path(), "dynamic", &elf(62, 3), 0o755);
        assert!(matches!(check(&dynamic, "amd64"), Err(Unfit::Wrong(r)) if r.contains("dynamically linked")));
        let script = write(dir.path(), "script", b"#!/bin/sh\n", 0o755);
        assert_eq!(check(&script, "amd64"), Ok(()));
        let not_executable = write(dir.path(), "plain", &elf(62, 1), 0o644);
        assert_eq!(check(&not_executable, "amd64"), Err(Unfit::Missing));
        assert_eq!(check(&dir.path().join("absent"), "amd64"), Err(Unfit::Missing));
    }
}
