//! msb's guest agent and the host's side of it.
//!
//! The agent (`src/bin/msb-agent.rs`, a static executable) is bound at `/.msb/agent` in every
//! sandbox and reads `/.msb/config.json` ([`protocol::AgentConfig`]). As PID 1 it mounts what
//! processes expect, reaps zombies, forwards signals and runs the main command ([`init`]); or it
//! hands PID 1 to the image's init. Either way a separate exec server process ([`server`])
//! answers [`client`] requests on a socket: commands with streamed stdio, a PTY, signals and the
//! exit status.

pub mod client;
pub mod init;
mod mounts;
mod process;
pub mod protocol;
mod pty;
mod server;
pub mod terminal;
mod user;

use std::io;
use std::path::{Path, PathBuf};

pub use client::{ClientError, Control, Session, exec, ping, wait_ready};
pub use protocol::{AgentConfig, ExecRequest, Exit, InitMode, Listen, WindowSize};

/// The agent binary msb binds at `/.msb/agent`: `$MSB_AGENT`, else `msb-agent` beside the
/// running `msb`, where cargo builds (and `cargo install` puts) both.
pub fn installed() -> PathBuf {
    if let Some(path) = std::env::var_os(crate::env::MSB_AGENT) {
        return PathBuf::from(path);
    }
    std::env::current_exe().map(|exe| exe.with_file_name("msb-agent")).unwrap_or_else(|_| PathBuf::from("msb-agent"))
}

/// Whether the ELF executable at `path` runs without a dynamic loader, as the agent must: it is
/// dropped into roots whose libc (if any) is not the one it was built against.
pub fn is_static_executable(path: &Path) -> io::Result<bool> {
    let bytes = std::fs::read(path)?;
    elf_has_interpreter(&bytes)
        .map(|interp| !interp)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("`{}` is not a 64-bit ELF executable", path.display())))
}

/// Whether a 64-bit little-endian ELF image has a PT_INTERP program header; `None` if it is not one.
fn elf_has_interpreter(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_told_apart() {
        // Debian's busybox-static is static; this test binary is not.
        if Path::new("/bin/busybox").exists() {
            assert_eq!(is_static_executable(Path::new("/bin/busybox")).ok(), Some(true));
        }
        let this = std::env::current_exe().expect("current exe");
        assert_eq!(is_static_executable(&this).ok(), Some(false));
        assert!(is_static_executable(Path::new("/etc/passwd")).is_err());
        assert_eq!(elf_has_interpreter(b"\x7fELF\x02\x01"), None);
    }
}
