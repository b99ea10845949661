//! Starting a VMM as the owner and detached from whoever starts it.
//!
//! Shared by the backends: QEMU detaches itself (`-daemonize`), Firecracker
//! does not, so [`spawn_detached`] double-forks for it.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, Command};

/// The supplementary groups of `uid` (e.g. `kvm`, needed to open
/// /dev/kvm), looked up before fork because the lookup is not
/// async-signal-safe.
pub fn owner_groups(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwuid_r fills it or leaves result null.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the given length for the whole call.
    unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if result.is_null() {
        return vec![gid];
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: pw_name points into buf, which outlives the call; groups
        // has room for n entries.
        let r = unsafe { libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if groups.len() >= 65536 {
            return vec![gid];
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
}

/// Runs the child as `uid:gid` with that user's supplementary groups.
/// (std's `Command::uid` clears supplementary groups, which would take the
/// `kvm` group away from the VMM.)
pub fn drop_privileges(cmd: &mut Command, uid: u32, gid: u32) {
    let groups = owner_groups(uid, gid);
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A program started by [`spawn_detached`].
#[derive(Debug)]
pub struct Detached {
    pub pid: u32,
    /// Its stderr, when the command asked for `Stdio::piped()`.
    pub stderr: Option<ChildStderr>,
}

/// Starts `cmd` as a grandchild of this process and returns its pid.
///
/// The child std forks forks once more and exits at once, so the program
/// is reparented to init (or the nearest subreaper): its lifetime never
/// depends on ours, we never have to reap it, and signals aimed at our
/// process group do not reach it. With `new_session` it also calls
/// `setsid()`, leaving our session and controlling terminal behind.
/// (Leave that off for programs that call `setsid()` themselves, like
/// `jailer --daemonize`: it fails in a session leader.)
///
/// Returns once the program has been exec'd: an exec failure in the
/// grandchild comes back as the error, exactly as with `Command::spawn`,
/// because the grandchild still holds std's error pipe.
pub fn spawn_detached(cmd: &mut Command, new_session: bool) -> io::Result<Detached> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wr_raw = wr.as_raw_fd();
    // SAFETY: the closure runs in the forked child, which has a single
    // thread: fork (which std does not hook with atfork handlers), write,
    // setsid and _exit are all async-signal-safe, and it touches only the
    // integer it captured.
    unsafe {
        cmd.pre_exec(move || {
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid > 0 {
                // The intermediate child: report the grandchild and go.
                let bytes = pid.to_ne_bytes();
                libc::write(wr_raw, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
            if new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(wr);
    let mut child = spawned?;
    // The intermediate child exits right after its fork; reap it.
    let status = child.wait()?;
    let mut buf = [0u8; 4];
    let mut rd = std::fs::File::from(rd);
    match rd.read_exact(&mut buf) {
        Ok(()) => Ok(Detached {
            pid: i32::from_ne_bytes(buf) as u32,
            stderr: child.stderr.take(),
        }),
        Err(_) => Err(io::Error::other(format!(
            "the intermediate child did not report a pid ({status})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    fn ppid_of(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    fn sid_of(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(3)?.parse().ok()
    }

    #[test]
    fn detached_program_is_not_our_child() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let pid = spawn_detached(&mut cmd, true).unwrap().pid;
        let start = Instant::now();
        while crate::proc::comm(pid).as_deref() != Some("sleep") {
            assert!(start.elapsed() < Duration::from_secs(5), "never exec'd");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_ne!(ppid_of(pid), Some(std::process::id()));
        assert_eq!(sid_of(pid), Some(pid), "new session");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }

    #[test]
    fn exec_failure_is_reported() {
        let mut cmd = Command::new("/nonexistent/banger-test-binary");
        let e = spawn_detached(&mut cmd, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
