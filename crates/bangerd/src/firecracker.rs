//! Booting a VM under Firecracker: its copy-on-write root, the launch
//! through the root helper (jailer or direct), the API calls that configure
//! and start the microVM, and the agent over hybrid vsock.
//!
//! Firecracker cannot run on banger's development machines; every piece
//! below is tested where it can be (the API bodies against the official
//! specs, jailer staging and process discovery on real files and
//! processes, the copy fallback for real), and this module only strings
//! them together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_proto::client::{AgentClient, Pong};
use banger_api::ApiError;
use banger_store::VmRecord;
use banger_vmm::cow::{self, CowKind};
use banger_vmm::firecracker::{self as fc, FcClient, FcVmConfig};
use banger_vmm::jailer::{DriveSpec, LaunchSpec};
use banger_vmm::qemu::GuestIdentity;

use crate::daemon::Shared;
use crate::handles::{self, Handles};
use crate::images::Image;

/// The guest's vsock context id; any value >= 3 works, each VM has its own
/// device.
const GUEST_CID: u32 = 3;
/// How long Firecracker may take to bind its API socket after launch.
const API_SOCKET_WAIT: Duration = Duration::from_secs(10);

/// File names in the VM dir for each root kind.
pub fn root_file(kind: CowKind) -> &'static str {
    match kind {
        CowKind::Qcow2Overlay => "root.qcow2",
        // The snapshot's exception store; the device exists only while the
        // VM runs.
        CowKind::DmSnapshot => "root.cow",
        CowKind::Reflink | CowKind::SparseCopy => "root.ext4",
    }
}

/// Creates the VM's root over the image: the dm-snapshot's COW store where
/// device-mapper works (and the jailer can hand the device to Firecracker),
/// else a reflink or sparse copy. Never copies the image when it can avoid
/// it; the returned kind is recorded with the VM.
pub fn prepare_root(jailer: bool, dir: &Path, img: &Image) -> Result<CowKind, String> {
    let base = img.manifest.rootfs_path(&img.dir);
    // Direct mode runs Firecracker as the owner, who cannot open a
    // root-owned /dev/mapper node; the jail gets its own node instead.
    if jailer && cow::dm_available().is_ok() {
        cow::create_cow_file(&dir.join(root_file(CowKind::DmSnapshot)), &base)
            .map_err(|e| e.to_string())?;
        return Ok(CowKind::DmSnapshot);
    }
    cow::clone_file(&base, &dir.join(root_file(CowKind::SparseCopy))).map_err(|e| e.to_string())
}

/// Launches and configures Firecracker for a VM whose disks and tap exist.
/// Every handle is saved as soon as it exists, so the caller's cleanup
/// finds whatever was set up when a later step fails.
pub async fn launch(
    d: &Shared,
    rec: &VmRecord,
    img: &Image,
    kind: CowKind,
    h: &mut Handles,
    op_id: &str,
) -> Result<(), ApiError> {
    let dir = d.cfg.layout.vm_dir(&rec.id);
    let save = |h: &Handles| {
        handles::save(&dir, h).map_err(|e| ApiError::internal(format!("save handles: {e}")))
    };
    let status = d.firecracker().await;
    let version = status
        .version
        .clone()
        .map_err(|e| ApiError::failed(format!("firecracker cannot run on this host: {e}")))?;
    if let Some(why) = &status.unusable {
        return Err(ApiError::failed(format!(
            "firecracker cannot run on this host: {why}; recreate the vm with --vmm qemu"
        )));
    }

    let kernel_src = img.kernel.clone();
    let cache = d.cfg.layout.cache_dir.join("kernels").join(&rec.image);
    let kernel = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
        fc::kernel_for(version, &kernel_src, &cache).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::failed(format!("kernel for firecracker v{version}: {e}")))?;

    let root: PathBuf = if kind == CowKind::DmSnapshot {
        let snap = d
            .helper
            .create_dm_snapshot(
                op_id,
                &rec.id,
                &img.manifest.rootfs_path(&img.dir),
                &dir.join(root_file(kind)),
            )
            .await
            .map_err(|e| ApiError::failed(format!("root snapshot: {e}")))?;
        h.dm = Some(snap.clone());
        save(h)?;
        d.helper
            .fsck_snapshot(op_id, &snap.dev)
            .await
            .map_err(|e| ApiError::failed(format!("check root snapshot {}: {e}", snap.dev)))?;
        snap.dev.into()
    } else {
        dir.join(root_file(kind))
    };

    let spec = LaunchSpec {
        vm_id: rec.id.clone(),
        jailer: d.cfg.settings.jailer,
        kernel,
        initrd: img.initrd.clone(),
        drives: vec![
            DriveSpec {
                id: fc::launch::ROOT_DRIVE_ID.into(),
                path: root,
            },
            DriveSpec {
                id: fc::launch::WORK_DRIVE_ID.into(),
                path: dir.join("work.ext4"),
            },
        ],
        log: true,
    };
    crate::logs::prepare_launch(d, rec);
    let launched = match d.helper.launch_firecracker(op_id, &spec).await {
        Ok(l) => l,
        Err(e) => {
            crate::logs::note(d, rec, &format!("firecracker did not start: {e}"));
            return Err(ApiError::failed(format!("start firecracker: {e}")));
        }
    };
    h.pid = Some(launched.pid);
    h.api_socket = Some(launched.api_socket.clone());
    h.vsock_socket = Some(launched.vsock_socket.clone());
    h.jailed = spec.jailer;
    save(h)?;
    crate::logs::note(
        d,
        rec,
        &format!(
            "firecracker v{version} started (pid {}, {})",
            launched.pid,
            if spec.jailer { "jailer" } else { "direct" }
        ),
    );
    crate::logs::start(d, rec, h, launched.pid);

    fc::wait_for_socket(
        &launched.api_socket,
        std::time::Instant::now() + API_SOCKET_WAIT,
    )
    .await
    .map_err(|e| ApiError::failed(format!("firecracker api: {e}")))?;
    let drive = |id: &str| {
        launched
            .vmm
            .drives
            .iter()
            .find(|dr| dr.id == id)
            .map(|dr| dr.path.clone())
            .ok_or_else(|| ApiError::internal(format!("helper did not place drive {id}")))
    };
    let ip = rec
        .ip
        .parse()
        .map_err(|_| ApiError::internal(format!("bad ip {:?} in state", rec.ip)))?;
    let vm = FcVmConfig {
        vcpus: rec.vcpus,
        memory_mib: rec.memory_mib,
        kernel: launched.vmm.kernel.clone(),
        initrd: launched.vmm.initrd.clone(),
        boot_args: fc::cmdline::boot_args(
            &GuestIdentity {
                hostname: rec.name.clone(),
                ip,
                prefix: d.cfg.prefix,
                gateway: d.cfg.gateway,
                dns: None,
                init: img.manifest.init.clone(),
            },
            fc::features(version),
        ),
        root_drive: drive(fc::launch::ROOT_DRIVE_ID)?,
        work_drive: drive(fc::launch::WORK_DRIVE_ID)?,
        tap: h.tap.clone().unwrap_or_default(),
        mac: rec.mac.clone(),
        vsock_uds: launched.vmm.vsock_uds.clone(),
        guest_cid: GUEST_CID,
        log_path: launched.vmm.log.clone(),
        metrics_path: None,
        serial_path: fc::features(version)
            .serial_config
            .then(|| launched.vmm.console.clone())
            .flatten(),
    };
    let plan = fc::launch_plan(&vm).map_err(|e| ApiError::failed(format!("firecracker: {e}")))?;
    let client = FcClient::new(&launched.api_socket);
    fc::apply(&client, &plan)
        .await
        .map_err(|e| ApiError::failed(format!("configure firecracker: {e}")))
}

/// Dials the agent through Firecracker's hybrid vsock until it answers a
/// ping or `deadline` passes.
pub async fn wait_agent(
    vsock: &Path,
    deadline: tokio::time::Instant,
) -> Result<(AgentClient, Pong), String> {
    let mut last = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        match dial_agent(vsock, Duration::from_secs(2)).await {
            Ok(ok) => return Ok(ok),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "agent over {} did not answer: {last}",
        vsock.display()
    ))
}

/// One attempt: `CONNECT <port>`, then a ping, each within `timeout`.
pub async fn dial_agent(vsock: &Path, timeout: Duration) -> Result<(AgentClient, Pong), String> {
    let stream = fc::vsock::connect_hybrid(vsock, banger_agent_proto::VSOCK_PORT, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let client = AgentClient::new(stream);
    let pong = client.ping(timeout).await.map_err(|e| e.to_string())?;
    Ok((client, pong))
}

/// Tears down what [`launch`] set up, beyond killing the pid (the caller
/// does that): the jail (or direct-mode sockets) and the root snapshot.
/// Idempotent; failures are logged, and every step is attempted.
pub async fn cleanup(d: &Shared, rec: &VmRecord, h: &Handles) {
    if let Err(e) = d.helper.cleanup_firecracker("", &rec.id).await {
        tracing::warn!(vm = %rec.name, error = %e, "cleanup firecracker");
    }
    if let Some(snap) = &h.dm {
        if let Err(e) = d.helper.remove_dm_snapshot("", snap).await {
            tracing::warn!(vm = %rec.name, error = %e, "remove root snapshot");
        }
    }
}

/// Where the guest console of a Firecracker VM is written, on the host.
pub fn console_log(d: &Shared, rec: &VmRecord, h: &Handles) -> PathBuf {
    if h.jailed {
        banger_vmm::jailer::JailerLayout::new(&d.cfg.layout.state_dir)
            .host_path(&rec.id, banger_vmm::jailer::IN_JAIL_CONSOLE)
    } else {
        d.cfg
            .layout
            .vm_dir(&rec.id)
            .join(banger_vmm::jailer::DIRECT_CONSOLE_NAME)
    }
}

/// Where Firecracker's own log (`--log-path`) is written, on the host.
pub fn vmm_log(d: &Shared, rec: &VmRecord, h: &Handles) -> PathBuf {
    if h.jailed {
        banger_vmm::jailer::JailerLayout::new(&d.cfg.layout.state_dir).log(&rec.id)
    } else {
        d.cfg
            .layout
            .vm_dir(&rec.id)
            .join(banger_vmm::jailer::DIRECT_LOG_NAME)
    }
}

/// True when `pid` is this VM's Firecracker (jailer pidfile or direct-mode
/// api socket under our runtime dir).
pub fn is_ours(d: &Shared, rec: &VmRecord, h: &Handles, pid: u32) -> bool {
    use banger_vmm::proc::{is_firecracker_for, FcMatch};
    let pidfile = banger_vmm::jailer::JailerLayout::new(&d.cfg.layout.state_dir).pidfile(&rec.id);
    let how = if h.jailed {
        FcMatch::Jailer { pidfile: &pidfile }
    } else {
        FcMatch::Direct {
            runtime_dir: &d.cfg.layout.runtime_dir,
        }
    };
    is_firecracker_for(pid, &rec.id, how)
}
