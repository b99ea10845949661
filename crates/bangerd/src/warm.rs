//! Warm starts: new VMs restored from a snapshot of a booted guest instead
//! of booting one (docs/warm-starts.md).
//!
//! A **warm snapshot** belongs to one image and one VM shape (vCPUs,
//! memory, work disk size) on one VMM build and accelerator. It is made
//! once, by booting a template guest (no address, a throwaway SSH host
//! key) until its agent answers and systemd settles, then saving it with
//! QEMU's own migration to a file: the device and memory state, plus the
//! template's two disks, frozen read-only. It lives in
//! `<state>/warm/<id>/`:
//!
//! - `state`: the migration stream (0400);
//! - `root.qcow2`: the template's root overlay over the image's rootfs;
//! - `work.ext4`: the template's work disk;
//! - `snapshot.json`: what it was made from ([`Meta`]).
//!
//! A VM restored from it gets qcow2 overlays over those two disks (so
//! clones never see each other's writes), a QEMU started with `-incoming
//! defer`, the state loaded over QMP, and, before anything else runs in
//! it, its own identity from the agent's `Reidentify` request: MAC, IP,
//! hostname, clock, CRNG reseed, machine-id, SSH host key.
//!
//! The id is a hash of everything that must match for a restore to be
//! correct: the image's files and manifest, the host's agent binary, the
//! QEMU version, the accelerator, the shape, and [`FORMAT`]. Anything
//! changing gives a new id, so a stale snapshot is never used; it is
//! removed once no VM's disks back onto it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use banger_api::WarmSnapshotInfo;
use banger_vmm::qemu::qmp::Qmp;
use banger_vmm::qemu::{DiskFormat, QemuConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::daemon::Shared;
use crate::handles::{self, Handles};
use crate::images::Image;
use crate::ops::OpHandle;

/// Bumped whenever the QEMU device set, the template's boot or this
/// directory layout changes: every older snapshot then becomes stale.
pub const FORMAT: u32 = 1;

/// The file in a VM's directory naming the snapshot its disks back onto.
pub const VM_MARKER: &str = "warm-snapshot";
/// The file in a template's (temporary) VM directory while it is built;
/// reconcile removes such directories and whatever they left running.
const BUILD_MARKER: &str = "warm-build";
/// The work disk of a restored VM: a qcow2 overlay over the template's.
pub const WORK_OVERLAY: &str = "work.qcow2";

const STATE: &str = "state";
const ROOT: &str = "root.qcow2";
const WORK: &str = "work.ext4";
const META: &str = "snapshot.json";
const FAILED: &str = "failed";

/// Loading the state file: ~0.6 s here for a 1 GiB guest; generous for a
/// loaded host or a cold page cache.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// From `cont` to the agent answering: ~0.2 s here.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The template waits for systemd to settle before it is saved, so that
/// restored guests do not replay the end of the boot.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// The migration rate limit while saving (QEMU's default is 128 MiB/s).
const SAVE_BANDWIDTH: u64 = 64 << 30;

/// What a snapshot was made from; its id is the hash of this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub format: u32,
    pub image: String,
    /// Hash of the image's manifest and of its rootfs, kernel and initrd
    /// files' identity (size, mtime, inode).
    pub image_id: String,
    /// sha256 of the host's guest agent binary.
    pub agent: String,
    pub vmm: String,
    pub vmm_version: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub work_disk_mib: u64,
}

impl Inputs {
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).expect("plain struct serialises");
        hex::encode(&Sha256::digest(json)[..8])
    }

    fn same_shape(&self, other: &Inputs) -> bool {
        self.image == other.image
            && self.vmm == other.vmm
            && self.accel == other.accel
            && self.vcpus == other.vcpus
            && self.memory_mib == other.memory_mib
            && self.work_disk_mib == other.work_disk_mib
    }

    /// Why a snapshot made from `old` does not fit `self` (same shape).
    fn changed_since(&self, old: &Inputs) -> String {
        let mut what = Vec::new();
        if self.image_id != old.image_id {
            what.push("the image");
        }
        if self.agent != old.agent {
            what.push("the guest agent");
        }
        if self.vmm_version != old.vmm_version {
            what.push("the VMM version");
        }
        if self.format != old.format {
            what.push("banger's snapshot format");
        }
        if what.is_empty() {
            "it changed".into()
        } else {
            format!("{} changed", what.join(" and "))
        }
    }
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub inputs: Inputs,
    pub created_at: i64,
    pub build_ms: u64,
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Snapshot {
    pub fn id(&self) -> &str {
        &self.meta.id
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join(ROOT)
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join(WORK)
    }
}

pub fn warm_dir(d: &Shared) -> PathBuf {
    d.cfg.layout.state_dir.join("warm")
}

/// Hashes of files that are expensive to hash, keyed by (path, size,
/// mtime): the agent binary is read once per change, not once per VM.
static FILE_HASHES: Mutex<Vec<(PathBuf, u64, i64, String)>> = Mutex::new(Vec::new());
static VMM_VERSIONS: Mutex<Vec<(PathBuf, i64, String)>> = Mutex::new(Vec::new());

fn file_sha256(path: &Path) -> Result<String, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = (
        path.to_path_buf(),
        md.len(),
        md.mtime_nsec() + md.mtime() * 1_000_000_000,
    );
    if let Some(h) = FILE_HASHES
        .lock()
        .unwrap()
        .iter()
        .find(|(p, l, m, _)| (p, *l, *m) == (&key.0, key.1, key.2))
    {
        return Ok(h.3.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let h = hex::encode(Sha256::digest(&bytes));
    let mut cache = FILE_HASHES.lock().unwrap();
    cache.retain(|(p, ..)| p != &key.0);
    cache.push((key.0, key.1, key.2, h.clone()));
    Ok(h)
}

/// `qemu-system-x86_64 --version`'s first line: the machine type `q35`
/// and device models move with QEMU versions, and a stream only loads
/// into the version (and device set) that wrote it.
fn qemu_version(bin: &Path) -> Result<String, String> {
    let mtime = std::fs::metadata(bin)
        .map(|m| m.mtime())
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if let Some(v) = VMM_VERSIONS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, m, _)| p == bin && *m == mtime)
    {
        return Ok(v.2.clone());
    }
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || line.is_empty() {
        return Err(format!("{} --version said nothing useful", bin.display()));
    }
    let mut cache = VMM_VERSIONS.lock().unwrap();
    cache.retain(|(p, ..)| p != bin);
    cache.push((bin.to_path_buf(), mtime, line.clone()));
    Ok(line)
}

/// The identity of an image's files and manifest: any rebuild, re-import
/// or edit of the rootfs, kernel or initrd changes it.
pub fn image_id(img: &Image) -> Result<String, String> {
    let mut h = Sha256::new();
    let manifest = serde_json::to_vec(&img.manifest).map_err(|e| e.to_string())?;
    h.update(&manifest);
    let rootfs = img.manifest.rootfs_path(&img.dir);
    let mut files = vec![rootfs, img.kernel.clone()];
    files.extend(img.initrd.clone());
    for f in files {
        let md = std::fs::metadata(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        h.update(format!(
            "{}\0{}\0{}.{}\0{}\0",
            f.display(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.ino()
        ));
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// What a snapshot for this image and shape must have been made from.
pub fn inputs(
    d: &Shared,
    image: &str,
    img: &Image,
    accel: banger_vmm::Accel,
    vcpus: u32,
    memory_mib: u32,
    work_disk_mib: u64,
) -> Result<Inputs, String> {
    let agent = if d.cfg.agent_bin.exists() {
        file_sha256(&d.cfg.agent_bin)?
    } else {
        "none".into()
    };
    Ok(Inputs {
        format: FORMAT,
        image: image.to_string(),
        image_id: image_id(img)?,
        agent,
        vmm: "qemu".into(),
        vmm_version: qemu_version(&d.cfg.qemu_bin)?,
        accel: accel.as_str().into(),
        vcpus,
        memory_mib,
        work_disk_mib,
    })
}

fn load_meta(dir: &Path) -> Option<Meta> {
    let text = std::fs::read(dir.join(META)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Every published snapshot (directories that are not complete are skipped).
pub fn all(d: &Shared) -> Vec<Snapshot> {
    let Ok(rd) = std::fs::read_dir(warm_dir(d)) else {
        return Vec::new();
    };
    let mut out: Vec<Snapshot> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let dir = e.path();
            let meta = load_meta(&dir)?;
            (meta.id == e.file_name().to_string_lossy()).then_some(Snapshot { dir, meta })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.meta.inputs.image, a.meta.created_at).cmp(&(&b.meta.inputs.image, b.meta.created_at))
    });
    out
}

/// What a lookup found.
pub enum Lookup {
    Ready(Box<Snapshot>),
    /// No usable snapshot; the reason is one line for the user.
    Missing(String),
    /// A build of this snapshot failed before; it is not retried on every
    /// run (each try costs a cold boot) until `banger image warm`.
    Failed(String),
}

pub fn lookup(d: &Shared, want: &Inputs) -> Lookup {
    let id = want.id();
    let dir = warm_dir(d).join(&id);
    if let Some(meta) = load_meta(&dir) {
        if meta.inputs == *want {
            return Lookup::Ready(Box::new(Snapshot { dir, meta }));
        }
    }
    if let Ok(reason) = std::fs::read_to_string(warm_dir(d).join(format!(".{id}.{FAILED}"))) {
        return Lookup::Failed(reason.trim().to_string());
    }
    let shape = format!(
        "{} ({} vcpu, {} MiB, {} MiB disk)",
        want.image, want.vcpus, want.memory_mib, want.work_disk_mib
    );
    match all(d).iter().find(|s| s.meta.inputs.same_shape(want)) {
        Some(old) => Lookup::Missing(format!(
            "the warm snapshot {} of {shape} is stale: {}",
            old.id(),
            want.changed_since(&old.meta.inputs)
        )),
        None => Lookup::Missing(format!("no warm snapshot of {shape} yet")),
    }
}

/// The VMs (by name) whose disks back onto snapshot `id`.
fn users(d: &Shared, id: &str) -> Vec<String> {
    let Ok(vms) = d.store.list_vms() else {
        return vec!["(state database unreadable)".into()];
    };
    vms.into_iter()
        .filter(|r| recorded(d, &r.id).as_deref() == Some(id))
        .map(|r| r.name)
        .collect()
}

/// The snapshot VM `vm_id` was restored from, if it was.
pub fn recorded(d: &Shared, vm_id: &str) -> Option<String> {
    let text = std::fs::read_to_string(d.cfg.layout.vm_dir(vm_id).join(VM_MARKER)).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// The API view of every snapshot.
pub fn list(d: &Shared) -> Vec<WarmSnapshotInfo> {
    let images = d.store.list_images().unwrap_or_default();
    all(d)
        .into_iter()
        .map(|s| {
            let i = &s.meta.inputs;
            let current = images.iter().any(|r| r.name == i.image)
                && crate::images::get(d, &i.image)
                    .ok()
                    .and_then(|img| {
                        let accel = banger_vmm::Accel::parse(&i.accel)?;
                        inputs(
                            d,
                            &i.image,
                            &img,
                            accel,
                            i.vcpus,
                            i.memory_mib,
                            i.work_disk_mib,
                        )
                        .ok()
                    })
                    .is_some_and(|want| want == *i);
            WarmSnapshotInfo {
                id: s.meta.id.clone(),
                image: i.image.clone(),
                vmm: i.vmm.clone(),
                accel: i.accel.clone(),
                vcpus: i.vcpus,
                memory_mib: i.memory_mib,
                work_disk_mib: i.work_disk_mib,
                vmm_version: i.vmm_version.clone(),
                agent: i.agent.chars().take(12).collect(),
                current,
                used_by: users(d, &s.meta.id),
                bytes: dir_bytes(&s.dir),
                created_at: s.meta.created_at,
                build_ms: s.meta.build_ms,
            }
        })
        .collect()
}

/// Removes snapshot `id`; refused while VMs back onto it.
pub fn remove(d: &Shared, id: &str) -> Result<(), String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{id:?} is not a warm snapshot id (see `banger image snapshots`)"
        ));
    }
    let dir = warm_dir(d).join(id);
    if load_meta(&dir).is_none() {
        return Err(format!(
            "no warm snapshot {id} (see `banger image snapshots`)"
        ));
    }
    let users = users(d, id);
    if !users.is_empty() {
        return Err(format!(
            "warm snapshot {id} backs the disks of vm(s) {}; delete them first",
            users.join(", ")
        ));
    }
    discard(&dir);
    Ok(())
}

/// Deletes a snapshot directory: the metadata first, so a half-deleted
/// directory is never taken for a snapshot.
fn discard(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(META));
    for f in [STATE, ROOT, WORK] {
        let p = dir.join(f);
        if let Ok(md) = std::fs::metadata(&p) {
            let mut perm = md.permissions();
            perm.set_mode(0o600);
            let _ = std::fs::set_permissions(&p, perm);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Drops snapshot `id` after a restore from it failed, unless VMs back
/// onto it: the next run builds a fresh one (and, if the cause is in the
/// image, that build fails and is remembered) instead of failing the same
/// restore on every run.
pub async fn drop_broken(d: &Shared, id: &str) {
    let _g = d.warm_lock.lock().await;
    let dir = warm_dir(d).join(id);
    if load_meta(&dir).is_some() && users(d, id).is_empty() {
        tracing::warn!(
            snapshot = id,
            "removing a warm snapshot that failed to restore"
        );
        discard(&dir);
    }
}

/// Removes stale snapshots of `want`'s shape that no VM backs onto.
fn collect_stale(d: &Shared, want: &Inputs) {
    for s in all(d) {
        if s.meta.inputs.same_shape(want) && s.meta.inputs != *want && users(d, s.id()).is_empty() {
            tracing::info!(snapshot = s.id(), "removing a stale warm snapshot");
            discard(&s.dir);
        }
    }
}

/// Removes every snapshot of image `name` that no VM backs onto (the
/// image is being deleted or replaced). Returns the ids kept.
pub fn forget_image(d: &Shared, name: &str) -> Vec<String> {
    let mut kept = Vec::new();
    for s in all(d) {
        if s.meta.inputs.image == name {
            if users(d, s.id()).is_empty() {
                discard(&s.dir);
            } else {
                kept.push(s.id().to_string());
            }
        }
    }
    kept
}

/// Builds (or, when a current one exists and not `force`, returns) the
/// snapshot for `want`. One build at a time: each is a cold boot.
pub async fn ensure(
    d: &Shared,
    op: Option<&OpHandle>,
    img: &Image,
    want: &Inputs,
    force: bool,
) -> Result<Snapshot, String> {
    let _g = d.warm_lock.lock().await;
    if !force {
        if let Lookup::Ready(s) = lookup(d, want) {
            return Ok(*s);
        }
    }
    let id = want.id();
    let failed = warm_dir(d).join(format!(".{id}.{FAILED}"));
    let started = Instant::now();
    let result = build(d, op, img, want).await;
    match result {
        Ok(dir) => {
            let _ = std::fs::remove_file(&failed);
            let meta = Meta {
                id: id.clone(),
                inputs: want.clone(),
                created_at: crate::now_unix(),
                build_ms: started.elapsed().as_millis() as u64,
            };
            let published = publish(d, &dir, &meta);
            let _ = std::fs::remove_dir_all(&dir);
            let s = published?;
            collect_stale(d, want);
            Ok(s)
        }
        Err(e) => {
            let _ = std::fs::create_dir_all(warm_dir(d));
            let _ = std::fs::write(&failed, format!("{e}\n"));
            Err(e)
        }
    }
}

/// Moves a finished template's files into `<state>/warm/<id>/`, read-only.
fn publish(d: &Shared, from: &Path, meta: &Meta) -> Result<Snapshot, String> {
    let root = warm_dir(d);
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let stage = root.join(format!(".tmp-{}-{}", meta.id, crate::vm::random_hex(4)));
    std::fs::create_dir(&stage).map_err(|e| format!("create {}: {e}", stage.display()))?;
    let result = (|| {
        for (f, mode) in [(STATE, 0o400), (ROOT, 0o444), (WORK, 0o444)] {
            let dst = stage.join(f);
            std::fs::rename(from.join(f), &dst).map_err(|e| format!("move {f}: {e}"))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {f}: {e}"))?;
        }
        let json = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
        std::fs::write(stage.join(META), json).map_err(|e| format!("write {META}: {e}"))?;
        let dst = root.join(&meta.id);
        if dst.exists() {
            // Forced rebuild: the old one goes, unless VMs back onto it
            // (then the new files cannot take its place).
            if !users(d, &meta.id).is_empty() {
                return Err(format!(
                    "warm snapshot {} backs running VMs' disks; it stays",
                    meta.id
                ));
            }
            discard(&dst);
        }
        std::fs::rename(&stage, &dst).map_err(|e| format!("publish {}: {e}", dst.display()))?;
        Ok(Snapshot {
            dir: dst,
            meta: meta.clone(),
        })
    })();
    if result.is_err() {
        discard(&stage);
    }
    result
}

/// Boots a template guest in a temporary VM directory and saves it.
/// Returns the directory holding `state`, `root.qcow2` and `work.ext4`.
/// Whatever happens, no QEMU, tap or runtime file is left behind; the
/// directory is the caller's to remove.
async fn build(
    d: &Shared,
    op: Option<&OpHandle>,
    img: &Image,
    want: &Inputs,
) -> Result<PathBuf, String> {
    let tpl_id = crate::vm::random_hex(6);
    let dir = d.cfg.layout.vm_dir(&tpl_id);
    let run = d.cfg.layout.vm_runtime_dir(&tpl_id);
    for p in [&dir, &run] {
        crate::vm::private_dir(p)?;
    }
    std::fs::write(dir.join(BUILD_MARKER), &want.image).map_err(|e| e.to_string())?;
    let progress = |line: &str| {
        if let Some(op) = op {
            op.progress(line)
        }
    };
    progress("booting the template guest (one cold boot)");
    let result = boot_and_save(d, img, want, &tpl_id, &dir, &run, &progress).await;
    // The template's VMM, tap and sockets go whatever happened.
    let h = handles::load(&dir);
    if let Some(pid) = h.pid {
        if banger_vmm::proc::is_alive(pid) {
            if let Err(e) = crate::vm::stop_vmm(d, &tpl_id, pid).await {
                tracing::warn!(pid, error = %e, "kill the template's qemu");
            }
        }
    }
    if let Some(tap) = h.tap {
        crate::tappool::release(d, &tpl_id, &tap).await;
    }
    let _ = std::fs::remove_dir_all(&run);
    match result {
        Ok(()) => {
            let out = warm_dir(d).join(format!(".build-{tpl_id}"));
            std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            for f in [STATE, ROOT, WORK] {
                if let Err(e) = std::fs::rename(dir.join(f), out.join(f)) {
                    let _ = std::fs::remove_dir_all(&out);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!("move the template's {f}: {e}"));
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(out)
        }
        Err(e) => {
            let tail = last_lines(&dir.join(crate::logs::QEMU_CONSOLE_RAW), 8);
            let vmm = last_lines(&dir.join(crate::logs::QEMU_VMM_RAW), 4);
            let _ = std::fs::remove_dir_all(&dir);
            let mut msg = format!("building the warm snapshot of {}: {e}", want.image);
            if !vmm.is_empty() {
                msg.push_str(&format!("\nqemu said:\n{vmm}"));
            }
            if !tail.is_empty() {
                msg.push_str(&format!("\nlast console lines:\n{tail}"));
            }
            Err(msg)
        }
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn boot_and_save(
    d: &Shared,
    img: &Image,
    want: &Inputs,
    tpl_id: &str,
    dir: &Path,
    run: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    // Disks: a root overlay over the image, a work disk with a throwaway
    // host key (so the image's keygen unit makes no /etc/ssh key that every
    // clone would share; each restored VM gets its own over Reidentify).
    {
        let root = dir.join(ROOT);
        let rootfs = img.manifest.rootfs_path(&img.dir);
        let seed = img.manifest.work_seed_path(&img.dir);
        let work = dir.join(WORK);
        let client_key = crate::ssh::client_key(d).map_err(|e| e.message)?;
        let work_mib = want.work_disk_mib;
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            banger_vmm::qemu::create_overlay(Path::new("qemu-img"), &rootfs, &root)
                .map_err(|e| format!("root overlay: {e}"))?;
            let key = banger_ssh::generate_host_key("banger-warm-template")
                .map_err(|e| format!("template host key: {e}"))?;
            crate::workdisk::build(
                &seed,
                &work,
                work_mib,
                &crate::workdisk::PerVm {
                    authorized_key: &client_key.public_openssh,
                    host_key: &key.private_openssh,
                    host_key_pub: &key.public_openssh,
                },
            )
        })
        .await
        .map_err(|e| e.to_string())??;
    }

    let tap = banger_net::tap_name_for(tpl_id);
    let mut h = Handles {
        tap: Some(tap.clone()),
        accel: Some(want.accel.clone()),
        ..Handles::default()
    };
    handles::save(dir, &h).map_err(|e| format!("save handles: {e}"))?;
    d.helper
        .ensure_bridge("", &d.cfg.bridge, d.cfg.gateway, d.cfg.prefix)
        .await
        .map_err(|e| format!("bridge {}: {e}", d.cfg.bridge))?;
    crate::tappool::acquire(d, "", tpl_id).await?;
    let accel = banger_vmm::Accel::parse(&want.accel)
        .ok_or_else(|| format!("unknown accelerator {:?}", want.accel))?;
    let cfg = QemuConfig {
        vm_id: tpl_id.to_string(),
        accel,
        vcpus: want.vcpus,
        memory_mib: want.memory_mib,
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
        // No address: a restored guest announces what it had, and the
        // template's address may belong to another VM by then.
        cmdline: banger_vmm::qemu::template_cmdline(
            "banger-template",
            img.manifest.init.as_deref(),
        ),
        root_disk: dir.join(ROOT),
        work_disk: dir.join(WORK),
        work_format: DiskFormat::Raw,
        tap,
        mac: banger_net::mac_for_ip(std::net::Ipv4Addr::new(10, 255, 255, 254)),
        agent_socket: run.join("agent.sock"),
        qmp_socket: run.join("qmp.sock"),
        pidfile: d.cfg.layout.vm_pidfile(tpl_id),
        console_log: dir.join(crate::logs::QEMU_CONSOLE_RAW),
        vmm_log: Some(dir.join(crate::logs::QEMU_VMM_RAW)),
        incoming: false,
    };
    let pid = d
        .helper
        .launch_qemu("", &cfg)
        .await
        .map_err(|e| format!("start qemu: {e}"))?;
    h.pid = Some(pid);
    handles::save(dir, &h).map_err(|e| format!("save handles: {e}"))?;

    let deadline = tokio::time::Instant::now() + d.cfg.boot_timeout;
    let (agent, pong) = tokio::select! {
        r = banger_agent_proto::client::wait_ready(&cfg.agent_socket, deadline) =>
            r.map_err(|e| format!("the template guest did not become ready: {e}"))?,
        _ = crate::vm::watch_exit(pid) => return Err("the template's qemu exited during boot".into()),
    };
    // Every clone must take its own identity from the agent; a snapshot of
    // an older agent would fail every restore.
    if !pong.has(banger_agent_proto::FEATURE_REIDENTIFY) {
        return Err(format!(
            "the guest agent in image {} predates warm starts (it cannot take a new identity); \
             rebuild the image (`banger image build --force` for the default one) or import it again",
            want.image
        ));
    }
    if img.manifest.init.is_none() {
        progress("waiting for systemd to settle");
        // `degraded` is fine (a unit failed); the point is that the boot
        // is over, so restored guests do not replay the end of it.
        let settle = agent.exec(
            vec![
                "systemctl".into(),
                "is-system-running".into(),
                "--wait".into(),
            ],
            Vec::new(),
            None,
        );
        match tokio::time::timeout(SETTLE_TIMEOUT, async { settle.await?.collect().await }).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "template: systemctl is-system-running"),
            Err(_) => return Err("systemd in the template guest did not settle".into()),
        }
    }
    agent
        .sync(Duration::from_secs(30))
        .await
        .map_err(|e| format!("sync in the template guest: {e}"))?;
    drop(agent);

    progress("saving the snapshot");
    let qmp = Qmp::connect(&cfg.qmp_socket, Duration::from_secs(10))
        .await
        .map_err(|e| format!("qmp: {e}"))?;
    qmp.migrate_set_parameters(serde_json::json!({ "max-bandwidth": SAVE_BANDWIDTH }))
        .await
        .map_err(|e| format!("qmp: {e}"))?;
    // Stopped first, so disks and memory are saved at one instant (the
    // stream then also says "paused": restores resume with `cont`).
    qmp.stop().await.map_err(|e| format!("qmp stop: {e}"))?;
    let uri = format!("file:{}", dir.join(STATE).display());
    qmp.migrate(&uri)
        .await
        .map_err(|e| format!("qmp migrate: {e}"))?;
    qmp.wait_migration_completed(SAVE_TIMEOUT)
        .await
        .map_err(|e| format!("saving the template: {e}"))?;
    let _ = qmp.quit().await;
    let t = Instant::now();
    while banger_vmm::proc::is_alive(pid) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a `banger image warm` operation: builds the snapshot of one
/// image and shape (or keeps the current one unless `force`).
pub async fn start_build(
    d: Shared,
    op_id: String,
    image: String,
    req: banger_api::WarmImageRequest,
) -> Result<banger_api::OperationInfo, banger_api::ApiError> {
    use banger_api::{ApiError, VmSpec};
    crate::images::validate_image_name(&image)?;
    let spec = VmSpec {
        vcpus: req.vcpus.unwrap_or(VmSpec::DEFAULT.vcpus),
        memory_mib: req.memory_mib.unwrap_or(VmSpec::DEFAULT.memory_mib),
        work_disk_mib: req.work_disk_mib.unwrap_or(VmSpec::DEFAULT.work_disk_mib),
    };
    spec.validate().map_err(ApiError::bad_request)?;
    let (vmm, _) = crate::backend::select(&d, req.vmm).await?;
    if vmm != crate::backend::Vmm::Qemu {
        return Err(ApiError::bad_request(
            "warm snapshots are made with the QEMU backend only for now; pass --vmm qemu",
        ));
    }
    let op = d.ops.start(&op_id, "image.warm", &image, "image");
    let info = d.ops.get(&op_id).expect("just registered");
    tokio::spawn(async move {
        let result = async {
            let img = crate::images::ensure(&d, &image, Some(&op)).await?;
            let accel = d.accel().await.accel;
            let want = inputs(
                &d,
                &image,
                &img,
                accel,
                spec.vcpus,
                spec.memory_mib,
                spec.work_disk_mib,
            )
            .map_err(ApiError::failed)?;
            op.stage("snapshot");
            if !req.force {
                if let Lookup::Ready(s) = lookup(&d, &want) {
                    op.note(&format!(
                        "warm snapshot {} is current; nothing to do (--force rebuilds it)",
                        s.id()
                    ));
                    return Ok(());
                }
            }
            let s = ensure(&d, Some(&op), &img, &want, req.force)
                .await
                .map_err(ApiError::failed)?;
            op.note(&format!(
                "built warm snapshot {} in {:.1}s",
                s.id(),
                s.meta.build_ms as f64 / 1000.0
            ));
            Ok(())
        }
        .await;
        op.finish(result.map(|()| None));
    });
    Ok(info)
}

/// Loads `snap` into a QEMU started with `-incoming defer` and resumes it.
pub async fn load(qmp_socket: &Path, snap: &Snapshot, pid: u32) -> Result<(), String> {
    let qmp = Qmp::connect(qmp_socket, Duration::from_secs(10))
        .await
        .map_err(|e| format!("qmp: {e}"))?;
    let uri = format!("file:{}", snap.state().display());
    qmp.migrate_incoming(&uri)
        .await
        .map_err(|e| format!("qmp migrate-incoming: {e}"))?;
    tokio::select! {
        r = qmp.wait_migration_completed(LOAD_TIMEOUT) => r.map_err(|e| format!("loading the snapshot: {e}"))?,
        _ = crate::vm::watch_exit(pid) => return Err("qemu exited while loading the snapshot".into()),
    };
    qmp.cont().await.map_err(|e| format!("qmp cont: {e}"))?;
    Ok(())
}

/// How often a just-resumed guest's agent is probed (it answers within a
/// few hundred milliseconds; a boot is probed every 200 ms).
const RESTORE_READY_RETRY: Duration = Duration::from_millis(20);

/// Waits for the agent of a just-resumed guest.
pub async fn wait_agent(
    socket: &Path,
) -> Result<
    (
        banger_agent_proto::client::AgentClient,
        banger_agent_proto::client::Pong,
    ),
    String,
> {
    let deadline = tokio::time::Instant::now() + RESTORE_READY_TIMEOUT;
    banger_agent_proto::client::wait_ready_every(socket, deadline, RESTORE_READY_RETRY)
        .await
        .map_err(|e| format!("the restored guest's agent did not answer: {e}"))
}

/// Removes template directories a crashed daemon left behind, with their
/// VMM and tap; and unfinished publish/build directories.
pub async fn reconcile(d: &Shared) {
    if let Ok(rd) = std::fs::read_dir(d.cfg.layout.vms_dir()) {
        for e in rd.flatten() {
            let dir = e.path();
            if !dir.join(BUILD_MARKER).exists() {
                continue;
            }
            let id = e.file_name().to_string_lossy().to_string();
            let h = handles::load(&dir);
            if let Some(pid) = h.pid.filter(|p| banger_vmm::proc::is_alive(*p)) {
                let _ = d.helper.kill_vmm("", &id, pid).await;
            }
            if let Some(tap) = h.tap {
                let _ = d.helper.delete_tap("", &tap).await;
            }
            let _ = std::fs::remove_dir_all(d.cfg.layout.vm_runtime_dir(&id));
            let _ = std::fs::remove_dir_all(&dir);
            tracing::warn!(dir = %dir.display(), "removed an interrupted warm snapshot build");
        }
    }
    if let Ok(rd) = std::fs::read_dir(warm_dir(d)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-") || name.starts_with(".build-") {
                discard(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests;
