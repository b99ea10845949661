//! The Firecracker ops on the real filesystem and real processes.
//!
//! Most of these need root (bind mounts, chown, mknod) and skip with a
//! message otherwise; CI runs them as root. Each test has its own temp
//! tree and VM id, and an [`Env`] guard that, even when the test fails,
//! kills what was started and detaches every mount under its tree before
//! the tree is deleted.
//!
//! Firecracker itself cannot run here (no KVM for it, and it would need a
//! guest), so the launches use stand-ins: Python scripts named
//! `firecracker` (so the process's comm is `firecracker`, which the pid
//! checks require) that parse `--api-sock`/`--log-path` like Firecracker,
//! bind the API socket and sleep; and a stand-in `jailer` that follows
//! jailer's observable contract (copy `--exec-file` into
//! `<base>/firecracker/<id>/root`, write `firecracker.pid` there, setsid
//! for `--daemonize`, drop to `--uid`/`--gid`, exec with `--id`). It does
//! not chroot (the interpreter is not inside the chroot); it tells the
//! stand-in Firecracker the chroot root through the environment instead.

mod launch;
mod staging;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_vmm::jailer::{DriveSpec, LaunchSpec};

use super::*;
use crate::ops::HelperConfig;

const OWNER: (u32, u32) = (4242, 4343);

pub use crate::testutil::is_root;

/// True (after saying why) when the test cannot run here.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (bind mounts, chown, mknod)");
        return true;
    }
    false
}

/// A fresh 12-hex VM id per test: the in-flight set is process-wide.
pub fn vm_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A Python interpreter the owner uid can run directly (a `#!` line with
/// it keeps the script's comm), or `None` (the caller skips).
pub fn python() -> Option<PathBuf> {
    let p = std::fs::canonicalize("/usr/bin/python3").ok()?;
    p.is_file().then_some(p)
}

/// The stand-in Firecracker.
const FAKE_FIRECRACKER: &str = r#"
import os, socket, sys, time
args = sys.argv[1:]
def val(flag, short=None):
    for i, a in enumerate(args):
        if a in (flag, short) and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None
root = os.environ.get("FAKE_JAIL_ROOT", "")
log = val("--log-path")
if log:
    with open(root + log, "a") as f:
        f.write("stand-in firecracker up\n")
s = socket.socket(socket.AF_UNIX)
s.bind(root + val("--api-sock", "-a"))
s.listen(4)
while True:
    time.sleep(3600)
"#;

/// The stand-in jailer.
const FAKE_JAILER: &str = r#"
import os, shutil, sys
args = sys.argv[1:]
sep = args.index("--")
opts, extra = args[:sep], args[sep + 1:]
def val(flag):
    return opts[opts.index(flag) + 1]
vm, exe = val("--id"), val("--exec-file")
uid, gid = int(val("--uid")), int(val("--gid"))
name = os.path.basename(exe)
chroot = os.path.join(val("--chroot-base-dir"), name, vm, "root")
os.makedirs(chroot, exist_ok=True)
dst = os.path.join(chroot, name)
shutil.copy2(exe, dst)
os.chown(dst, uid, gid)
for d in ("dev", "run"):
    os.makedirs(os.path.join(chroot, d), exist_ok=True)
os.chown(os.path.join(chroot, "run"), uid, gid)
os.chown(chroot, uid, gid)
if "--daemonize" in opts:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
fd = os.open(os.path.join(chroot, name + ".pid"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, str(os.getpid()).encode())
os.close(fd)
os.setgid(gid)
os.setuid(uid)
os.execve(dst, [dst, "--id", vm] + extra, {"FAKE_JAIL_ROOT": chroot})
"#;

/// One test's world: state and runtime roots laid out as the daemon would
/// (per-VM dirs owned by the owner), a kernel, an initrd and two drives,
/// stand-in binaries, and a helper config pointing at all of it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cfg: HelperConfig,
    pub vm: String,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        // The owner must be able to reach its files and the binaries.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let roots = Roots {
            state_dir: dir.path().join("state"),
            runtime_dir: dir.path().join("run"),
        };
        let vm = vm_id();
        for d in [
            roots.vm_state_dir(&vm),
            roots.vm_runtime_dir(&vm),
            roots.images_dir(),
        ] {
            std::fs::create_dir_all(&d).unwrap();
        }
        for d in [roots.vm_state_dir(&vm), roots.vm_runtime_dir(&vm)] {
            std::os::unix::fs::chown(&d, Some(OWNER.0), Some(OWNER.1)).unwrap();
        }
        std::fs::write(roots.images_dir().join("vmlinux"), b"kernel").unwrap();
        std::fs::write(roots.images_dir().join("initrd.img"), b"initrd").unwrap();
        for f in ["rootfs.ext4", "work.ext4"] {
            let p = roots.vm_state_dir(&vm).join(f);
            std::fs::write(&p, b"disk").unwrap();
            std::os::unix::fs::chown(&p, Some(OWNER.0), Some(OWNER.1)).unwrap();
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let cfg = HelperConfig {
            socket: dir.path().join("helper.sock"),
            roots,
            owner_uid: OWNER.0,
            owner_gid: OWNER.1,
            qemu_bin: PathBuf::from("/nonexistent/qemu"),
            firecracker: FirecrackerConfig {
                firecracker_bin: bin.join("firecracker"),
                jailer_bin: bin.join("jailer"),
            },
            privileged: true,
            launch_timeout: Duration::from_secs(10),
        };
        Env { dir, cfg, vm }
    }

    pub fn roots(&self) -> &Roots {
        &self.cfg.roots
    }

    /// Writes the stand-in binaries (root-owned, 0755).
    pub fn install_fakes(&self, python: &Path) {
        self.write_bin(
            "firecracker",
            &format!("#!{}\n{FAKE_FIRECRACKER}", python.display()),
        );
        self.write_bin("jailer", &format!("#!{}\n{FAKE_JAILER}", python.display()));
    }

    pub fn write_bin(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join("bin").join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn spec(&self, jailer: bool) -> LaunchSpec {
        let s = self.roots().vm_state_dir(&self.vm);
        LaunchSpec {
            vm_id: self.vm.clone(),
            jailer,
            kernel: self.roots().images_dir().join("vmlinux"),
            initrd: Some(self.roots().images_dir().join("initrd.img")),
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: s.join("rootfs.ext4"),
                },
                DriveSpec {
                    id: "work".into(),
                    path: s.join("work.ext4"),
                },
            ],
            log: true,
        }
    }

    pub fn layout(&self) -> JailerLayout {
        JailerLayout::new(&self.roots().state_dir)
    }

    /// Mount points under this test's tree.
    pub fn mounts(&self) -> Vec<PathBuf> {
        fsx::mounts_under(&fsx::mount_points().unwrap(), self.dir.path())
    }

    /// `launch`, retrying only ETXTBSY: a script written a moment ago can
    /// still be open in a child another test thread is forking.
    pub fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ApiError> {
        for _ in 0..50 {
            match launch(&self.cfg, spec) {
                Err(e) if e.message.contains("Text file busy") => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => return other,
            }
        }
        launch(&self.cfg, spec)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !is_root() {
            return;
        }
        if let Err(e) = cleanup(&self.cfg.roots, &self.vm) {
            eprintln!("env cleanup: {e:?}");
        }
        // Whatever a failed test left mounted (tmpfs included) goes before
        // TempDir removes the tree.
        if let Err(e) = fsx::unmount_all_under(self.dir.path()) {
            eprintln!("env unmount: {e}");
        }
    }
}
