//! The VM lifecycle: create, start, stop, restart, kill, delete, prune,
//! exec, and reconcile at daemon start.
//!
//! Every change to one VM runs under that VM's lock. Work that starts or
//! stops a VMM runs in a spawned task, so a client that hangs up mid-way
//! never leaves a half-started VM: the task finishes (or undoes) its work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent_proto::client::AgentClient;
use banger_api::{
    validate_vm_name, ApiError, CreateVmRequest, ExecEvent, ExecRequest, OperationInfo, VmInfo,
    VmSpec, VmState,
};
use banger_store::VmRecord;
use banger_vmm::cow::CowKind;
use banger_vmm::qemu::{GuestIdentity, QemuConfig};
use tokio::sync::mpsc;

use crate::backend::{self, Vmm};
use crate::daemon::Shared;
use crate::firecracker;
use crate::handles::{self, Handles};
use crate::ops::OpHandle;
use crate::{images, now_unix};

/// Agent dial/answer timeout when stopping: a healthy guest answers in
/// milliseconds; a broken one must not hold up the stop.
const STOP_AGENT_TIMEOUT: Duration = Duration::from_secs(2);

fn failed(stage: &str) -> impl Fn(String) -> ApiError + '_ {
    move |e| ApiError::failed(format!("{stage}: {e}"))
}

pub(crate) fn store_err(e: banger_store::StoreError) -> ApiError {
    match e {
        banger_store::StoreError::AlreadyExists { .. } => {
            ApiError::new(banger_api::ErrorCode::AlreadyExists, e.to_string())
        }
        other => ApiError::internal(format!("state database: {other}")),
    }
}

pub(crate) fn vm_dir(d: &Shared, rec: &VmRecord) -> PathBuf {
    d.cfg.layout.vm_dir(&rec.id)
}

fn run_dir(d: &Shared, rec: &VmRecord) -> PathBuf {
    d.cfg.layout.vm_runtime_dir(&rec.id)
}

pub fn find(d: &Shared, name: &str) -> Result<VmRecord, ApiError> {
    validate_vm_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    d.store
        .vm_by_name(name)
        .map_err(store_err)?
        .ok_or_else(|| ApiError::not_found(format!("vm {name:?} not found (see `banger vm list`)")))
}

/// The API view of a VM: its row plus, while running, its runtime handles.
pub fn info(d: &Shared, rec: &VmRecord) -> VmInfo {
    let state = VmState::parse(&rec.state).unwrap_or(VmState::Error);
    let h = if state == VmState::Running || state == VmState::Creating {
        handles::load(&vm_dir(d, rec))
    } else {
        Handles::default()
    };
    VmInfo {
        id: rec.id.clone(),
        name: rec.name.clone(),
        state,
        error: rec.error.clone(),
        image: rec.image.clone(),
        spec: VmSpec {
            vcpus: rec.vcpus,
            memory_mib: rec.memory_mib,
            work_disk_mib: rec.work_disk_mib,
        },
        ip: rec.ip.clone(),
        mac: rec.mac.clone(),
        tap: h.tap,
        pid: h.pid,
        vmm: rec.vmm.clone(),
        vmm_reason: rec.vmm_reason.clone(),
        root_cow: Some(rec.root_cow.clone()),
        accel: h.accel,
        accel_reason: h.accel_reason,
        created_at: rec.created_at,
        started_at: rec.started_at,
        nat: rec.nat,
        warm_snapshot: crate::warm::recorded(d, &rec.id),
        workspace: crate::workspace::recorded(rec),
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates `dir` (and its parents) readable by the owner only: VM and
/// runtime directories hold disks, keys and sockets.
pub(crate) fn private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))
}

/// Has the helper kill the VMM `pid` of VM `vm_id` and waits (up to 5 s)
/// for it to be gone.
pub(crate) async fn stop_vmm(d: &Shared, vm_id: &str, pid: u32) -> Result<(), String> {
    let killed = d
        .helper
        .kill_vmm("", vm_id, pid)
        .await
        .map_err(|e| e.to_string());
    let t = Instant::now();
    while banger_vmm::proc::is_alive(pid) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed
}

/// Validates a create request, reserves the name and an address, and starts
/// the create operation. Bad input fails here, before anything exists.
pub async fn create(
    d: Shared,
    op_id: String,
    req: CreateVmRequest,
) -> Result<OperationInfo, ApiError> {
    let name = match req.name.as_deref() {
        Some(n) if !n.is_empty() => {
            validate_vm_name(n).map_err(|e| ApiError::bad_request(e.to_string()))?;
            n.to_string()
        }
        _ => format!("vm-{}", random_hex(3)),
    };
    let spec = VmSpec {
        vcpus: req.vcpus.unwrap_or(VmSpec::DEFAULT.vcpus),
        memory_mib: req.memory_mib.unwrap_or(VmSpec::DEFAULT.memory_mib),
        work_disk_mib: req.work_disk_mib.unwrap_or(VmSpec::DEFAULT.work_disk_mib),
    };
    spec.validate().map_err(ApiError::bad_request)?;
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| banger_image::DEFAULT_IMAGE.to_string());
    images::validate_image_name(&image)?;
    let (vmm, vmm_reason) = backend::select(&d, req.vmm).await?;

    let rec = {
        let _g = d.reserve_lock.lock().await;
        if d.store.vm_by_name(&name).map_err(store_err)?.is_some() {
            return Err(ApiError::new(
                banger_api::ErrorCode::AlreadyExists,
                format!("vm {name:?} already exists"),
            ));
        }
        let used: Vec<std::net::Ipv4Addr> = d
            .store
            .used_ips()
            .map_err(store_err)?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let subnet = banger_net::Subnet::new(d.cfg.gateway, d.cfg.prefix);
        let ip = banger_net::allocate_ip(subnet, &used).ok_or_else(|| {
            ApiError::failed(format!(
                "no free address left in {}/{}; delete some VMs",
                d.cfg.gateway, d.cfg.prefix
            ))
        })?;
        let rec = VmRecord {
            id: random_hex(6),
            name: name.clone(),
            state: VmState::Creating.as_str().into(),
            error: None,
            image,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            work_disk_mib: spec.work_disk_mib,
            ip: ip.to_string(),
            mac: banger_net::mac_for_ip(ip),
            vmm: vmm.as_str().into(),
            vmm_reason: Some(vmm_reason),
            // Settled by the disks stage.
            root_cow: CowKind::Qcow2Overlay.as_str().into(),
            created_at: now_unix(),
            started_at: None,
            nat: req.nat,
            workspace_json: None,
        };
        d.store.insert_vm(&rec).map_err(store_err)?;
        rec
    };

    let op = d.ops.start(&op_id, "vm.create", &name, "reserve");
    let info = d.ops.get(&op_id).expect("just registered");
    let lock = d.vm_lock(&rec.id);
    tokio::spawn(async move {
        let _g = lock.lock().await;
        let result = run_create(&d, &op, &rec, req.cold).await;
        match result {
            Ok(vm) => op.finish(Ok(Some(vm))),
            Err(e) => {
                tracing::warn!(op_id = op.id(), vm = %rec.name, error = %e.message, "vm create failed; undoing");
                undo_create(&d, &rec).await;
                op.finish(Err(e));
            }
        }
    });
    Ok(info)
}

async fn run_create(
    d: &Shared,
    op: &OpHandle,
    rec: &VmRecord,
    cold: bool,
) -> Result<VmInfo, ApiError> {
    op.stage("image");
    let img = images::ensure_for(d, &rec.image, Some(op), Some(&rec.name)).await?;
    let mut rec = rec.clone();
    if try_warm(d, op, &mut rec, &img, cold).await? {
        return finish_create(d, rec);
    }
    op.stage("disks");
    let dir = vm_dir(d, &rec);
    let work_mib = rec.work_disk_mib;
    let vmm = Vmm::of(&rec.vmm);
    let jailer = d.cfg.settings.jailer;
    let client_key = crate::ssh::client_key(d)?;
    let name = rec.name.clone();
    let kind = tokio::task::spawn_blocking(move || {
        prepare_disks(&dir, &img, work_mib, vmm, jailer, &name, &client_key)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(failed("prepare disks"))?;
    rec.root_cow = kind.as_str().into();
    d.store.update_vm(&rec).map_err(store_err)?;
    boot(d, &rec, Some(op), None).await?;
    finish_create(d, rec)
}

fn finish_create(d: &Shared, mut rec: VmRecord) -> Result<VmInfo, ApiError> {
    rec.state = VmState::Running.as_str().into();
    rec.started_at = Some(now_unix());
    d.store.update_vm(&rec).map_err(store_err)?;
    crate::ssh::refresh_config(d);
    Ok(info(d, &rec))
}

/// What a restored VM needs besides its row: the snapshot, and the SSH
/// host key the agent installs (known_hosts already trusts it).
pub(crate) struct Restore {
    pub snap: crate::warm::Snapshot,
    pub host_key: banger_ssh::HostKey,
    pub authorized_key: String,
}

/// Starts the VM from a warm snapshot when one matches (building it on
/// first use). `Ok(true)`: the VM runs. `Ok(false)`: boot it cold; the
/// reason is already a note on the operation, and nothing of the attempt
/// is left (no VMM, tap or disk).
async fn try_warm(
    d: &Shared,
    op: &OpHandle,
    rec: &mut VmRecord,
    img: &images::Image,
    cold: bool,
) -> Result<bool, ApiError> {
    if cold {
        op.note("cold boot: --cold");
        return Ok(false);
    }
    if !d.cfg.settings.warm {
        return Ok(false);
    }
    if Vmm::of(&rec.vmm) != Vmm::Qemu {
        op.note("cold boot: warm starts run on the QEMU backend only for now");
        return Ok(false);
    }
    let probe = d.accel().await;
    let want = match crate::warm::inputs(
        d,
        &rec.image,
        img,
        probe.accel,
        rec.vcpus,
        rec.memory_mib,
        rec.work_disk_mib,
    ) {
        Ok(w) => w,
        Err(e) => {
            op.note(&format!("cold boot: {e}"));
            return Ok(false);
        }
    };
    let snap = match crate::warm::lookup(d, &want) {
        crate::warm::Lookup::Ready(s) => *s,
        crate::warm::Lookup::Failed(reason) => {
            op.note(&format!(
                "cold boot: building the warm snapshot failed before ({}); `banger image warm {}` retries",
                first_line(&reason),
                rec.image
            ));
            return Ok(false);
        }
        crate::warm::Lookup::Missing(reason) => {
            op.note(&format!(
                "{reason}: building it (one cold boot; later runs restore it)"
            ));
            op.stage("snapshot");
            match crate::warm::ensure(d, Some(op), img, &want, false).await {
                Ok(s) => s,
                Err(e) => {
                    op.note(&format!("cold boot: {}", first_line(&e)));
                    tracing::warn!(vm = %rec.name, error = %e, "warm snapshot build failed");
                    return Ok(false);
                }
            }
        }
    };
    op.stage("disks");
    let dir = vm_dir(d, rec);
    let name = rec.name.clone();
    let client_key = crate::ssh::client_key(d)?;
    let (root, work) = (snap.root(), snap.work());
    let snap_id = snap.id().to_string();
    let prepared = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || prepare_warm_disks(&dir, &root, &work, &snap_id, &name)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let host_key = match prepared {
        Ok(k) => k,
        Err(e) => {
            discard_warm_disks(&dir);
            op.note(&format!("cold boot: {e}"));
            return Ok(false);
        }
    };
    rec.root_cow = CowKind::Qcow2Overlay.as_str().into();
    d.store.update_vm(rec).map_err(store_err)?;
    let restore = Restore {
        snap,
        host_key,
        authorized_key: client_key.public_openssh.clone(),
    };
    match boot(d, rec, Some(op), Some(&restore)).await {
        Ok(()) => {
            op.note(&format!(
                "warm start: restored from snapshot {} of {}",
                restore.snap.id(),
                rec.image
            ));
            Ok(true)
        }
        Err(e) => {
            cleanup_runtime(d, rec).await;
            discard_warm_disks(&dir);
            crate::warm::drop_broken(d, restore.snap.id()).await;
            crate::logs::note(d, rec, &format!("warm start failed: {}", e.message));
            op.note(&format!(
                "cold boot: restoring snapshot {} failed (it was dropped; a later run makes a new one): {}",
                restore.snap.id(),
                first_line(&e.message)
            ));
            Ok(false)
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Copy-on-write clones of a snapshot's disks, the marker naming the
/// snapshot, and a fresh SSH host key in known_hosts.
fn prepare_warm_disks(
    dir: &std::path::Path,
    root: &std::path::Path,
    work: &std::path::Path,
    snap_id: &str,
    name: &str,
) -> Result<banger_ssh::HostKey, String> {
    use banger_vmm::qemu::{create_overlay_of, DiskFormat};
    private_dir(dir)?;
    let qemu_img = std::path::Path::new("qemu-img");
    let root_file = firecracker::root_file(CowKind::Qcow2Overlay);
    create_overlay_of(qemu_img, root, DiskFormat::Qcow2, &dir.join(root_file))
        .map_err(|e| format!("clone the snapshot's root disk: {e}"))?;
    create_overlay_of(
        qemu_img,
        work,
        DiskFormat::Raw,
        &dir.join(crate::warm::WORK_OVERLAY),
    )
    .map_err(|e| format!("clone the snapshot's work disk: {e}"))?;
    std::fs::write(dir.join(crate::warm::VM_MARKER), format!("{snap_id}\n"))
        .map_err(|e| format!("write {}: {e}", crate::warm::VM_MARKER))?;
    crate::ssh::new_host_key(dir, name)
}

/// Removes what [`prepare_warm_disks`] made, so a cold boot starts clean.
fn discard_warm_disks(dir: &std::path::Path) {
    for f in [
        firecracker::root_file(CowKind::Qcow2Overlay),
        crate::warm::WORK_OVERLAY,
        crate::warm::VM_MARKER,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_file(crate::ssh::known_hosts(dir));
}

/// Undoes a failed create: VMM, tap, files and the row itself.
async fn undo_create(d: &Shared, rec: &VmRecord) {
    cleanup_runtime(d, rec).await;
    remove_nat(d, rec).await;
    let _ = std::fs::remove_dir_all(vm_dir(d, rec));
    if let Err(e) = d.store.delete_vm(&rec.id) {
        tracing::error!(vm = %rec.name, error = %e, "could not remove the row of a failed create");
    }
    d.forget_vm_lock(&rec.id);
}

/// The VM's copy-on-write root over the golden image (a qcow2 overlay for
/// QEMU; see [`firecracker::prepare_root`] for Firecracker), and a fresh
/// work disk seeded from the image's /root plus this VM's SSH keys (see
/// [`crate::workdisk`]). Returns the root's kind.
fn prepare_disks(
    dir: &std::path::Path,
    img: &images::Image,
    work_mib: u64,
    vmm: Vmm,
    jailer: bool,
    name: &str,
    client_key: &banger_ssh::ClientKey,
) -> Result<CowKind, String> {
    private_dir(dir)?;
    let kind = match vmm {
        Vmm::Qemu => {
            banger_vmm::qemu::create_overlay(
                std::path::Path::new("qemu-img"),
                &img.manifest.rootfs_path(&img.dir),
                &dir.join(firecracker::root_file(CowKind::Qcow2Overlay)),
            )
            .map_err(|e| e.to_string())?;
            CowKind::Qcow2Overlay
        }
        Vmm::Firecracker => firecracker::prepare_root(jailer, dir, img)?,
    };
    let host_key = crate::ssh::new_host_key(dir, name)?;
    crate::workdisk::build(
        &img.manifest.work_seed_path(&img.dir),
        &dir.join(crate::workdisk::FILE),
        work_mib,
        &crate::workdisk::PerVm {
            authorized_key: &client_key.public_openssh,
            host_key: &host_key.private_openssh,
            host_key_pub: &host_key.public_openssh,
        },
    )?;
    Ok(kind)
}

/// Network, VMM and boot-to-agent for a VM whose disks exist. On error the
/// caller cleans up with [`cleanup_runtime`].
async fn boot(
    d: &Shared,
    rec: &VmRecord,
    op: Option<&OpHandle>,
    restore: Option<&Restore>,
) -> Result<(), ApiError> {
    let stage = |s: &str| {
        if let Some(op) = op {
            op.stage(s)
        }
    };
    let img = images::get(d, &rec.image)?;
    let dir = vm_dir(d, rec);
    let vmm = Vmm::of(&rec.vmm);
    let kind: CowKind = rec
        .root_cow
        .parse()
        .map_err(|e| ApiError::internal(format!("vm {:?}: {e}", rec.name)))?;
    let (work_file, work_format) = crate::workdisk::current(&dir);
    for disk in [firecracker::root_file(kind), work_file] {
        if !dir.join(disk).exists() {
            return Err(ApiError::failed(format!(
                "disk {} of vm {:?} is missing; delete and recreate the vm",
                dir.join(disk).display(),
                rec.name
            )));
        }
    }
    let op_id = op.map(|o| o.id().to_string()).unwrap_or_default();
    // Firecracker always runs on KVM (it has no emulator).
    let probe = match vmm {
        Vmm::Qemu => d.accel().await,
        Vmm::Firecracker => banger_vmm::AccelProbe {
            accel: banger_vmm::Accel::Kvm,
            reason: "firecracker".into(),
        },
    };

    stage("network");
    let tap = banger_net::tap_name_for(&rec.id);
    let mut h = Handles {
        tap: Some(tap.clone()),
        accel: Some(probe.accel.as_str().into()),
        accel_reason: Some(probe.reason.clone()),
        ..Handles::default()
    };
    handles::save(&dir, &h).map_err(|e| ApiError::internal(format!("save handles: {e}")))?;
    d.helper
        .ensure_bridge(&op_id, &d.cfg.bridge, d.cfg.gateway, d.cfg.prefix)
        .await
        .map_err(|e| ApiError::failed(format!("bridge {}: {e}", d.cfg.bridge)))?;
    crate::dns::bridge_ready(d, &op_id);
    let warm = crate::tappool::acquire(d, &op_id, &rec.id)
        .await
        .map_err(ApiError::failed)?;
    tracing::debug!(vm = %rec.name, tap, warm, "tap ready");
    if rec.nat {
        // Idempotent: a restart finds the rule from the last boot in place.
        let ip: std::net::Ipv4Addr = rec
            .ip
            .parse()
            .map_err(|_| ApiError::internal(format!("bad ip {:?} in state", rec.ip)))?;
        d.helper
            .ensure_nat(&op_id, &rec.id, ip, &d.cfg.bridge)
            .await
            .map_err(|e| ApiError::failed(format!("nat for {}: {e}", rec.ip)))?;
    }

    stage("vmm");
    if vmm == Vmm::Firecracker {
        firecracker::launch(d, rec, &img, kind, &mut h, &op_id).await?;
        let pid = h.pid.expect("launch records the pid");
        stage("boot");
        let deadline = tokio::time::Instant::now() + d.cfg.boot_timeout;
        let vsock = h.vsock_socket.clone().expect("launch records the vsock");
        let (client, pong) = tokio::select! {
            r = firecracker::wait_agent(&vsock, deadline) => r.map_err(|e| boot_failure(d, rec, &e))?,
            _ = watch_exit(pid) => return Err(boot_failure(d, rec, "firecracker exited during boot")),
        };
        return finish_boot(d, rec, &mut h, client, pong);
    }
    let run = run_dir(d, rec);
    let _ = std::fs::remove_dir_all(&run);
    private_dir(&run).map_err(ApiError::internal)?;
    let ip: std::net::Ipv4Addr = rec
        .ip
        .parse()
        .map_err(|_| ApiError::internal(format!("bad ip {:?} in state", rec.ip)))?;
    let cfg = QemuConfig {
        vm_id: rec.id.clone(),
        accel: probe.accel,
        vcpus: rec.vcpus,
        memory_mib: rec.memory_mib,
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
        cmdline: banger_vmm::qemu::kernel_cmdline(&GuestIdentity {
            hostname: rec.name.clone(),
            ip,
            prefix: d.cfg.prefix,
            gateway: d.cfg.gateway,
            dns: None,
            init: img.manifest.init.clone(),
        }),
        root_disk: dir.join("root.qcow2"),
        work_disk: dir.join(work_file),
        work_format,
        tap: tap.clone(),
        mac: rec.mac.clone(),
        agent_socket: run.join("agent.sock"),
        qmp_socket: run.join("qmp.sock"),
        pidfile: d.cfg.layout.vm_pidfile(&rec.id),
        console_log: dir.join(crate::logs::QEMU_CONSOLE_RAW),
        vmm_log: Some(dir.join(crate::logs::QEMU_VMM_RAW)),
        incoming: restore.is_some(),
    };
    crate::logs::prepare_launch(d, rec);
    let pid = match d.helper.launch_qemu(&op_id, &cfg).await {
        Ok(pid) => pid,
        Err(e) => {
            crate::logs::note(d, rec, &format!("qemu did not start: {e}"));
            return Err(ApiError::failed(format!("start qemu: {e}")));
        }
    };
    h.pid = Some(pid);
    handles::save(&dir, &h).map_err(|e| ApiError::internal(format!("save handles: {e}")))?;
    crate::logs::note(
        d,
        rec,
        &format!(
            "qemu started (pid {pid}, {}, {} vcpu, {} MiB)",
            probe.accel.as_str(),
            rec.vcpus,
            rec.memory_mib
        ),
    );
    crate::logs::start(d, rec, &h, pid);

    if let Some(r) = restore {
        stage("restore");
        crate::warm::load(&cfg.qmp_socket, &r.snap, pid)
            .await
            .map_err(ApiError::failed)?;
        let (client, _) = tokio::select! {
            r = crate::warm::wait_agent(&cfg.agent_socket) => r.map_err(ApiError::failed)?,
            _ = watch_exit(pid) => return Err(ApiError::failed("the VMM exited after the restore")),
        };
        stage("identity");
        let identity = new_identity(d, rec, r)?;
        client
            .reidentify(&identity, Duration::from_secs(20))
            .await
            .map_err(|e| ApiError::failed(format!("give the restored guest its identity: {e}")))?;
        // The answer now carries this VM's instance id.
        let pong = client
            .ping(Duration::from_secs(5))
            .await
            .map_err(|e| ApiError::failed(format!("agent after reidentify: {e}")))?;
        return finish_boot(d, rec, &mut h, client, pong);
    }
    stage("boot");
    let deadline = tokio::time::Instant::now() + d.cfg.boot_timeout;
    let ready = banger_agent_proto::client::wait_ready(&cfg.agent_socket, deadline);
    let (client, pong) = tokio::select! {
        r = ready => r.map_err(|e| boot_failure(d, rec, &format!("{e}")))?,
        _ = watch_exit(pid) => return Err(boot_failure(d, rec, "the VMM exited during boot")),
    };
    finish_boot(d, rec, &mut h, client, pong)
}

/// The identity a restored guest takes on: everything that must differ
/// between two VMs restored from one snapshot.
fn new_identity(
    d: &Shared,
    rec: &VmRecord,
    r: &Restore,
) -> Result<banger_agent_proto::NewIdentity, ApiError> {
    use base64::Engine;
    use rand::RngCore;
    let mut entropy = [0u8; 64];
    rand::rng().fill_bytes(&mut entropy);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| ApiError::internal(format!("clock: {e}")))?;
    Ok(banger_agent_proto::NewIdentity {
        hostname: rec.name.clone(),
        mac: rec.mac.clone(),
        ip: format!("{}/{}", rec.ip, d.cfg.prefix),
        gateway: d.cfg.gateway.to_string(),
        dns: Vec::new(),
        iface: None,
        unix_time_ns: now.as_nanos() as u64,
        entropy: base64::engine::general_purpose::STANDARD.encode(entropy),
        machine_id: random_hex(16),
        ssh_host_key: r.host_key.private_openssh.to_string(),
        ssh_host_key_pub: r.host_key.public_openssh.to_string(),
        authorized_keys: format!("{}\n", r.authorized_key.trim_end()),
        instance_id: random_hex(8),
    })
}

/// Records a booted guest: its agent connection and boot id.
fn finish_boot(
    d: &Shared,
    rec: &VmRecord,
    h: &mut Handles,
    client: AgentClient,
    pong: banger_agent_proto::client::Pong,
) -> Result<(), ApiError> {
    d.put_agent(&rec.id, Arc::new(client));
    h.boot_id = Some(pong.boot_id);
    handles::save(&vm_dir(d, rec), h).map_err(|e| ApiError::internal(format!("save handles: {e}")))
}

/// Resolves when `pid` is gone.
pub(crate) async fn watch_exit(pid: u32) {
    while banger_vmm::proc::is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A boot error that carries the end of the guest console, which is where
/// the reason usually is.
fn boot_failure(d: &Shared, rec: &VmRecord, what: &str) -> ApiError {
    crate::logs::note(d, rec, &format!("boot failed: {what}"));
    let (log, tail) = crate::logs::console_tail(d, rec, 15);
    ApiError::failed(format!(
        "guest did not become ready: {what}\nlast console lines ({}):\n{tail}",
        log.display()
    ))
}

/// Stops the VMM if it runs and releases the tap and runtime files.
/// Idempotent; every step is attempted even if an earlier one fails.
async fn cleanup_runtime(d: &Shared, rec: &VmRecord) {
    let dir = vm_dir(d, rec);
    let h = handles::load(&dir);
    d.drop_agent(&rec.id);
    let mut stopped = None;
    if let Some(pid) = h.pid {
        if banger_vmm::proc::is_alive(pid) {
            crate::logs::expect_exit(d, rec);
            if let Err(e) = stop_vmm(d, &rec.id, pid).await {
                tracing::warn!(vm = %rec.name, pid, error = %e, "kill vmm");
            }
            stopped = Some(pid);
        }
    }
    // Before the Firecracker cleanup removes the jail and its log files.
    crate::logs::stop(d, rec, &h).await;
    if let Some(pid) = stopped {
        crate::logs::note(
            d,
            rec,
            &format!("the VMM (pid {pid}) was stopped by banger"),
        );
    }
    if Vmm::of(&rec.vmm) == Vmm::Firecracker {
        firecracker::cleanup(d, rec, &h).await;
    }
    if let Some(tap) = h.tap {
        crate::tappool::release(d, &rec.id, &tap).await;
    }
    let _ = std::fs::remove_dir_all(run_dir(d, rec));
    handles::clear(&dir);
}

fn set_state(
    d: &Shared,
    rec: &mut VmRecord,
    state: VmState,
    error: Option<String>,
) -> Result<(), ApiError> {
    rec.state = state.as_str().into();
    rec.error = error;
    if state == VmState::Running {
        rec.started_at = Some(now_unix());
    }
    d.store.update_vm(rec).map_err(store_err)
}

pub(crate) fn is_running(d: &Shared, rec: &VmRecord) -> bool {
    rec.state == VmState::Running.as_str() && vmm_alive(d, rec, &handles::load(&vm_dir(d, rec)))
}

/// True when the handles' pid is still this VM's VMM (not a reused pid).
pub(crate) fn vmm_alive(d: &Shared, rec: &VmRecord, h: &Handles) -> bool {
    h.pid.is_some_and(|pid| match Vmm::of(&rec.vmm) {
        Vmm::Qemu => banger_vmm::proc::is_vmm_for(pid, &d.cfg.layout.vm_pidfile(&rec.id)),
        Vmm::Firecracker => firecracker::is_ours(d, rec, h, pid),
    })
}

/// Boots a VM whose disks exist and records the outcome: running, or
/// error with the reason (and nothing left running).
async fn boot_existing(d: &Shared, rec: &mut VmRecord) -> Result<VmInfo, ApiError> {
    if let Err(e) = boot(d, rec, None, None).await {
        cleanup_runtime(d, rec).await;
        set_state(d, rec, VmState::Error, Some(e.message.clone()))?;
        return Err(e);
    }
    set_state(d, rec, VmState::Running, None)?;
    Ok(info(d, rec))
}

/// Starts a stopped VM with the disks it already has.
pub async fn start(d: Shared, name: String) -> Result<VmInfo, ApiError> {
    let rec = find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let mut rec = find(&d, &name)?;
        if is_running(&d, &rec) {
            return Err(ApiError::conflict(format!(
                "vm {name:?} is already running"
            )));
        }
        if rec.state == VmState::Creating.as_str() {
            return Err(ApiError::conflict(format!(
                "vm {name:?} is still being created"
            )));
        }
        boot_existing(&d, &mut rec).await
    })
    .await
}

/// Runs `fut` in its own task: the work completes even if the client that
/// asked for it disconnects.
pub(crate) async fn spawn_detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(fut)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}

/// sync + poweroff through the agent, then kill the VMM at once: sync has
/// flushed the guest's disks, so there is nothing to wait for.
async fn stop_locked(d: &Shared, rec: &mut VmRecord) -> Result<(), ApiError> {
    match agent_for(d, rec, STOP_AGENT_TIMEOUT).await {
        Ok(agent) => match agent.sync(STOP_AGENT_TIMEOUT).await {
            Ok(()) => {
                let _ = agent.poweroff(STOP_AGENT_TIMEOUT).await;
            }
            Err(e) => {
                tracing::warn!(vm = %rec.name, error = %e, "guest sync failed; killing anyway")
            }
        },
        Err(e) => {
            tracing::warn!(vm = %rec.name, error = %e.message, "no agent to sync the guest; killing anyway")
        }
    }
    cleanup_runtime(d, rec).await;
    set_state(d, rec, VmState::Stopped, None)
}

pub async fn stop(d: Shared, name: String) -> Result<VmInfo, ApiError> {
    let rec = find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let mut rec = find(&d, &name)?;
        if rec.state == VmState::Stopped.as_str() {
            return Ok(info(&d, &rec));
        }
        stop_locked(&d, &mut rec).await?;
        Ok(info(&d, &rec))
    })
    .await
}

/// A real reboot: the VMM stops and a new one boots the same disks, so the
/// guest gets a new boot id.
pub async fn restart(d: Shared, name: String) -> Result<VmInfo, ApiError> {
    let rec = find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let mut rec = find(&d, &name)?;
        if !is_running(&d, &rec) {
            return Err(ApiError::conflict(format!(
                "vm {name:?} is not running; use `banger vm start {name}`"
            )));
        }
        stop_locked(&d, &mut rec).await?;
        boot_existing(&d, &mut rec).await
    })
    .await
}

/// Sends `signal` to the VMM; the VM ends up stopped, its disks kept.
pub async fn kill(d: Shared, name: String, signal: String) -> Result<VmInfo, ApiError> {
    let rec = find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let mut rec = find(&d, &name)?;
        let h = handles::load(&vm_dir(&d, &rec));
        let Some(pid) = h.pid.filter(|_| is_running(&d, &rec)) else {
            return Err(ApiError::conflict(format!("vm {name:?} is not running")));
        };
        d.helper
            .signal_vmm("", &rec.id, pid, &signal)
            .await
            .map_err(|e| ApiError::failed(format!("signal {signal}: {e}")))?;
        let t = Instant::now();
        while banger_vmm::proc::is_alive(pid) && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if banger_vmm::proc::is_alive(pid) {
            // The signal did not end the VMM (e.g. HUP); it keeps running.
            return Ok(info(&d, &rec));
        }
        cleanup_runtime(&d, &rec).await;
        set_state(&d, &mut rec, VmState::Stopped, None)?;
        Ok(info(&d, &rec))
    })
    .await
}

/// Drops the VM's masquerade rule (kept across stop/start, gone with the VM).
async fn remove_nat(d: &Shared, rec: &VmRecord) {
    if rec.nat {
        if let Err(e) = d.helper.remove_nat("", &rec.id).await {
            tracing::warn!(vm = %rec.name, error = %e, "remove nat rule");
        }
    }
}

async fn delete_locked(d: &Shared, rec: &VmRecord) -> Result<(), ApiError> {
    cleanup_runtime(d, rec).await;
    remove_nat(d, rec).await;
    let dir = vm_dir(d, rec);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(ApiError::failed(format!("remove {}: {e}", dir.display())));
        }
    }
    d.store.delete_vm(&rec.id).map_err(store_err)?;
    d.forget_vm_lock(&rec.id);
    crate::ssh::refresh_config(d);
    Ok(())
}

/// Deletes a VM: its VMM (killed if running), tap, disks and row.
pub async fn delete(d: Shared, name: String) -> Result<VmInfo, ApiError> {
    let rec = find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let rec = find(&d, &name)?;
        if rec.state == VmState::Creating.as_str() {
            return Err(ApiError::conflict(format!(
                "vm {name:?} is still being created"
            )));
        }
        let shown = info(&d, &rec);
        delete_locked(&d, &rec).await?;
        Ok(shown)
    })
    .await
}

/// Deletes every VM that is not running.
pub async fn prune(d: Shared) -> Result<Vec<String>, ApiError> {
    spawn_detached(async move {
        let mut deleted = Vec::new();
        for rec in d.store.list_vms().map_err(store_err)? {
            let lock = d.vm_lock(&rec.id);
            let _g = lock.lock().await;
            let Some(rec) = d.store.vm_by_name(&rec.name).map_err(store_err)? else {
                continue;
            };
            if rec.state == VmState::Creating.as_str() || is_running(&d, &rec) {
                continue;
            }
            delete_locked(&d, &rec).await?;
            deleted.push(rec.name.clone());
        }
        Ok(deleted)
    })
    .await
}

/// The VM's agent connection: cached, or dialled and pinged within `timeout`.
pub(crate) async fn agent_for(
    d: &Shared,
    rec: &VmRecord,
    timeout: Duration,
) -> Result<Arc<AgentClient>, ApiError> {
    if let Some(c) = d.cached_agent(&rec.id) {
        return Ok(c);
    }
    let no_answer = |e: String| {
        ApiError::failed(format!(
            "guest agent of vm {:?} does not answer: {e}",
            rec.name
        ))
    };
    let (client, _pong) = match Vmm::of(&rec.vmm) {
        Vmm::Qemu => {
            let sock = run_dir(d, rec).join("agent.sock");
            banger_agent_proto::client::wait_ready(&sock, tokio::time::Instant::now() + timeout)
                .await
                .map_err(|e| no_answer(e.to_string()))?
        }
        Vmm::Firecracker => {
            let h = handles::load(&vm_dir(d, rec));
            let vsock = h
                .vsock_socket
                .ok_or_else(|| no_answer("no vsock socket recorded".into()))?;
            firecracker::dial_agent(&vsock, timeout)
                .await
                .map_err(no_answer)?
        }
    };
    let client = Arc::new(client);
    d.put_agent(&rec.id, client.clone());
    Ok(client)
}

/// Runs a command in the guest; events arrive on the returned channel and
/// end with exactly one Exit or Error.
pub async fn exec(
    d: Shared,
    name: String,
    req: ExecRequest,
) -> Result<mpsc::Receiver<ExecEvent>, ApiError> {
    if req.argv.is_empty() {
        return Err(ApiError::bad_request("exec needs a command"));
    }
    let rec = find(&d, &name)?;
    if !is_running(&d, &rec) {
        return Err(ApiError::conflict(format!(
            "vm {name:?} is not running; start it with `banger vm start {name}`"
        )));
    }
    let agent = agent_for(&d, &rec, Duration::from_secs(10)).await?;
    let mut stream = agent
        .exec(req.argv.clone(), req.env.clone(), req.cwd.clone())
        .await
        .map_err(|e| ApiError::failed(format!("exec in vm {name:?}: {e}")))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        use banger_agent_proto::client::ExecEvent as Ev;
        loop {
            let ev = match stream.next_event().await {
                Ok(Some(Ev::Stdout(b))) => ExecEvent::stdout(&b),
                Ok(Some(Ev::Stderr(b))) => ExecEvent::stderr(&b),
                Ok(Some(Ev::Exit(code))) => ExecEvent::Exit { code },
                Err(e) => ExecEvent::Error {
                    error: ApiError::failed(format!("exec: {e}")),
                },
                Ok(None) => ExecEvent::Error {
                    error: ApiError::failed("exec stream ended without an exit code"),
                },
            };
            let last = matches!(ev, ExecEvent::Exit { .. } | ExecEvent::Error { .. });
            if tx.send(ev).await.is_err() || last {
                return;
            }
        }
    });
    Ok(rx)
}

/// At daemon start: re-adopt VMs whose VMM still runs, clean up the rest.
pub async fn reconcile(d: &Shared) {
    let vms = match d.store.list_vms() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "reconcile: cannot list vms");
            return;
        }
    };
    for mut rec in vms {
        let h = handles::load(&vm_dir(d, &rec));
        let alive = vmm_alive(d, &rec, &h);
        match VmState::parse(&rec.state) {
            Some(VmState::Running) if alive => {
                tracing::info!(vm = %rec.name, pid = ?h.pid, "reconcile: re-adopted running vm");
                if let Some(pid) = h.pid {
                    crate::logs::start(d, &rec, &h, pid);
                }
            }
            Some(VmState::Creating) => {
                tracing::warn!(vm = %rec.name, "reconcile: removing a vm whose create was interrupted");
                undo_create(d, &rec).await;
            }
            _ => {
                if h.pid.is_some() || h.tap.is_some() {
                    tracing::warn!(vm = %rec.name, "reconcile: cleaning up a vm whose VMM is gone");
                    cleanup_runtime(d, &rec).await;
                }
                if rec.state == VmState::Running.as_str() {
                    let _ = set_state(d, &mut rec, VmState::Stopped, None);
                }
            }
        }
    }
}
