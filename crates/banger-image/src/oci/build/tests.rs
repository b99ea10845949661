//! Builds real ext4 images from layers made here and reads them back with
//! debugfs (e2fsprogs), the way the guest would see them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::oci::source::Layer;

/// One layer entry: (path, kind) where kind is a file body, a dir or a link.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Writes each layer gzip-compressed (the common case) and describes it.
fn fetched(dir: &Path, layers: &[Vec<u8>]) -> FetchedImage {
    let mut out = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let path = dir.join(format!("layer{i}.tar.gz"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let data = gz.finish().unwrap();
        std::fs::write(&path, &data).unwrap();
        out.push(Layer {
            path,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compression: Compression::Gzip,
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&data))),
            size: data.len() as u64,
        });
    }
    FetchedImage {
        reference: "test/image:1".into(),
        manifest_digest: format!("sha256:{}", "ab".repeat(32)),
        index_digest: None,
        config_digest: format!("sha256:{}", "cd".repeat(32)),
        config: Default::default(),
        layers: out,
    }
}

fn opts(dir: &Path) -> BuildOptions {
    let agent = dir.join("agent-bin");
    std::fs::write(&agent, b"#!agent\n").unwrap();
    BuildOptions {
        agent_bin: agent,
        kernel_name: "debian-6.1".into(),
        limits: Limits::default(),
    }
}

/// `debugfs -R "cat PATH"` of the image: the file's bytes, or None.
fn cat(image: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    (!err.contains("File not found")).then_some(out.stdout)
}

fn build_into(
    dir: &Path,
    layers: &[Vec<u8>],
) -> Result<(PathBuf, Manifest, BuildReport), ImageError> {
    let images = dir.join("images");
    let f = fetched(dir, layers);
    let (staged, report) = build(
        &f,
        "oci:test/image:1",
        "img",
        &images,
        &opts(dir),
        &mut |_| {},
    )?;
    let dest = staged.publish(&images, "img")?;
    let m = Manifest::load(&dest)?;
    Ok((dest, m, report))
}

#[test]
fn an_image_without_systemd_boots_the_agent_as_init() {
    let dir = tempfile::tempdir().unwrap();
    let base = layer_tar(&[
        E::Dir("bin"),
        E::File("bin/sh", b"busybox"),
        E::Dir("etc"),
        E::File("etc/fixture", b"layer1"),
        E::File("etc/remove-me", b"x"),
        E::Dir("root"),
        E::File("root/.profile", b"profile"),
    ]);
    let top = layer_tar(&[
        E::File("etc/fixture", b"layer2"),
        E::File("etc/.wh.remove-me", b""),
    ]);
    let (dest, m, report) = build_into(dir.path(), &[base, top]).unwrap();
    assert!(!report.systemd);
    assert_eq!(m.init.as_deref(), Some(AGENT_PATH));
    assert_eq!(m.kernel_name.as_deref(), Some("debian-6.1"));
    assert_eq!(m.kernel_path(&dest), None);
    m.check_complete(&dest).unwrap();
    let rootfs = m.rootfs_path(&dest);
    assert_eq!(cat(&rootfs, "/etc/fixture").unwrap(), b"layer2");
    assert_eq!(cat(&rootfs, "/etc/remove-me"), None, "whiteout applied");
    assert_eq!(cat(&rootfs, AGENT_PATH).unwrap(), b"#!agent\n");
    assert_eq!(
        cat(&rootfs, "/etc/systemd/system/banger-agent.service"),
        None
    );
    // The image's /root seeds the work disk, which is mounted over /root.
    assert_eq!(
        std::fs::read(dest.join("work-seed/.profile")).unwrap(),
        b"profile"
    );
    assert!(dest.join("work-seed/.hushlogin").exists());
    assert!(
        !dest.join("tree").exists(),
        "the tree is removed after packing"
    );
}

#[test]
fn an_image_with_systemd_gets_banger_units_and_keeps_its_init() {
    let dir = tempfile::tempdir().unwrap();
    // Merged /usr, as in Debian bookworm images: the checks resolve links
    // inside the tree.
    let base = layer_tar(&[
        E::Dir("usr"),
        E::Dir("usr/lib"),
        E::Dir("usr/lib/systemd"),
        E::File("usr/lib/systemd/systemd", b"systemd"),
        E::Dir("usr/sbin"),
        E::Link("usr/sbin/init", "/lib/systemd/systemd"),
        E::Link("lib", "usr/lib"),
        E::Link("sbin", "usr/sbin"),
        E::Dir("etc"),
        E::Dir("etc/ssh"),
        E::File("etc/ssh/ssh_host_ed25519_key", b"baked-in secret"),
    ]);
    let (dest, m, report) = build_into(dir.path(), &[base]).unwrap();
    assert!(report.systemd);
    assert_eq!(m.init, None);
    let rootfs = m.rootfs_path(&dest);
    assert_eq!(
        cat(&rootfs, "/etc/systemd/system/banger-agent.service").unwrap(),
        AGENT_UNIT.as_bytes()
    );
    assert!(cat(&rootfs, "/etc/fstab")
        .unwrap()
        .starts_with(b"# written by banger"));
    assert_eq!(
        cat(&rootfs, "/etc/ssh/sshd_config.d/banger.conf").unwrap(),
        SSHD_CONFIG.as_bytes()
    );
    assert_eq!(
        cat(&rootfs, "/etc/ssh/ssh_host_ed25519_key"),
        None,
        "an image's baked-in host key is removed"
    );
}

#[test]
fn an_image_whose_usr_points_at_the_host_is_refused_and_the_host_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(victim.join("local/bin")).unwrap();
    std::fs::write(victim.join("local/bin/keep"), b"keep").unwrap();
    let base = layer_tar(&[E::Link("usr", victim.to_str().unwrap())]);
    let e = build_into(dir.path(), &[base]).unwrap_err().to_string();
    assert!(e.contains("installing banger's files"), "{e}");
    assert!(!victim.join("local/bin/banger-agent").exists());
    assert_eq!(
        std::fs::read(victim.join("local/bin/keep")).unwrap(),
        b"keep"
    );
    // Nothing published, no staging directory left.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_root_symlink_never_copies_host_files_into_the_work_seed() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-home");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret"), b"host secret").unwrap();
    let base = layer_tar(&[E::Link("root", host.to_str().unwrap())]);
    let (dest, _, _) = build_into(dir.path(), &[base]).unwrap();
    assert!(!dest.join("work-seed/secret").exists());
    assert_eq!(std::fs::read(host.join("secret")).unwrap(), b"host secret");
}

#[test]
fn the_banger_layer_is_a_valid_archive_with_expected_names() {
    let data = banger_layer(b"agent", true, true).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(data.as_slice()).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"usr/local/bin/banger-agent".to_string()));
    assert!(names
        .contains(&"etc/systemd/system/multi-user.target.wants/banger-agent.service".to_string()));
    let bare = banger_layer(b"agent", false, false).unwrap();
    let n = tar::Archive::new(bare.as_slice())
        .entries()
        .unwrap()
        .count();
    assert_eq!(n, 3, "root, agent, hostname");
}
