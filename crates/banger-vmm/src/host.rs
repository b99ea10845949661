//! What this host can give a VM, and what a VMM process uses of it.
//!
//! Limits (CPUs, memory, free disk) bound `banger vm set`; usage (CPU time,
//! resident memory) is the host side of `banger vm stats`. Everything is
//! read from `/proc` and `statvfs(3)`; the parsers take the file text so
//! they are tested on fixtures.

use std::path::Path;

use banger_agent_proto::procfs::meminfo_field;

/// CPUs this process may run on; 1 when the kernel will not say.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// `MemTotal` of this host, in bytes.
pub fn memory_bytes() -> Result<u64, String> {
    let text =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("read /proc/meminfo: {e}"))?;
    meminfo_field(&text, "MemTotal").ok_or_else(|| "no MemTotal in /proc/meminfo".to_string())
}

/// Bytes an unprivileged writer may still allocate on the filesystem
/// holding `path` (`f_bavail * f_frsize`).
pub fn free_bytes(path: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("path {} has a NUL byte", path.display()))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs that
    // outlives the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(format!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// What a process uses: CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    /// User plus system time, in seconds.
    pub cpu_seconds: f64,
    /// `VmRSS`, in bytes.
    pub rss_bytes: u64,
}

/// The usage of `pid`, or `None` when it is gone or unreadable.
pub fn usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(ProcUsage {
        cpu_seconds: stat_cpu_ticks(&stat)? as f64 / hz,
        rss_bytes: meminfo_field(&status, "VmRSS")?,
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line, in clock
/// ticks. The command name (field 2) is parenthesised and may hold spaces
/// and parentheses itself, so fields are counted after its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `after` starts at field 3 (state): utime is the 12th field there.
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_a_command_name_with_spaces_and_parens() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let stat = "4242 (qemu (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1500 250 0 0 20 0 5 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1750));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parens at all"), None);
    }

    #[test]
    fn this_process_uses_some_cpu_and_memory() {
        // Burn a little CPU so the tick counter moves past zero.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0, "{u:?}");
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        assert!(usage(u32::MAX).is_none());
    }

    #[test]
    fn host_limits_are_measured() {
        assert!(cpus() >= 1);
        assert!(memory_bytes().unwrap() > 64 << 20);
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_ok());
        let e = free_bytes(Path::new("/nonexistent/banger")).unwrap_err();
        assert!(e.contains("/nonexistent/banger"), "{e}");
    }
}
