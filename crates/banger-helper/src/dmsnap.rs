//! The dm-snapshot ops: create, remove and fsck a VM's copy-on-write root
//! device. Inputs are checked by [`crate::validate::dm`]; the command
//! sequences live in [`banger_vmm::cow`].
//!
//! Validating a path is not enough on its own: the daemon owns the state
//! directory and could swap a component for a symlink between the check
//! and `losetup` opening it (which would attach, say, `/etc/shadow` as a
//! writable COW store). So the helper also opens each file itself without
//! following any symlink, and once the loops are attached, and before
//! anything writes through them, confirms that each loop serves exactly
//! that inode.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use std::sync::Mutex;

use banger_api::ApiError;
use banger_vmm::cow::{self, CommandRunner, CowError, DmSnapshot, FsckOutcome, SystemRunner};

use crate::validate::dm as check;
use crate::validate::Roots;

/// One dm op at a time: a removal validating loop N must not interleave
/// with a create that is attaching loops.
static DM_LOCK: Mutex<()> = Mutex::new(());

/// Reports which file a loop device serves: `(st_dev, st_ino)`, or `None`
/// when it serves nothing.
pub type LoopId<'a> = dyn Fn(&Path) -> io::Result<Option<(u64, u64)>> + 'a;

/// What the dm ops act on. [`DmHost::system`] is the real host; tests
/// substitute a recording runner, a fake `/sys/block` and fake loop ids.
pub struct DmHost<'a> {
    pub runner: &'a dyn CommandRunner,
    pub sys_block: &'a Path,
    pub loop_id: &'a LoopId<'a>,
}

impl DmHost<'static> {
    pub fn system() -> DmHost<'static> {
        DmHost {
            runner: &SystemRunner,
            sys_block: Path::new(check::SYS_BLOCK),
            loop_id: &cow::loop_backing_id,
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    // A panic while holding it poisons nothing we rely on.
    DM_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn api_error(what: String, e: CowError) -> ApiError {
    let msg = format!("{what}: {e}");
    match e {
        CowError::Invalid(_) | CowError::Refused { .. } => ApiError::bad_request(msg),
        CowError::InUse { .. } => ApiError::conflict(msg),
        _ => ApiError::failed(msg),
    }
}

/// Opens `path` (below the trusted `root`) without following a symlink
/// in any component, and returns it with its `(st_dev, st_ino)`. Only a
/// regular file is accepted.
fn open_no_follow(root: &Path, path: &Path) -> Result<(File, (u64, u64)), ApiError> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;

    let bad = |why: &str| ApiError::bad_request(format!("{}: {why}", path.display()));
    let rel = path
        .strip_prefix(root)
        .map_err(|_| bad("outside the state directory"))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            _ => return Err(bad("not in normal form")),
        }
    }
    let Some((leaf, dirs)) = parts.split_last() else {
        return Err(bad("empty path"));
    };
    let failed = |what: &str, e: nix::Error| {
        ApiError::failed(format!("open {}: {what}: {e}", path.display()))
    };
    let refused = |e: nix::Error| match e {
        nix::Error::ELOOP | nix::Error::ENOTDIR => {
            bad("a component is a symlink or not a directory")
        }
        e => failed("openat", e),
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // The root comes from the helper's command line and is trusted as is.
    let mut dir: OwnedFd = openat(nix::fcntl::AT_FDCWD, root, dir_flags, Mode::empty())
        .map_err(|e| failed("open root", e))?;
    for d in dirs {
        dir = openat(&dir, *d, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(refused)?;
    }
    // O_NONBLOCK: a FIFO swapped in must not hang the helper.
    let leaf_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = openat(&dir, *leaf, leaf_flags, Mode::empty()).map_err(refused)?;
    let file = File::from(fd);
    let md = file
        .metadata()
        .map_err(|e| ApiError::failed(format!("stat {}: {e}", path.display())))?;
    if !md.is_file() {
        return Err(bad("not a regular file"));
    }
    Ok((file, (md.dev(), md.ino())))
}

/// `CreateDmSnapshot`: validates, attaches and verifies the loops, and
/// creates `fc-rootfs-<vm_id>`.
pub fn create(
    host: &DmHost<'_>,
    roots: &Roots,
    vm_id: &str,
    base: &Path,
    cow_file: &Path,
) -> Result<DmSnapshot, ApiError> {
    check::create_request(vm_id, base, cow_file, roots)?;
    let _g = lock();
    // Held open until the loops are verified, so neither inode can be
    // freed and its number reused in between.
    let (_b, base_id) = open_no_follow(&roots.state_dir, base)?;
    let (_c, cow_id) = open_no_follow(&roots.state_dir, cow_file)?;
    let mut verify = |s: &DmSnapshot| {
        for (what, dev, want, file) in [
            ("base", &s.base_loop, base_id, base),
            ("cow", &s.cow_loop, cow_id, cow_file),
        ] {
            match (host.loop_id)(Path::new(dev)) {
                Ok(Some(got)) if got == want => {}
                Ok(_) => {
                    return Err(format!(
                        "{what} loop {dev} does not serve {} (was the path replaced?)",
                        file.display()
                    ))
                }
                Err(e) => return Err(format!("cannot inspect {what} loop {dev}: {e}")),
            }
        }
        Ok(())
    };
    cow::create_snapshot_checked(host.runner, vm_id, base, cow_file, &mut verify)
        .map_err(|e| api_error(format!("create snapshot for vm {vm_id}"), e))
}

/// `RemoveDmSnapshot`: validates every field against the system, then
/// removes what is still there.
pub fn remove(host: &DmHost<'_>, roots: &Roots, handle: &DmSnapshot) -> Result<(), ApiError> {
    check::handle_shape(handle)?;
    let _g = lock();
    let todo = check::removal(handle, roots, host.sys_block)?;
    let what = if todo.name.is_empty() {
        &todo.dev
    } else {
        &todo.name
    };
    cow::remove_snapshot(host.runner, &todo)
        .map_err(|e| api_error(format!("remove snapshot {what}"), e))
}

/// `FsckSnapshot`: `e2fsck -fy` on one of our snapshot devices only.
pub fn fsck(host: &DmHost<'_>, dev: &str) -> Result<FsckOutcome, ApiError> {
    check::dm_dev(dev)?;
    // No lock: a check can take minutes and other VMs' ops need not wait.
    cow::fsck_snapshot(host.runner, dev).map_err(|e| api_error(format!("fsck {dev}"), e))
}

#[cfg(test)]
mod tests;
