//! Carrying out validated requests. Every op validates its input first
//! ([`crate::validate`]); nothing here takes a path, pid or name from the
//! request without that.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_api::ApiError;
use banger_vmm::qemu::QemuConfig;
use tokio::sync::Mutex;

use crate::dmsnap::{self, DmHost};
use crate::pidfd::{pidfd_kill, pidfd_open};
use crate::proto::{HelperRequest, HelperResponse, VERSION};
use crate::validate::{self, Roots};

/// How long a QEMU launch may take before it is reported as failed.
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The helper's own configuration, from its command line. Nothing in it
/// comes from requests.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    pub socket: PathBuf,
    pub roots: Roots,
    /// The unprivileged user the helper works for: taps are owned by it,
    /// QEMU runs as it, the socket belongs to it.
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub qemu_bin: PathBuf,
    /// The Firecracker and jailer binaries (never taken from requests).
    pub firecracker: crate::firecracker::FirecrackerConfig,
    /// False when started with `--allow-non-root` as a normal user: the
    /// network ops are refused and QEMU runs as the helper's own user.
    pub privileged: bool,
    pub launch_timeout: Duration,
}

/// Shared state of a running helper.
#[derive(Debug)]
pub struct Helper {
    pub config: HelperConfig,
    /// Serialises bridge/tap changes so concurrent requests for the same
    /// device do not race each other.
    net_lock: Mutex<()>,
}

impl Helper {
    pub fn new(config: HelperConfig) -> Arc<Helper> {
        Arc::new(Helper {
            config,
            net_lock: Mutex::new(()),
        })
    }

    fn require_root(&self, op: &str) -> Result<(), ApiError> {
        if self.config.privileged {
            Ok(())
        } else {
            Err(ApiError::failed(format!(
                "{op} needs root; this helper runs unprivileged (--allow-non-root)"
            )))
        }
    }
}

/// Runs one request to completion.
pub async fn execute(helper: &Arc<Helper>, req: HelperRequest) -> Result<HelperResponse, ApiError> {
    let cfg = &helper.config;
    match req {
        HelperRequest::Ping => Ok(HelperResponse::Pong {
            version: VERSION.to_string(),
        }),
        HelperRequest::EnsureBridge { name, ip, prefix } => {
            validate::bridge_name(&name)?;
            validate::bridge_address(ip, prefix)?;
            helper.require_root("ensure_bridge")?;
            let _g = helper.net_lock.lock().await;
            banger_net::ensure_bridge(&name, ip, prefix)
                .await
                .map_err(|e| ApiError::failed(format!("ensure bridge {name}: {e}")))?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::CreateTap { name, bridge } => {
            validate::tap_name(&name)?;
            validate::bridge_name(&bridge)?;
            helper.require_root("create_tap")?;
            let _g = helper.net_lock.lock().await;
            banger_net::create_tap(&name, &bridge, cfg.owner_uid, cfg.owner_gid)
                .await
                .map_err(|e| ApiError::failed(format!("create tap {name}: {e}")))?;
            if validate::pool_tap_name(&name).is_ok() {
                // Pool taps wait parked (down): a claim then renames and
                // brings one up in a single netlink request.
                banger_net::set_down(&name)
                    .await
                    .map_err(|e| ApiError::failed(format!("park tap {name}: {e}")))?;
            }
            Ok(HelperResponse::Done)
        }
        HelperRequest::DeleteTap { name } => {
            validate::tap_name(&name)?;
            helper.require_root("delete_tap")?;
            let _g = helper.net_lock.lock().await;
            banger_net::delete_tap(&name)
                .await
                .map_err(|e| ApiError::failed(format!("delete tap {name}: {e}")))?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::ClaimTap {
            pool,
            vm_id,
            bridge,
        } => {
            validate::pool_tap_name(&pool)?;
            validate::vm_id(&vm_id)?;
            validate::bridge_name(&bridge)?;
            helper.require_root("claim_tap")?;
            let tap = banger_net::tap_name_for(&vm_id);
            let _g = helper.net_lock.lock().await;
            banger_net::rename_tap(&pool, &tap, &bridge, true)
                .await
                .map_err(|e| ApiError::failed(format!("claim {pool} as {tap}: {e}")))?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::ReleaseTap {
            vm_id,
            pool,
            bridge,
        } => {
            validate::vm_id(&vm_id)?;
            validate::pool_tap_name(&pool)?;
            validate::bridge_name(&bridge)?;
            helper.require_root("release_tap")?;
            let tap = banger_net::tap_name_for(&vm_id);
            let _g = helper.net_lock.lock().await;
            banger_net::rename_tap(&tap, &pool, &bridge, false)
                .await
                .map_err(|e| ApiError::failed(format!("release {tap} as {pool}: {e}")))?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::LaunchQemu { config } => {
            let h = helper.clone();
            let pid = blocking(move || launch(&h.config, &config)).await?;
            Ok(HelperResponse::Launched { pid })
        }
        HelperRequest::SignalVmm { vm_id, pid, signal } => {
            validate::vm_id(&vm_id)?;
            let sig = validate::signal(&signal)?;
            let pid = validate::pid(pid)?;
            let roots = cfg.roots.clone();
            blocking(move || signal_vmm(&roots, &vm_id, pid, sig)).await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::KillVmm { vm_id, pid } => {
            validate::vm_id(&vm_id)?;
            let pid = validate::pid(pid)?;
            let roots = cfg.roots.clone();
            blocking(move || signal_vmm(&roots, &vm_id, pid, libc::SIGKILL)).await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::ChownToOwner { path } => {
            let roots = cfg.roots.clone();
            let (uid, gid) = (cfg.owner_uid, cfg.owner_gid);
            blocking(move || chown_to_owner(&roots, &path, uid, gid)).await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::CreateDmSnapshot { vm_id, base, cow } => {
            validate::dm::create_request(&vm_id, &base, &cow, &cfg.roots)?;
            helper.require_root("create_dm_snapshot")?;
            let roots = cfg.roots.clone();
            let snap =
                blocking(move || dmsnap::create(&DmHost::system(), &roots, &vm_id, &base, &cow))
                    .await?;
            Ok(HelperResponse::DmSnapshot(snap))
        }
        HelperRequest::RemoveDmSnapshot { handle } => {
            validate::dm::handle_shape(&handle)?;
            helper.require_root("remove_dm_snapshot")?;
            let roots = cfg.roots.clone();
            blocking(move || dmsnap::remove(&DmHost::system(), &roots, &handle)).await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::FsckSnapshot { dev } => {
            validate::dm::dm_dev(&dev)?;
            helper.require_root("fsck_snapshot")?;
            let outcome = blocking(move || dmsnap::fsck(&DmHost::system(), &dev)).await?;
            Ok(HelperResponse::Fscked { outcome })
        }
        HelperRequest::LaunchFirecracker(spec) => {
            let h = helper.clone();
            let launched = blocking(move || crate::firecracker::launch(&h.config, &spec)).await?;
            Ok(HelperResponse::FirecrackerLaunched(launched))
        }
        HelperRequest::CleanupFirecracker { vm_id } => {
            let roots = cfg.roots.clone();
            blocking(move || crate::firecracker::cleanup(&roots, &vm_id)).await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::EnsureNat { vm_id, ip, bridge } => {
            // The rules' comment is built from vm_id: it must have passed.
            validate::vm_id(&vm_id)?;
            validate::bridge_name(&bridge)?;
            validate::nat_guest(ip)?;
            helper.require_root("ensure_nat")?;
            let _g = helper.net_lock.lock().await;
            blocking(move || {
                banger_net::ensure_vm_nat(&vm_id, ip, &bridge)
                    .map(drop)
                    .map_err(|e| ApiError::failed(format!("ensure nat for vm {vm_id}: {e}")))
            })
            .await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::RemoveNat { vm_id } => {
            validate::vm_id(&vm_id)?;
            helper.require_root("remove_nat")?;
            let _g = helper.net_lock.lock().await;
            blocking(move || {
                banger_net::remove_vm_nat(&vm_id)
                    .map_err(|e| ApiError::failed(format!("remove nat for vm {vm_id}: {e}")))
            })
            .await?;
            Ok(HelperResponse::Done)
        }
        HelperRequest::SyncResolverRouting { bridge, server } => {
            validate::bridge_name(&bridge)?;
            validate::resolver_addr(&server)?;
            helper.require_root("sync_resolver_routing")?;
            let _g = helper.net_lock.lock().await;
            blocking(move || crate::resolver::sync(&bridge, &server)).await
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("helper task failed: {e}")))?
}

/// Validates and starts QEMU detached. Runs on a blocking thread.
pub fn launch(cfg: &HelperConfig, qemu: &QemuConfig) -> Result<u32, ApiError> {
    validate::qemu_config(qemu, &cfg.roots)?;
    // launch() removes the pidfile first; never do that under a live VMM.
    if let Some(pid) = banger_vmm::proc::read_pidfile(&qemu.pidfile) {
        if banger_vmm::proc::is_vmm_for(pid, &qemu.pidfile) {
            return Err(ApiError::conflict(format!(
                "vm {} already has a running VMM (pid {pid})",
                qemu.vm_id
            )));
        }
    }
    // As root, drop QEMU to the owner (a no-op when the owner is root).
    // Unprivileged, QEMU simply runs as us.
    let uid_gid = cfg.privileged.then_some((cfg.owner_uid, cfg.owner_gid));
    banger_vmm::qemu::launch(&cfg.qemu_bin, qemu, uid_gid, cfg.launch_timeout)
        .map_err(|e| ApiError::failed(format!("launch vm {}: {e}", qemu.vm_id)))
}

/// Sends `sig` to `pid` only if it is this VM's VMM: its QEMU (by pidfile)
/// or its Firecracker ([`crate::firecracker::is_our_vmm`]).
///
/// A pidfd is opened first and the signal goes through it, so a pid that
/// exits and is reused between the check and the send cannot be hit.
pub fn signal_vmm(roots: &Roots, vm_id: &str, pid: i32, sig: i32) -> Result<(), ApiError> {
    let not_ours =
        || ApiError::not_found(format!("pid {pid} is not the running VMM of vm {vm_id}"));
    // `pid` passed validate::pid, so it is positive.
    let pidfd = match pidfd_open(pid as u32) {
        Ok(fd) => fd,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Err(not_ours()),
                Some(libc::ENOSYS) => {
                    signal_with_kill(roots, vm_id, pid, sig).map_err(|e| e.unwrap_or_else(not_ours))
                }
                _ => Err(ApiError::failed(format!("pidfd_open({pid}): {e}"))),
            }
        }
    };
    if !crate::firecracker::is_our_vmm(roots, vm_id, pid as u32) {
        return Err(not_ours());
    }
    if let Err(e) = pidfd_kill(&pidfd, sig) {
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Err(not_ours());
        }
        return Err(ApiError::failed(format!("signal pid {pid}: {e}")));
    }
    Ok(())
}

/// Fallback for kernels without pidfds (before 5.3): check, then kill(2).
fn signal_with_kill(
    roots: &Roots,
    vm_id: &str,
    pid: i32,
    sig: i32,
) -> Result<(), Option<ApiError>> {
    if !crate::firecracker::is_our_vmm(roots, vm_id, pid as u32) {
        return Err(None);
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Err(None);
        }
        return Err(Some(ApiError::failed(format!("signal pid {pid}: {e}"))));
    }
    Ok(())
}

/// Hands `path` over to the owner without following symlinks anywhere:
/// each directory below the root is opened with `O_NOFOLLOW|O_DIRECTORY`
/// relative to the previous one and the leaf is changed with
/// `AT_SYMLINK_NOFOLLOW`, so swapping a component for a symlink after
/// validation achieves nothing.
pub fn chown_to_owner(roots: &Roots, path: &Path, uid: u32, gid: u32) -> Result<(), ApiError> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{fchownat, Gid, Uid};

    let root = validate::chown_target(path, roots)?;
    let rel = path.strip_prefix(root).map_err(|_| {
        ApiError::bad_request(format!("path: {} is outside its root", path.display()))
    })?;
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(p) => Ok(p),
            _ => Err(ApiError::bad_request("path: not in normal form")),
        })
        .collect::<Result<_, _>>()?;
    let Some((leaf, dirs)) = parts.split_last() else {
        return Err(ApiError::bad_request("path: empty"));
    };
    let failed = |what: &str, e: nix::Error| {
        ApiError::failed(format!("chown {}: {what}: {e}", path.display()))
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // The root is configured by the admin and trusted as it is.
    let mut dir: OwnedFd = openat(nix::fcntl::AT_FDCWD, root, dir_flags, Mode::empty())
        .map_err(|e| failed("open root", e))?;
    for d in dirs {
        dir = openat(&dir, *d, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| {
            if e == nix::Error::ELOOP || e == nix::Error::ENOTDIR {
                ApiError::bad_request(format!(
                    "path: {} has a component that is not a real directory",
                    path.display()
                ))
            } else {
                failed("open directory", e)
            }
        })?;
    }
    fchownat(
        &dir,
        *leaf,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| failed("fchownat", e))
}

#[cfg(test)]
mod tests;
