//! msb's guest agent and the host's side of it.
//!
//! The agent (`src/bin/msb-agent.rs`, a static executable) is bound at `/.msb/agent` in every
//! sandbox and reads `/.msb/config.json` ([`protocol::AgentConfig`]). As PID 1 it mounts what
//! processes expect, reaps zombies, forwards signals and runs the main command ([`init`]); or it
//! hands PID 1 to the image's init. Either way a separate exec server process (`server`)
//! answers [`client`] requests on a socket: commands with streamed stdio, a PTY, signals and the
//! exit status.

pub mod client;
pub mod elf;
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
/// running program, where cargo builds (and `cargo install` puts) both; for programs built from
/// `examples/` or as tests, the one in the folder above.
pub fn installed() -> PathBuf {
    if let Some(path) = std::env::var_os(crate::env::MSB_AGENT) {
        return PathBuf::from(path);
    }
    let Ok(exe) = std::env::current_exe() else { return PathBuf::from("msb-agent") };
    let beside = exe.with_file_name("msb-agent");
    // Programs cargo builds from `examples/` (and tests, in `deps/`) sit one folder below it.
    let above = exe.parent().filter(|dir| dir.ends_with("examples") || dir.ends_with("deps")).and_then(Path::parent);
    match above.map(|dir| dir.join("msb-agent")) {
        Some(above) if !beside.exists() && above.exists() => above,
        _ => beside,
    }
}

/// Whether the ELF executable at `path` runs without a dynamic loader, as the agent must: it is
/// dropped into roots whose libc (if any) is not the one it was built against.
pub fn is_static_executable(path: &Path) -> io::Result<bool> {
    // The program headers of an executable follow its ELF header closely; every boot checks the
    // agent, so the rest of the file is not read.
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(std::fs::File::open(path)?, 64 * 1024), &mut bytes)?;
    elf::Elf::parse(&bytes)
        .map(|elf| !elf.interpreter)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("`{}` is not a 64-bit ELF executable", path.display())))
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
    }
}
