//! banger's persistent state in SQLite (WAL mode).
//!
//! This is the only crate that speaks SQL. The schema evolves through the
//! numbered [`migrations::MIGRATIONS`]; [`inspect_schema`] tells whether a
//! database file is compatible with this binary without changing it, which
//! is what `bangerd --check-migrations` reports.

pub mod migrations;
mod records;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

pub use migrations::{inspect_schema, SchemaState};
pub use records::{ImageRecord, VmRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open state database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path} was written by a newer banger (it has migrations {unknown:?} this binary does not know); update banger")]
    Incompatible { path: String, unknown: Vec<u32> },
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A handle on the state database. Queries are short; one connection behind
/// a mutex is plenty for a per-user daemon.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies any
    /// pending migrations. Refuses a database from a newer binary.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        migrations::migrate(&conn, Path::new(":memory:"))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let res = self.conn().execute(
            "INSERT INTO vms (id, name, state, error, image, vcpus, memory_mib, work_disk_mib,
                              ip, mac, vmm, created_at, started_at, vmm_reason, root_cow,
                              nat, workspace_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17)",
            params![
                vm.id,
                vm.name,
                vm.state,
                vm.error,
                vm.image,
                vm.vcpus,
                vm.memory_mib,
                vm.work_disk_mib,
                vm.ip,
                vm.mac,
                vm.vmm,
                vm.created_at,
                vm.started_at,
                vm.vmm_reason,
                vm.root_cow,
                vm.nat,
                vm.workspace_json
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                if msg.contains("vms.name") {
                    Err(StoreError::AlreadyExists {
                        what: "vm",
                        name: vm.name.clone(),
                    })
                } else if msg.contains("vms.ip") {
                    Err(StoreError::AlreadyExists {
                        what: "ip",
                        name: vm.ip.clone(),
                    })
                } else {
                    Err(StoreError::AlreadyExists {
                        what: "vm id",
                        name: vm.id.clone(),
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Updates the mutable fields of a VM row (state, error, shape, start
    /// time, and the VMM and root kind settled during create).
    pub fn update_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET state = ?2, error = ?3, vcpus = ?4, memory_mib = ?5,
                            work_disk_mib = ?6, started_at = ?7, vmm = ?8,
                            vmm_reason = ?9, root_cow = ?10
             WHERE id = ?1",
            params![
                vm.id,
                vm.state,
                vm.error,
                vm.vcpus,
                vm.memory_mib,
                vm.work_disk_mib,
                vm.started_at,
                vm.vmm,
                vm.vmm_reason,
                vm.root_cow
            ],
        )?;
        Ok(())
    }

    /// Records (or, with `None`, forgets) a VM's prepared workspace. Kept
    /// apart from [`Store::update_vm`] so a lifecycle change holding an
    /// older copy of the row never rolls the workspace back.
    pub fn set_vm_workspace(&self, id: &str, json: Option<&str>) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE vms SET workspace_json = ?2 WHERE id = ?1",
            params![id, json],
        )?;
        Ok(n == 1)
    }

    /// Sets a VM's shape (`banger vm set`) on a row that is neither running
    /// nor being created; returns false when no such row matched. Only
    /// these three columns change, so a stale copy of the row elsewhere
    /// never rolls back anything else.
    pub fn set_vm_spec(
        &self,
        id: &str,
        vcpus: u32,
        memory_mib: u32,
        work_disk_mib: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE vms SET vcpus = ?2, memory_mib = ?3, work_disk_mib = ?4
             WHERE id = ?1 AND state NOT IN ('running', 'creating')",
            params![id, vcpus, memory_mib, work_disk_mib],
        )?;
        Ok(n == 1)
    }

    pub fn vm_by_name(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {} FROM vms WHERE name = ?1", VmRecord::COLUMNS),
                [name],
                VmRecord::from_row,
            )
            .optional()?)
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM vms ORDER BY created_at, name",
            VmRecord::COLUMNS
        ))?;
        let rows = stmt.query_map([], VmRecord::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_vm(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM vms WHERE id = ?1", [id])? > 0)
    }

    /// Every guest address recorded, so allocation never hands one out twice.
    pub fn used_ips(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT ip FROM vms")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn upsert_image(&self, img: &ImageRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO images (name, dir, source, build_hash, kernel, initrd, rootfs_bytes, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET dir = excluded.dir, source = excluded.source,
                 build_hash = excluded.build_hash, kernel = excluded.kernel,
                 initrd = excluded.initrd, rootfs_bytes = excluded.rootfs_bytes,
                 created_at = excluded.created_at",
            params![
                img.name,
                img.dir,
                img.source,
                img.build_hash,
                img.kernel,
                img.initrd,
                img.rootfs_bytes,
                img.created_at
            ],
        )?;
        Ok(())
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM images WHERE name = ?1",
                    ImageRecord::COLUMNS
                ),
                [name],
                ImageRecord::from_row,
            )
            .optional()?)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM images ORDER BY name",
            ImageRecord::COLUMNS
        ))?;
        let rows = stmt.query_map([], ImageRecord::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_image(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM images WHERE name = ?1", [name])?
            > 0)
    }

    /// Names of VMs built on `image` (an image in use cannot be deleted).
    pub fn vms_using_image(&self, image: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM vms WHERE image = ?1 ORDER BY name")?;
        let rows = stmt.query_map([image], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Opens an existing database read-only (doctor, --check-migrations).
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
        StoreError::Open {
            path: path.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests;
