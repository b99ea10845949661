//! Images: lookup, the local Debian build, OCI pull/import, catalog
//! bundles, register/promote, delete, and the OCI blob cache.
//!
//! Every image that arrives is assembled in a staging directory and
//! published by rename under a per-name lock (`image_locks`), so parallel
//! callers that need the same missing image do the work once and nobody
//! sees half an image. An image a VM uses cannot be deleted.

use std::path::{Path, PathBuf};

use banger_api::{
    ApiError, CachePruneResult, ImageInfo, ImportImageRequest, OperationInfo, PullImageRequest,
    RegisterImageRequest,
};
use banger_image::catalog::EntryKind;
use banger_image::debian::DebianBuild;
use banger_image::oci::build::BuildOptions;
use banger_image::oci::source::{Credentials, FetchedImage};
use banger_image::staged::StagedImage;
use banger_image::Manifest;
use banger_store::ImageRecord;

use crate::daemon::Shared;
use crate::ops::OpHandle;

/// A registered image, its manifest, and the kernel it boots.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

/// Image names are path components: the same grammar as VM names.
pub fn validate_image_name(name: &str) -> Result<(), ApiError> {
    banger_api::validate_vm_name(name).map_err(|e| {
        ApiError::bad_request(format!(
            "image name: {}",
            e.to_string().replace("vm name", "name")
        ))
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

pub fn info(d: &Shared, rec: &ImageRecord) -> ImageInfo {
    let manifest = Manifest::load(Path::new(&rec.dir)).ok();
    ImageInfo {
        name: rec.name.clone(),
        dir: rec.dir.clone(),
        kernel: rec.kernel.clone(),
        initrd: rec.initrd.clone(),
        rootfs_bytes: rec.rootfs_bytes,
        source: rec.source.clone(),
        build_hash: rec.build_hash.clone(),
        created_at: rec.created_at,
        kernel_name: manifest.as_ref().and_then(|m| m.kernel_name.clone()),
        init: manifest.as_ref().and_then(|m| m.init.clone()),
        registered: manifest.as_ref().is_some_and(|m| m.is_registered()),
        in_use_by: d.store.vms_using_image(&rec.name).unwrap_or_default(),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "image {name:?} not found (see `banger image list`; `banger image pull` fetches one, \
         `banger image build` builds the default)"
    ))
}

/// The registered image `name` and its manifest, checked complete on disk.
fn load(d: &Shared, name: &str) -> Result<(PathBuf, Manifest), ApiError> {
    let rec = d
        .store
        .image(name)
        .map_err(internal)?
        .ok_or_else(|| not_found(name))?;
    let dir = PathBuf::from(&rec.dir);
    let manifest = Manifest::load(&dir).map_err(|e| ApiError::failed(e.to_string()))?;
    manifest.check_complete(&dir).map_err(|e| {
        let fix = if name == banger_image::DEFAULT_IMAGE {
            "rebuild it with `banger image build --force`"
        } else {
            "delete it and pull it again"
        };
        ApiError::failed(format!("{e}; {fix}"))
    })?;
    Ok((dir, manifest))
}

/// The registered image `name`, with its kernel, which must be installed.
pub fn get(d: &Shared, name: &str) -> Result<Image, ApiError> {
    let (dir, manifest) = load(d, name)?;
    let (kernel, initrd) = match &manifest.kernel_name {
        None => (
            manifest
                .kernel_path(&dir)
                .ok_or_else(|| ApiError::failed(format!("image {name:?} names no kernel")))?,
            manifest.initrd_path(&dir),
        ),
        Some(k) => {
            let m = d
                .kernels
                .get(k)
                .map_err(|e| ApiError::failed(e.to_string()))?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "kernel {k:?} (image {name:?} boots it) is not installed; \
                         `banger kernel pull {k}` or `banger kernel import {k} FILE`"
                    ))
                })?;
            let paths = d.kernels.path_of(&m);
            (paths.vmlinuz, paths.initrd)
        }
    };
    Ok(Image {
        dir,
        manifest,
        kernel,
        initrd,
    })
}

/// The image `name` ready to boot, as `vm create` needs it: the default
/// image is built when missing or stale; another missing image is pulled
/// from the catalog; a missing kernel is pulled from the catalog. Parallel
/// callers wait for one build or pull instead of starting their own.
pub async fn ensure(d: &Shared, name: &str, op: Option<&OpHandle>) -> Result<Image, ApiError> {
    ensure_for(d, name, op, None).await
}

/// [`ensure`] for the VM named `creating` (its row exists, its disks do not yet):
/// that VM does not keep a stale default image from being rebuilt.
pub async fn ensure_for(
    d: &Shared,
    name: &str,
    op: Option<&OpHandle>,
    creating: Option<&str>,
) -> Result<Image, ApiError> {
    if name != banger_image::DEFAULT_IMAGE {
        if matches!(d.store.image(name), Ok(None)) {
            let _g = d.image_locks.lock(name).await;
            if matches!(d.store.image(name), Ok(None)) {
                if let Some(op) = op {
                    op.stage("image-pull");
                }
                pull_from_catalog(d, name, name, op).await.map_err(|e| {
                    if e.code == banger_api::ErrorCode::NotFound {
                        not_found(name)
                    } else {
                        e
                    }
                })?;
            }
        }
        let (_, manifest) = load(d, name)?;
        if let Some(k) = &manifest.kernel_name {
            crate::kernels::ensure(d, k, op).await?;
        }
        return get(d, name);
    }
    if let Ok(img) = get(d, name) {
        if !needs_rebuild(d, name, &img, creating) {
            return Ok(img);
        }
    }
    let _g = d.image_lock.lock().await;
    if let Ok(img) = get(d, name) {
        if !needs_rebuild(d, name, &img, creating) {
            return Ok(img);
        }
        tracing::info!(
            image = name,
            "rebuilding: the build recipe or the guest agent changed"
        );
    }
    if let Some(op) = op {
        op.stage("image-build");
    }
    build_locked(d, name, op).await
}

/// The default image is stale when its build hash no longer matches the
/// current recipe and agent binary. It is rebuilt only while no VM uses it:
/// their overlays are backed by the current rootfs. `creating` is the VM
/// asking, whose row exists but whose disks do not: it is no user yet (it
/// was counted before, so `vm run` never rebuilt a stale image).
fn needs_rebuild(d: &Shared, name: &str, img: &Image, creating: Option<&str>) -> bool {
    if name != banger_image::DEFAULT_IMAGE || !d.cfg.agent_bin.exists() {
        return false;
    }
    let mut build = DebianBuild::new(d.cfg.agent_bin.clone());
    build.mirror = d.cfg.mirror.clone();
    let Ok(want) = build.build_hash() else {
        return false;
    };
    if want == img.manifest.build_hash {
        return false;
    }
    match d.store.vms_using_image(name) {
        Ok(users) if users.iter().all(|u| Some(u.as_str()) == creating) => true,
        Ok(users) => {
            tracing::warn!(image = name, vms = ?users, "image is stale but in use; keeping it");
            false
        }
        Err(_) => false,
    }
}

async fn build_locked(d: &Shared, name: &str, op: Option<&OpHandle>) -> Result<Image, ApiError> {
    check_agent(d)?;
    let mut build = DebianBuild::new(d.cfg.agent_bin.clone());
    build.mirror = d.cfg.mirror.clone();
    let images_dir = d.cfg.layout.images_dir();
    let name_owned = name.to_string();
    let op = op.cloned();
    let started = std::time::Instant::now();
    let manifest = tokio::task::spawn_blocking(move || {
        build.build(&name_owned, &images_dir, &mut |line| {
            tracing::info!(image = %name_owned, "{line}");
            if let Some(op) = &op {
                op.progress(line);
            }
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::failed(format!("build image {name:?}: {e}")))?;
    let dir = d.cfg.layout.image_dir(name);
    record(d, name, &dir, &manifest)?;
    tracing::info!(
        image = name,
        secs = started.elapsed().as_secs(),
        "image built"
    );
    get(d, name)
}

/// Writes the store row for an image just published in `dir`, from its
/// manifest there.
fn record_published(d: &Shared, name: &str, dir: &Path) -> Result<(), ApiError> {
    let manifest = Manifest::load(dir).map_err(|e| ApiError::failed(e.to_string()))?;
    record(d, name, dir, &manifest)
}

/// Writes the store row for the image in `dir`.
fn record(d: &Shared, name: &str, dir: &Path, manifest: &Manifest) -> Result<(), ApiError> {
    let rec = ImageRecord {
        name: name.to_string(),
        dir: dir.display().to_string(),
        source: manifest.source.clone(),
        build_hash: manifest.build_hash.clone(),
        kernel: manifest.kernel.clone(),
        initrd: manifest.initrd.clone(),
        rootfs_bytes: manifest.rootfs_bytes,
        created_at: manifest.created_at,
    };
    d.store.upsert_image(&rec).map_err(internal)
}

/// Starts an image build operation (`banger image build`): builds the image
/// when it is missing or stale, or always with `force`.
pub async fn build(
    d: Shared,
    op_id: String,
    name: String,
    force: bool,
) -> Result<OperationInfo, ApiError> {
    validate_image_name(&name)?;
    if name != banger_image::DEFAULT_IMAGE {
        return Err(ApiError::bad_request(format!(
            "only the default image {:?} can be built locally",
            banger_image::DEFAULT_IMAGE
        )));
    }
    if force {
        let users = d
            .store
            .vms_using_image(&name)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "image {name:?} is used by vm(s) {}; delete them before rebuilding",
                users.join(", ")
            )));
        }
    }
    let op = d.ops.start(&op_id, "image.build", &name, "check");
    let info = d.ops.get(&op_id).expect("just registered");
    tokio::spawn(async move {
        // Without --force this only builds when the image is missing or
        // stale (recipe or agent changed), so it is safe to run every time.
        let result = if force {
            let _g = d.image_lock.lock().await;
            build_locked(&d, &name, Some(&op)).await
        } else {
            ensure(&d, &name, Some(&op)).await
        };
        op.finish(result.map(|_| None));
    });
    Ok(info)
}

pub fn list(d: &Shared) -> Result<Vec<ImageInfo>, ApiError> {
    Ok(d.store
        .list_images()
        .map_err(internal)?
        .iter()
        .map(|r| info(d, r))
        .collect())
}

pub fn show(d: &Shared, name: &str) -> Result<ImageInfo, ApiError> {
    validate_image_name(name)?;
    let rec = d
        .store
        .image(name)
        .map_err(internal)?
        .ok_or_else(|| not_found(name))?;
    Ok(info(d, &rec))
}

/// A reference names an OCI registry image when it has a registry, a
/// repository path, a tag or a digest; a bare name is a catalog entry.
pub fn is_oci_reference(reference: &str) -> bool {
    reference.contains(['/', ':', '@'])
}

/// The image name a reference gets by default: its last path component,
/// plus the tag when it is not `latest` (`docker.io/library/alpine:3.20`
/// -> `alpine-3.20`), lowercased, with anything else turned into '-'.
pub fn default_name(reference: &str) -> String {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let (repo, tag) = match last.split_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (last, None),
    };
    let mut name = repo.to_string();
    if let Some(t) = tag.filter(|t| *t != "latest") {
        name.push('-');
        name.push_str(t);
    }
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "image".to_string()
    } else {
        out
    }
}

/// Checks a name for a new image: valid and not taken.
fn check_new_name(d: &Shared, name: &str) -> Result<(), ApiError> {
    validate_image_name(name)?;
    if d.store.image(name).map_err(internal)?.is_some() {
        return Err(ApiError::conflict(format!(
            "image {name:?} already exists; delete it first (`banger image delete {name}`) or pick --name"
        )));
    }
    Ok(())
}

fn check_kernel_name(d: &Shared, kernel: Option<&str>) -> Result<String, ApiError> {
    let k = kernel
        .map(str::to_string)
        .unwrap_or_else(|| d.cfg.settings.default_kernel.clone());
    banger_image::kernels::validate_name(&k).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(k)
}

fn check_agent(d: &Shared) -> Result<(), ApiError> {
    if !d.cfg.agent_bin.exists() {
        return Err(ApiError::failed(format!(
            "guest agent binary {} not found; build it with scripts/build or set BANGER_AGENT_BIN",
            d.cfg.agent_bin.display()
        )));
    }
    Ok(())
}

/// Starts `banger image pull`: an OCI registry image, or a catalog bundle.
pub async fn pull(
    d: Shared,
    op_id: String,
    req: PullImageRequest,
) -> Result<OperationInfo, ApiError> {
    let reference = req.reference.trim().to_string();
    if reference.is_empty() {
        return Err(ApiError::bad_request("image pull needs a reference"));
    }
    let oci = is_oci_reference(&reference);
    let name = req.name.clone().unwrap_or_else(|| {
        if oci {
            default_name(&reference)
        } else {
            reference.clone()
        }
    });
    check_new_name(&d, &name)?;
    let kernel = check_kernel_name(&d, req.kernel.as_deref())?;
    if oci {
        check_agent(&d)?;
    } else if req.kernel.is_some() || req.insecure_registry || req.username.is_some() {
        return Err(ApiError::bad_request(format!(
            "{reference:?} is a catalog name (no '/', ':' or '@'): --kernel, --insecure-registry \
             and credentials only apply to registry pulls"
        )));
    }
    let op = d.ops.start(&op_id, "image.pull", &name, "fetch");
    let info = d.ops.get(&op_id).expect("just registered");
    tokio::spawn(async move {
        let _g = d.image_locks.lock(&name).await;
        let result = match check_new_name(&d, &name) {
            Err(e) => Err(e),
            Ok(()) if oci => {
                let creds = match (req.username, req.password) {
                    (Some(username), Some(password)) => Credentials::Basic { username, password },
                    _ => Credentials::Anonymous,
                };
                pull_oci(
                    &d,
                    &name,
                    &reference,
                    &creds,
                    req.insecure_registry,
                    &kernel,
                    &op,
                )
                .await
            }
            Ok(()) => pull_from_catalog(&d, &reference, &name, Some(&op)).await,
        };
        op.finish(result.map(|_| None));
    });
    Ok(info)
}

async fn pull_oci(
    d: &Shared,
    name: &str,
    reference: &str,
    creds: &Credentials,
    insecure: bool,
    kernel: &str,
    op: &OpHandle,
) -> Result<(), ApiError> {
    let blobs = d.cfg.layout.oci_blobs_dir();
    let progress_op = op.clone();
    let fetched = banger_image::oci::registry::pull(reference, creds, &blobs, insecure, move |p| {
        let hex = p.digest.strip_prefix("sha256:").unwrap_or(&p.digest);
        let line = if p.cached {
            format!("{} cached", &hex[..hex.len().min(12)])
        } else {
            format!(
                "{} {}/{}",
                &hex[..hex.len().min(12)],
                banger_api::format_size(p.done),
                banger_api::format_size(p.total)
            )
        };
        progress_op.progress(&line);
    })
    .await
    .map_err(|e| ApiError::failed(format!("pull {reference}: {e}")))?;
    let source = format!("oci:{}@{}", fetched.reference, fetched.manifest_digest);
    build_and_publish(d, name, fetched, source, kernel, op).await
}

/// Flattens, injects and packs `fetched` as image `name`, then publishes
/// and records it. The caller holds the name's lock.
async fn build_and_publish(
    d: &Shared,
    name: &str,
    fetched: FetchedImage,
    source: String,
    kernel: &str,
    op: &OpHandle,
) -> Result<(), ApiError> {
    op.stage("build");
    let opts = BuildOptions {
        agent_bin: d.cfg.agent_bin.clone(),
        kernel_name: kernel.to_string(),
        limits: Default::default(),
    };
    let images = d.cfg.layout.images_dir();
    let name_owned = name.to_string();
    let progress_op = op.clone();
    let started = std::time::Instant::now();
    let dest = tokio::task::spawn_blocking(move || {
        let (staged, report) = banger_image::oci::build::build(
            &fetched,
            &source,
            &name_owned,
            &images,
            &opts,
            &mut |line| progress_op.progress(line),
        )?;
        if !report.flatten.skipped_devices.is_empty() {
            tracing::info!(image = %name_owned, skipped = report.flatten.skipped_devices.len(), "device nodes not copied (the guest's /dev is a devtmpfs)");
        }
        staged.publish(&images, &name_owned)
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::failed(format!("build image {name:?}: {e}")))?;
    record_published(d, name, &dest)?;
    tracing::info!(
        image = name,
        secs = started.elapsed().as_secs(),
        "image built from OCI layers"
    );
    Ok(())
}

/// Most bytes a catalog document may have.
pub const MAX_CATALOG_BYTES: u64 = 4 * 1024 * 1024;

pub async fn fetch_catalog(d: &Shared) -> Result<banger_image::catalog::Catalog, ApiError> {
    let url = &d.cfg.settings.catalog_url;
    banger_image::catalog::fetch_catalog(url, MAX_CATALOG_BYTES)
        .await
        .map_err(|e| {
            ApiError::failed(format!(
                "catalog {url}: {e} (set catalog_url in config.toml or BANGER_CATALOG_URL)"
            ))
        })
}

/// Pulls catalog image `entry_name` as image `name`; the caller holds the
/// name's lock.
async fn pull_from_catalog(
    d: &Shared,
    entry_name: &str,
    name: &str,
    op: Option<&OpHandle>,
) -> Result<(), ApiError> {
    let catalog = fetch_catalog(d).await?;
    let images: Vec<_> = catalog
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Image)
        .collect();
    let Some(entry) = images.iter().rev().find(|e| e.name == entry_name) else {
        let mut offered: Vec<&str> = images.iter().map(|e| e.name.as_str()).collect();
        offered.sort();
        offered.dedup();
        return Err(ApiError::not_found(format!(
            "image {entry_name:?} is not in the catalog {} (it offers: {}); \
             a registry image needs a reference like registry/name:tag",
            d.cfg.settings.catalog_url,
            if offered.is_empty() {
                "nothing".to_string()
            } else {
                offered.join(", ")
            }
        )));
    };
    let progress_op = op.cloned();
    let staged = banger_image::bundle::pull(
        entry,
        &d.cfg.layout.images_dir(),
        name,
        move |done, total| {
            if let Some(op) = &progress_op {
                op.progress(&format!(
                    "{} / {}",
                    banger_api::format_size(done),
                    banger_api::format_size(total)
                ));
            }
        },
    )
    .await
    .map_err(|e| ApiError::failed(format!("pull image {entry_name:?}: {e}")))?;
    let dest = staged
        .publish(&d.cfg.layout.images_dir(), name)
        .map_err(|e| ApiError::failed(e.to_string()))?;
    record_published(d, name, &dest)
}

/// Starts `banger image import`: an OCI layout dir or a docker archive.
pub async fn import(
    d: Shared,
    op_id: String,
    req: ImportImageRequest,
) -> Result<OperationInfo, ApiError> {
    let path = PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "import path {:?} must be absolute",
            req.path
        )));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| ApiError::bad_request(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_dir() && req.tag.is_some() {
        return Err(ApiError::bad_request(
            "--tag applies to an OCI layout directory, not a docker archive",
        ));
    }
    let name = match &req.name {
        Some(n) => n.clone(),
        None => default_name(
            &path
                .file_name()
                .map(|f| f.to_string_lossy().trim_end_matches(".tar").to_string())
                .unwrap_or_default(),
        ),
    };
    check_new_name(&d, &name)?;
    let kernel = check_kernel_name(&d, req.kernel.as_deref())?;
    check_agent(&d)?;
    let op = d.ops.start(&op_id, "image.import", &name, "read");
    let info = d.ops.get(&op_id).expect("just registered");
    tokio::spawn(async move {
        let _g = d.image_locks.lock(&name).await;
        let result = async {
            check_new_name(&d, &name)?;
            let blobs = d.cfg.layout.oci_blobs_dir();
            let tag = req.tag.clone();
            let p = path.clone();
            let is_dir = meta.is_dir();
            let fetched = tokio::task::spawn_blocking(move || {
                if is_dir {
                    banger_image::oci::layout::import_layout(
                        &p,
                        Some(tag.as_deref().unwrap_or("latest")),
                        &blobs,
                    )
                } else {
                    banger_image::oci::layout::import_docker_archive(&p, &blobs)
                }
            })
            .await
            .map_err(internal)?
            .map_err(|e| ApiError::failed(format!("import {}: {e}", path.display())))?;
            let source = if is_dir {
                format!(
                    "oci-layout:{}:{}",
                    path.display(),
                    req.tag.as_deref().unwrap_or("latest")
                )
            } else {
                format!("docker-archive:{}", path.display())
            };
            build_and_publish(&d, &name, fetched, source, &kernel, &op).await
        }
        .await;
        op.finish(result.map(|_| None));
    });
    Ok(info)
}

/// `banger image delete`: refused while a VM uses the image. The directory
/// is renamed aside before it is removed, so the name is never half there.
pub async fn delete(d: &Shared, name: &str) -> Result<(), ApiError> {
    validate_image_name(name)?;
    let _g = d.image_locks.lock(name).await;
    let _b = if name == banger_image::DEFAULT_IMAGE {
        Some(d.image_lock.lock().await)
    } else {
        None
    };
    let rec = d
        .store
        .image(name)
        .map_err(internal)?
        .ok_or_else(|| not_found(name))?;
    let users = d.store.vms_using_image(name).map_err(internal)?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "image {name:?} is in use by vm(s) {}; delete them first",
            users.join(", ")
        )));
    }
    // No VM uses the image, so none backs onto its warm snapshots either.
    crate::warm::forget_image(d, name);
    let dir = PathBuf::from(&rec.dir);
    let images = d.cfg.layout.images_dir();
    if dir.symlink_metadata().is_ok() {
        let aside = StagedImage::new(&images, &format!("del-{name}"))
            .map_err(|e| ApiError::failed(e.to_string()))?;
        std::fs::rename(&dir, aside.path().join("old"))
            .map_err(|e| ApiError::failed(format!("move {} aside: {e}", dir.display())))?;
        d.store.delete_image(name).map_err(internal)?;
        // Removing the files can take a while for a big image.
        tokio::task::spawn_blocking(move || drop(aside))
            .await
            .map_err(internal)?;
    } else {
        d.store.delete_image(name).map_err(internal)?;
    }
    Ok(())
}

fn check_abs_file(what: &str, p: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{what} {p:?} must be an absolute path"
        )));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| ApiError::bad_request(format!("{what} {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ApiError::bad_request(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    Ok(path)
}

/// True when `path` holds an ext4 (or ext2/3) superblock: magic 0xEF53 at
/// byte 1080.
fn is_ext_fs(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 2];
    f.seek(SeekFrom::Start(1080)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && magic == [0x53, 0xEF]
}

/// `banger image register`: an image whose rootfs stays where it is (an
/// absolute path in its manifest; the kernel file, small, is copied in).
/// `promote` copies the rootfs in too.
pub async fn register(d: &Shared, req: RegisterImageRequest) -> Result<ImageInfo, ApiError> {
    let name = req.name.clone();
    let _g = d.image_locks.lock(&name).await;
    check_new_name(d, &name)?;
    let rootfs = check_abs_file("rootfs", &req.rootfs)?;
    if !is_ext_fs(&rootfs) {
        return Err(ApiError::bad_request(format!(
            "rootfs {} is not an ext4 filesystem image",
            rootfs.display()
        )));
    }
    // A kernel file is copied in (it is small, and the root helper boots
    // kernels only from banger's own trees); the rootfs stays in place.
    let (kernel_src, initrd_src, kernel_name) = match (&req.kernel, &req.kernel_name) {
        (Some(k), None) => (
            Some(check_abs_file("kernel", k)?),
            req.initrd
                .as_deref()
                .map(|i| check_abs_file("initrd", i))
                .transpose()?,
            None,
        ),
        (None, Some(k)) => {
            if req.initrd.is_some() {
                return Err(ApiError::bad_request(
                    "--initrd goes with --kernel FILE; a store kernel brings its own",
                ));
            }
            banger_image::kernels::validate_name(k)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (None, None, Some(k.clone()))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of --kernel FILE or --kernel-name NAME",
            ))
        }
    };
    let seed_src = req
        .work_seed
        .as_deref()
        .map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() && p.is_dir() {
                Ok(p)
            } else {
                Err(ApiError::bad_request(format!(
                    "work seed {s:?} must be an absolute path to a directory"
                )))
            }
        })
        .transpose()?;
    let images = d.cfg.layout.images_dir();
    let size = std::fs::metadata(&rootfs).map(|m| m.len()).unwrap_or(0);
    let manifest = Manifest {
        name: name.clone(),
        source: format!("register:{}", rootfs.display()),
        build_hash: String::new(),
        rootfs: rootfs.display().to_string(),
        kernel: if kernel_src.is_some() {
            "vmlinuz".into()
        } else {
            String::new()
        },
        initrd: initrd_src.as_ref().map(|_| "initrd.img".to_string()),
        work_seed: "work-seed".into(),
        kernel_version: String::new(),
        rootfs_bytes: size,
        created_at: crate::now_unix(),
        kernel_name,
        init: None,
    };
    let name2 = name.clone();
    let dest = tokio::task::spawn_blocking(move || -> Result<PathBuf, ApiError> {
        let fail = |e: banger_image::ImageError| ApiError::failed(e.to_string());
        let staged = StagedImage::new(&images, &name2).map_err(fail)?;
        if let Some(k) = &kernel_src {
            copy_tree(k, &staged.path().join("vmlinuz"))?;
        }
        if let Some(i) = &initrd_src {
            copy_tree(i, &staged.path().join("initrd.img"))?;
        }
        let seed = staged.path().join("work-seed");
        match seed_src {
            Some(src) => copy_tree(&src, &seed)?,
            None => std::fs::create_dir(&seed)
                .map_err(|e| ApiError::failed(format!("create {}: {e}", seed.display())))?,
        }
        manifest.write(staged.path()).map_err(fail)?;
        staged.publish(&images, &name2).map_err(fail)
    })
    .await
    .map_err(internal)??;
    record_published(d, &name, &dest)?;
    show(d, &name)
}

/// `cp -a --reflink=auto --sparse=always SRC/. DEST` (argv, no shell):
/// keeps modes, owners, links and holes, and shares blocks where the
/// filesystem can.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), ApiError> {
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            "--reflink=auto",
            "--sparse=always",
            "--no-target-directory",
        ])
        .arg(src)
        .arg(dest)
        .output()
        .map_err(|e| ApiError::failed(format!("run cp: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::failed(format!(
            "copy {} to {}: {}",
            src.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `banger image promote`: copies a registered image's files into banger's
/// store, so it no longer depends on the user's files. VMs already using it
/// keep their disks (backed by the original rootfs, which stays).
pub async fn promote(d: &Shared, name: &str) -> Result<ImageInfo, ApiError> {
    validate_image_name(name)?;
    let _g = d.image_locks.lock(name).await;
    let (dir, manifest) = load(d, name)?;
    if !manifest.is_registered() {
        return Err(ApiError::conflict(format!(
            "image {name:?} is already in banger's store (only images added with `banger image register` can be promoted)"
        )));
    }
    let images = d.cfg.layout.images_dir();
    let name2 = name.to_string();
    let dest = tokio::task::spawn_blocking(move || -> Result<PathBuf, ApiError> {
        let fail = |e: banger_image::ImageError| ApiError::failed(e.to_string());
        let staged = StagedImage::new(&images, &name2).map_err(fail)?;
        let mut m = manifest.clone();
        copy_tree(
            &PathBuf::from(&manifest.rootfs),
            &staged.path().join("rootfs.ext4"),
        )?;
        m.rootfs = "rootfs.ext4".into();
        if let Some(k) = manifest.kernel_path(&dir) {
            copy_tree(&k, &staged.path().join("vmlinuz"))?;
            m.kernel = "vmlinuz".into();
        }
        if let Some(i) = manifest.initrd_path(&dir) {
            copy_tree(&i, &staged.path().join("initrd.img"))?;
            m.initrd = Some("initrd.img".into());
        }
        copy_tree(
            &manifest.work_seed_path(&dir),
            &staged.path().join("work-seed"),
        )?;
        m.source = manifest.source.replacen("register:", "promoted:", 1);
        m.write(staged.path()).map_err(fail)?;
        // Swap: the old directory (manifest and seed only) goes aside, the
        // new one takes the name; on failure the old one comes back.
        let aside = StagedImage::new(&images, &format!("old-{name2}")).map_err(fail)?;
        std::fs::rename(&dir, aside.path().join("old"))
            .map_err(|e| ApiError::failed(format!("move {} aside: {e}", dir.display())))?;
        match staged.publish(&images, &name2) {
            Ok(dest) => Ok(dest),
            Err(e) => {
                let _ = std::fs::rename(aside.path().join("old"), &dir);
                Err(fail(e))
            }
        }
    })
    .await
    .map_err(internal)??;
    record_published(d, name, &dest)?;
    show(d, name)
}

/// `banger image cache prune`: the OCI blob cache only saves downloads.
/// Renamed aside, recreated empty, then removed, so a pull in flight keeps
/// its open files and simply finds an empty cache afterwards.
pub async fn prune_cache(d: &Shared, dry_run: bool) -> Result<CachePruneResult, ApiError> {
    let cache = d.cfg.layout.oci_cache_dir();
    tokio::task::spawn_blocking(move || -> Result<CachePruneResult, ApiError> {
        let (bytes, blobs) = tally(&cache);
        if !dry_run && cache.exists() {
            let parent = cache.parent().unwrap_or(Path::new("/"));
            let aside = tempfile::Builder::new()
                .prefix(".oci.pruning-")
                .tempdir_in(parent)
                .map_err(|e| ApiError::failed(format!("prune {}: {e}", cache.display())))?;
            std::fs::rename(&cache, aside.path().join("oci"))
                .map_err(|e| ApiError::failed(format!("move {} aside: {e}", cache.display())))?;
            std::fs::create_dir_all(&cache)
                .map_err(|e| ApiError::failed(format!("recreate {}: {e}", cache.display())))?;
            drop(aside);
        }
        Ok(CachePruneResult {
            bytes,
            blobs,
            dry_run,
            cache_dir: cache.display().to_string(),
        })
    })
    .await
    .map_err(internal)?
}

/// Bytes and regular files under `dir` (0, 0 when it does not exist).
fn tally(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_default_image_is_rebuilt_unless_another_vm_uses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = crate::testutil::daemon(tmp.path());
        std::fs::write(&d.cfg.agent_bin, b"a newer agent").unwrap();
        let mut build = DebianBuild::new(d.cfg.agent_bin.clone());
        build.mirror = d.cfg.mirror.clone();
        let name = banger_image::DEFAULT_IMAGE;
        let current = crate::testutil::image(tmp.path(), name, &build.build_hash().unwrap());
        let stale = crate::testutil::image(tmp.path(), name, "built-with-an-older-agent");

        assert!(!needs_rebuild(&d, name, &current, None));
        assert!(needs_rebuild(&d, name, &stale, None));
        // The VM being created has a row already: it is no user yet.
        // (Regression: it counted, so `vm run` never rebuilt a stale image.)
        crate::testutil::vm_row(&d, "0123456789ab", "self", None);
        assert!(needs_rebuild(&d, name, &stale, Some("self")));
        assert!(
            !needs_rebuild(&d, name, &stale, None),
            "self is a user for others"
        );
        crate::testutil::vm_row(&d, "ba9876543210", "other", None);
        assert!(
            !needs_rebuild(&d, name, &stale, Some("self")),
            "another VM's overlay backs onto the current rootfs"
        );
        assert!(!needs_rebuild(&d, "another-image", &stale, Some("self")));
    }

    #[test]
    fn references_and_default_names() {
        assert!(is_oci_reference("127.0.0.1:5000/banger/busybox:1"));
        assert!(is_oci_reference("alpine:3.20"));
        assert!(is_oci_reference("library/alpine"));
        assert!(!is_oci_reference("bbcat"));
        assert_eq!(default_name("127.0.0.1:5000/banger/busybox:1"), "busybox-1");
        assert_eq!(default_name("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(default_name("ghcr.io/o/My_Tool:v1.2"), "my-tool-v1-2");
        assert_eq!(default_name("x/y@sha256:abcd"), "y");
        assert_eq!(default_name("___"), "image");
        for r in ["127.0.0.1:5000/banger/busybox:1", "ghcr.io/o/My_Tool:v1.2"] {
            validate_image_name(&default_name(r)).unwrap();
        }
    }

    #[test]
    fn tally_counts_files_and_a_missing_cache_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tally(&dir.path().join("missing")), (0, 0));
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/a"), b"12345").unwrap();
        std::fs::write(dir.path().join("blobs/b"), b"12").unwrap();
        assert_eq!(tally(dir.path()), (7, 2));
    }

    #[test]
    fn ext_magic_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let img = dir.path().join("fs.ext4");
        banger_image::ext4::pack_dir(&src, &img, 8, "t").unwrap();
        assert!(is_ext_fs(&img));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(!is_ext_fs(&junk));
        assert!(!is_ext_fs(&dir.path().join("missing")));
    }
}
