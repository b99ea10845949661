//! A VM's work disk (mounted at /root in the guest): the image's seed plus
//! what belongs to this VM alone, packed with `mkfs.ext4 -d`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The work disk's file name in the VM's directory.
pub const FILE: &str = "work.ext4";

/// The VM's work disk file and its format: a raw ext4 image, or, for a
/// VM restored from a warm snapshot, a qcow2 overlay over the snapshot's.
pub fn current(vm_dir: &Path) -> (&'static str, banger_vmm::qemu::DiskFormat) {
    if vm_dir.join(crate::warm::WORK_OVERLAY).exists() {
        (
            crate::warm::WORK_OVERLAY,
            banger_vmm::qemu::DiskFormat::Qcow2,
        )
    } else {
        (FILE, banger_vmm::qemu::DiskFormat::Raw)
    }
}

/// What the work disk gets on top of the image's seed.
pub struct PerVm<'a> {
    /// One `authorized_keys` line: banger's client key.
    pub authorized_key: &'a str,
    /// The VM's SSH host key (OpenSSH private key text).
    pub host_key: &'a str,
    pub host_key_pub: &'a str,
}

/// Packs `out` (`size_mib`) from `seed` plus the per-VM files, staging them
/// in a temporary directory beside `out` that is removed whatever happens.
pub fn build(seed: &Path, out: &Path, size_mib: u64, extra: &PerVm<'_>) -> Result<(), String> {
    let parent = out.parent().unwrap_or(Path::new("."));
    let stage = tempfile::Builder::new()
        .prefix(".work-stage-")
        .tempdir_in(parent)
        .map_err(|e| format!("staging dir in {}: {e}", parent.display()))?;
    let root = stage.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", root.display()))?;
    copy_tree(seed, root)?;
    write(root, ".ssh", "authorized_keys", extra.authorized_key, 0o600)?;
    let (dir, name) = crate::ssh::GUEST_HOST_KEY
        .rsplit_once('/')
        .expect("GUEST_HOST_KEY has a directory");
    write(root, dir, name, extra.host_key, 0o600)?;
    write(root, dir, &format!("{name}.pub"), extra.host_key_pub, 0o644)?;
    banger_image::ext4::pack_dir(root, out, size_mib, "banger-work").map_err(|e| e.to_string())
}

fn write(root: &Path, dir: &str, name: &str, text: &str, mode: u32) -> Result<(), String> {
    let d = root.join(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|e| format!("create {}: {e}", d.display()))?;
    let p = d.join(name);
    let mut body = text.to_string();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    std::fs::write(&p, body).map_err(|e| format!("write {}: {e}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// Copies a small tree (files, directories, symlinks; modes kept).
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("read {}: {e}", from.display()))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta =
            std::fs::symlink_metadata(&src).map_err(|e| format!("stat {}: {e}", src.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
            copy_tree(&src, &dst)?;
            std::fs::set_permissions(&dst, meta.permissions())
                .map_err(|e| format!("chmod {}: {e}", dst.display()))?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(|e| format!("readlink {}: {e}", src.display()))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(|e| format!("symlink {}: {e}", dst.display()))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_disk_holds_seed_keys_and_nothing_is_left_staged() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(seed.join("sub")).unwrap();
        std::fs::write(seed.join(".hushlogin"), b"").unwrap();
        std::fs::write(seed.join("sub/f"), b"x").unwrap();
        let out = dir.path().join("vm/work.ext4");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        build(
            &seed,
            &out,
            16,
            &PerVm {
                authorized_key: "ssh-ed25519 AAAA banger",
                host_key: "PRIVATE",
                host_key_pub: "ssh-ed25519 BBBB host",
            },
        )
        .unwrap();
        // Only the disk is left beside it.
        let names: Vec<_> = std::fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["work.ext4"]);
        // Read the files back out of the ext4 image with debugfs.
        let cat = |p: &str| {
            let o = std::process::Command::new("debugfs")
                .args(["-R", &format!("cat {p}")])
                .arg(&out)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert_eq!(cat("/.ssh/authorized_keys"), "ssh-ed25519 AAAA banger\n");
        assert_eq!(cat("/.banger/ssh_host_ed25519_key"), "PRIVATE\n");
        assert_eq!(cat("/sub/f"), "x");
        let stat = std::process::Command::new("debugfs")
            .args(["-R", "stat /.banger/ssh_host_ed25519_key"])
            .arg(&out)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        assert!(stat.contains("Mode:  0600"), "{stat}");
    }
}
