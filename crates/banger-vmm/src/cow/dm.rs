//! dm-snapshot root disks: the base image on a read-only loop device, a
//! per-VM sparse COW store on a second loop, and a device-mapper snapshot
//! target joining them at `/dev/mapper/fc-rootfs-<vm_id>`.
//!
//! Everything here runs external tools as argv through a
//! [`CommandRunner`], never a shell, so the exact command sequence is
//! pinned by tests without device-mapper, and runs for real through
//! [`SystemRunner`] in the root helper.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CowError;

/// Every snapshot this code makes is named `fc-rootfs-<vm_id>`.
pub const DM_NAME_PREFIX: &str = "fc-rootfs-";

/// Where device-mapper puts named devices.
pub const DM_DIR: &str = "/dev/mapper";

/// How often a busy `dmsetup remove` is retried (udev may briefly hold a
/// freshly closed device open).
const REMOVE_ATTEMPTS: u32 = 5;
const REMOVE_BACKOFF: Duration = Duration::from_millis(100);

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs one argv to completion. The real one is [`SystemRunner`]; tests
/// substitute a recorder.
pub trait CommandRunner {
    /// `Err` only when the program could not be started.
    fn run(&self, argv: &[OsString]) -> io::Result<CmdOutput>;
}

/// Runs commands with `std::process::Command`, stdin closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, argv: &[OsString]) -> io::Result<CmdOutput> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let out = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The pieces of one VM's snapshot, as created; the daemon keeps it in the
/// VM's handles file and hands it back for removal. Empty fields are parts
/// that do not exist (removal skips them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmSnapshot {
    /// `fc-rootfs-<vm_id>`.
    pub name: String,
    /// The read-only loop device over the base image, `/dev/loopN`.
    pub base_loop: String,
    /// The loop device over the COW store, `/dev/loopN`.
    pub cow_loop: String,
    /// `/dev/mapper/fc-rootfs-<vm_id>`: what the VM boots from.
    pub dev: String,
}

impl DmSnapshot {
    pub fn name_for(vm_id: &str) -> String {
        format!("{DM_NAME_PREFIX}{vm_id}")
    }

    pub fn dev_for(vm_id: &str) -> String {
        format!("{DM_DIR}/{}", DmSnapshot::name_for(vm_id))
    }
}

/// Whether real snapshots can be made here. `Err` says everything that is
/// missing, e.g. "/dev/mapper/control is missing (...); dmsetup is not on
/// PATH".
pub fn dm_available() -> Result<(), String> {
    let mut missing = Vec::new();
    let control = Path::new(DM_DIR).join("control");
    let has_control = control.exists();
    if !has_control {
        missing.push(format!(
            "{} is missing (no device-mapper in this kernel, or not the host's /dev)",
            control.display()
        ));
    }
    let mut has_dmsetup = false;
    for tool in ["dmsetup", "losetup", "blockdev"] {
        if on_path(tool) {
            has_dmsetup |= tool == "dmsetup";
        } else {
            missing.push(format!("{tool} is not on PATH"));
        }
    }
    if has_control && has_dmsetup {
        // libdevmapper creates a missing control node itself, so only a
        // working `dmsetup version` shows the kernel driver is there.
        match SystemRunner.run(&argv(["dmsetup", "version"])) {
            Ok(out) if out.code == Some(0) => {}
            Ok(out) => missing.push(format!(
                "dmsetup version failed ({}): {}",
                status(out.code),
                out.stderr.lines().next().unwrap_or("").trim()
            )),
            Err(e) => missing.push(format!("cannot run dmsetup: {e}")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn argv<I, S>(parts: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    parts.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

fn show(argv: &[OsString]) -> String {
    let parts: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
    parts.join(" ")
}

fn status(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let all: Vec<&str> = s.trim_end().lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Runs `argv` and returns its output whatever the exit status.
fn run(runner: &dyn CommandRunner, argv: &[OsString]) -> Result<CmdOutput, CowError> {
    runner.run(argv).map_err(|source| CowError::Spawn {
        tool: argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source,
    })
}

fn failed(argv: &[OsString], out: &CmdOutput) -> CowError {
    CowError::Tool {
        argv: show(argv),
        status: status(out.code),
        stderr: last_lines(&out.stderr, 20),
    }
}

/// Runs `argv`; stdout on success, the status and stderr otherwise.
fn run_ok(runner: &dyn CommandRunner, argv: &[OsString]) -> Result<String, CowError> {
    let out = run(runner, argv)?;
    if out.code != Some(0) {
        return Err(failed(argv, &out));
    }
    Ok(out.stdout)
}

/// `/dev/loop<N>`, N decimal without leading zeros.
pub fn is_loop_dev(s: &str) -> bool {
    s.strip_prefix("/dev/loop").is_some_and(|n| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'))
            && n.parse::<u32>().is_ok()
    })
}

/// Creates the snapshot of `base` for `vm_id` with `cow` as its store.
pub fn create_snapshot(
    runner: &dyn CommandRunner,
    vm_id: &str,
    base: &Path,
    cow: &Path,
) -> Result<DmSnapshot, CowError> {
    create_snapshot_checked(runner, vm_id, base, cow, &mut |_| Ok(()))
}

/// Like [`create_snapshot`], with `check` run once both loop devices are
/// attached and before anything writes through them. The root helper uses
/// it to confirm the loops really hold the files it validated (a path can
/// be swapped between validation and `losetup`); an `Err` from it unwinds
/// like any other failure.
///
/// Sequence: `losetup --find --show --read-only <base>`, `losetup --find
/// --show <cow>`, `blockdev --getsz <base_loop>`, `dmsetup create <name>
/// --table "0 <sectors> snapshot <base_loop> <cow_loop> P 8"` (persistent
/// store, 4 KiB chunks). On failure the loops are detached, cow first.
pub fn create_snapshot_checked(
    runner: &dyn CommandRunner,
    vm_id: &str,
    base: &Path,
    cow: &Path,
    check: &mut dyn FnMut(&DmSnapshot) -> Result<(), String>,
) -> Result<DmSnapshot, CowError> {
    if vm_id.is_empty()
        || vm_id.len() > 64
        || !vm_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(CowError::Invalid(format!(
            "invalid vm id {vm_id:?} for a snapshot name"
        )));
    }
    let mut snap = DmSnapshot {
        name: DmSnapshot::name_for(vm_id),
        dev: DmSnapshot::dev_for(vm_id),
        ..DmSnapshot::default()
    };
    snap.base_loop = attach(runner, base, true)?;
    if let Err(e) = finish_create(runner, &mut snap, cow, check) {
        let mut undo = Vec::new();
        for l in [&snap.cow_loop, &snap.base_loop] {
            if !l.is_empty() {
                if let Err(u) = detach(runner, l) {
                    undo.push(u.to_string());
                }
            }
        }
        if undo.is_empty() {
            return Err(e);
        }
        return Err(CowError::Unwind {
            error: Box::new(e),
            cleanup: undo.join("; "),
        });
    }
    Ok(snap)
}

fn finish_create(
    runner: &dyn CommandRunner,
    snap: &mut DmSnapshot,
    cow: &Path,
    check: &mut dyn FnMut(&DmSnapshot) -> Result<(), String>,
) -> Result<(), CowError> {
    snap.cow_loop = attach(runner, cow, false)?;
    check(snap).map_err(|reason| CowError::Refused {
        name: snap.name.clone(),
        reason,
    })?;
    let getsz = argv(["blockdev", "--getsz", &snap.base_loop]);
    let out = run_ok(runner, &getsz)?;
    let sectors: u64 = match out.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(CowError::Output {
                argv: show(&getsz),
                output: out,
            })
        }
    };
    let table = format!(
        "0 {sectors} snapshot {} {} P 8",
        snap.base_loop, snap.cow_loop
    );
    run_ok(
        runner,
        &argv(["dmsetup", "create", &snap.name, "--table", &table]),
    )?;
    Ok(())
}

/// Attaches `file` to a free loop device and returns the device.
fn attach(runner: &dyn CommandRunner, file: &Path, read_only: bool) -> Result<String, CowError> {
    let mut a = argv(["losetup", "--find", "--show"]);
    if read_only {
        a.push("--read-only".into());
    }
    a.push(file.as_os_str().to_owned());
    let out = run_ok(runner, &a)?;
    let dev = out.trim();
    if !is_loop_dev(dev) {
        return Err(CowError::Output {
            argv: show(&a),
            output: out,
        });
    }
    Ok(dev.to_string())
}

/// True when stderr says `target` is already gone, and nothing else: the
/// line must name the target, and a missing device-mapper driver (whose
/// message also says "No such device") never counts.
fn reports_missing(stderr: &str, target: &str) -> bool {
    if stderr.contains("/dev/mapper/control") || stderr.contains("device-mapper driver") {
        return false;
    }
    let key = target.strip_prefix("/dev/mapper/").unwrap_or(target);
    stderr.lines().any(|l| {
        l.contains(key)
            && (l.contains("No such device or address")
                || l.contains("No such device")
                || l.contains("not found"))
    })
}

fn detach(runner: &dyn CommandRunner, dev: &str) -> Result<(), CowError> {
    let a = argv(["losetup", "-d", dev]);
    let out = run(runner, &a)?;
    if out.code == Some(0) || reports_missing(&out.stderr, dev) {
        return Ok(());
    }
    Err(failed(&a, &out))
}

/// Tears a snapshot down: `dmsetup remove` (by name, or by device path
/// when the name is empty) first, because the loops are busy while the
/// target exists; then `losetup -d` on the cow loop and the base loop.
///
/// Idempotent: parts that are already gone are skipped, so a removal that
/// stopped halfway can simply be run again. Any other failure is returned;
/// a failing `dmsetup remove` stops before the loops.
pub fn remove_snapshot(runner: &dyn CommandRunner, snap: &DmSnapshot) -> Result<(), CowError> {
    let target = if !snap.name.is_empty() {
        Some(&snap.name)
    } else if !snap.dev.is_empty() {
        Some(&snap.dev)
    } else {
        None
    };
    if let Some(t) = target {
        let a = argv(["dmsetup", "remove", t.as_str()]);
        for attempt in 1..=REMOVE_ATTEMPTS {
            let out = run(runner, &a)?;
            if out.code == Some(0) || reports_missing(&out.stderr, t) {
                break;
            }
            if attempt == REMOVE_ATTEMPTS || !out.stderr.contains("Device or resource busy") {
                return Err(failed(&a, &out));
            }
            std::thread::sleep(REMOVE_BACKOFF * attempt);
        }
    }
    let mut first_err = None;
    for l in [&snap.cow_loop, &snap.base_loop] {
        if !l.is_empty() {
            if let Err(e) = detach(runner, l) {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// What e2fsck did to a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsckOutcome {
    /// Exit 0: no errors.
    Clean,
    /// Exit 1-3: errors were found and corrected. (2, "reboot", only
    /// matters for a mounted root filesystem; the snapshot is unmounted.)
    Fixed,
}

/// e2fsck's exit code is a bit set (e2fsck(8), "EXIT CODE").
fn e2fsck_meaning(code: i32) -> String {
    const BITS: [(i32, &str); 8] = [
        (1, "errors corrected"),
        (2, "errors corrected, reboot advised"),
        (4, "errors left uncorrected"),
        (8, "operational error"),
        (16, "usage or syntax error"),
        (32, "cancelled by user request"),
        (64, "unknown"),
        (128, "shared library error"),
    ];
    let parts: Vec<&str> = BITS
        .iter()
        .filter(|(b, _)| code & b != 0)
        .map(|(_, m)| *m)
        .collect();
    if parts.is_empty() {
        "no errors".to_string()
    } else {
        parts.join(", ")
    }
}

/// `e2fsck -fy <dev>` on a snapshot, refused while the snapshot is open
/// (a running guest): repairing a filesystem under a live writer corrupts
/// it. Exit codes 0-3 are success; 4 and above are errors.
pub fn fsck_snapshot(runner: &dyn CommandRunner, dev: &str) -> Result<FsckOutcome, CowError> {
    let Some(name) = dev
        .strip_prefix("/dev/mapper/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return Err(CowError::Invalid(format!(
            "{dev} is not a device-mapper device"
        )));
    };
    let info = argv([
        "dmsetup",
        "info",
        "--columns",
        "--noheadings",
        "-o",
        "open",
        name,
    ]);
    let out = run_ok(runner, &info)?;
    match out.trim().parse::<u32>() {
        Ok(0) => {}
        Ok(opens) => {
            return Err(CowError::InUse {
                dev: dev.to_string(),
                opens,
            })
        }
        Err(_) => {
            return Err(CowError::Output {
                argv: show(&info),
                output: out,
            })
        }
    }
    let a = argv(["e2fsck", "-fy", dev]);
    let out = run(runner, &a)?;
    match out.code {
        Some(0) => Ok(FsckOutcome::Clean),
        Some(1..=3) => Ok(FsckOutcome::Fixed),
        Some(code) => Err(CowError::Fsck {
            dev: dev.to_string(),
            code,
            meaning: e2fsck_meaning(code),
            output: last_lines(&format!("{}\n{}", out.stdout, out.stderr), 20),
        }),
        None => Err(failed(&a, &out)),
    }
}

/// `struct loop_info64` from `<linux/loop.h>`; only the identity of the
/// backing file is read from it, the rest is there for the layout.
#[repr(C)]
#[allow(dead_code)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;

/// The `(st_dev, st_ino)` of the file behind loop device `dev`, or `None`
/// when the device is not attached. Compared with an `fstat` of a file
/// opened without following symlinks, it proves which file a loop serves
/// regardless of what its path points at now.
pub fn loop_backing_id(dev: &Path) -> io::Result<Option<(u64, u64)>> {
    let f = File::open(dev)?;
    // SAFETY: LoopInfo64 is plain integers and byte arrays; all-zero is a
    // valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which
    // `info` is (same layout, repr(C)), through a pointer valid for the
    // call; the descriptor is open because we hold `f`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some((info.lo_device, info.lo_inode)))
}

#[cfg(test)]
mod tests;
