//! The kernel store: `<state>/kernels/<name>/` directories, each holding a
//! kernel (and optionally an initrd) and a `kernel.json` manifest.
//!
//! Kernels come from the catalog ([`KernelStore::pull`], [`ensure`]) or from
//! a local file ([`KernelStore::import`]). Every kernel is assembled in a
//! `.tmp-*` directory inside the store and renamed into place only once its
//! files are checked and its manifest is written, so a directory named like
//! a kernel is either a whole kernel or not ours; a crash leaves only `.tmp-*`
//! directories, which [`KernelStore::list`] ignores and
//! [`KernelStore::cleanup_temps`] removes. Deleting renames the kernel aside
//! first for the same reason.
//!
//! Concurrent pulls of one name are serialised by [`NameLocks`]; [`ensure`]
//! re-checks after taking the lock, so the second caller reuses the first
//! caller's kernel instead of downloading it again.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{self, Catalog, CatalogEntry, CatalogError, EntryKind};

/// The manifest inside each kernel directory.
pub const MANIFEST_FILE: &str = "kernel.json";
/// Prefix of every directory the store assembles or removes things in.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Most bytes a kernel bundle may unpack to (kernel, vmlinux and initrd).
pub const MAX_BUNDLE_CONTENT: u64 = 1024 * 1024 * 1024;

const BUNDLE_FILE: &str = "bundle.tar.zst";
const VMLINUZ: &str = "vmlinuz";
const VMLINUX: &str = "vmlinux";
const INITRD: &str = "initrd.img";
/// Bytes read from the start of a kernel to identify it (and, for a bzImage,
/// to find its version string, which lives in the real-mode setup code).
const SNIFF_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    pub name: String,
    /// The catalog version, or for an import the version found in the
    /// bzImage header ("unknown" when there is none).
    pub version: String,
    /// `catalog:<url>` or `import:<path>`.
    pub source: String,
    /// sha256 of the `vmlinuz` file.
    pub sha256: String,
    /// File name of the kernel to boot, relative to the kernel directory:
    /// `vmlinuz` (a bzImage) normally; `vmlinux` for an import of an ELF.
    pub vmlinuz: String,
    /// File name of the uncompressed ELF kernel, when there is one (older
    /// Firecracker boots only this).
    pub vmlinux: Option<String>,
    pub initrd: Option<String>,
    /// Total size of the kernel files (vmlinuz, vmlinux, initrd).
    pub bytes: u64,
    pub created_at: i64,
}

impl KernelManifest {
    fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.vmlinuz.as_str())
            .chain(self.vmlinux.as_deref())
            .chain(self.initrd.as_deref())
    }
}

/// Absolute paths of one kernel's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub vmlinux: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// What [`KernelStore::list`] found.
#[derive(Debug, Default)]
pub struct KernelListing {
    /// Valid kernels, sorted by name.
    pub kernels: Vec<KernelManifest>,
    /// Entries of the store that are not kernels (no or bad `kernel.json`,
    /// stray files), with why; `.tmp-*` entries are not reported.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub problem: String,
}

/// What [`KernelStore::import`] does when the name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("invalid kernel name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },
    #[error("kernel {name} is not installed")]
    NotFound { name: String },
    #[error("kernel {name} already exists; delete it first or import with replace")]
    Exists { name: String },
    #[error(
        "kernel {name} is used by image(s) {}; delete those images or switch their kernel first",
        images.join(", ")
    )]
    InUse { name: String, images: Vec<String> },
    #[error("kernel {name} is broken ({path}): {problem}; delete it and pull or import it again")]
    Broken {
        name: String,
        path: String,
        problem: String,
    },
    #[error("{path} is not a kernel: {problem}")]
    NotAKernel { path: String, problem: String },
    #[error(
        "kernel {name} is not installed and the catalog has no kernel of that name (it offers: {}); import one with `banger kernel import`",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NotInCatalog {
        name: String,
        available: Vec<String>,
    },
    #[error("catalog entry {name} is a {kind:?}, not a kernel")]
    NotAKernelEntry { name: String, kind: EntryKind },
    #[error("pulling kernel {name}: {source}")]
    Pull {
        name: String,
        #[source]
        source: CatalogError,
    },
    #[error("kernel bundle for {name}: {problem}")]
    Bundle { name: String, problem: String },
    #[error("kernel store: {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {name}: {context}: {source}")]
    Io {
        name: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pulling kernel {name}: unpack task failed: {problem}")]
    Task { name: String, problem: String },
}

fn store_err(context: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Store { context, source }
}

fn io_err(name: &str, context: String) -> impl FnOnce(std::io::Error) -> KernelError {
    let name = name.to_string();
    move |source| KernelError::Io {
        name,
        context,
        source,
    }
}

/// Checks a kernel name: `[a-z0-9][a-z0-9._-]{0,62}` without `..`, so it is
/// always one safe path component.
pub fn validate_name(name: &str) -> Result<(), KernelError> {
    let bad = |problem: &str| {
        Err(KernelError::InvalidName {
            name: name.to_string(),
            problem: problem.to_string(),
        })
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > 63 {
        return bad("it is longer than 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a-z or 0-9");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("use only a-z, 0-9, '.', '_' and '-'");
    }
    if name.contains("..") {
        return bad("it must not contain '..'");
    }
    Ok(())
}

/// A manifest file name must stay inside the kernel directory.
fn check_member(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0')
        && name != MANIFEST_FILE;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {name:?} is not a plain file in the kernel directory"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BzImage,
    Elf,
}

/// Identifies a kernel by its magic: "HdrS" at 0x202 (a bzImage's setup
/// header) or `\x7fELF`.
fn sniff(head: &[u8]) -> Option<Format> {
    if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(Format::BzImage)
    } else if head.starts_with(b"\x7fELF") {
        Some(Format::Elf)
    } else {
        None
    }
}

/// The release from a bzImage's version string (`kernel_version` at 0x20e
/// points at it, less 0x200), e.g. "6.1.0-50-amd64".
fn bzimage_version(head: &[u8]) -> Option<String> {
    let ptr = u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?);
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let rest = head.get(start..)?;
    let end = rest.iter().take(256).position(|&b| b == 0)?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let release = text.split_whitespace().next()?;
    let printable = release
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
    printable.then(|| release.to_string())
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(path)?
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Checks `path` is a regular file of the wanted kind; returns its head.
fn check_kernel_file(path: &Path, want_elf: bool) -> Result<(Format, Vec<u8>), KernelError> {
    let not = |problem: String| KernelError::NotAKernel {
        path: path.display().to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| not(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(not("not a regular file".into()));
    }
    let head = read_head(path).map_err(|e| not(format!("cannot read it: {e}")))?;
    match sniff(&head) {
        Some(Format::Elf) => Ok((Format::Elf, head)),
        Some(Format::BzImage) if !want_elf => Ok((Format::BzImage, head)),
        Some(Format::BzImage) => Err(not("expected an ELF vmlinux, found a bzImage".into())),
        None if want_elf => Err(not("expected an ELF vmlinux (no \\x7fELF magic)".into())),
        None => Err(not(
            "expected a bzImage (\"HdrS\" at offset 0x202) or an ELF vmlinux; is this a compressed or EFI-only kernel?"
                .into(),
        )),
    }
}

/// Copies `from` to `to` (a new file), fsyncing it.
fn copy_synced(name: &str, from: &Path, to: &Path) -> Result<(), KernelError> {
    let ctx = || format!("copying {} to {}", from.display(), to.display());
    let mut src = std::fs::File::open(from).map_err(io_err(name, ctx()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err(name, ctx()))?;
    std::io::copy(&mut src, &mut dst).map_err(io_err(name, ctx()))?;
    dst.sync_all().map_err(io_err(name, ctx()))
}

fn sha256_file(name: &str, path: &Path) -> Result<(String, u64), KernelError> {
    let ctx = || format!("hashing {}", path.display());
    let mut file = std::fs::File::open(path).map_err(io_err(name, ctx()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(name, ctx()))?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn file_len(name: &str, path: &Path) -> Result<u64, KernelError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(io_err(name, format!("stat {}", path.display())))
}

fn sync_dir(dir: &Path) {
    // Best effort: make renames in `dir` durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `kernel.json` in `dir` through a temp file in the same dir, an
/// fsync and a rename, so a reader never sees half of it.
fn write_manifest(dir: &Path, m: &KernelManifest) -> Result<(), KernelError> {
    let path = dir.join(MANIFEST_FILE);
    let ctx = || format!("writing {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".kernel.json.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(&m.name, ctx()))?;
    let data = serde_json::to_vec_pretty(m).expect("kernel manifest serialises");
    tmp.write_all(&data).map_err(io_err(&m.name, ctx()))?;
    tmp.as_file().sync_all().map_err(io_err(&m.name, ctx()))?;
    tmp.persist(&path).map_err(|e| KernelError::Io {
        name: m.name.clone(),
        context: ctx(),
        source: e.error,
    })?;
    sync_dir(dir);
    Ok(())
}

/// Reads and checks the manifest of the kernel directory `dir`, expected to
/// be kernel `name`. `Err` carries the problem, for [`KernelError::Broken`]
/// or [`Skipped`].
fn load_manifest(dir: &Path, name: &str) -> Result<KernelManifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no {MANIFEST_FILE}"))
        }
        Err(e) => return Err(format!("reading {MANIFEST_FILE}: {e}")),
    };
    let m: KernelManifest =
        serde_json::from_slice(&data).map_err(|e| format!("bad {MANIFEST_FILE}: {e}"))?;
    if m.name != name {
        return Err(format!(
            "{MANIFEST_FILE} names kernel {:?}, not the directory's {name:?}",
            m.name
        ));
    }
    for file in m.files() {
        check_member(file)?;
        if !dir.join(file).is_file() {
            return Err(format!("{file} is missing"));
        }
    }
    Ok(m)
}

/// Moves the finished kernel directory `from` to `to`; a non-empty
/// directory already at `to` (another import or pull won) makes it fail.
fn rename_into_place(name: &str, from: &Path, to: &Path, store: &Path) -> Result<(), KernelError> {
    match std::fs::rename(from, to) {
        Ok(()) => {
            sync_dir(store);
            Ok(())
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                || e.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Err(KernelError::Exists {
                name: name.to_string(),
            })
        }
        Err(e) => Err(io_err(
            name,
            format!("renaming {} to {}", from.display(), to.display()),
        )(e)),
    }
}

#[derive(Debug, Clone)]
pub struct KernelStore {
    dir: PathBuf,
}

impl KernelStore {
    /// A store rooted at `dir` (normally `<state>/kernels`); nothing is
    /// created until a kernel is added.
    pub fn new(dir: PathBuf) -> KernelStore {
        KernelStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn kernel_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn create_dir(&self, name: &str) -> Result<(), KernelError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err(name, format!("creating {}", self.dir.display())))
    }

    fn temp_dir(&self, name: &str, what: &str) -> Result<tempfile::TempDir, KernelError> {
        self.create_dir(name)?;
        tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{what}-{name}-"))
            .tempdir_in(&self.dir)
            .map_err(io_err(
                name,
                format!("creating a temp dir in {}", self.dir.display()),
            ))
    }

    /// Every kernel, sorted by name, plus what was skipped and why.
    pub fn list(&self) -> Result<KernelListing, KernelError> {
        let mut out = KernelListing::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(store_err(format!("listing {}", self.dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(store_err(format!("listing {}", self.dir.display())))?;
            let path = entry.path();
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                out.skipped.push(Skipped {
                    path,
                    problem: "name is not utf-8".into(),
                });
                continue;
            };
            if name.starts_with('.') {
                continue; // temps, and nothing else of ours is hidden
            }
            let skip = |problem: String| Skipped {
                path: path.clone(),
                problem,
            };
            if validate_name(name).is_err() {
                out.skipped.push(skip("not a valid kernel name".into()));
                continue;
            }
            if !path.is_dir() {
                out.skipped.push(skip("not a directory".into()));
                continue;
            }
            match load_manifest(&path, name) {
                Ok(m) => out.kernels.push(m),
                Err(problem) => out.skipped.push(skip(problem)),
            }
        }
        out.kernels.sort_by(|a, b| a.name.cmp(&b.name));
        out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The kernel `name`, or `None` when it is not installed; a directory of
    /// that name that is not a whole kernel is an error (it would block a
    /// pull or import of the name).
    pub fn get(&self, name: &str) -> Result<Option<KernelManifest>, KernelError> {
        validate_name(name)?;
        let dir = self.kernel_dir(name);
        match dir.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(name, format!("stat {}", dir.display()))(e)),
            Ok(_) => {}
        }
        load_manifest(&dir, name)
            .map(Some)
            .map_err(|problem| KernelError::Broken {
                name: name.to_string(),
                path: dir.display().to_string(),
                problem,
            })
    }

    /// Absolute paths of `m`'s files.
    pub fn path_of(&self, m: &KernelManifest) -> KernelPaths {
        let dir = self.kernel_dir(&m.name);
        KernelPaths {
            vmlinuz: dir.join(&m.vmlinuz),
            vmlinux: m.vmlinux.as_ref().map(|f| dir.join(f)),
            initrd: m.initrd.as_ref().map(|f| dir.join(f)),
            dir,
        }
    }

    /// Deletes kernel `name` (also a broken one), refusing while any image
    /// in `in_use_by` boots it. The directory is renamed aside first, so a
    /// reader sees the whole kernel or none of it.
    pub fn delete(&self, name: &str, in_use_by: &[String]) -> Result<(), KernelError> {
        validate_name(name)?;
        if !in_use_by.is_empty() {
            return Err(KernelError::InUse {
                name: name.to_string(),
                images: in_use_by.to_vec(),
            });
        }
        let dir = self.kernel_dir(name);
        if dir.symlink_metadata().is_err() {
            return Err(KernelError::NotFound {
                name: name.to_string(),
            });
        }
        self.remove_aside(name, &dir)
    }

    /// Renames `dir` onto an empty temp dir, then removes it. A failure to
    /// remove is not reported: the kernel is gone and `cleanup_temps` will
    /// get the rest.
    fn remove_aside(&self, name: &str, dir: &Path) -> Result<(), KernelError> {
        let aside = self.temp_dir(name, "del")?;
        std::fs::rename(dir, aside.path())
            .map_err(io_err(name, format!("renaming {} aside", dir.display())))?;
        sync_dir(&self.dir);
        drop(aside); // removes it, and the old kernel with it
        Ok(())
    }

    /// Removes every `.tmp-*` entry in the store: what a crash mid-pull,
    /// mid-import or mid-delete left. Only call it when nothing else is
    /// using the store (daemon start). Returns what was removed.
    pub fn cleanup_temps(&self) -> Result<Vec<PathBuf>, KernelError> {
        let ctx = || format!("listing {}", self.dir.display());
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(store_err(ctx())(e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(store_err(ctx()))?;
            if !entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let result = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(store_err(format!("removing {}", path.display())))?;
            removed.push(path);
        }
        removed.sort();
        Ok(removed)
    }

    /// Imports a local kernel (a bzImage, or an ELF vmlinux) and optional
    /// initrd as kernel `name`. The files are copied into a temp dir in the
    /// store, checked there (so a file changing under us cannot slip past),
    /// hashed, given a manifest and renamed into place.
    pub fn import(
        &self,
        name: &str,
        vmlinuz: &Path,
        initrd: Option<&Path>,
        existing: Existing,
    ) -> Result<KernelManifest, KernelError> {
        validate_name(name)?;
        // Refuse early with the clear error; the final rename re-checks.
        if existing == Existing::Refuse && self.kernel_dir(name).symlink_metadata().is_ok() {
            return Err(KernelError::Exists {
                name: name.to_string(),
            });
        }
        // Check the source first so a wrong file is named as the user gave it.
        check_kernel_file(vmlinuz, false)?;
        if let Some(initrd) = initrd {
            let meta = std::fs::metadata(initrd)
                .map_err(io_err(name, format!("stat initrd {}", initrd.display())))?;
            if !meta.is_file() {
                return Err(KernelError::NotAKernel {
                    path: initrd.display().to_string(),
                    problem: "initrd is not a regular file".into(),
                });
            }
        }

        let tmp = self.temp_dir(name, "import")?;
        let staged = tmp.path().join(name);
        std::fs::create_dir(&staged)
            .map_err(io_err(name, format!("creating {}", staged.display())))?;
        let scratch = staged.join(".incoming");
        copy_synced(name, vmlinuz, &scratch)?;
        let (format, head) = check_kernel_file(&scratch, false)?;
        let (file, version) = match format {
            Format::BzImage => (VMLINUZ, bzimage_version(&head)),
            Format::Elf => (VMLINUX, None),
        };
        std::fs::rename(&scratch, staged.join(file))
            .map_err(io_err(name, format!("renaming {}", scratch.display())))?;
        let (sha256, mut bytes) = sha256_file(name, &staged.join(file))?;
        if let Some(initrd) = initrd {
            copy_synced(name, initrd, &staged.join(INITRD))?;
            bytes += file_len(name, &staged.join(INITRD))?;
        }
        let source = std::path::absolute(vmlinuz).unwrap_or_else(|_| vmlinuz.to_path_buf());
        let manifest = KernelManifest {
            name: name.to_string(),
            version: version.unwrap_or_else(|| "unknown".into()),
            source: format!("import:{}", source.display()),
            sha256,
            vmlinuz: file.to_string(),
            vmlinux: (format == Format::Elf).then(|| VMLINUX.to_string()),
            initrd: initrd.map(|_| INITRD.to_string()),
            bytes,
            created_at: now_unix(),
        };
        write_manifest(&staged, &manifest)?;
        sync_dir(&staged);

        let target = self.kernel_dir(name);
        if existing == Existing::Replace && target.symlink_metadata().is_ok() {
            // There is a moment between these two renames when the name is
            // absent; never a moment when it is half a kernel.
            self.remove_aside(name, &target)?;
        }
        rename_into_place(name, &staged, &target, &self.dir)?;
        Ok(manifest)
    }

    /// Downloads, verifies and installs the catalog kernel `entry`, taking
    /// its per-name lock in `locks`; refuses a kernel already installed.
    pub async fn pull(
        &self,
        entry: &CatalogEntry,
        locks: &NameLocks,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<KernelManifest, KernelError> {
        validate_name(&entry.name)?;
        let _guard = locks.lock(&entry.name).await;
        if self.kernel_dir(&entry.name).symlink_metadata().is_ok() {
            return Err(KernelError::Exists {
                name: entry.name.clone(),
            });
        }
        self.pull_locked(entry, progress).await
    }

    /// The pull itself; the caller holds `entry.name`'s lock.
    async fn pull_locked(
        &self,
        entry: &CatalogEntry,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<KernelManifest, KernelError> {
        let name = entry.name.clone();
        validate_name(&name)?;
        if entry.kind != EntryKind::Kernel {
            return Err(KernelError::NotAKernelEntry {
                name,
                kind: entry.kind,
            });
        }
        // Everything happens in `tmp`; dropping it (an error, or this
        // future being dropped) removes the lot.
        let tmp = self.temp_dir(&name, "pull")?;
        let bundle = catalog::download_verified(entry, tmp.path(), BUNDLE_FILE, progress)
            .await
            .map_err(|source| KernelError::Pull {
                name: name.clone(),
                source,
            })?;
        // Unpacking and checking are blocking work; the temp dir moves into
        // the task so it outlives this future if that is dropped meanwhile.
        let store = self.clone();
        let source = format!("catalog:{}", entry.url);
        let version = entry.version.clone();
        let task_name = name.clone();
        tokio::task::spawn_blocking(move || {
            store.install_bundle(&task_name, &version, source, &bundle, tmp)
        })
        .await
        .map_err(|e| KernelError::Task {
            name,
            problem: e.to_string(),
        })?
    }

    fn install_bundle(
        &self,
        name: &str,
        version: &str,
        source: String,
        bundle: &Path,
        tmp: tempfile::TempDir,
    ) -> Result<KernelManifest, KernelError> {
        let staged = catalog::unpack_bundle(bundle, tmp.path(), name, MAX_BUNDLE_CONTENT).map_err(
            |source| KernelError::Pull {
                name: name.to_string(),
                source,
            },
        )?;
        let bad = |problem: String| KernelError::Bundle {
            name: name.to_string(),
            problem,
        };
        check_bundle_meta(&staged, name, version).map_err(bad)?;

        let vmlinuz = staged.join(VMLINUZ);
        if !vmlinuz.is_file() {
            return Err(bad(format!("it has no {VMLINUZ}")));
        }
        check_kernel_file(&vmlinuz, false).map_err(|e| bad(e.to_string()))?;
        let (sha256, mut bytes) = sha256_file(name, &vmlinuz)?;
        let mut optional = |file: &str, want_elf: bool| -> Result<Option<String>, KernelError> {
            let path = staged.join(file);
            if path.symlink_metadata().is_err() {
                return Ok(None);
            }
            if want_elf {
                check_kernel_file(&path, true).map_err(|e| bad(e.to_string()))?;
            } else if !path.is_file() {
                return Err(bad(format!("{file} is not a regular file")));
            }
            bytes += file_len(name, &path)?;
            Ok(Some(file.to_string()))
        };
        let vmlinux = optional(VMLINUX, true)?;
        let initrd = optional(INITRD, false)?;

        let manifest = KernelManifest {
            name: name.to_string(),
            version: version.to_string(),
            source,
            sha256,
            vmlinuz: VMLINUZ.to_string(),
            vmlinux,
            initrd,
            bytes,
            created_at: now_unix(),
        };
        // Replaces the bundle's own kernel.json, already checked above.
        write_manifest(&staged, &manifest)?;
        sync_dir(&staged);
        rename_into_place(name, &staged, &self.kernel_dir(name), &self.dir)?;
        Ok(manifest)
    }
}

/// The bundle's `kernel.json` must be a JSON object; a `name` or `version`
/// in it must agree with the catalog entry (a mislabelled bundle).
fn check_bundle_meta(staged: &Path, name: &str, version: &str) -> Result<(), String> {
    let path = staged.join(MANIFEST_FILE);
    let data = std::fs::read(&path).map_err(|e| format!("reading its {MANIFEST_FILE}: {e}"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| format!("bad {MANIFEST_FILE}: {e}"))?;
    let Some(obj) = meta.as_object() else {
        return Err(format!("{MANIFEST_FILE} is not a json object"));
    };
    for (key, want) in [("name", name), ("version", version)] {
        if let Some(got) = obj.get(key) {
            if got.as_str() != Some(want) {
                return Err(format!(
                    "its {MANIFEST_FILE} says {key} {got}, the catalog says {want:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Per-name locks (kernels here, images in the daemon): two callers that
/// need the same missing kernel or image do the work
/// once. A waiter may give up (its future dropped, or [`Self::lock_until`]'s
/// deadline) without disturbing the holder.
#[derive(Debug, Default)]
pub struct NameLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one kernel name's lock until dropped.
#[derive(Debug)]
pub struct NameGuard {
    name: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl NameGuard {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NameLocks {
    pub fn new() -> NameLocks {
        NameLocks::default()
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Drop slots nobody holds or waits on, so the map stays small.
        map.retain(|_, slot| Arc::strong_count(slot) > 1);
        map.entry(name.to_string()).or_default().clone()
    }

    pub async fn lock(&self, name: &str) -> NameGuard {
        let slot = self.slot(name);
        NameGuard {
            name: name.to_string(),
            _guard: slot.lock_owned().await,
        }
    }

    /// Like [`Self::lock`], but gives up at `deadline` with `None`.
    pub async fn lock_until(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Option<NameGuard> {
        tokio::time::timeout_at(deadline, self.lock(name))
            .await
            .ok()
    }
}

/// The one call `vm create` makes: kernel `name`, pulled from `catalog`
/// first when missing. Concurrent callers for one name pull once: the
/// others wait for the lock, then find it installed.
pub async fn ensure(
    store: &KernelStore,
    locks: &NameLocks,
    name: &str,
    catalog: &Catalog,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<KernelManifest, KernelError> {
    if let Some(m) = store.get(name)? {
        return Ok(m);
    }
    let kernels = || {
        catalog
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Kernel)
    };
    // With several versions of a name, the catalog's last one wins.
    let Some(entry) = kernels().rfind(|e| e.name == name) else {
        let mut available: Vec<String> = kernels().map(|e| e.name.clone()).collect();
        available.sort();
        available.dedup();
        return Err(KernelError::NotInCatalog {
            name: name.to_string(),
            available,
        });
    };
    let _guard = locks.lock(name).await;
    if let Some(m) = store.get(name)? {
        return Ok(m);
    }
    match store.pull_locked(entry, progress).await {
        // Someone outside the lock (an import, or a pull whose caller gave
        // up while its unpack task ran on) installed it first: use theirs.
        Err(KernelError::Exists { .. }) => match store.get(name)? {
            Some(m) => Ok(m),
            None => Err(KernelError::Exists {
                name: name.to_string(),
            }),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
