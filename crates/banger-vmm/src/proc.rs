//! What `/proc` says about a process: alive, and whether it is our VMM.
//!
//! The root helper signals a pid only after [`is_vmm_for`] (QEMU) or
//! [`is_firecracker_for`] confirms it is a VMM started for that VM, so a
//! compromised daemon cannot aim the helper at an arbitrary process.
//! Everything here reads only `/proc` and files the helper itself (or
//! jailer) wrote, so it works the same after a helper or daemon restart.

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

/// Reads a pidfile written by the VMM (surrounding whitespace is fine).
///
/// Only a regular file that is not a symlink counts, and it is opened
/// non-blocking: pidfiles live in directories the daemon's user can write,
/// and a FIFO planted there must not hang the root helper.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The comm of every Firecracker banger starts (the binary must have this
/// name; see [`crate::jailer::FIRECRACKER_NAME`]).
const FIRECRACKER_COMM: &str = crate::jailer::FIRECRACKER_NAME;

/// The cgroup of the root helper's systemd unit in system installs. Every
/// process it starts lands there and cannot leave it without root, so a
/// Firecracker found there is ours.
pub const HELPER_CGROUP: &str = "/system.slice/bangerd-root.service";

/// How a Firecracker proves it belongs to a VM, besides its comm and `--id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FcMatch<'a> {
    /// Jailer mode: the pid is the one jailer wrote to the chroot's
    /// `firecracker.pid` (its cmdline only has the in-jail socket path).
    Jailer { pidfile: &'a Path },
    /// Direct mode: its `--api-sock` lies under banger's runtime dir.
    Direct { runtime_dir: &'a Path },
}

/// True when `pid` is a live Firecracker of `vm_id`: comm `firecracker`,
/// `--id <vm_id>` on its command line, and either the proof of `how` or
/// membership in the helper unit's cgroup ([`HELPER_CGROUP`]).
pub fn is_firecracker_for(pid: u32, vm_id: &str, how: FcMatch) -> bool {
    if pid <= 1 || !is_alive(pid) || comm(pid).as_deref() != Some(FIRECRACKER_COMM) {
        return false;
    }
    let Some(argv) = cmdline(pid) else {
        return false;
    };
    let ids = flag_values(&argv, "--id", None);
    if ids.is_empty() || ids.iter().any(|id| *id != vm_id) {
        return false;
    }
    let proven = match how {
        FcMatch::Jailer { pidfile } => read_pidfile(pidfile) == Some(pid),
        FcMatch::Direct { runtime_dir } => {
            let socks = flag_values(&argv, "--api-sock", Some("-a"));
            !socks.is_empty()
                && socks
                    .iter()
                    .all(|s| path_is_under(Path::new(s), runtime_dir))
        }
    };
    proven || in_helper_cgroup(pid)
}

/// Finds the running Firecracker of `vm_id`: first through jailer's
/// pidfile, then by scanning `/proc` for a direct-mode one whose API socket
/// is under `runtime_dir`.
pub fn find_firecracker(vm_id: &str, jailer_pidfile: &Path, runtime_dir: &Path) -> Option<u32> {
    if let Some(pid) = read_pidfile(jailer_pidfile) {
        if is_firecracker_for(
            pid,
            vm_id,
            FcMatch::Jailer {
                pidfile: jailer_pidfile,
            },
        ) {
            return Some(pid);
        }
    }
    let direct = FcMatch::Direct { runtime_dir };
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).as_deref() == Some(FIRECRACKER_COMM))
        .find(|pid| is_firecracker_for(*pid, vm_id, direct))
}

/// Every value of a flag in `argv`: `--flag VAL`, `--flag=VAL`, and the
/// short form `-f VAL` when there is one.
pub fn flag_values<'a>(argv: &'a [String], long: &str, short: Option<&str>) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == long || short == Some(a.as_str()) {
            if let Some(v) = it.next() {
                out.push(v.as_str());
            }
        } else if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            out.push(v);
        }
    }
    out
}

/// True when `p` is absolute, has no `.`/`..` and lies strictly below `dir`.
pub fn path_is_under(p: &Path, dir: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        && p.starts_with(dir)
        && p.components().count() > dir.components().count()
}

/// True when `/proc/<pid>/cgroup` puts the process in [`HELPER_CGROUP`].
pub fn in_helper_cgroup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|text| cgroup_is_helpers(&text))
}

/// Parses `/proc/<pid>/cgroup` (v1 or v2 lines `id:controllers:path`): true
/// when some path is [`HELPER_CGROUP`] or below it. A unit of the same name
/// elsewhere (a user's own `systemctl --user` unit) does not count.
pub fn cgroup_is_helpers(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| Path::new(path).starts_with(HELPER_CGROUP))
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

#[cfg(test)]
mod fc_tests;
