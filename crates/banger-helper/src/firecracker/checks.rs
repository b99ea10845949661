//! Validation for the Firecracker ops: the launch spec (from the daemon,
//! so treated as hostile) and the two binaries (from the helper's own
//! command line, but run as root, so checked before each use).

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use banger_vmm::jailer::{LaunchSpec, FIRECRACKER_NAME};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::validate::{self, managed_path, Invalid, Leaf, Roots};

/// Most drives one VM may have.
pub const MAX_DRIVES: usize = 8;

/// The only block devices a drive may be: banger's dm-snapshots.
pub const DM_PREFIX: &str = "/dev/mapper/fc-rootfs-";

/// Names in the chroot that a drive id may not take.
const RESERVED_IDS: [&str; 8] = [
    "vmlinux",
    "run",
    "dev",
    "lib",
    "lib64",
    "usr",
    "firecracker",
    "old_root",
];

/// A validated drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDrive {
    pub id: String,
    pub path: PathBuf,
    pub kind: DriveKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveKind {
    /// A regular file in the VM's state dir: hard-linked into the chroot.
    File,
    /// A dm device: re-created in the chroot with this device number.
    Block { rdev: u64 },
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// `[a-z][a-z0-9_]{0,31}`, not one of the chroot's own names: the id is
/// also the drive's file name inside the chroot.
pub fn drive_id(id: &str) -> Result<(), Invalid> {
    let b = id.as_bytes();
    let shape = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    if !shape {
        return invalid(format!(
            "invalid drive id {id:?}: must be 1 to 32 characters of [a-z0-9_], starting with a letter"
        ));
    }
    if RESERVED_IDS.contains(&id) {
        return invalid(format!("invalid drive id {id:?}: the name is reserved"));
    }
    Ok(())
}

/// A `/dev/mapper/fc-rootfs-<name>` path that really is that dm device:
/// a block device whose `/sys/dev/block/M:m/dm/name` is the same name.
/// (`/dev/mapper` entries are often symlinks to `/dev/dm-N`; /dev belongs
/// to root, so following them is fine.) Returns the device number.
pub fn dm_device(field: &str, path: &Path) -> Result<u64, Invalid> {
    let s = path.to_str().unwrap_or("");
    let suffix = s.strip_prefix(DM_PREFIX).unwrap_or("");
    let name = format!("fc-rootfs-{suffix}");
    if suffix.is_empty()
        || suffix.len() > 64
        || !suffix
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return invalid(format!(
            "{field}: {s:?} is not a {DM_PREFIX}<[a-z0-9-]> device"
        ));
    }
    let md = std::fs::metadata(path)
        .map_err(|e| Invalid(format!("{field}: cannot inspect {s}: {e}")))?;
    if !md.file_type().is_block_device() {
        return invalid(format!("{field}: {s} is not a block device"));
    }
    let rdev = md.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}/dm/name");
    match std::fs::read_to_string(&sys) {
        Ok(n) if n.trim_end() == name => Ok(rdev),
        _ => invalid(format!(
            "{field}: {s} is not the device-mapper device {name}"
        )),
    }
}

/// Validates a launch request against the helper's roots: the vm id, the
/// kernel and initrd (existing regular files under `<state>/images/`,
/// `<state>/kernels/` or the VM's state dir, no symlink anywhere below the state root), and 1 to
/// [`MAX_DRIVES`] drives with unique ids, each a regular file in the VM's
/// own state dir or a banger dm device.
pub fn launch_spec(spec: &LaunchSpec, roots: &Roots) -> Result<Vec<CheckedDrive>, Invalid> {
    validate::vm_id(&spec.vm_id)?;
    let state = roots.state_dir.as_path();
    let vm_state = [roots.vm_state_dir(&spec.vm_id)];
    let boot = roots.boot_dirs(&spec.vm_id);
    existing_file("kernel", &spec.kernel, state, &boot)?;
    if let Some(initrd) = &spec.initrd {
        existing_file("initrd", initrd, state, &boot)?;
    }
    if spec.drives.is_empty() || spec.drives.len() > MAX_DRIVES {
        return invalid(format!(
            "drives: 1 to {MAX_DRIVES} drives, not {}",
            spec.drives.len()
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for d in &spec.drives {
        drive_id(&d.id)?;
        if !seen.insert(d.id.as_str()) {
            return invalid(format!("drives: id {:?} is used twice", d.id));
        }
        let field = format!("drive {}", d.id);
        let kind = if d.path.starts_with("/dev") {
            DriveKind::Block {
                rdev: dm_device(&field, &d.path)?,
            }
        } else {
            existing_file(&field, &d.path, state, &vm_state)?;
            DriveKind::File
        };
        out.push(CheckedDrive {
            id: d.id.clone(),
            path: d.path.clone(),
            kind,
        });
    }
    Ok(out)
}

fn existing_file(field: &str, path: &Path, root: &Path, bases: &[PathBuf]) -> Result<(), Invalid> {
    match managed_path(field, path, root, bases)? {
        Leaf::File => Ok(()),
        Leaf::Missing => invalid(format!("{field}: {} does not exist", path.display())),
        _ => invalid(format!("{field}: {} is not a regular file", path.display())),
    }
}

/// Why a configured binary may not be run as root.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("{0} must be an absolute, normalized UTF-8 path")]
    NotNormal(PathBuf),
    #[error("{0} must be named {FIRECRACKER_NAME} (jailer and the pid checks rely on the name)")]
    WrongName(PathBuf),
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is a symlink; configure the real path")]
    Symlink(PathBuf),
    #[error("{0} is not a regular executable file")]
    NotExecutable(PathBuf),
    #[error("{0} is not owned by root")]
    NotRootOwned(PathBuf),
    #[error("{0} is writable by group or others")]
    Writable(PathBuf),
}

/// Checks a binary the helper will run as root (or hand to jailer): an
/// absolute path with no symlink in it, a regular executable file owned by
/// root and not group/world-writable, in directories owned by root that
/// others cannot write (sticky ones like /tmp excepted: others cannot
/// replace root's entries there). The leaf is checked through an
/// `O_PATH|O_NOFOLLOW` descriptor. As a non-root test helper, files of
/// our own user pass too. `name`, when given, is the file name required.
pub fn root_executable(path: &Path, name: Option<&str>) -> Result<(), BinaryError> {
    let normal: PathBuf = path.components().collect();
    if !path.is_absolute() || normal.as_os_str() != path.as_os_str() || path.to_str().is_none() {
        return Err(BinaryError::NotNormal(path.to_path_buf()));
    }
    if name.is_some_and(|n| path.file_name().and_then(|f| f.to_str()) != Some(n)) {
        return Err(BinaryError::WrongName(path.to_path_buf()));
    }
    let trusted = |uid: u32| uid == 0 || uid == super::fsx::euid();
    let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
    dirs.reverse();
    for d in dirs {
        let md = std::fs::symlink_metadata(d).map_err(|source| BinaryError::Inspect {
            path: d.to_path_buf(),
            source,
        })?;
        if md.file_type().is_symlink() {
            return Err(BinaryError::Symlink(d.to_path_buf()));
        }
        if !trusted(md.uid()) {
            return Err(BinaryError::NotRootOwned(d.to_path_buf()));
        }
        if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 {
            return Err(BinaryError::Writable(d.to_path_buf()));
        }
    }
    let inspect = |e: Errno| BinaryError::Inspect {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(inspect)?;
    let st = fstat(&fd).map_err(inspect)?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFLNK {
        return Err(BinaryError::Symlink(path.to_path_buf()));
    }
    if kind != SFlag::S_IFREG || st.st_mode & 0o111 == 0 {
        return Err(BinaryError::NotExecutable(path.to_path_buf()));
    }
    if !trusted(st.st_uid) {
        return Err(BinaryError::NotRootOwned(path.to_path_buf()));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(BinaryError::Writable(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
