//! Building the default image from Debian, with no image server.
//!
//! mmdebstrap builds a minimal bookworm root with the distro kernel and an
//! initramfs trimmed to the virtio drivers a banger VM needs; banger then
//! installs its guest agent and a few boot-time settings straight into the
//! tree, and packs it with `mkfs.ext4 -d`. The build happens in a hidden
//! sibling directory and is renamed into place only when complete, so a
//! failed or interrupted build never leaves a half image behind.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{ext4, tool, ImageError, Manifest};

/// Bumped whenever the way images are customised changes, so existing
/// images are rebuilt.
pub const BUILDER_VERSION: u32 = 1;

/// Packages on top of `minbase`.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "procps",
    "git",
    "curl",
    "less",
];

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITE: &str = "bookworm";

/// The guest agent's systemd unit.
pub const AGENT_UNIT: &str = "\
[Unit]
Description=banger guest agent
After=systemd-udevd.service local-fs.target
Wants=systemd-udevd.service
# Commands run in /root, the work disk: never answer before it is mounted.
RequiresMountsFor=/root
# The daemon calls a VM ready when the agent answers, and users ssh in
# right after: start after sshd (Type=notify, so it is listening by then).
# Only an ordering: a guest without sshd, or whose sshd fails, still gets
# its agent.
After=ssh.service sshd.service
Before=network-online.target

[Service]
Type=simple
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// A fallback SSH host key for a VM whose work disk carries none (banger
/// puts one there at create; see [`SSHD_CONFIG`]). Ed25519 only: `ssh-keygen
/// -A` also makes RSA and ECDSA keys, and RSA generation under software
/// emulation held sshd back for tens of seconds after the agent was ready.
pub const SSH_KEYGEN_UNIT: &str = "\
[Unit]
Description=banger: generate an SSH host key when the work disk has none
Before=ssh.service
RequiresMountsFor=/root
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
ConditionPathExists=!/root/.banger/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
";

/// sshd settings. The daemon generates each VM's host key before the VM
/// first boots and puts it on the work disk (mounted at /root before sshd
/// starts), so it can write known_hosts without trusting on first use. The
/// key from `banger-ssh-keygen` stays as a fallback for a work disk without
/// one. Root logs in with banger's key only.
pub const SSHD_CONFIG: &str = "\
# written by banger
HostKey /root/.banger/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
";

/// The root and the work disk (mounted over /root). Not `nofail`:
/// local-fs.target (and so the agent) must wait for the work disk, or a
/// write to /root could land on the root disk and vanish under the mount.
/// The device timeout is generous: eight VMs booting at once under software
/// emulation on two cores took longer than systemd's 90 s default (and than
/// the 30 s we had), which dropped guests into emergency mode.
pub const FSTAB: &str = "# written by banger\n/dev/vda / ext4 defaults 0 0\n/dev/vdb /root ext4 defaults,x-systemd.device-timeout=10min 0 0\n";

/// Units a disposable VM does not need; masked to shorten boot.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "systemd-pstore.service",
];

/// Only the drivers a banger VM needs: a small initramfs unpacks much
/// faster under software emulation than Debian's "most" default.
/// `virtio_pci` finds QEMU's disks; `virtio_mmio` finds Firecracker's,
/// through ACPI (Firecracker >= 1.8) or the `virtio_mmio.device=` keys older
/// Firecracker appends to the command line (modprobe passes them on).
///
/// initramfs-tools also loads every module listed here before it hands over
/// to the root, so the list carries the drivers a root without
/// `/lib/modules` cannot load itself: an OCI image booted with this
/// kernel and initramfs (the agent as init). `virtio_net` is its network,
/// `virtio_console` the agent's virtio-serial port (QEMU) and
/// `vmw_vsock_virtio_transport` its vsock (Firecracker).
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_mmio\nvirtio_blk\next4\n\
    virtio_net\nvirtio_console\nvmw_vsock_virtio_transport\n";

#[derive(Debug, Clone)]
pub struct DebianBuild {
    pub suite: String,
    pub mirror: String,
    pub packages: Vec<String>,
    /// The static banger-agent binary to install in the guest.
    pub agent_bin: PathBuf,
}

impl DebianBuild {
    pub fn new(agent_bin: PathBuf) -> DebianBuild {
        DebianBuild {
            suite: DEFAULT_SUITE.to_string(),
            mirror: DEFAULT_MIRROR.to_string(),
            packages: DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect(),
            agent_bin,
        }
    }

    pub fn source(&self) -> String {
        format!("debian:{}", self.suite)
    }

    /// Hash of every input that shapes the image: builder version, suite,
    /// mirror, packages (in order), the agent binary and the units.
    pub fn build_hash(&self) -> Result<String, ImageError> {
        let agent = std::fs::read(&self.agent_bin).map_err(ImageError::io(format!(
            "read agent binary {}",
            self.agent_bin.display()
        )))?;
        let mut h = Sha256::new();
        h.update(format!("builder={BUILDER_VERSION}\n"));
        h.update(format!("suite={}\nmirror={}\n", self.suite, self.mirror));
        for p in &self.packages {
            h.update(format!("pkg={p}\n"));
        }
        h.update(AGENT_UNIT);
        h.update(SSH_KEYGEN_UNIT);
        h.update(SSHD_CONFIG);
        h.update(FSTAB);
        h.update(INITRAMFS_MODULES);
        h.update(Sha256::digest(&agent));
        Ok(hex::encode(h.finalize()))
    }

    /// Builds the image `name` under `images_dir` and returns its manifest.
    /// An existing image of that name is replaced only once the new one is
    /// complete. `progress` receives one line per build step.
    pub fn build(
        &self,
        name: &str,
        images_dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Manifest, ImageError> {
        let build_hash = self.build_hash()?;
        std::fs::create_dir_all(images_dir)
            .map_err(ImageError::io(format!("create {}", images_dir.display())))?;
        let tmp = images_dir.join(format!(".build-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = self.build_into(name, &tmp, &build_hash, progress);
        match result {
            Ok(manifest) => {
                let dest = images_dir.join(name);
                replace_dir(&tmp, &dest)?;
                Ok(manifest)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn build_into(
        &self,
        name: &str,
        dir: &Path,
        build_hash: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Manifest, ImageError> {
        let tree = dir.join("tree");
        let hooks = dir.join("setup");
        write_initramfs_config(&hooks)?;
        progress(&format!("mmdebstrap {} from {}", self.suite, self.mirror));
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=minbase", "--components=main"])
            .arg(format!("--include={}", self.packages.join(",")))
            // A special hook form (not a shell command): copy our initramfs
            // settings in before the kernel package builds its initramfs.
            .arg(format!("--setup-hook=sync-in {} /", hooks.display()))
            .arg(&self.suite)
            .arg(&tree)
            .arg(&self.mirror);
        tool::run_streaming(&mut cmd, &mut |line| {
            if let Some(msg) = line.strip_prefix("I: ") {
                progress(msg);
            }
        })
        .map_err(|e| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                return ImageError::from(e);
            }
            // Unprivileged mmdebstrap needs user namespaces with subordinate
            // ids (newuidmap, setuid), which a hardened service cannot use.
            ImageError::Invalid(format!(
                "{e}; building a Debian image as a non-root user needs mmdebstrap's unshare mode \
                 (an /etc/subuid range and the setuid newuidmap), which the system service's \
                 NoNewPrivileges forbids: pull or import an image instead (banger image pull), \
                 or build it on a development host (banger daemon start as root)"
            ))
        })?;
        progress("installing banger-agent and boot settings");
        customize_tree(&tree, &self.agent_bin)?;
        let kernel_version = extract_kernel(&tree, dir)?;
        let seed = dir.join("work-seed");
        make_work_seed(&tree, &seed)?;
        let bytes =
            ext4::tree_bytes(&tree).map_err(ImageError::io(format!("size {}", tree.display())))?;
        let size_mib = ext4::rootfs_size_mib(bytes);
        progress(&format!(
            "packing rootfs.ext4 ({size_mib} MiB, sparse) with mkfs.ext4 -d"
        ));
        let rootfs = dir.join("rootfs.ext4");
        ext4::pack_dir(&tree, &rootfs, size_mib, "banger-root")?;
        std::fs::remove_dir_all(&tree)
            .map_err(ImageError::io(format!("remove {}", tree.display())))?;
        let _ = std::fs::remove_dir_all(&hooks);
        let manifest = Manifest {
            name: name.to_string(),
            source: self.source(),
            build_hash: build_hash.to_string(),
            rootfs: "rootfs.ext4".into(),
            kernel: "vmlinuz".into(),
            initrd: Some("initrd.img".into()),
            work_seed: "work-seed".into(),
            kernel_version,
            rootfs_bytes: size_mib * 1024 * 1024,
            created_at: now_unix(),
            kernel_name: None,
            init: None,
        };
        manifest.write(dir)?;
        Ok(manifest)
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(ImageError::io(format!("create {}", parent.display())))?;
    }
    std::fs::write(path, data).map_err(ImageError::io(format!("write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(ImageError::io(format!("chmod {}", path.display())))
}

fn link(target: &str, at: &Path) -> Result<(), ImageError> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)
            .map_err(ImageError::io(format!("create {}", parent.display())))?;
    }
    let _ = std::fs::remove_file(at);
    symlink(target, at).map_err(ImageError::io(format!("symlink {}", at.display())))
}

/// The files the setup hook copies into the new root before packages install.
fn write_initramfs_config(hooks: &Path) -> Result<(), ImageError> {
    write(
        &hooks.join("etc/initramfs-tools/conf.d/banger"),
        b"# written by banger: only the drivers listed in modules.d/banger\nMODULES=list\nCOMPRESS=zstd\n",
        0o644,
    )?;
    write(
        &hooks.join("usr/share/initramfs-tools/modules.d/banger"),
        INITRAMFS_MODULES.as_bytes(),
        0o644,
    )
}

/// Installs the agent and banger's boot settings into a Debian root tree.
pub fn customize_tree(tree: &Path, agent_bin: &Path) -> Result<(), ImageError> {
    let agent = std::fs::read(agent_bin).map_err(ImageError::io(format!(
        "read agent binary {}",
        agent_bin.display()
    )))?;
    write(&tree.join("usr/local/bin/banger-agent"), &agent, 0o755)?;
    let units = tree.join("etc/systemd/system");
    write(
        &units.join("banger-agent.service"),
        AGENT_UNIT.as_bytes(),
        0o644,
    )?;
    link(
        "/etc/systemd/system/banger-agent.service",
        &units.join("multi-user.target.wants/banger-agent.service"),
    )?;
    write(
        &units.join("banger-ssh-keygen.service"),
        SSH_KEYGEN_UNIT.as_bytes(),
        0o644,
    )?;
    link(
        "/etc/systemd/system/banger-ssh-keygen.service",
        &units.join("multi-user.target.wants/banger-ssh-keygen.service"),
    )?;
    write(
        &tree.join("etc/ssh/sshd_config.d/banger.conf"),
        SSHD_CONFIG.as_bytes(),
        0o644,
    )?;
    for unit in MASKED_UNITS {
        link("/dev/null", &units.join(unit))?;
    }
    // The work disk holds /root. Not `nofail`: local-fs.target (and so the
    // agent) must wait for it, or a write to /root could land on the root
    // disk and vanish under the mount.
    write(&tree.join("etc/fstab"), FSTAB.as_bytes(), 0o644)?;
    // Each VM generates its own machine-id and SSH host keys at first boot.
    write(&tree.join("etc/machine-id"), b"", 0o444)?;
    let _ = std::fs::remove_file(tree.join("var/lib/dbus/machine-id"));
    if let Ok(entries) = std::fs::read_dir(tree.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    write(&tree.join("etc/hostname"), b"banger\n", 0o644)?;
    Ok(())
}

/// Copies `/boot/vmlinuz-*` and `/boot/initrd.img-*` out of the tree as
/// `vmlinuz` and `initrd.img`; returns the kernel version.
pub fn extract_kernel(tree: &Path, dest: &Path) -> Result<String, ImageError> {
    let boot = tree.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map_err(ImageError::io(format!("read {}", boot.display())))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    versions.sort();
    let Some(version) = versions.pop() else {
        return Err(ImageError::Incomplete {
            dir: tree.display().to_string(),
            problem: "no /boot/vmlinuz-* (is linux-image-amd64 in the package list?)".into(),
        });
    };
    let copy = |from: PathBuf, to: PathBuf| -> Result<(), ImageError> {
        std::fs::copy(&from, &to)
            .map(|_| ())
            .map_err(ImageError::io(format!(
                "copy {} to {}",
                from.display(),
                to.display()
            )))
    };
    copy(
        boot.join(format!("vmlinuz-{version}")),
        dest.join("vmlinuz"),
    )?;
    copy(
        boot.join(format!("initrd.img-{version}")),
        dest.join("initrd.img"),
    )?;
    Ok(version)
}

/// The seed of every VM's work disk: the image's /root plus `.hushlogin`
/// (the work disk is mounted over /root, so that is where it must live).
pub fn make_work_seed(tree: &Path, seed: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(seed).map_err(ImageError::io(format!("create {}", seed.display())))?;
    std::fs::set_permissions(seed, std::fs::Permissions::from_mode(0o700))
        .map_err(ImageError::io(format!("chmod {}", seed.display())))?;
    let root_home = tree.join("root");
    if let Ok(entries) = std::fs::read_dir(&root_home) {
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_file() {
                let to = seed.join(e.file_name());
                std::fs::copy(e.path(), &to)
                    .map_err(ImageError::io(format!("copy {}", e.path().display())))?;
            }
        }
    }
    write(&seed.join(".hushlogin"), b"", 0o644)
}

/// Moves a finished build into place, replacing any previous image only
/// after the new one is complete.
fn replace_dir(tmp: &Path, dest: &Path) -> Result<(), ImageError> {
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".old-{}-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(dest, &old)
            .map_err(ImageError::io(format!("move aside {}", dest.display())))?;
        std::fs::rename(tmp, dest)
            .map_err(ImageError::io(format!("rename to {}", dest.display())))?;
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    std::fs::rename(tmp, dest).map_err(ImageError::io(format!("rename to {}", dest.display())))
}

#[cfg(test)]
mod tests;
