//! Copy-on-write root disks.
//!
//! Every VM boots from a private view of a shared, never-modified base
//! image. How that view is made depends on the backend and the host:
//!
//! - QEMU reads qcow2, so it gets a qcow2 overlay whose backing file is the
//!   base ([`crate::qemu::create_overlay`]).
//! - Firecracker only takes raw block devices/files. Where device-mapper
//!   exists, the root helper builds a `dm-snapshot` over two loop devices
//!   (the base read-only, a sparse COW store per VM): creating a VM copies
//!   nothing ([`dm`]).
//! - Elsewhere the base is cloned: a reflink when the filesystem shares
//!   extents (XFS, btrfs), otherwise a sparse copy that keeps the base's
//!   holes ([`clone`]).
//!
//! The daemon records which one a VM got ([`CowKind`]), because teardown
//! differs: a snapshot needs the helper, a clone or overlay is just a file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod clone;
pub mod dm;
#[cfg(test)]
mod testutil;

pub use clone::{clone_file, cow_store_size, create_cow_file, create_sparse_file};
pub use dm::{
    create_snapshot, create_snapshot_checked, dm_available, fsck_snapshot, is_loop_dev,
    loop_backing_id, remove_snapshot, CmdOutput, CommandRunner, DmSnapshot, FsckOutcome,
    SystemRunner, DM_DIR, DM_NAME_PREFIX,
};

/// How a VM's root disk was made copy-on-write. Stored per VM by the
/// daemon as [`CowKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CowKind {
    /// A qcow2 overlay backed by the base (QEMU).
    #[serde(rename = "qcow2")]
    Qcow2Overlay,
    /// A device-mapper snapshot over loop devices (Firecracker).
    #[serde(rename = "dm-snapshot")]
    DmSnapshot,
    /// A reflinked copy sharing the base's extents.
    #[serde(rename = "reflink")]
    Reflink,
    /// A full copy of the base's data, holes kept.
    #[serde(rename = "sparse-copy")]
    SparseCopy,
}

impl CowKind {
    pub const ALL: [CowKind; 4] = [
        CowKind::Qcow2Overlay,
        CowKind::DmSnapshot,
        CowKind::Reflink,
        CowKind::SparseCopy,
    ];

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CowKind::Qcow2Overlay => "qcow2",
            CowKind::DmSnapshot => "dm-snapshot",
            CowKind::Reflink => "reflink",
            CowKind::SparseCopy => "sparse-copy",
        }
    }
}

impl fmt::Display for CowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored kind this binary does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown copy-on-write kind {0:?}: expected qcow2, dm-snapshot, reflink or sparse-copy")]
pub struct UnknownCowKind(pub String);

impl FromStr for CowKind {
    type Err = UnknownCowKind;

    fn from_str(s: &str) -> Result<CowKind, UnknownCowKind> {
        CowKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownCowKind(s.to_string()))
    }
}

/// Why making or removing a copy-on-write disk failed.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// A filesystem call on `path` failed; `what` says which.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The destination exists; clones never replace a file.
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    /// A tool could not be started at all.
    #[error(
        "cannot run {tool}: {source} (is it installed? it is in dmsetup/util-linux/e2fsprogs)"
    )]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed; `argv` is the command line as run.
    #[error("{argv} failed ({status}): {stderr}")]
    Tool {
        argv: String,
        status: String,
        stderr: String,
    },
    /// A tool succeeded but printed something we cannot use.
    #[error("unexpected output from {argv}: {output:?}")]
    Output { argv: String, output: String },
    /// An argument the functions here refuse before running anything.
    #[error("{0}")]
    Invalid(String),
    /// The caller's check on the freshly attached loop devices refused
    /// them; the loops were detached again.
    #[error("loop devices for {name} refused: {reason}")]
    Refused { name: String, reason: String },
    /// A create failed and undoing it failed too: loop devices may be
    /// left attached.
    #[error("{error}; undoing it also failed: {cleanup}")]
    Unwind {
        error: Box<CowError>,
        cleanup: String,
    },
    /// The snapshot is open (its VM is probably running).
    #[error("{dev} is open {opens} time(s) (is its VM running?); refusing to fsck it")]
    InUse { dev: String, opens: u32 },
    /// e2fsck left errors or could not run the check.
    #[error("e2fsck {dev} exited {code} ({meaning}): {output}")]
    Fsck {
        dev: String,
        code: i32,
        meaning: String,
        output: String,
    },
}

impl CowError {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CowError {
        let path = path.into();
        move |source| CowError::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_stored_names() {
        for (k, s) in [
            (CowKind::Qcow2Overlay, "qcow2"),
            (CowKind::DmSnapshot, "dm-snapshot"),
            (CowKind::Reflink, "reflink"),
            (CowKind::SparseCopy, "sparse-copy"),
        ] {
            assert_eq!(k.as_str(), s);
            assert_eq!(k.to_string(), s);
            assert_eq!(s.parse::<CowKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<CowKind>(&format!("\"{s}\"")).unwrap(),
                k
            );
        }
        for bad in ["", "QCOW2", "dm_snapshot", "copy", " reflink"] {
            let e = bad.parse::<CowKind>().unwrap_err();
            assert!(e.to_string().contains("unknown copy-on-write kind"), "{e}");
        }
    }
}
