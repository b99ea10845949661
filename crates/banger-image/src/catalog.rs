//! The catalog of prebuilt images and kernels, and verified downloads.
//!
//! A catalog is a small JSON document (fetched from a configurable
//! `file://`, `http://` or `https://` URL) listing bundles with their URL,
//! size and sha256. [`download_verified`] fetches one bundle through
//! [`banger_fetch::download_verified`] with the entry's size as the cap: a
//! temp file inside the destination directory, hashed on the way in, renamed
//! into place only once size and hash match; nothing is decompressed before
//! that. [`unpack_bundle`] then unpacks a verified `.tar.zst` bundle,
//! accepting only regular files and directories.
//!
//! On any failure (or if the future is dropped) the temp file or directory
//! is removed, so the destination directory is left as it was.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub use banger_fetch::FetchError;
use serde::Deserialize;

/// The catalog `schema_version` this banger understands.
pub const SCHEMA_VERSION: u32 = 1;
/// A sensible cap for [`fetch_catalog`].
pub const DEFAULT_CATALOG_MAX_BYTES: u64 = 1024 * 1024;
/// Most tar entries [`unpack_bundle`] accepts (bounds work on empty entries,
/// which the content cap does not).
pub const MAX_BUNDLE_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, Deserialize)]
pub struct Catalog {
    pub schema_version: u32,
    pub entries: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub kind: EntryKind,
    pub version: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Image,
    Kernel,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("bad catalog json: {0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "catalog schema_version {found} is newer than this banger supports ({supported}); update banger"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("catalog schema_version {found} is not supported (this banger reads {supported})")]
    SchemaUnsupported { found: u32, supported: u32 },
    #[error("catalog entry {name:?}: {problem}")]
    InvalidEntry { name: String, problem: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The transfer (or the url's scheme) failed; see [`FetchError`].
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("bundle {bundle}: {problem}")]
    Bundle { bundle: String, problem: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CatalogError {
    let context = context.into();
    move |source| CatalogError::Io { context, source }
}

/// Parses and validates a catalog document.
pub fn parse_catalog(bytes: &[u8]) -> Result<Catalog, CatalogError> {
    // Read the version first so a newer catalog says "update banger" even
    // when the rest of it no longer fits this schema.
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(CatalogError::Json)?;
    if v.schema_version > SCHEMA_VERSION {
        return Err(CatalogError::SchemaTooNew {
            found: v.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    if v.schema_version != SCHEMA_VERSION {
        return Err(CatalogError::SchemaUnsupported {
            found: v.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let catalog: Catalog = serde_json::from_slice(bytes).map_err(CatalogError::Json)?;
    let mut seen = std::collections::HashSet::new();
    for entry in &catalog.entries {
        validate_entry(entry)?;
        if !seen.insert((entry.name.as_str(), entry.kind, entry.version.as_str())) {
            return Err(invalid(
                &entry.name,
                format!("duplicate {:?} version {:?}", entry.kind, entry.version),
            ));
        }
    }
    Ok(catalog)
}

fn invalid(name: &str, problem: impl Into<String>) -> CatalogError {
    CatalogError::InvalidEntry {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// Checks one entry: dns-label-ish name, sane version, 64-hex sha256,
/// file/http/https url, non-zero size.
pub fn validate_entry(entry: &CatalogEntry) -> Result<(), CatalogError> {
    let name = &entry.name;
    let label_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label_ok {
        return Err(invalid(
            name,
            "name must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    let v = &entry.version;
    let version_ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if !version_ok {
        return Err(invalid(
            name,
            format!("version {v:?} must be 1-64 of a-z, A-Z, 0-9, '.', '_', '-', '+'"),
        ));
    }
    parse_sha256(&entry.sha256).map_err(|p| invalid(name, p))?;
    banger_fetch::check_url(&entry.url)?;
    if entry.size == 0 {
        return Err(invalid(name, "size must be greater than 0"));
    }
    Ok(())
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut out = [0u8; 32];
    if ok && hex::decode_to_slice(s, &mut out).is_ok() {
        Ok(out)
    } else {
        Err(format!("sha256 {s:?} is not 64 hex digits"))
    }
}

/// Fetches and parses the catalog at `url`, reading at most `max_bytes`.
pub async fn fetch_catalog(url: &str, max_bytes: u64) -> Result<Catalog, CatalogError> {
    parse_catalog(&banger_fetch::fetch_bytes(url, max_bytes).await?)
}

/// Downloads `entry.url` into a temp file inside `dest_dir` through a cap of
/// `entry.size` bytes, hashing on the way in; only when size and sha256
/// match is it renamed to `dest_dir/<final_name>` (replacing a file of that
/// name). `progress(done, total)` is called after each chunk. On any failure
/// the temp file is removed.
pub async fn download_verified(
    entry: &CatalogEntry,
    dest_dir: &Path,
    final_name: &str,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<PathBuf, CatalogError> {
    validate_entry(entry)?;
    let expected = parse_sha256(&entry.sha256).map_err(|p| invalid(&entry.name, p))?;
    let path = banger_fetch::download_verified(
        &entry.url,
        &expected,
        Some(entry.size),
        entry.size,
        dest_dir,
        final_name,
        progress,
    )
    .await?;
    Ok(path)
}

/// Unpacks a verified `.tar.zst` bundle into `dest_dir/<name>` through a temp
/// dir in `dest_dir` and a rename. Only regular files and directories with
/// relative, `..`-free names are accepted, and at most `max_bytes` of file
/// content; `dest_dir/<name>` must not exist yet. On failure the temp dir is
/// removed.
pub fn unpack_bundle(
    bundle: &Path,
    dest_dir: &Path,
    name: &str,
    max_bytes: u64,
) -> Result<PathBuf, CatalogError> {
    let fail = |problem: String| CatalogError::Bundle {
        bundle: bundle.display().to_string(),
        problem,
    };
    banger_fetch::check_file_name(name).map_err(|e| fail(e.to_string()))?;
    let target = dest_dir.join(name);
    if target.symlink_metadata().is_ok() {
        return Err(fail(format!("{} already exists", target.display())));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(dest_dir)
        .map_err(io_err(format!(
            "creating temp dir in {}",
            dest_dir.display()
        )))?;
    extract(bundle, tmp.path(), max_bytes).map_err(|e| match e {
        Extract::Bundle(p) => fail(p),
        Extract::Io(e) => e,
    })?;
    std::fs::rename(tmp.path(), &target).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.path().display(),
        target.display()
    )))?;
    let _ = tmp.keep();
    Ok(target)
}

enum Extract {
    Bundle(String),
    Io(CatalogError),
}

fn extract(bundle: &Path, root: &Path, max_bytes: u64) -> Result<(), Extract> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |p: String| Extract::Bundle(p);
    let io = |ctx: String| move |e: std::io::Error| Extract::Io(io_err(ctx)(e));

    let file = std::fs::File::open(bundle).map_err(io(format!("opening {}", bundle.display())))?;
    let zstd = ruzstd::StreamingDecoder::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a zstd stream: {e}")))?;
    let mut archive = tar::Archive::new(zstd);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("reading tar: {e}")))?;
    let (mut count, mut content) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading tar: {e}")))?;
        count += 1;
        if count > MAX_BUNDLE_ENTRIES {
            return Err(bad(format!("more than {MAX_BUNDLE_ENTRIES} entries")));
        }
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "entry {} is absolute or has '..'",
                        path.display()
                    )))
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "entry {} is a {kind:?}; only regular files and directories are allowed",
                path.display()
            )));
        }
        if rel.as_os_str().is_empty() {
            return Err(bad(format!("file entry {:?} has no name", path.display())));
        }
        let size = entry.size();
        content = content.saturating_add(size);
        if content > max_bytes {
            return Err(bad(format!("content exceeds the cap of {max_bytes} bytes")));
        }
        let dest = root.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let mode = (entry.header().mode().unwrap_or(0o644) & 0o755) | 0o600;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dest)
            .map_err(io(format!("creating {}", dest.display())))?;
        let copied = copy_sparse(&mut (&mut entry).take(size), &mut out)
            .map_err(io(format!("writing {}", dest.display())))?;
        if copied != size {
            return Err(bad(format!(
                "entry {} is truncated: {copied} of {size} bytes",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Copies `from` into the fresh file `to`, seeking over all-zero blocks
/// instead of writing them, so a sparse disk image (a 2 GiB rootfs holding
/// 50 MiB) stays sparse when it comes out of a bundle.
fn copy_sparse(from: &mut impl Read, to: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        // Fill a whole block (the decoder may return less) so the zero
        // check sees aligned blocks.
        let mut n = 0;
        while n < BLOCK {
            match from.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(n as i64))?;
        } else {
            to.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    // A file ending in a hole needs its length set explicitly.
    to.set_len(total)?;
    Ok(total)
}

#[cfg(test)]
pub(crate) mod tests;
