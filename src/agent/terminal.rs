//! The host's terminal during `msb shell`: its size, and raw mode while a remote terminal owns it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

use super::protocol::WindowSize;

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: impl AsFd) -> Option<WindowSize> {
    let size = tcgetwinsize(fd).ok()?;
    Some(WindowSize { rows: size.ws_row, cols: size.ws_col })
}

/// Raw mode on a terminal until dropped: keys (Ctrl-C included) go to the sandbox's terminal,
/// which does its own echo and line editing.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    pub fn enable(fd: BorrowedFd<'_>) -> io::Result<RawMode> {
        let saved = tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(fd, OptionalActions::Flush, &raw)?;
        Ok(RawMode { fd: fd.try_clone_to_owned()?, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.fd, OptionalActions::Flush, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pty;
    use rustix::termios::LocalModes;

    #[test]
    fn raw_mode_lasts_as_long_as_its_guard() {
        let pty = pty::open(WindowSize { rows: 12, cols: 34 }).expect("pty");
        assert_eq!(size(&pty.slave), Some(WindowSize { rows: 12, cols: 34 }));
        let cooked = |fd: &OwnedFd| tcgetattr(fd).expect("tcgetattr").local_modes.contains(LocalModes::ICANON | LocalModes::ECHO);
        assert!(cooked(&pty.slave));
        let raw = RawMode::enable(pty.slave.as_fd()).expect("raw");
        assert!(!cooked(&pty.slave));
        drop(raw);
        assert!(cooked(&pty.slave));
        assert_eq!(size(std::fs::File::open("/dev/null").expect("null")), None);
    }
}
