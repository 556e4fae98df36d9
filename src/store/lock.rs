//! Advisory file locks (`flock`): released by the kernel when the holder exits or is killed, so a
//! crashed pull never leaves a lock that blocks the next one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

/// A lock on a file, exclusive or shared with other shared holders, held until dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Waits for the lock on `path`, creating the file if needed.
    pub(crate) fn exclusive(path: &Path) -> io::Result<Lock> {
        Self::acquire(path, FlockOperation::LockExclusive)?
            .ok_or_else(|| io::Error::other("a blocking flock returned EWOULDBLOCK"))
    }

    /// Waits until nobody holds `path` exclusively, then shares it with any other shared holder.
    pub(crate) fn shared(path: &Path) -> io::Result<Lock> {
        Self::acquire(path, FlockOperation::LockShared)?
            .ok_or_else(|| io::Error::other("a blocking flock returned EWOULDBLOCK"))
    }

    /// Takes the lock on `path` if nobody holds it.
    pub(crate) fn try_exclusive(path: &Path) -> io::Result<Option<Lock>> {
        Self::acquire(path, FlockOperation::NonBlockingLockExclusive)
    }

    /// Lock files may be removed by whoever holds them (the `tmp/` cleaner does). A lock taken on a
    /// file that was unlinked meanwhile protects nothing, so the lock is only kept when the path
    /// still names the locked file.
    fn acquire(path: &Path, operation: FlockOperation) -> io::Result<Option<Lock>> {
        loop {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
            match flock(&file, operation) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(err) => return Err(err.into()),
            }
            let held = file.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(Lock { _file: file, path: path.to_owned() }));
                }
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Removes the lock file while still holding it (used for `tmp/` entries, which are never
    /// locked again once removed).
    pub(crate) fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_excludes_others_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let held = Lock::exclusive(&path).expect("lock");
        assert!(Lock::try_exclusive(&path).expect("try").is_none());
        drop(held);
        let again = Lock::try_exclusive(&path).expect("try").expect("free now");
        again.remove().expect("remove");
        assert!(!path.exists());
    }
}
