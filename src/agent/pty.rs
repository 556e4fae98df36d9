//! Pseudo-terminals for `msb shell` and `exec --tty`.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

use super::protocol::WindowSize;

/// Both ends of a new terminal: the agent relays `master`; the command gets `slave` as its
/// stdin, stdout, stderr and controlling terminal.
pub(crate) struct Pty {
    pub(crate) master: OwnedFd,
    pub(crate) slave: OwnedFd,
}

/// Opens a terminal of `size` from `/dev/ptmx` (the mount namespace's devpts instance).
pub(crate) fn open(size: WindowSize) -> io::Result<Pty> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    // TIOCGPTPEER opens the peer without a path lookup (right even when /dev/pts is another
    // instance); older kernels need the name.
    let slave = match ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC) {
        Ok(slave) => slave,
        Err(_) => {
            let name = ptsname(&master, Vec::new())?;
            rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?
        }
    };
    resize(&master, size)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's size; the kernel sends SIGWINCH to its foreground process group.
pub(crate) fn resize(master: &OwnedFd, size: WindowSize) -> io::Result<()> {
    tcsetwinsize(master, Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 })?;
    Ok(())
}
