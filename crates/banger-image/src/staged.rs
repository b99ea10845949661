//! An image being assembled, and publishing it under its name.
//!
//! Every way an image arrives (OCI pull or import, catalog bundle, promote)
//! assembles it in a hidden `.tmp-*` directory inside the images directory
//! (same filesystem, mode 0700), then renames it to its name with
//! `RENAME_NOREPLACE`: a reader sees no image or a whole one, an existing
//! image is never overwritten, and a failure (or a dropped future) leaves
//! nothing behind but a temp directory that is removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::ImageError;

/// Prefix of staging directories in the images directory.
pub const STAGING_PREFIX: &str = ".tmp-";

pub struct StagedImage {
    tmp: tempfile::TempDir,
    /// The image is this subdirectory of `tmp` (a bundle unpacks into one).
    sub: Option<String>,
}

impl StagedImage {
    /// A fresh 0700 staging directory for `name` in `images_dir`.
    pub fn new(images_dir: &Path, name: &str) -> Result<StagedImage, ImageError> {
        std::fs::create_dir_all(images_dir)
            .map_err(ImageError::io(format!("create {}", images_dir.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{name}-"))
            .tempdir_in(images_dir)
            .map_err(ImageError::io(format!(
                "create a staging directory in {}",
                images_dir.display()
            )))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io(format!("chmod {}", tmp.path().display())))?;
        Ok(StagedImage { tmp, sub: None })
    }

    /// The staging directory (the image itself unless
    /// [`Self::set_image_dir`] moved it into a subdirectory).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The directory that becomes the image.
    pub fn image_dir(&self) -> PathBuf {
        match &self.sub {
            Some(sub) => self.tmp.path().join(sub),
            None => self.tmp.path().to_path_buf(),
        }
    }

    /// Says the image is the subdirectory `sub` of the staging directory;
    /// the rest is scratch, removed with it.
    pub fn set_image_dir(&mut self, sub: &str) {
        self.sub = Some(sub.to_string());
    }

    /// Renames the staged image to `images_dir/name`; fails, removing the
    /// staged files, when that name exists. The published directory is made
    /// 0755 (the image files themselves keep their modes).
    pub fn publish(self, images_dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
        let dest = images_dir.join(name);
        let src = self.image_dir();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io(format!("chmod {}", src.display())))?;
        match renameat2(
            AT_FDCWD,
            &src,
            AT_FDCWD,
            &dest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                // The image has moved out; the staging directory (empty,
                // or scratch around a subdirectory) is removed on drop,
                // unless it was the image itself.
                if self.sub.is_none() {
                    let _ = self.tmp.keep();
                }
                Ok(dest)
            }
            Err(nix::errno::Errno::EEXIST) => Err(ImageError::Invalid(format!(
                "image {name:?} already exists ({}); delete it first",
                dest.display()
            ))),
            Err(e) => Err(ImageError::Io {
                context: format!("rename {} to {}", src.display(), dest.display()),
                source: e.into(),
            }),
        }
    }
}

/// Removes staging directories a crash left behind; returns what it removed.
pub fn cleanup(images_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return removed;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX)
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_renames_and_never_overwrites() {
        let images = tempfile::tempdir().unwrap();
        let s = StagedImage::new(images.path(), "a").unwrap();
        std::fs::write(s.path().join("f"), b"one").unwrap();
        let dest = s.publish(images.path(), "a").unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"one");

        let s = StagedImage::new(images.path(), "a").unwrap();
        std::fs::write(s.path().join("f"), b"two").unwrap();
        let e = s.publish(images.path(), "a").unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"one");
        // The loser's staging directory is gone.
        let names: Vec<_> = std::fs::read_dir(images.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn dropping_a_staged_image_removes_it_and_cleanup_finds_leftovers() {
        let images = tempfile::tempdir().unwrap();
        let s = StagedImage::new(images.path(), "b").unwrap();
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists());
        std::fs::create_dir(images.path().join(".tmp-crashed")).unwrap();
        std::fs::create_dir(images.path().join("kept")).unwrap();
        assert_eq!(cleanup(images.path()).len(), 1);
        assert!(images.path().join("kept").exists());
    }
}
