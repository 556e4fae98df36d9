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
    use std::os::unix::fs::FileExt;
    // Every boot checks the agent: only its ELF header and program headers are read, with one
    // read each.
    let not_elf = || io::Error::new(io::ErrorKind::InvalidData, format!("`{}` is not a 64-bit ELF executable", path.display()));
    let file = std::fs::File::open(path)?;
    let mut bytes = vec![0; elf::Elf::HEADER_LEN];
    let read_at = |bytes: &mut [u8], at| match file.read_exact_at(bytes, at) {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(not_elf()),
        other => other,
    };
    read_at(&mut bytes, 0)?;
    // Program headers are a few hundred bytes; a header that says otherwise is not trusted.
    let len = elf::Elf::headers_len(&bytes).filter(|&len| len <= 1 << 20).ok_or_else(not_elf)?;
    bytes.resize(len, 0);
    read_at(&mut bytes[elf::Elf::HEADER_LEN..], elf::Elf::HEADER_LEN as u64)?;
    elf::Elf::parse(&bytes).map(|elf| !elf.interpreter).ok_or_else(not_elf)
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
        // Cut short: its header, but not all of its program headers.
        let dir = tempfile::tempdir().expect("tempdir");
        let cut = dir.path().join("cut");
        let whole = std::fs::read(&this).expect("read");
        let len = elf::Elf::headers_len(&whole).expect("headers");
        std::fs::write(&cut, &whole[..len - 1]).expect("write");
        assert_eq!(is_static_executable(&cut).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        std::fs::write(&cut, &whole[..len]).expect("write");
        assert_eq!(is_static_executable(&cut).ok(), Some(false), "the headers are all it reads");
    }
}
