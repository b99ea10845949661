//! Test helpers shared by the clone and dm tests: sparse fixtures, byte
//! comparison, and root-only scratch filesystems that clean up after
//! themselves.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command quietly; Err carries its stderr.
pub fn sh(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deterministic non-zero-ish bytes, different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8 | 1
        })
        .collect()
}

/// A `size`-byte file that is a hole except for `islands` of data.
pub fn write_sparse(path: &Path, size: u64, islands: &[(u64, usize)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in islands.iter().enumerate() {
        f.write_all_at(&pattern(len, i as u64 + 1), off).unwrap();
    }
    f.sync_all().unwrap();
}

/// The bytes the file really occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn assert_same_bytes(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len(), "sizes differ");
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        assert!(ba[..n] == bb[..n], "contents differ in the 1 MiB at {off}");
        off += n as u64;
    }
}

/// Names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A filesystem mounted for one test, unmounted (and its loop device
/// released) on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// Mounts `image` (a filesystem image file) with `-o loop` on `dir`.
    pub fn image(image: &Path, dir: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh(&[
            "mount",
            "-o",
            "loop",
            image.to_str().unwrap(),
            dir.to_str().unwrap(),
        ])?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// A tmpfs of `size` (e.g. `"2m"`) on `dir`.
    pub fn tmpfs(size: &str, dir: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            dir.to_str().unwrap(),
        ])?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = sh(&["umount", self.dir.to_str().unwrap()]) {
            eprintln!("warning: {e}");
        }
    }
}
