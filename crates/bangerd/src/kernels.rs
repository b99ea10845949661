//! The kernel store as the daemon serves it: list, show, catalog, pull,
//! import, delete, and the auto-pull `vm create` relies on.
//!
//! Per-name locks (`kernel_locks`) serialise pull, import, delete and
//! auto-pull of one kernel, so parallel creates that need the same missing
//! kernel pull it once, and a delete never lands mid-pull.

use std::collections::HashMap;
use std::path::PathBuf;

use banger_api::{ApiError, CatalogKernel, ImportKernelRequest, KernelInfo, OperationInfo};
use banger_image::catalog::EntryKind;
use banger_image::kernels::{self, Existing, KernelError, KernelManifest};

use crate::daemon::Shared;
use crate::images;
use crate::ops::OpHandle;

fn kernel_err(e: KernelError) -> ApiError {
    match e {
        KernelError::InvalidName { .. } => ApiError::bad_request(e.to_string()),
        KernelError::NotFound { .. } | KernelError::NotInCatalog { .. } => {
            ApiError::not_found(e.to_string())
        }
        KernelError::Exists { .. } | KernelError::InUse { .. } => ApiError::conflict(e.to_string()),
        _ => ApiError::failed(e.to_string()),
    }
}

/// VMs booting each store kernel, through the images that name it: one
/// pass over the images (each manifest read once), sorted and deduplicated.
fn users_by_kernel(d: &Shared) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for img in d
        .store
        .list_images()
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        let Ok(m) = banger_image::Manifest::load(std::path::Path::new(&img.dir)) else {
            continue;
        };
        if let Some(k) = m.kernel_name {
            by.entry(k).or_default().extend(
                d.store
                    .vms_using_image(&img.name)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            );
        }
    }
    for vms in by.values_mut() {
        vms.sort();
        vms.dedup();
    }
    Ok(by)
}

/// VMs that boot kernel `name`.
fn users(d: &Shared, name: &str) -> Result<Vec<String>, ApiError> {
    Ok(users_by_kernel(d)?.remove(name).unwrap_or_default())
}

fn info(d: &Shared, m: &KernelManifest, in_use_by: Vec<String>) -> KernelInfo {
    let paths = d.kernels.path_of(m);
    KernelInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        source: m.source.clone(),
        sha256: m.sha256.clone(),
        bytes: m.bytes,
        created_at: m.created_at,
        dir: paths.dir.display().to_string(),
        vmlinuz: paths.vmlinuz.display().to_string(),
        initrd: paths.initrd.map(|p| p.display().to_string()),
        in_use_by,
    }
}

pub fn list(d: &Shared) -> Result<Vec<KernelInfo>, ApiError> {
    let listing = d.kernels.list().map_err(kernel_err)?;
    for s in &listing.skipped {
        tracing::warn!(path = %s.path.display(), problem = %s.problem, "not a kernel; skipped");
    }
    let mut users = users_by_kernel(d).unwrap_or_default();
    Ok(listing
        .kernels
        .iter()
        .map(|m| info(d, m, users.remove(&m.name).unwrap_or_default()))
        .collect())
}

pub fn show(d: &Shared, name: &str) -> Result<KernelInfo, ApiError> {
    kernels::validate_name(name).map_err(kernel_err)?;
    let m = d.kernels.get(name).map_err(kernel_err)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "kernel {name:?} is not installed (see `banger kernel list`, `banger kernel catalog`)"
        ))
    })?;
    Ok(info(d, &m, users(d, name).unwrap_or_default()))
}

pub async fn catalog(d: &Shared) -> Result<Vec<CatalogKernel>, ApiError> {
    let cat = images::fetch_catalog(d).await?;
    Ok(cat
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Kernel)
        .map(|e| CatalogKernel {
            name: e.name.clone(),
            version: e.version.clone(),
            size: e.size,
            description: e.description.clone(),
            installed: matches!(d.kernels.get(&e.name), Ok(Some(_))),
        })
        .collect())
}

fn progress_line(done: u64, total: u64) -> String {
    format!(
        "{} / {}",
        banger_api::format_size(done),
        banger_api::format_size(total)
    )
}

/// Starts `banger kernel pull NAME`.
pub async fn pull(d: Shared, op_id: String, name: String) -> Result<OperationInfo, ApiError> {
    kernels::validate_name(&name).map_err(kernel_err)?;
    if d.kernels.get(&name).map_err(kernel_err)?.is_some() {
        return Err(ApiError::conflict(format!(
            "kernel {name:?} is already installed; `banger kernel delete {name}` first to pull it again"
        )));
    }
    let op = d.ops.start(&op_id, "kernel.pull", &name, "catalog");
    let info = d.ops.get(&op_id).expect("just registered");
    tokio::spawn(async move {
        let result = async {
            let cat = images::fetch_catalog(&d).await?;
            let entry = cat
                .entries
                .iter()
                .rev()
                .find(|e| e.kind == EntryKind::Kernel && e.name == name)
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "kernel {name:?} is not in the catalog {} (see `banger kernel catalog`)",
                        d.cfg.settings.catalog_url
                    ))
                })?;
            op.stage("download");
            let p = op.clone();
            d.kernels
                .pull(entry, &d.kernel_locks, move |done, total| {
                    p.progress(&progress_line(done, total))
                })
                .await
                .map_err(kernel_err)
        }
        .await;
        op.finish(result.map(|_| None));
    });
    Ok(info)
}

/// The kernel `name`, pulled from the catalog first when missing (for
/// `vm create`). Parallel callers pull it once.
pub async fn ensure(
    d: &Shared,
    name: &str,
    op: Option<&OpHandle>,
) -> Result<KernelManifest, ApiError> {
    if let Some(m) = d.kernels.get(name).map_err(kernel_err)? {
        return Ok(m);
    }
    if let Some(op) = op {
        op.stage("kernel-pull");
    }
    let cat = images::fetch_catalog(d).await.map_err(|e| {
        ApiError::failed(format!(
            "kernel {name:?} is not installed and {}; or install it with `banger kernel import {name} FILE`",
            e.message
        ))
    })?;
    let p = op.cloned();
    kernels::ensure(
        &d.kernels,
        &d.kernel_locks,
        name,
        &cat,
        move |done, total| {
            if let Some(op) = &p {
                op.progress(&progress_line(done, total));
            }
        },
    )
    .await
    .map_err(kernel_err)
}

/// `banger kernel import NAME FILE [--initrd FILE] [--force]`.
pub async fn import(d: &Shared, req: ImportKernelRequest) -> Result<KernelInfo, ApiError> {
    kernels::validate_name(&req.name).map_err(kernel_err)?;
    for (what, p) in [
        ("kernel", Some(&req.vmlinuz)),
        ("initrd", req.initrd.as_ref()),
    ] {
        if let Some(p) = p {
            if !std::path::Path::new(p).is_absolute() {
                return Err(ApiError::bad_request(format!(
                    "{what} path {p:?} must be absolute"
                )));
            }
        }
    }
    let _g = d.kernel_locks.lock(&req.name).await;
    if req.force {
        let users = users(d, &req.name)?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "kernel {:?} is in use by vm(s) {}; delete them before replacing it",
                req.name,
                users.join(", ")
            )));
        }
    }
    let store = d.kernels.clone();
    let r = req.clone();
    let m = tokio::task::spawn_blocking(move || {
        store.import(
            &r.name,
            &PathBuf::from(&r.vmlinuz),
            r.initrd.as_deref().map(std::path::Path::new),
            if r.force {
                Existing::Replace
            } else {
                Existing::Refuse
            },
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(kernel_err)?;
    Ok(info(d, &m, users(d, &req.name).unwrap_or_default()))
}

/// `banger kernel delete NAME`: refused while a VM boots it.
pub async fn delete(d: &Shared, name: &str) -> Result<(), ApiError> {
    kernels::validate_name(name).map_err(kernel_err)?;
    let _g = d.kernel_locks.lock(name).await;
    let users = users(d, name)?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "kernel {name:?} is in use by vm(s) {}; delete them first",
            users.join(", ")
        )));
    }
    d.kernels.delete(name, &[]).map_err(kernel_err)
}
