//! Numbered schema migrations and the compatibility check.
//!
//! Each migration runs once, in order, inside a transaction that also
//! records its id in `schema_migrations`. Never edit a released migration:
//! add a new one.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// `(id, name, sql)`, ids strictly increasing.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "vms and images",
        "CREATE TABLE vms (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        state         TEXT NOT NULL,
        error         TEXT,
        image         TEXT NOT NULL,
        vcpus         INTEGER NOT NULL,
        memory_mib    INTEGER NOT NULL,
        work_disk_mib INTEGER NOT NULL,
        ip            TEXT NOT NULL UNIQUE,
        mac           TEXT NOT NULL,
        vmm           TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        started_at    INTEGER
    );
    CREATE TABLE images (
        name         TEXT PRIMARY KEY,
        dir          TEXT NOT NULL,
        source       TEXT NOT NULL,
        build_hash   TEXT NOT NULL,
        kernel       TEXT NOT NULL,
        initrd       TEXT,
        rootfs_bytes INTEGER NOT NULL,
        created_at   INTEGER NOT NULL
    );",
    ),
    (
        2,
        "vmm choice and copy-on-write kind per vm",
        // Rows from before the Firecracker backend all ran QEMU over a
        // qcow2 overlay.
        "ALTER TABLE vms ADD COLUMN vmm_reason TEXT;
         ALTER TABLE vms ADD COLUMN root_cow TEXT NOT NULL DEFAULT 'qcow2';",
    ),
    (
        3,
        "workspace and nat per vm",
        // workspace_json: the prepared workspace (guest path, host source,
        // HEAD commit), NULL until `vm workspace prepare`. nat: outbound
        // masquerade requested at create.
        "ALTER TABLE vms ADD COLUMN workspace_json TEXT;
         ALTER TABLE vms ADD COLUMN nat INTEGER NOT NULL DEFAULT 0;",
    ),
];

/// How a database relates to the migrations this binary knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every known migration applied, nothing unknown.
    Compatible,
    /// Some migrations are pending; opening the store applies them.
    MigrationsNeeded { pending: Vec<u32> },
    /// The database has migrations this binary does not know (it is older).
    Incompatible { unknown: Vec<u32> },
}

impl SchemaState {
    /// The `bangerd --check-migrations` exit code: 0, 1 or 2.
    pub fn exit_code(&self) -> i32 {
        match self {
            SchemaState::Compatible => 0,
            SchemaState::MigrationsNeeded { .. } => 1,
            SchemaState::Incompatible { .. } => 2,
        }
    }

    /// The one line `bangerd --check-migrations` prints.
    pub fn describe(&self) -> String {
        match self {
            SchemaState::Compatible => "compatible: schema is up to date".to_string(),
            SchemaState::MigrationsNeeded { pending } => {
                format!("migrations needed: pending {pending:?} (applied on next daemon start)")
            }
            SchemaState::Incompatible { unknown } => format!(
                "incompatible: database has migrations {unknown:?} this binary does not know"
            ),
        }
    }
}

fn known_ids() -> Vec<u32> {
    MIGRATIONS.iter().map(|m| m.0).collect()
}

fn applied_ids(conn: &Connection) -> Result<Vec<u32>, rusqlite::Error> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT id FROM schema_migrations ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get::<_, u32>(0))?;
    ids.collect()
}

fn classify(applied: &[u32], known: &[u32]) -> SchemaState {
    let unknown: Vec<u32> = applied
        .iter()
        .copied()
        .filter(|id| !known.contains(id))
        .collect();
    if !unknown.is_empty() {
        return SchemaState::Incompatible { unknown };
    }
    let pending: Vec<u32> = known
        .iter()
        .copied()
        .filter(|id| !applied.contains(id))
        .collect();
    if pending.is_empty() {
        SchemaState::Compatible
    } else {
        SchemaState::MigrationsNeeded { pending }
    }
}

/// Classifies the database at `path` without writing to it. A missing file
/// is a fresh install: every migration is pending.
pub fn inspect_schema(path: &Path) -> Result<SchemaState, StoreError> {
    if !path.exists() {
        return Ok(SchemaState::MigrationsNeeded {
            pending: known_ids(),
        });
    }
    let conn = crate::open_read_only(path)?;
    Ok(classify(&applied_ids(&conn)?, &known_ids()))
}

pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            id         INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )?;
    let applied = applied_ids(conn)?;
    if let SchemaState::Incompatible { unknown } = classify(&applied, &known_ids()) {
        return Err(StoreError::Incompatible {
            path: path.display().to_string(),
            unknown,
        });
    }
    for (id, name, sql) in MIGRATIONS {
        if applied.contains(id) {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (id, name, applied_at) VALUES (?1, ?2, strftime('%s','now'))",
            rusqlite::params![id, name],
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase() {
        let ids = known_ids();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[0], 1);
    }

    #[test]
    fn classification_table() {
        assert_eq!(classify(&[1], &[1]), SchemaState::Compatible);
        assert_eq!(
            classify(&[1], &[1, 2]),
            SchemaState::MigrationsNeeded { pending: vec![2] }
        );
        assert_eq!(
            classify(&[1, 99], &[1]),
            SchemaState::Incompatible { unknown: vec![99] }
        );
        assert_eq!(
            classify(&[], &[1]),
            SchemaState::MigrationsNeeded { pending: vec![1] }
        );
    }

    #[test]
    fn exit_codes_are_the_contract() {
        assert_eq!(SchemaState::Compatible.exit_code(), 0);
        assert_eq!(
            SchemaState::MigrationsNeeded { pending: vec![1] }.exit_code(),
            1
        );
        assert_eq!(
            SchemaState::Incompatible { unknown: vec![9] }.exit_code(),
            2
        );
    }
}
