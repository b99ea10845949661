//! Building and tearing down a VM's jailer chroot, and the short socket
//! links in its runtime dir.
//!
//! Staging, in `<state>/jailer/firecracker/<vm_id>/root`:
//! - the chroot is bind-mounted onto itself (private, `nosuid`, and with
//!   dev and exec allowed whatever the state filesystem says), so it is a
//!   mount of its own whose sub-mounts cleanup can find and detach;
//! - kernel and initrd are hard-linked in (copied, keeping owner and mode,
//!   when the state dir spans filesystems), regular-file drives are
//!   hard-linked, dm devices re-created with `mknod` and handed to the owner;
//! - `/lib`, `/lib64` and `/usr/lib` are bind-mounted read-only where they
//!   exist, for distro Firecracker builds that are dynamically linked;
//! - `run/` (the API socket's directory) and, when asked, the log file are
//!   created for the owner.
//!
//! The Firecracker binary is *not* staged: jailer copies `--exec-file`
//! into the chroot itself (and opens the copy for writing, which is why a
//! read-only bind of it used to fail with EROFS).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use banger_vmm::jailer::{
    JailerLayout, LaunchSpec, API_SOCKET_NAME, DIRECT_PIDFILE_NAME, FIRECRACKER_NAME, JAILER_DIR,
    VSOCK_SOCKET_NAME,
};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, mknodat, Mode, SFlag};
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};

use super::checks::{CheckedDrive, DriveKind};
use super::fsx::{self, fd_path, io_err, sys, FsError, Result};
use crate::validate::{managed_path, Invalid, Roots};

/// Host library directories bound read-only into every chroot.
pub const HOST_LIB_DIRS: [&str; 3] = ["/lib", "/lib64", "/usr/lib"];

/// Names inside the chroot (the in-jail paths without their `/`).
const KERNEL: &str = "vmlinux";
const INITRD: &str = "initrd.img";
const LOG: &str = "firecracker.log";
const CONSOLE: &str = "console.log";
const RUN: &str = "run";

/// Builds the chroot of `vm_id`. It must not exist yet (run [`remove_chroot`]
/// first). On error, what was staged is left for [`remove_chroot`].
pub fn stage(
    roots: &Roots,
    spec: &LaunchSpec,
    drives: &[CheckedDrive],
    owner: (u32, u32),
) -> Result<()> {
    let vm_id = spec.vm_id.as_str();
    let layout = JailerLayout::new(&roots.state_dir);
    let group = (0, owner.1);
    let state = fsx::open_root(&roots.state_dir)?;
    let base = fsx::ensure_dir(&state, JAILER_DIR, layout.base(), 0o750, group, false)?;
    let exec = fsx::ensure_dir(
        &base,
        FIRECRACKER_NAME,
        &layout.exec_dir(),
        0o750,
        group,
        false,
    )?;
    let vm = fsx::ensure_dir(&exec, vm_id, &layout.vm_dir(vm_id), 0o750, group, true)?;
    let shown = layout.chroot(vm_id);
    let under = fsx::ensure_dir(&vm, "root", &shown, 0o750, group, true)?;

    // Files first, through the directory as it is before the self-bind:
    // link(2) refuses to cross mount points (EXDEV) even on one filesystem,
    // and the bind is another mount. The bind shows the same directory.
    fsx::ensure_dir(&under, RUN, &shown.join(RUN), 0o700, owner, true)?;
    let state_root = roots.state_dir.as_path();
    place_file(state_root, &spec.kernel, &under, KERNEL, &shown, true)?;
    if let Some(initrd) = &spec.initrd {
        place_file(state_root, initrd, &under, INITRD, &shown, true)?;
    }
    for d in drives {
        match d.kind {
            DriveKind::File => place_file(state_root, &d.path, &under, &d.id, &shown, false)?,
            DriveKind::Block { rdev } => make_block_device(&under, &d.id, rdev, &shown, owner)?,
        }
    }
    if spec.log {
        for name in [LOG, CONSOLE] {
            let fd = create_new(&under, name, &shown.join(name))?;
            fsx::set_owner_mode(&fd, &shown.join(name), 0o600, owner)?;
        }
    }

    // Self-bind, then reopen by name so the descriptor is the new mount's
    // root (the old one still points below it). The bind gets exactly
    // `nosuid`: a state dir on a nodev/noexec filesystem (often /home)
    // would otherwise break /dev/kvm and the exec of /firecracker in the
    // jail. And nothing mounted inside propagates to other namespaces.
    let here = fd_path(&under);
    mount(
        Some(&here),
        &here,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind-mount", &shown))?;
    let chroot = reopen(&vm, "root", &shown)?;
    let at = fd_path(&chroot);
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    mount(None::<&str>, &at, None::<&str>, flags, None::<&str>).map_err(sys("remount", &shown))?;
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make private", &shown))?;
    // The library binds go inside the self-bind, so cleanup finds them
    // below the chroot's own mount.
    for lib in HOST_LIB_DIRS {
        if Path::new(lib).is_dir() {
            bind_lib(Path::new(lib), &chroot, &shown)?;
        }
    }
    Ok(())
}

fn reopen(parent: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd> {
    fsx::open_dir_at(parent, name, shown)?.ok_or_else(|| FsError::NotADir(shown.to_path_buf()))
}

fn create_new(dir: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(sys("create", shown))
}

/// Hard-links `src` (a validated path below `state_root`) into `dst` as
/// `name`; on EXDEV copies it when `allow_copy` (kernel and initrd only:
/// copying a disk would be wrong and slow). The source's directories are
/// walked without following symlinks, and whatever lands in the chroot
/// must be a regular file, so a source swapped for a symlink after
/// validation achieves nothing.
fn place_file(
    state_root: &Path,
    src: &Path,
    dst: &OwnedFd,
    name: &str,
    chroot: &Path,
    allow_copy: bool,
) -> Result<()> {
    let shown = chroot.join(name);
    let (dir, leaf) = fsx::open_parent_beneath(state_root, src)?;
    match linkat(&dir, leaf, dst, name, AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::EXDEV) if allow_copy => copy_file(&dir, leaf, src, dst, name, &shown)?,
        Err(Errno::EXDEV) => {
            return Err(FsError::CrossDevice {
                src: src.to_path_buf(),
                dst: shown,
            })
        }
        Err(e) => return Err(sys("hard-link", src)(e)),
    }
    if fsx::kind_at(dst, name, &shown)? != Some(SFlag::S_IFREG) {
        let _ = nix::unistd::unlinkat(dst, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(FsError::NotAFile(src.to_path_buf()));
    }
    Ok(())
}

/// Copies `leaf` of `dir` to a new `name` in `dst` with the source's owner
/// and permission bits: the copy, made as root, must grant nobody more
/// than the original did.
fn copy_file(
    dir: &OwnedFd,
    leaf: &str,
    src: &Path,
    dst: &OwnedFd,
    name: &str,
    shown: &Path,
) -> Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let from = openat(dir, leaf, flags, Mode::empty()).map_err(sys("open", src))?;
    let st = fstat(&from).map_err(sys("stat", src))?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(FsError::NotAFile(src.to_path_buf()));
    }
    let to = create_new(dst, name, shown)?;
    fsx::set_owner_mode(&to, shown, st.st_mode & 0o777, (st.st_uid, st.st_gid))?;
    let mut from = std::fs::File::from(from);
    let mut to = std::fs::File::from(to);
    std::io::copy(&mut from, &mut to).map_err(io_err("copy into", shown))?;
    Ok(())
}

/// Re-creates a dm device in the chroot (same device number, 0600) and
/// hands it to the owner, who runs Firecracker.
fn make_block_device(
    chroot: &OwnedFd,
    name: &str,
    rdev: u64,
    shown: &Path,
    owner: (u32, u32),
) -> Result<()> {
    let path = shown.join(name);
    mknodat(
        chroot,
        name,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        rdev,
    )
    .map_err(sys("mknod", &path))?;
    fchownat(
        chroot,
        name,
        Some(Uid::from_raw(owner.0)),
        Some(Gid::from_raw(owner.1)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys("chown", &path))
}

/// Bind-mounts the host directory `lib` at the same place in the chroot,
/// read-only (a bind ignores `MS_RDONLY`; the remount applies it).
fn bind_lib(lib: &Path, chroot: &OwnedFd, shown: &Path) -> Result<()> {
    let rel = lib.strip_prefix("/").unwrap_or(lib);
    let names: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let Some((last, dirs)) = names.split_last() else {
        return Ok(());
    };
    let mut at = shown.to_path_buf();
    let mut parent = chroot.try_clone().map_err(io_err("duplicate", shown))?;
    for d in dirs {
        at.push(d);
        parent = fsx::ensure_dir(&parent, d, &at, 0o755, (0, 0), false)?;
    }
    at.push(last);
    let target = fsx::ensure_dir(&parent, last, &at, 0o755, (0, 0), false)?;
    mount(
        Some(lib),
        &fd_path(&target),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind-mount", &at))?;
    let mounted = reopen(&parent, last, &at)?;
    let ro = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(
        None::<&str>,
        &fd_path(&mounted),
        None::<&str>,
        ro,
        None::<&str>,
    )
    .map_err(sys("remount read-only", &at))
}

/// Points `<runtime>/vms/<id>/fc.sock` and `vsock.sock` at the sockets in
/// the chroot: `sun_path` holds 108 bytes, the chroot path is longer, and
/// `connect(2)` follows a symlink. Replaces stale entries.
pub fn link_sockets(roots: &Roots, vm_id: &str) -> Result<()> {
    let layout = JailerLayout::new(&roots.state_dir);
    let rt_path = roots.vm_runtime_dir(vm_id);
    let rt = fsx::open_dir_beneath(&roots.runtime_dir, &rt_path)?
        .ok_or_else(|| FsError::Missing(rt_path.clone()))?;
    for (name, target) in [
        (API_SOCKET_NAME, layout.api_socket(vm_id)),
        (VSOCK_SOCKET_NAME, layout.vsock(vm_id)),
    ] {
        let link = rt_path.join(name);
        fsx::remove_entry(&rt, name, &link)?;
        symlinkat(&target, rt.as_fd(), name).map_err(sys("symlink", &link))?;
    }
    Ok(())
}

/// Removes the socket links (or direct-mode sockets) and the direct-mode
/// pidfile from the VM's runtime dir. A missing dir or entry is fine.
pub fn remove_runtime_entries(roots: &Roots, vm_id: &str) -> Result<()> {
    let rt_path = roots.vm_runtime_dir(vm_id);
    let Some(rt) = fsx::open_dir_beneath(&roots.runtime_dir, &rt_path)? else {
        return Ok(());
    };
    for name in [API_SOCKET_NAME, VSOCK_SOCKET_NAME, DIRECT_PIDFILE_NAME] {
        fsx::remove_entry(&rt, name, &rt_path.join(name))?;
    }
    Ok(())
}

/// Why a chroot could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Removes `<base>/firecracker/<vm_id>`: refuses if the chroot or any
/// directory leading to it is a symlink; detaches every mount under it,
/// deepest first; checks nothing is mounted there any more; only then
/// removes the tree, through a descriptor of its parent so the removal
/// cannot be redirected. A missing chroot is fine.
pub fn remove_chroot(roots: &Roots, vm_id: &str) -> std::result::Result<(), RemoveError> {
    let layout = JailerLayout::new(&roots.state_dir);
    let state = roots.state_dir.as_path();
    let base = [layout.base().to_path_buf()];
    managed_path("chroot", &layout.chroot(vm_id), state, &base)?;
    let Some(exec) = fsx::open_dir_beneath(state, &layout.exec_dir())? else {
        return Ok(());
    };
    let vm_path = layout.vm_dir(vm_id);
    let Some(vm) = fsx::open_dir_at(&exec, vm_id, &vm_path)? else {
        return Ok(());
    };
    // mountinfo shows real paths; the state root itself may contain links.
    let real = fsx::real_path(&vm, &vm_path)?;
    fsx::unmount_all_under(&real)?;
    drop(vm);
    let target: PathBuf = fd_path(&exec).join(vm_id);
    match std::fs::remove_dir_all(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &vm_path)(e).into()),
    }
}
