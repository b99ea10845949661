//! What `/proc` says about a process: alive, and whether it is our VMM.
//!
//! The root helper signals a pid only after [`is_vmm_for`] confirms it is a
//! VMM started for that VM, so a compromised daemon cannot aim the helper
//! at an arbitrary process.

use std::path::Path;

/// True when the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised comm, which may contain spaces.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

/// The process's argv as recorded by the kernel.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The process's short command name (`comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// True when `pid` is a live QEMU whose `-pidfile` is exactly `pidfile`:
/// only banger writes pidfiles under its runtime dir, one per VM.
pub fn is_vmm_for(pid: u32, pidfile: &Path) -> bool {
    if pid <= 1 || !is_alive(pid) {
        return false;
    }
    let Some(comm) = comm(pid) else {
        return false;
    };
    if !comm.starts_with("qemu-system") {
        return false;
    }
    cmdline(pid)
        .map(|argv| argv_has_pidfile(&argv, pidfile))
        .unwrap_or(false)
}

fn argv_has_pidfile(argv: &[String], pidfile: &Path) -> bool {
    let want = pidfile.to_string_lossy();
    argv.windows(2)
        .any(|w| w[0] == "-pidfile" && w[1] == want.as_ref())
}

/// Reads a pidfile written by the VMM.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_not_a_vmm() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(!is_vmm_for(me, Path::new("/tmp/x.pid")));
        assert!(!is_vmm_for(1, Path::new("/tmp/x.pid")));
        assert!(!is_alive(u32::MAX - 1));
    }

    #[test]
    fn pidfile_must_match_exactly() {
        let argv: Vec<String> = ["qemu", "-pidfile", "/run/b/vms/a/qemu.pid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(argv_has_pidfile(&argv, Path::new("/run/b/vms/a/qemu.pid")));
        assert!(!argv_has_pidfile(&argv, Path::new("/run/b/vms/b/qemu.pid")));
        assert!(!argv_has_pidfile(&argv, Path::new("/run/b/vms/a")));
    }

    #[test]
    fn reaped_child_is_not_alive_and_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not yet reaped: a zombie once it exits.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!is_alive(pid), "a zombie counts as dead");
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }
}
