//! Turning a fetched OCI image into a bootable banger image.
//!
//! 1. Every layer is decompressed (gzip, zstd or none) and applied by the
//!    [`Flattener`] into `tree/`, inside a 0700 staging directory, so the
//!    setuid files a layer may carry are out of other users' reach.
//! 2. banger's own files go in as one more layer through the same
//!    [`Flattener`]: the guest agent, and for images with systemd its units,
//!    an fstab and masks; for images without, nothing else, because the
//!    agent boots as PID 1 (`init=`). A layer cannot write through a
//!    symlink, so an image whose `/usr/local/bin` or `/etc` is a symlink is
//!    refused instead of letting banger's writes land outside the tree.
//! 3. The tree is packed with `mkfs.ext4 -d`; the image's `/root` seeds the
//!    per-VM work disk.
//!
//! The image boots a kernel from the kernel store ([`Manifest::kernel_name`]).

use std::io::{BufReader, Cursor};
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::flatten::{FlattenReport, Flattener, Limits};
use super::source::{Compression, FetchedImage};
use crate::debian::{self, AGENT_UNIT, FSTAB, SSHD_CONFIG, SSH_KEYGEN_UNIT};
use crate::staged::StagedImage;
use crate::{ext4, ImageError, Manifest};

/// Bumped whenever the way OCI images are turned into banger images changes.
pub const OCI_BUILDER_VERSION: u32 = 1;
/// Where the agent lives in every image, and the `init=` of images without
/// systemd.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";

/// What [`build`] needs besides the image.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static guest agent to install.
    pub agent_bin: std::path::PathBuf,
    /// The kernel-store kernel the image boots.
    pub kernel_name: String,
    pub limits: Limits,
}

/// What the build found, for the caller to report.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub flatten: FlattenReport,
    /// The image has systemd: it boots its own init with banger's units.
    pub systemd: bool,
}

/// Builds image `name` from `fetched` in a staging directory under
/// `images_dir`; the caller publishes it. `source` goes in the manifest
/// (e.g. `oci:registry/name:tag@sha256:...`).
pub fn build(
    fetched: &FetchedImage,
    source: &str,
    name: &str,
    images_dir: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(StagedImage, BuildReport), ImageError> {
    let agent = std::fs::read(&opts.agent_bin).map_err(ImageError::io(format!(
        "read agent binary {}",
        opts.agent_bin.display()
    )))?;
    let staged = StagedImage::new(images_dir, name)?;
    let tree = staged.path().join("tree");
    std::fs::create_dir(&tree).map_err(ImageError::io(format!("create {}", tree.display())))?;

    let mut flattener = Flattener::new(&tree, opts.limits).map_err(flatten_err)?;
    let count = fetched.layers.len();
    for (i, layer) in fetched.layers.iter().enumerate() {
        progress(&format!(
            "applying layer {}/{count} {} ({})",
            i + 1,
            short(&layer.digest),
            human(layer.size)
        ));
        let file = std::fs::File::open(&layer.path).map_err(ImageError::io(format!(
            "open layer {}",
            layer.path.display()
        )))?;
        let reader = BufReader::new(file);
        match layer.compression {
            Compression::None => flattener.apply_layer(i, reader),
            Compression::Gzip => {
                flattener.apply_layer(i, flate2::read::MultiGzDecoder::new(reader))
            }
            Compression::Zstd => {
                let z = ruzstd::StreamingDecoder::new(reader).map_err(|e| {
                    ImageError::Invalid(format!("layer {}: bad zstd stream: {e}", layer.digest))
                })?;
                flattener.apply_layer(i, z)
            }
        }
        .map_err(flatten_err)?;
    }

    let systemd = has_systemd(&tree);
    let ssh = is_dir_in_root(&tree, "etc/ssh");
    progress(&format!(
        "installing banger-agent ({})",
        if systemd {
            "systemd unit"
        } else {
            "as init: the image has no systemd"
        }
    ));
    let layer = banger_layer(&agent, systemd, ssh)?;
    flattener
        .apply_layer(count, Cursor::new(layer))
        .map_err(|e| {
            ImageError::Invalid(format!("installing banger's files into the image: {e}"))
        })?;
    let flatten = flattener.finish();

    let seed = staged.path().join("work-seed");
    debian::make_work_seed(&tree, &seed)?;
    let bytes =
        ext4::tree_bytes(&tree).map_err(ImageError::io(format!("size {}", tree.display())))?;
    let size_mib = ext4::rootfs_size_mib(bytes);
    progress(&format!(
        "packing rootfs.ext4 ({size_mib} MiB, sparse) with mkfs.ext4 -d"
    ));
    ext4::pack_dir(
        &tree,
        &staged.path().join("rootfs.ext4"),
        size_mib,
        "banger-root",
    )?;
    std::fs::remove_dir_all(&tree).map_err(ImageError::io(format!("remove {}", tree.display())))?;

    let manifest = Manifest {
        name: name.to_string(),
        source: source.to_string(),
        build_hash: build_hash(fetched, &agent, &opts.kernel_name),
        rootfs: "rootfs.ext4".into(),
        kernel: String::new(),
        initrd: None,
        work_seed: "work-seed".into(),
        kernel_version: String::new(),
        rootfs_bytes: size_mib * 1024 * 1024,
        created_at: debian::now_unix(),
        kernel_name: Some(opts.kernel_name.clone()),
        init: (!systemd).then(|| AGENT_PATH.to_string()),
    };
    manifest.write(staged.path())?;
    Ok((staged, BuildReport { flatten, systemd }))
}

fn flatten_err(e: super::flatten::FlattenError) -> ImageError {
    ImageError::Invalid(e.to_string())
}

/// The image's identity plus everything banger adds to it.
fn build_hash(fetched: &FetchedImage, agent: &[u8], kernel: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("oci-builder={OCI_BUILDER_VERSION}\n"));
    h.update(format!("manifest={}\n", fetched.manifest_digest));
    h.update(format!("kernel={kernel}\n"));
    h.update(Sha256::digest(agent));
    hex::encode(h.finalize())
}

/// systemd is the image's init: `/sbin/init` exists and systemd is installed
/// (resolved inside the tree, as the guest would).
fn has_systemd(tree: &Path) -> bool {
    exists_in_root(tree, "sbin/init")
        && (exists_in_root(tree, "lib/systemd/systemd")
            || exists_in_root(tree, "usr/lib/systemd/systemd"))
}

/// Opens `rel` with every symlink resolved as if `tree` were `/`
/// (`RESOLVE_IN_ROOT`), so an absolute link in the image never reaches the
/// host. Used only to look, never to write.
fn open_in_root(tree: &Path, rel: &str, flags: OFlag) -> Option<std::os::fd::OwnedFd> {
    let root = nix::fcntl::open(
        tree,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root.as_fd(), rel, how).ok()
}

fn exists_in_root(tree: &Path, rel: &str) -> bool {
    open_in_root(tree, rel, OFlag::O_PATH).is_some()
}

fn is_dir_in_root(tree: &Path, rel: &str) -> bool {
    open_in_root(tree, rel, OFlag::O_PATH | OFlag::O_DIRECTORY).is_some()
}

/// Units a disposable VM does not need; masked to shorten boot (as in the
/// Debian image).
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "getty@tty1.service",
];

/// banger's layer: a tar archive applied on top of the image's own layers.
fn banger_layer(agent: &[u8], systemd: bool, ssh: bool) -> Result<Vec<u8>, ImageError> {
    let mut b = LayerBuilder::default();
    b.dir("root", 0o700);
    b.file("usr/local/bin/banger-agent", agent, 0o755);
    b.file("etc/hostname", b"banger\n", 0o644);
    if ssh {
        b.file(
            "etc/ssh/sshd_config.d/banger.conf",
            SSHD_CONFIG.as_bytes(),
            0o644,
        );
        // Each VM gets its own host key (on its work disk, or generated at
        // first boot); never one baked into the image.
        for key in ["rsa", "ecdsa", "ed25519", "dsa"] {
            b.whiteout(&format!("etc/ssh/.wh.ssh_host_{key}_key"));
            b.whiteout(&format!("etc/ssh/.wh.ssh_host_{key}_key.pub"));
        }
    }
    if systemd {
        let units = "etc/systemd/system";
        b.file(
            &format!("{units}/banger-agent.service"),
            AGENT_UNIT.as_bytes(),
            0o644,
        );
        b.symlink(
            &format!("{units}/multi-user.target.wants/banger-agent.service"),
            "/etc/systemd/system/banger-agent.service",
        );
        if ssh {
            b.file(
                &format!("{units}/banger-ssh-keygen.service"),
                SSH_KEYGEN_UNIT.as_bytes(),
                0o644,
            );
            b.symlink(
                &format!("{units}/multi-user.target.wants/banger-ssh-keygen.service"),
                "/etc/systemd/system/banger-ssh-keygen.service",
            );
        }
        for unit in MASKED_UNITS {
            b.symlink(&format!("{units}/{unit}"), "/dev/null");
        }
        b.file("etc/fstab", FSTAB.as_bytes(), 0o644);
        b.file("etc/machine-id", b"", 0o444);
    }
    b.finish()
}

#[derive(Default)]
struct LayerBuilder {
    entries: Vec<(tar::Header, Vec<u8>)>,
}

impl LayerBuilder {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(debian::now_unix().max(0) as u64);
        h
    }

    fn push(&mut self, mut h: tar::Header, path: &str, data: Vec<u8>) {
        // Our own names are short, static and valid; set_path cannot fail
        // on them (checked by the tests).
        h.set_path(path).expect("banger layer path");
        h.set_cksum();
        self.entries.push((h, data));
    }

    fn dir(&mut self, path: &str, mode: u32) {
        let h = Self::header(tar::EntryType::Directory, mode, 0);
        self.push(h, path, Vec::new());
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.push(h, path, data.to_vec());
    }

    fn whiteout(&mut self, path: &str) {
        let h = Self::header(tar::EntryType::Regular, 0o644, 0);
        self.push(h, path, Vec::new());
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).expect("banger layer link");
        self.push(h, path, Vec::new());
    }

    fn finish(self) -> Result<Vec<u8>, ImageError> {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in self.entries {
            b.append(&h, data.as_slice())
                .map_err(ImageError::io("build banger's layer"))?;
        }
        b.into_inner()
            .map_err(ImageError::io("build banger's layer"))
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests;
