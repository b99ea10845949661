//! Every path a system install creates, the steps that create them, and the
//! uninstall that removes exactly those.
//!
//! An install, in order (the CLI adds `systemctl` between the steps):
//!
//! 1. [`InstallPlan::create_dirs`]: `/usr/local/lib/banger`, `/etc/banger`
//!    (root, 0755), `/var/lib/banger`, `/var/cache/banger`, `/run/banger`
//!    (owner, 0700). The helper's `ReadWritePaths=` needs the state and
//!    runtime dirs before it first starts.
//! 2. [`InstallPlan::install_binaries`] and [`InstallPlan::install_units`]
//!    into one [`Swap`]: each file is staged as a hidden temp file beside its
//!    target (0755 binaries, 0644 units) and renamed into place, old files
//!    kept as `.previous`. On failure, or when the services do not come up,
//!    the caller calls [`Swap::rollback`]; on success
//!    [`Swap::cleanup_backups`].
//! 3. [`InstallPlan::write_meta`]: `install.toml`, last, because its
//!    existence switches every banger process to the system paths.
//!
//! Run as root: staged files are owned by whoever writes them, and the
//! owner's directories are chowned to the owner.
//!
//! [`InstallPlan::uninstall`] (after `systemctl disable --now` of both units
//! and once no VM runs) removes `install.toml` first, then the units, the
//! tmpfiles entry, the binaries and their `.previous` backups or staged
//! leftovers, the `enable` symlinks and the runtime dirs, then
//! `/usr/local/lib/banger` and `/etc/banger` if nothing else is in them.
//! By default it keeps the owner's data and settings: `/var/lib/banger`
//! (images, VM disks, the database), `/var/cache/banger` and
//! `/etc/banger/config.toml` (which install never writes). With
//! [`UninstallOptions::purge`] those go too; a purge refuses to descend into
//! anything mounted inside them (a jail's bind mounts of `/lib`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_paths::system;

use crate::fsutil::{self, TreeError};
use crate::install_meta::{InstallMeta, MetaError};
use crate::rooted;
use crate::swap::{Swap, SwapError};
use crate::units::{self, UnitParams};

/// Mode of installed binaries.
pub const BINARY_MODE: u32 = 0o755;
/// Mode of unit files and the tmpfiles.d entry.
pub const UNIT_MODE: u32 = 0o644;
/// Where `systemctl enable` links both units (their `WantedBy=`).
pub const WANTS_DIR: &str = "multi-user.target.wants";

/// The four installed binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    /// The CLI, `/usr/local/bin/banger`.
    Banger,
    /// The owner daemon, `/usr/local/bin/bangerd`.
    Bangerd,
    /// The root helper, `/usr/local/lib/banger/banger-helper`.
    Helper,
    /// The static guest agent, `/usr/local/lib/banger/banger-agent`.
    Agent,
}

impl Binary {
    pub const ALL: [Binary; 4] = [
        Binary::Banger,
        Binary::Bangerd,
        Binary::Helper,
        Binary::Agent,
    ];

    /// Where a system install puts it.
    pub fn system_path(self) -> &'static str {
        match self {
            Binary::Banger => system::BANGER_BIN,
            Binary::Bangerd => system::BANGERD_BIN,
            Binary::Helper => system::HELPER_BIN,
            Binary::Agent => system::AGENT_BIN,
        }
    }

    /// The binary's file name (as cargo builds it).
    pub fn file_name(self) -> &'static str {
        let p = self.system_path();
        &p[p.rfind('/').map_or(0, |i| i + 1)..]
    }
}

/// What a planned file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Binary(Binary),
    HelperUnit,
    DaemonUnit,
    Tmpfiles,
    InstallMeta,
}

/// A file the install creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub kind: FileKind,
    /// Under the plan's root.
    pub path: PathBuf,
    pub mode: u32,
}

/// Who owns a planned directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirOwner {
    Root,
    /// The owner user and group from install.toml.
    Owner,
}

/// What uninstall does with a planned directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed when empty once banger's files are gone; kept (and
    /// reported) when something else is in it.
    IfEmpty,
    /// Runtime state (sockets, pidfiles): removed with its contents.
    Always,
    /// The owner's data: kept unless purging, then removed with its
    /// contents.
    Purge,
}

/// A directory the install creates (or systemd creates for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDir {
    /// Under the plan's root.
    pub path: PathBuf,
    pub mode: u32,
    pub owner: DirOwner,
    pub removal: Removal,
    /// False for the helper's runtime dir, which systemd creates
    /// (`RuntimeDirectory=`) and keeps (`RuntimeDirectoryPreserve=`).
    pub created_by_install: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("refusing to remove {}: {} is a mount point inside it (stop the VMs first)", dir.display(), mount.display())]
    Mounted { dir: PathBuf, mount: PathBuf },
    #[error("binary {0} is listed twice")]
    DuplicateBinary(&'static str),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PlanError {
    let path = path.to_path_buf();
    move |source| PlanError::Io {
        action,
        path,
        source,
    }
}

/// How [`InstallPlan::uninstall`] treats the owner's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UninstallOptions {
    /// Also remove `/var/lib/banger`, `/var/cache/banger` and
    /// `/etc/banger/config.toml` (`banger system uninstall --purge`).
    pub purge: bool,
}

/// A path uninstall left in place, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub path: PathBuf,
    pub reason: &'static str,
}

/// What [`InstallPlan::uninstall`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// In removal order.
    pub removed: Vec<PathBuf>,
    pub kept: Vec<Kept>,
}

/// The paths of a system install under `root` (`/` on a real host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    root: PathBuf,
}

impl InstallPlan {
    pub fn new(root: impl Into<PathBuf>) -> InstallPlan {
        InstallPlan { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` (a [`system`] path) under this plan's root.
    pub fn path(&self, abs: &str) -> PathBuf {
        rooted(&self.root, abs)
    }

    pub fn binary_path(&self, b: Binary) -> PathBuf {
        self.path(b.system_path())
    }

    pub fn helper_unit_path(&self) -> PathBuf {
        self.path(system::UNIT_DIR).join(system::HELPER_UNIT)
    }

    pub fn daemon_unit_path(&self) -> PathBuf {
        self.path(system::UNIT_DIR).join(system::DAEMON_UNIT)
    }

    pub fn tmpfiles_path(&self) -> PathBuf {
        self.path(system::TMPFILES_FILE)
    }

    pub fn install_file(&self) -> PathBuf {
        self.path(system::INSTALL_FILE)
    }

    /// Every file the install writes, in install order (`install.toml` last).
    pub fn files(&self) -> Vec<PlannedFile> {
        let mut out: Vec<PlannedFile> = Binary::ALL
            .iter()
            .map(|&b| PlannedFile {
                kind: FileKind::Binary(b),
                path: self.binary_path(b),
                mode: BINARY_MODE,
            })
            .collect();
        out.extend([
            PlannedFile {
                kind: FileKind::HelperUnit,
                path: self.helper_unit_path(),
                mode: UNIT_MODE,
            },
            PlannedFile {
                kind: FileKind::DaemonUnit,
                path: self.daemon_unit_path(),
                mode: UNIT_MODE,
            },
            PlannedFile {
                kind: FileKind::Tmpfiles,
                path: self.tmpfiles_path(),
                mode: UNIT_MODE,
            },
            PlannedFile {
                kind: FileKind::InstallMeta,
                path: self.install_file(),
                mode: crate::install_meta::MODE,
            },
        ]);
        out
    }

    /// Every directory the install (or systemd, for it) creates. Parents
    /// such as `/usr/local/bin` or `/etc/systemd/system` are the host's:
    /// created if missing, never removed.
    pub fn dirs(&self) -> Vec<PlannedDir> {
        let dir = |abs, mode, owner, removal, created_by_install| PlannedDir {
            path: self.path(abs),
            mode,
            owner,
            removal,
            created_by_install,
        };
        vec![
            dir(
                system::LIB_DIR,
                0o755,
                DirOwner::Root,
                Removal::IfEmpty,
                true,
            ),
            dir(
                system::ETC_DIR,
                0o755,
                DirOwner::Root,
                Removal::IfEmpty,
                true,
            ),
            dir(
                system::STATE_DIR,
                0o700,
                DirOwner::Owner,
                Removal::Purge,
                true,
            ),
            dir(
                system::CACHE_DIR,
                0o700,
                DirOwner::Owner,
                Removal::Purge,
                true,
            ),
            dir(
                system::RUNTIME_DIR,
                0o700,
                DirOwner::Owner,
                Removal::Always,
                true,
            ),
            dir(
                system::HELPER_RUNTIME_DIR,
                0o711,
                DirOwner::Root,
                Removal::Always,
                false,
            ),
        ]
    }

    /// The symlinks `systemctl enable` makes for both units; uninstall
    /// removes them if `systemctl disable` did not.
    pub fn enable_links(&self) -> Vec<PathBuf> {
        let wants = self.path(system::UNIT_DIR).join(WANTS_DIR);
        vec![
            wants.join(system::HELPER_UNIT),
            wants.join(system::DAEMON_UNIT),
        ]
    }

    /// Planned files and install-created dirs that are not there (for
    /// `banger system status`).
    pub fn missing(&self) -> Vec<PathBuf> {
        let files = self.files().into_iter().map(|f| f.path);
        let dirs = self
            .dirs()
            .into_iter()
            .filter(|d| d.created_by_install)
            .map(|d| d.path);
        files
            .chain(dirs)
            .filter(|p| fs::symlink_metadata(p).is_err())
            .collect()
    }

    /// Creates the install's directories with their modes; the owner's are
    /// chowned to `owner_uid:owner_gid` (the top dir only: existing data is
    /// left as it is). Root's are owned by whoever runs this (root).
    pub fn create_dirs(&self, owner_uid: u32, owner_gid: u32) -> Result<(), PlanError> {
        for d in self.dirs().into_iter().filter(|d| d.created_by_install) {
            fs::create_dir_all(&d.path).map_err(io_err("create", &d.path))?;
            if d.owner == DirOwner::Owner {
                std::os::unix::fs::chown(&d.path, Some(owner_uid), Some(owner_gid))
                    .map_err(io_err("chown", &d.path))?;
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(io_err("chmod", &d.path))?;
        }
        Ok(())
    }

    /// Stages each source (copied, 0755, fsynced) beside its target, then
    /// replaces the targets through `swap` in order. Sources are only read.
    /// On error nothing staged is left behind, and `swap` holds what was
    /// already replaced: the caller rolls it back.
    pub fn install_binaries(
        &self,
        swap: &mut Swap,
        sources: &[(Binary, &Path)],
    ) -> Result<(), PlanError> {
        for (i, (b, _)) in sources.iter().enumerate() {
            if sources[..i].iter().any(|(o, _)| o == b) {
                return Err(PlanError::DuplicateBinary(b.file_name()));
            }
        }
        let targets = sources.iter().map(|&(b, src)| (self.binary_path(b), src));
        stage_and_swap(swap, targets, |dst, src| {
            fsutil::copy_beside(src, dst, Some(BINARY_MODE)).map_err(io_err("stage a copy of", src))
        })
    }

    /// Renders both units and the tmpfiles entry, stages them (0644)
    /// beside their targets and replaces them through `swap`.
    pub fn install_units(&self, swap: &mut Swap, params: &UnitParams) -> Result<(), PlanError> {
        let files = [
            (self.helper_unit_path(), units::render_helper_unit(params)),
            (self.daemon_unit_path(), units::render_daemon_unit(params)),
            (self.tmpfiles_path(), units::render_tmpfiles(params)),
        ];
        stage_and_swap(swap, files, |dst, text| {
            fsutil::stage_bytes(dst, text.as_bytes(), UNIT_MODE)
                .map_err(io_err("stage the new", dst))
        })
    }

    /// Writes `install.toml` (atomically, 0644): the last install step.
    pub fn write_meta(&self, meta: &InstallMeta) -> Result<(), PlanError> {
        let path = self.install_file();
        ensure_parent(&path)?;
        meta.write(&path)?;
        Ok(())
    }

    pub fn read_meta(&self) -> Result<InstallMeta, MetaError> {
        InstallMeta::read(&self.install_file())
    }

    /// Removes what the install created; see the module docs for what is
    /// kept without `purge`. Absent paths are fine, so it can run again
    /// after a failure. Expects both services stopped and no VM running.
    pub fn uninstall(&self, opts: UninstallOptions) -> Result<UninstallReport, PlanError> {
        let mut report = UninstallReport::default();
        // install.toml first: from here on, processes use the user layout.
        let mut files = self.files();
        files.rotate_right(1);
        for f in &files {
            remove_file(&f.path, &mut report)?;
            remove_file(
                &crate::swap::backup_path(&f.path, crate::swap::BACKUP_SUFFIX),
                &mut report,
            )?;
            for leftover in staged_leftovers(&f.path) {
                remove_file(&leftover, &mut report)?;
            }
        }
        for link in self.enable_links() {
            if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                remove_file(&link, &mut report)?;
            }
        }
        let config = self.path(system::CONFIG_FILE);
        if opts.purge {
            remove_file(&config, &mut report)?;
        } else if config.exists() {
            report.kept.push(Kept {
                path: config,
                reason: "the owner's settings (--purge removes them)",
            });
        }
        for d in self.dirs() {
            match d.removal {
                Removal::Always => self.remove_tree(&d.path, &mut report)?,
                Removal::Purge if opts.purge => self.remove_tree(&d.path, &mut report)?,
                Removal::Purge => {
                    if d.path.exists() {
                        report.kept.push(Kept {
                            path: d.path,
                            reason: "the owner's data (--purge removes it)",
                        });
                    }
                }
                Removal::IfEmpty => match fs::remove_dir(&d.path) {
                    Ok(()) => report.removed.push(d.path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                        report.kept.push(Kept {
                            path: d.path,
                            reason: "not empty: holds files banger did not install",
                        })
                    }
                    Err(e) => return Err(io_err("remove", &d.path)(e)),
                },
            }
        }
        Ok(report)
    }

    fn remove_tree(&self, dir: &Path, report: &mut UninstallReport) -> Result<(), PlanError> {
        match fsutil::remove_tree(dir) {
            Ok(true) => {
                report.removed.push(dir.to_path_buf());
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(TreeError::Mounted(mount)) => Err(PlanError::Mounted {
                dir: dir.to_path_buf(),
                mount,
            }),
            Err(TreeError::Io(path, source)) => Err(PlanError::Io {
                action: "remove",
                path,
                source,
            }),
        }
    }
}

/// Removes the file `path` if it exists, noting it in `report`.
fn remove_file(path: &Path, report: &mut UninstallReport) -> Result<(), PlanError> {
    if fsutil::remove_file_if_exists(path).map_err(io_err("remove", path))? {
        report.removed.push(path.to_path_buf());
    }
    Ok(())
}

fn ensure_parent(path: &Path) -> Result<(), PlanError> {
    let parent = fsutil::parent_dir(path);
    fs::create_dir_all(parent).map_err(io_err("create", parent))
}

fn remove_staged(staged: &[(PathBuf, PathBuf)]) {
    for (tmp, _) in staged {
        let _ = fs::remove_file(tmp);
    }
}

/// Stages a new file beside each target (`stage(target, what)` returns the
/// staged path; the target's parent is created first), then replaces the
/// targets through `swap` in order. If staging fails, the files already
/// staged are removed and nothing is replaced.
fn stage_and_swap<T>(
    swap: &mut Swap,
    targets: impl IntoIterator<Item = (PathBuf, T)>,
    mut stage: impl FnMut(&Path, T) -> Result<PathBuf, PlanError>,
) -> Result<(), PlanError> {
    let mut staged = Vec::new();
    for (dst, what) in targets {
        match ensure_parent(&dst).and_then(|()| stage(&dst, what)) {
            Ok(tmp) => staged.push((tmp, dst)),
            Err(e) => {
                remove_staged(&staged);
                return Err(e);
            }
        }
    }
    swap_staged(swap, staged)
}

/// Replaces each target with its staged file through `swap`; on the first
/// failure removes the staged files not yet moved.
fn swap_staged(swap: &mut Swap, staged: Vec<(PathBuf, PathBuf)>) -> Result<(), PlanError> {
    for (i, (tmp, dst)) in staged.iter().enumerate() {
        if let Err(e) = swap.replace(tmp, dst) {
            remove_staged(&staged[i..]);
            return Err(e.into());
        }
    }
    Ok(())
}

/// Hidden temp files a crashed install may have left beside `target`
/// (`.<name>.<random>.tmp`, see `fsutil::temp_beside`).
fn staged_leftovers(target: &Path) -> Vec<PathBuf> {
    let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(fsutil::parent_dir(target)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".tmp") && n.len() > prefix.len() + 4
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests;
