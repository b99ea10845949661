//! `banger image ...` and `banger kernel ...`.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use banger_api::{
    format_size, BuildImageRequest, CachePruneRequest, CachePruneResult, CatalogKernel, ImageInfo,
    ImportImageRequest, ImportKernelRequest, KernelInfo, OperationInfo, PullImageRequest,
    PullKernelRequest, RegisterImageRequest, WarmImageRequest, WarmSnapshotInfo,
};
use banger_client::Client;
use banger_paths::Layout;
use clap::{Args, Subcommand};

use crate::vmcmd::{ago, client, follow, print_json};
use crate::{table, JsonFlag};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Build the default Debian image locally (mmdebstrap + mkfs.ext4 -d).
    Build(BuildArgs),
    /// Pull an image from an OCI registry, or a prebuilt one from the catalog.
    #[command(
        after_help = "A reference with '/', ':' or '@' is an OCI registry image; a bare name is a\ncatalog image. OCI images boot a kernel from the kernel store (--kernel, or\nthe configured default_kernel), pulled from the catalog when missing.\n\nExamples:\n  banger image pull docker.io/library/debian:bookworm --name deb\n  banger image pull localhost:5000/team/tools:1 --insecure-registry\n  banger image pull ghcr.io/me/private:2 --username me --password-stdin < token\n  banger image pull debian-bookworm-dev          # from the catalog"
    )]
    Pull(PullArgs),
    /// Import an OCI image layout directory or a `docker save` archive, offline.
    #[command(
        after_help = "Examples:\n  banger image import ./my-layout --tag v1 --name tools\n  docker save alpine:3.20 -o alpine.tar && banger image import alpine.tar"
    )]
    Import(ImportArgs),
    /// List images.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one image.
    Show(ImageName),
    /// Delete an image (refused while a VM uses it).
    #[command(alias = "rm")]
    Delete(ImageName),
    /// Register an image whose rootfs and kernel stay where they are.
    #[command(
        after_help = "Examples:\n  banger image register mine --rootfs /srv/rootfs.ext4 --kernel /srv/vmlinuz --initrd /srv/initrd.img\n  banger image register mine --rootfs ./rootfs.ext4 --kernel-name debian-6.1"
    )]
    Register(RegisterArgs),
    /// Copy a registered image's files into banger's store.
    Promote(ImageName),
    /// Make the warm snapshot new VMs of an image and shape are restored
    /// from (otherwise made by the first `vm run`/`vm create` that needs it).
    #[command(
        after_help = "A warm snapshot is a booted guest saved once its agent answered; `vm run` and\n`vm create` restore it (about a second) instead of booting (tens of seconds under\nsoftware emulation). One per image and shape (vCPUs, memory, work disk); a change\nof the image, kernel, guest agent or QEMU makes it stale, and the next run builds\na new one. `--cold` on vm run/create skips it; `warm = false` in config.toml\nturns warm starts off.\n\nExamples:\n  banger image warm debian-bookworm\n  banger image warm debian-bookworm --vcpu 4 --memory 2G\n  banger image snapshots\n  banger image unwarm debian-bookworm"
    )]
    Warm(WarmArgs),
    /// List warm snapshots.
    #[command(alias = "snaps")]
    Snapshots(JsonFlag),
    /// Remove warm snapshots: one by id, or every one of an image (refused
    /// for one that running VMs' disks back onto).
    #[command(
        after_help = "Examples:\n  banger image unwarm debian-bookworm\n  banger image unwarm 3f2a9c0d1e2b4a5c"
    )]
    Unwarm(UnwarmArgs),
    /// The OCI blob cache (layers kept to avoid re-downloads).
    #[command(subcommand)]
    Cache(CacheCmd),
}

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Remove every cached blob; images already built are not affected.
    #[command(
        after_help = "Examples:\n  banger image cache prune --dry-run\n  banger image cache prune"
    )]
    Prune(PruneCacheArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Rebuild even if the image exists.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// registry/name:tag, name@sha256:..., or a catalog image name.
    reference: String,
    /// Image name (default: from the reference, e.g. `alpine-3.20`).
    #[arg(long)]
    name: Option<String>,
    /// Kernel-store kernel the image boots (OCI images).
    #[arg(long, add = crate::complete::kernels())]
    kernel: Option<String>,
    /// Talk plain http to this registry (a local test registry).
    #[arg(long)]
    insecure_registry: bool,
    /// Registry user name (basic auth, or a bearer token exchange).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password or token from stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Print the image as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An OCI layout directory or a docker archive (.tar).
    #[arg(value_hint = clap::ValueHint::AnyPath)]
    path: String,
    #[arg(long)]
    name: Option<String>,
    /// Tag in an OCI layout (default `latest`).
    #[arg(long)]
    tag: Option<String>,
    /// Kernel-store kernel the image boots.
    #[arg(long, add = crate::complete::kernels())]
    kernel: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ImageName {
    /// Image name.
    #[arg(add = crate::complete::images())]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct WarmArgs {
    /// Image name.
    #[arg(add = crate::complete::images())]
    image: String,
    /// Virtual CPUs of the VMs to restore (default 2).
    #[arg(long)]
    vcpu: Option<u32>,
    /// Their memory, e.g. 512M, 2G (a bare number is MiB; default 1G).
    #[arg(long)]
    memory: Option<String>,
    /// Their work disk (/root) size (default 8G).
    #[arg(long)]
    disk: Option<String>,
    /// Rebuild even when a current snapshot exists.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct UnwarmArgs {
    /// Snapshot ids (`banger image snapshots`) or image names.
    #[arg(required = true, add = crate::complete::images())]
    targets: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// Name for the image.
    name: String,
    /// ext4 root filesystem image.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    rootfs: String,
    /// Kernel file (bzImage or vmlinux).
    #[arg(long, conflicts_with = "kernel_name", value_hint = clap::ValueHint::FilePath)]
    kernel: Option<String>,
    /// initramfs for --kernel.
    #[arg(long, requires = "kernel", value_hint = clap::ValueHint::FilePath)]
    initrd: Option<String>,
    /// A kernel from the kernel store instead of --kernel.
    #[arg(long, add = crate::complete::kernels())]
    kernel_name: Option<String>,
    /// Directory whose files seed each VM's /root.
    #[arg(long, value_hint = clap::ValueHint::DirPath)]
    work_seed: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PruneCacheArgs {
    /// Only report what would be freed.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KernelCmd {
    /// List the kernels the catalog offers.
    Catalog(JsonFlag),
    /// Download a kernel from the catalog.
    #[command(after_help = "Examples:\n  banger kernel catalog\n  banger kernel pull debian-6.1")]
    Pull(CatalogKernelName),
    /// List installed kernels.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one kernel.
    Show(KernelName),
    /// Delete a kernel (refused while a VM boots it).
    #[command(alias = "rm")]
    Delete(KernelName),
    /// Add a kernel from a local file.
    #[command(
        after_help = "Examples:\n  banger kernel import my-6.6 ./bzImage\n  banger kernel import debian-6.1 /boot/vmlinuz-6.1.0-28-amd64 --initrd /boot/initrd.img-6.1.0-28-amd64"
    )]
    Import(KernelImportArgs),
}

#[derive(Args, Debug)]
pub struct KernelName {
    /// Kernel name.
    #[arg(add = crate::complete::kernels())]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CatalogKernelName {
    /// A kernel the catalog offers (`banger kernel catalog`).
    #[arg(add = crate::complete::catalog_kernels())]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct KernelImportArgs {
    /// Name for the kernel.
    name: String,
    /// bzImage or ELF vmlinux file.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    vmlinuz: String,
    /// initramfs to boot with it.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    initrd: Option<String>,
    /// Replace a kernel of that name.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A snapshot id: what `banger image snapshots` prints.
fn is_snapshot_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn warm(c: &Client, a: WarmArgs) -> anyhow::Result<u8> {
    let memory_mib = crate::vmcmd::size_flag("--memory", a.memory.as_deref())?;
    let req = WarmImageRequest {
        vcpus: a.vcpu,
        memory_mib: memory_mib.map(|m| m.min(u32::MAX as u64) as u32),
        work_disk_mib: crate::vmcmd::size_flag("--disk", a.disk.as_deref())?,
        vmm: None,
        force: a.force,
    };
    let op: OperationInfo = c.post(&format!("/images/{}/warm", a.image), &req).await?;
    let done = follow(c, op, a.json).await?;
    let snaps: Vec<WarmSnapshotInfo> = c.get("/warm").await?;
    let spec = banger_api::VmSpec::DEFAULT;
    let mine: Vec<WarmSnapshotInfo> = snaps
        .into_iter()
        .filter(|s| {
            s.image == done.target
                && s.current
                && s.vcpus == req.vcpus.unwrap_or(spec.vcpus)
                && s.memory_mib == req.memory_mib.unwrap_or(spec.memory_mib)
                && s.work_disk_mib == req.work_disk_mib.unwrap_or(spec.work_disk_mib)
        })
        .collect();
    if a.json {
        print_json(&mine)?;
    } else {
        print!("{}", snapshot_table(&mine));
    }
    Ok(0)
}

async fn unwarm(c: &Client, a: UnwarmArgs) -> anyhow::Result<u8> {
    let snaps: Vec<WarmSnapshotInfo> = c.get("/warm").await?;
    let mut removed = Vec::new();
    let mut failures = 0;
    for t in &a.targets {
        let ids: Vec<&WarmSnapshotInfo> = if is_snapshot_id(t) {
            snaps.iter().filter(|s| s.id == *t).collect()
        } else {
            snaps.iter().filter(|s| s.image == *t).collect()
        };
        if ids.is_empty() {
            eprintln!("banger: no warm snapshot {t:?} (see `banger image snapshots`)");
            failures += 1;
            continue;
        }
        for s in ids {
            match c
                .delete::<serde_json::Value>(&format!("/warm/{}", s.id))
                .await
            {
                Ok(_) => {
                    if !a.json {
                        eprintln!("removed warm snapshot {} of {}", s.id, s.image);
                    }
                    removed.push(s.id.clone());
                }
                Err(e) => {
                    eprintln!("banger: {e}");
                    failures += 1;
                }
            }
        }
    }
    if a.json {
        print_json(&serde_json::json!({ "removed": removed }))?;
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

fn snapshot_table(snaps: &[WarmSnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.image.clone(),
                format!(
                    "{} vcpu, {}, {} disk",
                    s.vcpus,
                    format_size(s.memory_mib as u64 * 1024 * 1024),
                    format_size(s.work_disk_mib * 1024 * 1024)
                ),
                format!("{}/{}", s.vmm, s.accel),
                if s.current { "current" } else { "stale" }.to_string(),
                s.used_by.len().to_string(),
                format_size(s.bytes),
                ago(s.created_at),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "IMAGE", "SHAPE", "VMM", "STATE", "VMS", "SIZE", "CREATED",
        ],
        &rows,
    )
}

/// The daemon resolves paths itself: make them absolute here, relative to
/// the user's working directory.
fn absolute(p: &str) -> anyhow::Result<String> {
    let path = Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(path)
    };
    Ok(abs.display().to_string())
}

/// Prints `v` as JSON, or for people with `human`.
fn emit<T: serde::Serialize>(v: &T, json: bool, human: impl FnOnce(&T)) -> anyhow::Result<u8> {
    if json {
        print_json(v)?;
    } else {
        human(v);
    }
    Ok(0)
}

/// Follows an image operation, then prints the image.
async fn finish_image_op(c: &Client, op: OperationInfo, json: bool) -> anyhow::Result<u8> {
    let done = follow(c, op, false).await?;
    let img: ImageInfo = c.get(&format!("/images/{}", done.target)).await?;
    emit(&img, json, print_image)
}

fn print_image(i: &ImageInfo) {
    let mut rows = vec![
        ("name", i.name.clone()),
        ("source", i.source.clone()),
        ("rootfs", format_size(i.rootfs_bytes)),
        (
            "kernel",
            match &i.kernel_name {
                Some(k) => format!("{k} (kernel store)"),
                None => i.kernel.clone(),
            },
        ),
    ];
    if let Some(init) = &i.init {
        rows.push(("init", init.clone()));
    }
    rows.push(("dir", i.dir.clone()));
    if i.registered {
        rows.push((
            "files",
            "registered in place (`banger image promote` copies them in)".into(),
        ));
    }
    if !i.in_use_by.is_empty() {
        rows.push(("used by", i.in_use_by.join(", ")));
    }
    rows.push(("created", ago(i.created_at)));
    print!("{}", table::kv(&rows));
}

pub async fn image(layout: &Layout, cmd: ImageCmd) -> anyhow::Result<u8> {
    let c = client(layout).await?;
    match cmd {
        ImageCmd::Build(a) => {
            let op: OperationInfo = c
                .post(
                    "/images/build",
                    &BuildImageRequest {
                        name: None,
                        force: a.force,
                    },
                )
                .await?;
            let done = follow(&c, op, a.json).await?;
            if a.json {
                print_json(&done)?;
            }
            Ok(0)
        }
        ImageCmd::Pull(a) => {
            let password = if a.password_stdin {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("read the password from stdin")?;
                let s = s.trim_end_matches(['\r', '\n']).to_string();
                if s.is_empty() {
                    bail!("--password-stdin: stdin was empty");
                }
                Some(s)
            } else {
                None
            };
            let op: OperationInfo = c
                .post(
                    "/images/pull",
                    &PullImageRequest {
                        reference: a.reference,
                        name: a.name,
                        kernel: a.kernel,
                        insecure_registry: a.insecure_registry,
                        username: a.username,
                        password,
                    },
                )
                .await?;
            finish_image_op(&c, op, a.json).await
        }
        ImageCmd::Import(a) => {
            let op: OperationInfo = c
                .post(
                    "/images/import",
                    &ImportImageRequest {
                        path: absolute(&a.path)?,
                        name: a.name,
                        tag: a.tag,
                        kernel: a.kernel,
                    },
                )
                .await?;
            finish_image_op(&c, op, a.json).await
        }
        ImageCmd::List(j) => {
            let imgs: Vec<ImageInfo> = c.get("/images").await?;
            if j.json {
                print_json(&imgs)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = imgs
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.source.clone(),
                        i.kernel_name.clone().unwrap_or_else(|| "(own)".into()),
                        format_size(i.rootfs_bytes),
                        i.in_use_by.len().to_string(),
                        ago(i.created_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["NAME", "SOURCE", "KERNEL", "ROOTFS", "VMS", "CREATED"],
                    &rows
                )
            );
            Ok(0)
        }
        ImageCmd::Show(a) => {
            let img: ImageInfo = c.get(&format!("/images/{}", a.name)).await?;
            emit(&img, a.json, print_image)
        }
        ImageCmd::Delete(a) => {
            let out: serde_json::Value = c.delete(&format!("/images/{}", a.name)).await?;
            emit(&out, a.json, |_| eprintln!("deleted image {}", a.name))
        }
        ImageCmd::Register(a) => {
            let img: ImageInfo = c
                .post(
                    "/images/register",
                    &RegisterImageRequest {
                        name: a.name,
                        rootfs: absolute(&a.rootfs)?,
                        kernel: a.kernel.as_deref().map(absolute).transpose()?,
                        initrd: a.initrd.as_deref().map(absolute).transpose()?,
                        kernel_name: a.kernel_name,
                        work_seed: a.work_seed.as_deref().map(absolute).transpose()?,
                    },
                )
                .await?;
            emit(&img, a.json, print_image)
        }
        ImageCmd::Promote(a) => {
            let img: ImageInfo = c
                .post(
                    &format!("/images/{}/promote", a.name),
                    &serde_json::json!({}),
                )
                .await?;
            emit(&img, a.json, print_image)
        }
        ImageCmd::Warm(a) => warm(&c, a).await,
        ImageCmd::Snapshots(j) => {
            let snaps: Vec<WarmSnapshotInfo> = c.get("/warm").await?;
            if j.json {
                print_json(&snaps)?;
                return Ok(0);
            }
            print!("{}", snapshot_table(&snaps));
            Ok(0)
        }
        ImageCmd::Unwarm(a) => unwarm(&c, a).await,
        ImageCmd::Cache(CacheCmd::Prune(a)) => {
            let r: CachePruneResult = c
                .post(
                    "/images/cache/prune",
                    &CachePruneRequest { dry_run: a.dry_run },
                )
                .await?;
            if a.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} {} across {} blob(s) in {}",
                    if r.dry_run { "would free" } else { "freed" },
                    format_size(r.bytes),
                    r.blobs,
                    r.cache_dir
                );
            }
            Ok(0)
        }
    }
}

fn print_kernel(k: &KernelInfo) {
    let mut rows = vec![
        ("name", k.name.clone()),
        ("version", k.version.clone()),
        ("source", k.source.clone()),
        ("size", format_size(k.bytes)),
        ("sha256", k.sha256.clone()),
        ("kernel", k.vmlinuz.clone()),
    ];
    if let Some(i) = &k.initrd {
        rows.push(("initrd", i.clone()));
    }
    if !k.in_use_by.is_empty() {
        rows.push(("used by", k.in_use_by.join(", ")));
    }
    rows.push(("created", ago(k.created_at)));
    print!("{}", table::kv(&rows));
}

pub async fn kernel(layout: &Layout, cmd: KernelCmd) -> anyhow::Result<u8> {
    let c = client(layout).await?;
    match cmd {
        KernelCmd::Catalog(j) => {
            let ks: Vec<CatalogKernel> = c.get("/kernels/catalog").await?;
            if j.json {
                print_json(&ks)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = ks
                .iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        k.version.clone(),
                        format_size(k.size),
                        if k.installed { "yes" } else { "" }.to_string(),
                        k.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["NAME", "VERSION", "SIZE", "INSTALLED", "DESCRIPTION"],
                    &rows
                )
            );
            Ok(0)
        }
        KernelCmd::Pull(a) => {
            let op: OperationInfo = c
                .post("/kernels/pull", &PullKernelRequest { name: a.name })
                .await?;
            let done = follow(&c, op, false).await?;
            let k: KernelInfo = c.get(&format!("/kernels/{}", done.target)).await?;
            emit(&k, a.json, print_kernel)
        }
        KernelCmd::List(j) => {
            let ks: Vec<KernelInfo> = c.get("/kernels").await?;
            if j.json {
                print_json(&ks)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = ks
                .iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        k.version.clone(),
                        format_size(k.bytes),
                        k.source.clone(),
                        ago(k.created_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["NAME", "VERSION", "SIZE", "SOURCE", "CREATED"], &rows)
            );
            Ok(0)
        }
        KernelCmd::Show(a) => {
            let k: KernelInfo = c.get(&format!("/kernels/{}", a.name)).await?;
            emit(&k, a.json, print_kernel)
        }
        KernelCmd::Delete(a) => {
            let out: serde_json::Value = c.delete(&format!("/kernels/{}", a.name)).await?;
            emit(&out, a.json, |_| eprintln!("deleted kernel {}", a.name))
        }
        KernelCmd::Import(a) => {
            let k: KernelInfo = c
                .post(
                    "/kernels/import",
                    &ImportKernelRequest {
                        name: a.name,
                        vmlinuz: absolute(&a.vmlinuz)?,
                        initrd: a.initrd.as_deref().map(absolute).transpose()?,
                        force: a.force,
                    },
                )
                .await?;
            emit(&k, a.json, print_kernel)
        }
    }
}
