use rusqlite::Row;

/// A VM row: identity, shape and lifecycle state. Runtime handles (pid,
/// tap) live in the VM's handles file, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub state: String,
    pub error: Option<String>,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub work_disk_mib: u64,
    pub ip: String,
    pub mac: String,
    pub vmm: String,
    /// Why `vmm` was picked (auto selection), shown by `vm show`.
    pub vmm_reason: Option<String>,
    /// How the root disk is copied-on-write: "qcow2", "dm-snapshot",
    /// "reflink" or "sparse-copy". Fixed at create: the disks depend on it.
    pub root_cow: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    /// Outbound NAT requested at create (`--nat`).
    pub nat: bool,
    /// The prepared workspace as JSON, owned by the daemon's workspace
    /// service; written only by [`crate::Store::set_vm_workspace`].
    pub workspace_json: Option<String>,
}

impl VmRecord {
    pub(crate) const COLUMNS: &'static str = "id, name, state, error, image, vcpus, memory_mib, \
        work_disk_mib, ip, mac, vmm, created_at, started_at, vmm_reason, root_cow, nat, workspace_json";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<VmRecord> {
        Ok(VmRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            state: r.get(2)?,
            error: r.get(3)?,
            image: r.get(4)?,
            vcpus: r.get(5)?,
            memory_mib: r.get(6)?,
            work_disk_mib: r.get(7)?,
            ip: r.get(8)?,
            mac: r.get(9)?,
            vmm: r.get(10)?,
            created_at: r.get(11)?,
            started_at: r.get(12)?,
            vmm_reason: r.get(13)?,
            root_cow: r.get(14)?,
            nat: r.get(15)?,
            workspace_json: r.get(16)?,
        })
    }
}

/// An image registered in the store; its files live in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub dir: String,
    pub source: String,
    pub build_hash: String,
    pub kernel: String,
    pub initrd: Option<String>,
    pub rootfs_bytes: u64,
    pub created_at: i64,
}

impl ImageRecord {
    pub(crate) const COLUMNS: &'static str =
        "name, dir, source, build_hash, kernel, initrd, rootfs_bytes, created_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
        Ok(ImageRecord {
            name: r.get(0)?,
            dir: r.get(1)?,
            source: r.get(2)?,
            build_hash: r.get(3)?,
            kernel: r.get(4)?,
            initrd: r.get(5)?,
            rootfs_bytes: r.get(6)?,
            created_at: r.get(7)?,
        })
    }
}
