//! Checks for the dm-snapshot ops. The helper only ever touches its own
//! snapshots (`fc-rootfs-<vm id>`), only attaches files the daemon
//! manages, and only detaches loop devices that serve such files: a
//! compromised daemon must not be able to fsck `/dev/sda1`, snapshot
//! `/etc/shadow`, or detach somebody else's loop device.

use std::io;
use std::path::{Path, PathBuf};

use banger_vmm::cow::{is_loop_dev, DmSnapshot, DM_DIR, DM_NAME_PREFIX};

use super::{invalid, managed_path, vm_id, Invalid, Leaf, Roots};

/// Where the kernel describes block devices.
pub const SYS_BLOCK: &str = "/sys/block";

/// `fc-rootfs-<vm id>`; returns the vm id.
pub fn dm_name(name: &str) -> Result<&str, Invalid> {
    let id = name.strip_prefix(DM_NAME_PREFIX).unwrap_or("");
    vm_id(id).map_err(|_| {
        Invalid(format!(
            "invalid snapshot name {name:?}: must be {DM_NAME_PREFIX}<12 lowercase hex>"
        ))
    })?;
    Ok(id)
}

/// `/dev/mapper/fc-rootfs-<vm id>`; returns the vm id.
pub fn dm_dev(dev: &str) -> Result<&str, Invalid> {
    let name = dev
        .strip_prefix(DM_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or("");
    dm_name(name).map_err(|_| {
        Invalid(format!(
            "invalid snapshot device {dev:?}: must be {DM_DIR}/{DM_NAME_PREFIX}<12 lowercase hex>"
        ))
    })
}

/// `/dev/loop<N>`; returns N.
pub fn loop_dev(field: &str, dev: &str) -> Result<u32, Invalid> {
    if !is_loop_dev(dev) {
        return invalid(format!(
            "{field}: invalid loop device {dev:?}: must be /dev/loop<N>"
        ));
    }
    Ok(dev["/dev/loop".len()..].parse().unwrap_or_default())
}

/// A file the helper may attach to a loop device: present, regular (not a
/// block device, directory or anything else), and a managed path below
/// one of `bases` (no symlink component).
fn loop_file(field: &str, path: &Path, roots: &Roots, bases: &[PathBuf]) -> Result<(), Invalid> {
    match managed_path(field, path, &roots.state_dir, bases)? {
        Leaf::File => Ok(()),
        Leaf::Missing => invalid(format!("{field}: {} does not exist", path.display())),
        _ => invalid(format!("{field}: {} is not a regular file", path.display())),
    }
}

/// `CreateDmSnapshot`: the base is a regular file under `<state>/images/`,
/// the COW store a regular file under `<state>/vms/<vm_id>/`.
pub fn create_request(vm: &str, base: &Path, cow: &Path, roots: &Roots) -> Result<(), Invalid> {
    vm_id(vm)?;
    loop_file("base", base, roots, &[roots.images_dir()])?;
    loop_file("cow", cow, roots, &[roots.vm_state_dir(vm)])?;
    Ok(())
}

/// The shapes in a `RemoveDmSnapshot` handle, before looking at the
/// system: every non-empty field must be one of ours, the name and the
/// device must agree, and the two loops must differ. Returns the vm id
/// when the handle names one.
pub fn handle_shape(h: &DmSnapshot) -> Result<Option<&str>, Invalid> {
    let from_name = (!h.name.is_empty()).then(|| dm_name(&h.name)).transpose()?;
    let from_dev = (!h.dev.is_empty()).then(|| dm_dev(&h.dev)).transpose()?;
    if let (Some(a), Some(b)) = (from_name, from_dev) {
        if a != b {
            return invalid(format!(
                "snapshot name {:?} and device {:?} differ",
                h.name, h.dev
            ));
        }
    }
    for (field, dev) in [("base_loop", &h.base_loop), ("cow_loop", &h.cow_loop)] {
        if !dev.is_empty() {
            loop_dev(field, dev)?;
        }
    }
    if !h.base_loop.is_empty() && h.base_loop == h.cow_loop {
        return invalid(format!("base_loop and cow_loop are both {}", h.base_loop));
    }
    Ok(from_name.or(from_dev))
}

/// The file loop device N serves, from
/// `<sys_block>/loopN/loop/backing_file`; `None` when it serves nothing
/// (or does not exist). A file deleted since keeps its old path with
/// " (deleted)" appended; the path is what counts.
pub fn loop_backing_file(sys_block: &Path, n: u32) -> Result<Option<PathBuf>, Invalid> {
    let p = sys_block.join(format!("loop{n}/loop/backing_file"));
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let s = s.strip_suffix('\n').unwrap_or(&s);
            let s = s.strip_suffix(" (deleted)").unwrap_or(s);
            Ok(Some(PathBuf::from(s)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => invalid(format!("cannot read {}: {e}", p.display())),
    }
}

/// True when `path` is strictly below `dir` as configured or as the
/// kernel spells it (the state dir may sit behind a symlink the admin
/// made, and the kernel reports resolved paths). `path` must be absolute
/// and plain: no `.` or `..` to climb back out.
fn below(path: &Path, dir: &Path) -> bool {
    use std::path::Component;
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return false;
    }
    let strictly = |d: &Path| path.starts_with(d) && path != d;
    strictly(dir) || dir.canonicalize().is_ok_and(|c| strictly(&c))
}

/// `RemoveDmSnapshot`: [`handle_shape`], then each loop must serve a file
/// of ours, the base loop one under `<state>/images/` and the cow loop
/// one under `<state>/vms/<vm_id>/` (any VM's when the handle names
/// none). Returns the handle to act on: loops that serve nothing are
/// cleared, since there is nothing to detach and a later `losetup -d`
/// could hit a device somebody attached in between.
pub fn removal(h: &DmSnapshot, roots: &Roots, sys_block: &Path) -> Result<DmSnapshot, Invalid> {
    let vm = handle_shape(h)?;
    let cow_dir = match vm {
        Some(id) => roots.vm_state_dir(id),
        None => roots.state_dir.join("vms"),
    };
    let mut out = h.clone();
    for (field, dev, dir) in [
        ("base_loop", &mut out.base_loop, roots.images_dir()),
        ("cow_loop", &mut out.cow_loop, cow_dir),
    ] {
        if dev.is_empty() {
            continue;
        }
        let n = loop_dev(field, dev)?;
        match loop_backing_file(sys_block, n)? {
            None => dev.clear(),
            Some(file) if below(&file, &dir) => {}
            Some(file) => {
                return invalid(format!(
                    "{field}: {dev} serves {}, which is not under {}/",
                    file.display(),
                    dir.display()
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
