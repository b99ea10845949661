//! Signalling a process through a pidfd, so a pid that exits and is
//! reused between a check and the signal cannot be hit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `pidfd_open(2)` on `pid`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd
    // or -1; it touches no memory of ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// `pidfd_send_signal(2)`: `sig` to the process behind `fd`.
pub fn pidfd_kill(fd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is a valid pidfd; a NULL siginfo means "as kill(2)",
    // and flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
