//! `/etc/banger/install.toml` ([`banger_paths::system::INSTALL_FILE`]): who
//! owns the install, which build is installed and when it was installed.
//!
//! Its existence is what switches every banger process to the system paths
//! ([`banger_paths::Layout`]), so it is written last and removed first.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::units::Owner;

/// File mode of `install.toml`: world-readable (every user's CLI reads it).
pub const MODE: u32 = 0o644;

const HEADER: &str = "# Written by `banger system install`; `banger update` rewrites the build\n\
                      # fields. `banger system uninstall` removes it.\n";

/// The contents of `install.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallMeta {
    /// The user `bangerd` runs as.
    pub owner_user: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub owner_home: PathBuf,
    /// The installed build (see [`BuildInfo`]).
    pub version: String,
    pub commit: String,
    pub built_at: String,
    /// When `banger system install` ran (RFC 3339, UTC; [`rfc3339_utc`]).
    /// `banger update` keeps it.
    pub installed_at: String,
}

/// What identifies a build: the fields `banger update` rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
    pub built_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot encode install metadata for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: toml::ser::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InstallMeta {
    /// A fresh install's metadata: `installed_at` is now.
    pub fn new(owner: &Owner, build: &BuildInfo) -> InstallMeta {
        InstallMeta {
            owner_user: owner.user.clone(),
            owner_uid: owner.uid,
            owner_gid: owner.gid,
            owner_home: owner.home.clone(),
            version: build.version.clone(),
            commit: build.commit.clone(),
            built_at: build.built_at.clone(),
            installed_at: rfc3339_utc(SystemTime::now()),
        }
    }

    /// The owner fields, e.g. to render the units again on update.
    pub fn owner(&self) -> Owner {
        Owner {
            user: self.owner_user.clone(),
            uid: self.owner_uid,
            gid: self.owner_gid,
            home: self.owner_home.clone(),
        }
    }

    pub fn build(&self) -> BuildInfo {
        BuildInfo {
            version: self.version.clone(),
            commit: self.commit.clone(),
            built_at: self.built_at.clone(),
        }
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<InstallMeta, MetaError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| MetaError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `path` atomically (temp file in the same dir, fsync, rename),
    /// mode 0644. The directory must exist.
    pub fn write(&self, path: &Path) -> Result<(), MetaError> {
        let body = toml::to_string(self).map_err(|source| MetaError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        let text = format!("{HEADER}{body}");
        fsutil::write_atomic(path, text.as_bytes(), MODE).map_err(|source| MetaError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Rewrites the build fields of the install file at `path` (for `banger
/// update`), keeping the owner fields and `installed_at`; returns what it
/// wrote.
pub fn update_build_info(path: &Path, build: &BuildInfo) -> Result<InstallMeta, MetaError> {
    let mut meta = InstallMeta::read(path)?;
    meta.version = build.version.clone();
    meta.commit = build.commit.clone();
    meta.built_at = build.built_at.clone();
    meta.write(path)?;
    Ok(meta)
}

/// `t` as RFC 3339 in UTC to the second (`2026-11-22T06:53:16Z`); times
/// before 1970 print as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn owner() -> Owner {
        Owner {
            user: "alice".into(),
            uid: 1000,
            gid: 1001,
            home: "/home/alice".into(),
        }
    }

    fn build(v: &str) -> BuildInfo {
        BuildInfo {
            version: v.into(),
            commit: format!("c-{v}"),
            built_at: "2026-01-02T03:04:05Z".into(),
        }
    }

    #[test]
    fn round_trip_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("install.toml");
        let meta = InstallMeta::new(&owner(), &build("0.1.0"));
        meta.write(&path).unwrap();
        assert_eq!(InstallMeta::read(&path).unwrap(), meta);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Written by"), "{text}");
        assert!(text.contains("owner_user = \"alice\""), "{text}");
        // The only file in the dir: no temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn update_build_info_keeps_owner_and_install_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("install.toml");
        let mut meta = InstallMeta::new(&owner(), &build("0.1.0"));
        meta.installed_at = "2025-05-05T05:05:05Z".into();
        meta.write(&path).unwrap();
        let updated = update_build_info(&path, &build("0.2.0")).unwrap();
        assert_eq!(updated, InstallMeta::read(&path).unwrap());
        assert_eq!(updated.build(), build("0.2.0"));
        assert_eq!(updated.owner(), owner());
        assert_eq!(updated.installed_at, "2025-05-05T05:05:05Z");
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = InstallMeta::read(&missing).unwrap_err().to_string();
        assert!(e.contains(&*missing.to_string_lossy()), "{e}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "owner_user = 3\n").unwrap();
        let e = InstallMeta::read(&bad).unwrap_err();
        assert!(matches!(e, MetaError::Parse { .. }), "{e}");
        assert!(e.to_string().contains(&*bad.to_string_lossy()), "{e}");

        let e = update_build_info(&missing, &build("1")).unwrap_err();
        assert!(matches!(e, MetaError::Read { .. }), "{e}");

        let in_missing_dir = dir.path().join("no/such/install.toml");
        let e = InstallMeta::new(&owner(), &build("1"))
            .write(&in_missing_dir)
            .unwrap_err();
        assert!(matches!(e, MetaError::Write { .. }), "{e}");
        assert!(e.to_string().contains("no/such"), "{e}");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
