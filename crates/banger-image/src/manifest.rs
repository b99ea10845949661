//! `manifest.json`: what an image directory holds and how it was built.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ImageError;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Where the root came from, e.g. "debian:bookworm".
    pub source: String,
    /// Hash of every build input; a different hash means a rebuild.
    pub build_hash: String,
    /// File names, relative to the image directory (absolute for an image
    /// registered in place with `banger image register`).
    pub rootfs: String,
    /// The image's own kernel; empty when [`Manifest::kernel_name`] names
    /// one from the kernel store instead.
    pub kernel: String,
    pub initrd: Option<String>,
    /// A kernel from the kernel store (catalog or import) to boot this
    /// image with; OCI images carry no kernel of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_name: Option<String>,
    /// The guest's init, when it is not the image's own `/sbin/init` (an
    /// OCI image without systemd boots with the agent as PID 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Directory copied into each VM's fresh work disk (the guest's /root).
    pub work_seed: String,
    pub kernel_version: String,
    pub rootfs_bytes: u64,
    pub created_at: i64,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let data =
            std::fs::read(&path).map_err(ImageError::io(format!("read {}", path.display())))?;
        serde_json::from_slice(&data).map_err(|source| ImageError::Manifest {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the manifest through a temp file and a rename, so a reader
    /// never sees half of it.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let data = serde_json::to_vec_pretty(self).expect("manifest serialises");
        std::fs::write(&tmp, data).map_err(ImageError::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(ImageError::io(format!("rename {}", path.display())))
    }

    pub fn rootfs_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.rootfs)
    }

    /// The image's own kernel, unless it boots one from the kernel store.
    pub fn kernel_path(&self, dir: &Path) -> Option<PathBuf> {
        (self.kernel_name.is_none() && !self.kernel.is_empty()).then(|| dir.join(&self.kernel))
    }

    pub fn initrd_path(&self, dir: &Path) -> Option<PathBuf> {
        if self.kernel_name.is_some() {
            return None;
        }
        self.initrd.as_ref().map(|i| dir.join(i))
    }

    /// True for an image registered in place: its files live outside the
    /// image directory and are the user's, not banger's.
    pub fn is_registered(&self) -> bool {
        Path::new(&self.rootfs).is_absolute()
    }

    pub fn work_seed_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.work_seed)
    }

    /// Checks that every file the manifest names exists.
    pub fn check_complete(&self, dir: &Path) -> Result<(), ImageError> {
        if self.kernel_name.is_none() && self.kernel.is_empty() {
            return Err(ImageError::Incomplete {
                dir: dir.display().to_string(),
                problem: "the manifest names neither a kernel file nor a kernel_name".into(),
            });
        }
        let mut want = vec![self.rootfs_path(dir), self.work_seed_path(dir)];
        want.extend(self.kernel_path(dir));
        want.extend(self.initrd_path(dir));
        for p in want {
            if !p.exists() {
                return Err(ImageError::Incomplete {
                    dir: dir.display().to_string(),
                    problem: format!("{} is missing", p.display()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            name: "debian-bookworm".into(),
            source: "debian:bookworm".into(),
            build_hash: "abc".into(),
            rootfs: "rootfs.ext4".into(),
            kernel: "vmlinuz".into(),
            initrd: Some("initrd.img".into()),
            work_seed: "work-seed".into(),
            kernel_version: "6.1.0-50-amd64".into(),
            rootfs_bytes: 1,
            created_at: 2,
            kernel_name: None,
            init: None,
        }
    }

    #[test]
    fn an_image_booting_a_store_kernel_needs_no_kernel_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample();
        m.kernel = String::new();
        m.initrd = None;
        m.kernel_name = Some("debian-6.1".into());
        std::fs::write(dir.path().join("rootfs.ext4"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("work-seed")).unwrap();
        m.check_complete(dir.path()).unwrap();
        assert_eq!(m.kernel_path(dir.path()), None);
        // Manifests written before these fields existed still load.
        m.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!text.contains("\"init\""), "{text}");
        let old = serde_json::to_string(&sample())
            .unwrap()
            .replace(",\"kernel_name\":null", "");
        let back: Manifest = serde_json::from_str(&old).unwrap();
        assert_eq!(back.kernel_name, None);
        m.kernel_name = None;
        let e = m.check_complete(dir.path()).unwrap_err().to_string();
        assert!(e.contains("neither a kernel file nor a kernel_name"), "{e}");
    }

    #[test]
    fn write_then_load_round_trips_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), sample());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [MANIFEST_FILE]);
    }

    #[test]
    fn incomplete_image_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = sample().check_complete(dir.path()).unwrap_err().to_string();
        assert!(e.contains("rootfs.ext4 is missing"), "{e}");
    }

    #[test]
    fn garbage_manifest_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
    }
}
