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

/// What msb reads of an ELF file.
struct Elf {
    machine: u16,
    interpreter: bool,
}

impl Elf {
    /// 64-bit little-endian ELF only (the agent's targets); `None` for anything else.
    fn parse(bytes: &[u8]) -> Option<Elf> {
        if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
            return None;
        }
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let machine = u16_at(0x12)?;
        let phoff = usize::try_from(u64_at(0x20)?).ok()?;
        let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
        const PT_INTERP: u32 = 3;
        let interpreter = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP));
        Some(Elf { machine, interpreter })
    }

    /// The OCI name of the ELF machine.
    fn architecture(&self) -> Option<&'static str> {
        Some(match self.machine {
            62 => "amd64",
            183 => "arm64",
            243 => "riscv64",
            21 => "ppc64le",
            22 => "s390x",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A minimal 64-bit ELF header with one program header of type `ptype`.
    fn elf(machine: u16, ptype: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&ptype.to_le_bytes());
        bytes
    }

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
