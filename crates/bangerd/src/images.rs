//! Image lookup and the local image build.

use std::path::PathBuf;

use banger_api::{ApiError, ImageInfo, OperationInfo};
use banger_image::debian::DebianBuild;
use banger_image::Manifest;
use banger_store::ImageRecord;

use crate::daemon::Shared;
use crate::ops::OpHandle;

/// A registered image and its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
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

pub fn info(rec: &ImageRecord) -> ImageInfo {
    ImageInfo {
        name: rec.name.clone(),
        dir: rec.dir.clone(),
        kernel: rec.kernel.clone(),
        initrd: rec.initrd.clone(),
        rootfs_bytes: rec.rootfs_bytes,
        source: rec.source.clone(),
        build_hash: rec.build_hash.clone(),
        created_at: rec.created_at,
    }
}

/// The registered image `name`, checked complete on disk.
pub fn get(d: &Shared, name: &str) -> Result<Image, ApiError> {
    let rec = d
        .store
        .image(name)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "image {name:?} not found (see `banger image list`; `banger image build` builds the default)"
            ))
        })?;
    let dir = PathBuf::from(&rec.dir);
    let manifest = Manifest::load(&dir).map_err(|e| ApiError::failed(e.to_string()))?;
    manifest.check_complete(&dir).map_err(|e| {
        ApiError::failed(format!("{e}; rebuild it with `banger image build --force`"))
    })?;
    Ok(Image { dir, manifest })
}

/// Returns the image, building the default image first if it is missing,
/// or rebuilding it when its recipe or the guest agent changed and no VM
/// uses it. Parallel callers wait for one build instead of starting their own.
pub async fn ensure(d: &Shared, name: &str, op: Option<&OpHandle>) -> Result<Image, ApiError> {
    if let Ok(img) = get(d, name) {
        if !needs_rebuild(d, name, &img) {
            return Ok(img);
        }
    }
    let _g = d.image_lock.lock().await;
    if let Ok(img) = get(d, name) {
        if !needs_rebuild(d, name, &img) {
            return Ok(img);
        }
        tracing::info!(
            image = name,
            "rebuilding: the build recipe or the guest agent changed"
        );
    }
    if name != banger_image::DEFAULT_IMAGE {
        return get(d, name);
    }
    if let Some(op) = op {
        op.stage("image-build");
    }
    build_locked(d, name, op).await
}

/// The default image is stale when its build hash no longer matches the
/// current recipe and agent binary. It is rebuilt only while no VM uses it:
/// their overlays are backed by the current rootfs.
fn needs_rebuild(d: &Shared, name: &str, img: &Image) -> bool {
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
        Ok(users) if users.is_empty() => true,
        Ok(users) => {
            tracing::warn!(image = name, vms = ?users, "image is stale but in use; keeping it");
            false
        }
        Err(_) => false,
    }
}

async fn build_locked(d: &Shared, name: &str, op: Option<&OpHandle>) -> Result<Image, ApiError> {
    let agent = d.cfg.agent_bin.clone();
    if !agent.exists() {
        return Err(ApiError::failed(format!(
            "guest agent binary {} not found; build it with scripts/build or set BANGER_AGENT_BIN",
            agent.display()
        )));
    }
    let mut build = DebianBuild::new(agent);
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
    d.store
        .upsert_image(&rec)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(
        image = name,
        secs = started.elapsed().as_secs(),
        "image built"
    );
    Ok(Image { dir, manifest })
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
        .map_err(|e| ApiError::internal(e.to_string()))?
        .iter()
        .map(info)
        .collect())
}
