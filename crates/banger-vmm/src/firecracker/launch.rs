//! A microVM as banger describes it, and the exact API calls that configure
//! and boot it.
//!
//! The plan is data, built without any I/O, so the order and every body can
//! be pinned by tests and checked against Firecracker's spec; [`apply`] then
//! replays it over a [`FcClient`]. The devices mirror the QEMU backend: root
//! drive (`/dev/vda`), work drive (`/dev/vdb`), one virtio-net on a tap, a
//! vsock for the agent, and an entropy device.

use std::path::{Path, PathBuf};

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::client::{FcClient, FcError};
use super::models::{
    ActionType, BootSource, CacheType, Drive, EntropyDevice, InstanceActionInfo, Logger,
    MachineConfiguration, Metrics, NetworkInterface, SerialDevice, Vsock,
};

/// Drive id of the root filesystem (the first virtio-blk device, `/dev/vda`).
pub const ROOT_DRIVE_ID: &str = "rootfs";
/// Drive id of the work disk (`/dev/vdb`).
pub const WORK_DRIVE_ID: &str = "work";
/// The one network interface.
pub const IFACE_ID: &str = "eth0";

/// Everything needed to configure and boot one Firecracker microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcVmConfig {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// An image this Firecracker can boot (see [`super::kernel::kernel_for`]).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub boot_args: String,
    /// Raw ext4 image of the root filesystem.
    pub root_drive: PathBuf,
    /// Raw ext4 image mounted at /root in the guest.
    pub work_drive: PathBuf,
    pub tap: String,
    pub mac: String,
    /// The hybrid vsock's Unix socket, as Firecracker sees the path.
    pub vsock_uds: PathBuf,
    pub guest_cid: u32,
    /// Firecracker's own log (an existing file or fifo), if wanted.
    pub log_path: Option<PathBuf>,
    /// Firecracker's metrics file, if wanted.
    pub metrics_path: Option<PathBuf>,
    /// Where the guest console goes (an existing file), if wanted; only
    /// for Firecracker versions with `PUT /serial` (see
    /// [`super::version::Features::serial_config`]).
    #[serde(default)]
    pub serial_path: Option<PathBuf>,
}

/// HTTP methods a plan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiMethod {
    Put,
    Patch,
}

impl ApiMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiMethod::Put => "PUT",
            ApiMethod::Patch => "PATCH",
        }
    }

    fn http(self) -> Method {
        match self {
            ApiMethod::Put => Method::PUT,
            ApiMethod::Patch => Method::PATCH,
        }
    }
}

/// One request of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiCall {
    pub method: ApiMethod,
    pub path: String,
    pub body: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Firecracker's API takes paths as JSON strings, which must be UTF-8.
    #[error("{what} path {} is not valid UTF-8", .path.display())]
    NotUtf8 { what: &'static str, path: PathBuf },
    #[error("vcpu count {0} is outside firecracker's range 1..=32")]
    Vcpus(u32),
    #[error("memory size must be at least 1 MiB")]
    Memory,
    #[error("guest cid {0} is reserved (vsock guest cids start at 3)")]
    GuestCid(u32),
    /// A restore needs something this Firecracker's API cannot express.
    #[error("firecracker {version} cannot restore this snapshot: {why}")]
    RestoreUnsupported {
        version: super::version::SemVer,
        why: &'static str,
    },
    /// An interface or drive id that cannot name an API path segment.
    #[error("{what} id {id:?} is empty or contains '/'")]
    BadId { what: &'static str, id: String },
    #[error("drive {0:?} is listed twice")]
    DuplicateDrive(String),
    #[error("the tap name of a restored VM is empty")]
    NoTap,
}

/// A failed [`apply`]: which call, and why. Later calls were not sent.
#[derive(Debug, thiserror::Error)]
#[error("firecracker setup step {step} of {total} ({method} {path}) failed: {source}")]
pub struct ApplyError {
    /// 1-based position in the plan.
    pub step: usize,
    pub total: usize,
    pub method: &'static str,
    pub path: String,
    #[source]
    pub source: FcError,
}

/// The ordered API calls that configure and start `cfg`: logger, metrics
/// and serial console first (so everything after them is logged), then machine, kernel,
/// drives, network, vsock, entropy, and finally `InstanceStart`.
pub fn launch_plan(cfg: &FcVmConfig) -> Result<Vec<ApiCall>, PlanError> {
    if !(1..=32).contains(&cfg.vcpus) {
        return Err(PlanError::Vcpus(cfg.vcpus));
    }
    if cfg.memory_mib == 0 {
        return Err(PlanError::Memory);
    }
    if cfg.guest_cid < 3 {
        return Err(PlanError::GuestCid(cfg.guest_cid));
    }
    let utf8 = |what: &'static str, path: &PathBuf| utf8_path(what, path);

    let mut plan = Vec::new();
    if let Some(log_path) = &cfg.log_path {
        let body = Logger {
            log_path: utf8("log", log_path)?,
            level: None,
            show_level: Some(true),
            show_log_origin: None,
        };
        plan.push(put("/logger", &body));
    }
    if let Some(metrics_path) = &cfg.metrics_path {
        let body = Metrics {
            metrics_path: utf8("metrics", metrics_path)?,
        };
        plan.push(put("/metrics", &body));
    }
    if let Some(serial) = &cfg.serial_path {
        let body = SerialDevice {
            serial_out_path: utf8("serial", serial)?,
        };
        plan.push(put("/serial", &body));
    }
    plan.push(put(
        "/machine-config",
        &MachineConfiguration {
            vcpu_count: cfg.vcpus,
            mem_size_mib: cfg.memory_mib,
            smt: None,
            track_dirty_pages: None,
        },
    ));
    plan.push(put(
        "/boot-source",
        &BootSource {
            kernel_image_path: utf8("kernel", &cfg.kernel)?,
            boot_args: Some(cfg.boot_args.clone()),
            initrd_path: cfg.initrd.as_ref().map(|p| utf8("initrd", p)).transpose()?,
        },
    ));
    // Writeback turns the guest's flushes into fsync, as QEMU's
    // cache=writeback does; Firecracker's default (Unsafe) drops them.
    for (id, what, path, root) in [
        (ROOT_DRIVE_ID, "root drive", &cfg.root_drive, true),
        (WORK_DRIVE_ID, "work drive", &cfg.work_drive, false),
    ] {
        let drive = Drive {
            drive_id: id.to_string(),
            path_on_host: utf8(what, path)?,
            is_root_device: root,
            is_read_only: false,
            cache_type: Some(CacheType::Writeback),
            io_engine: None,
        };
        plan.push(put(&format!("/drives/{id}"), &drive));
    }
    plan.push(put(
        &format!("/network-interfaces/{IFACE_ID}"),
        &NetworkInterface {
            iface_id: IFACE_ID.to_string(),
            host_dev_name: cfg.tap.clone(),
            guest_mac: Some(cfg.mac.clone()),
        },
    ));
    plan.push(put(
        "/vsock",
        &Vsock {
            guest_cid: cfg.guest_cid,
            uds_path: utf8("vsock socket", &cfg.vsock_uds)?,
        },
    ));
    plan.push(put("/entropy", &EntropyDevice {}));
    plan.push(put(
        "/actions",
        &InstanceActionInfo::new(ActionType::InstanceStart),
    ));
    Ok(plan)
}

/// `path` as a JSON string can carry it: Firecracker's API takes paths as
/// UTF-8 strings.
pub(super) fn utf8_path(what: &'static str, path: &Path) -> Result<PathBuf, PlanError> {
    match path.to_str() {
        Some(_) => Ok(path.to_path_buf()),
        None => Err(PlanError::NotUtf8 {
            what,
            path: path.to_path_buf(),
        }),
    }
}

pub(super) fn put<B: Serialize>(path: &str, body: &B) -> ApiCall {
    call(ApiMethod::Put, path, body)
}

pub(super) fn patch<B: Serialize>(path: &str, body: &B) -> ApiCall {
    call(ApiMethod::Patch, path, body)
}

fn call<B: Serialize>(method: ApiMethod, path: &str, body: &B) -> ApiCall {
    ApiCall {
        method,
        path: path.to_string(),
        // Every plan checks its paths with `utf8_path` first, and the models
        // hold nothing else serde_json could refuse.
        body: serde_json::to_value(body).expect("firecracker models serialise"),
    }
}

/// Sends `plan` in order, stopping at the first failure. Snapshot create
/// and load run under the client's snapshot timeout (they write or map all
/// of guest memory), everything else under its ordinary one.
pub async fn apply(client: &FcClient, plan: &[ApiCall]) -> Result<(), ApplyError> {
    for (i, call) in plan.iter().enumerate() {
        let fail = |source| ApplyError {
            step: i + 1,
            total: plan.len(),
            method: call.method.as_str(),
            path: call.path.clone(),
            source,
        };
        let body = serde_json::to_vec(&call.body).expect("a json value serialises");
        let timeout = if call.path.starts_with("/snapshot/") {
            client.snapshot_timeout()
        } else {
            client.timeout()
        };
        client
            .request(call.method.http(), &call.path, Some(body), timeout)
            .await
            .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
