//! Importing an image offline: an OCI image layout directory, or a
//! `docker save` archive (legacy `manifest.json` form, and the
//! layout-in-tar form docker 25+ writes).
//!
//! Nothing is extracted: blobs are read straight out of the directory or
//! the tar (by offset) and copied, verified, into the blob store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;

use super::source::{
    parse_config, parse_document, pick_platform, plan_layers, sha256_digest, sha256_hex, BlobStore,
    Compression, Document, FetchedImage, Layer, OciError, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const UNCOMPRESSED_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Where blobs are read from: a directory or a tar archive.
trait Source {
    /// An error about the source as a whole.
    fn error(&self, reason: String) -> OciError;
    fn has(&self, name: &str) -> bool;
    /// Opens a named file; its length.
    fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), OciError>;

    fn read_small(&self, name: &str, limit: u64, what: &'static str) -> Result<Vec<u8>, OciError> {
        let (mut r, len) = self.open(name)?;
        if len > limit {
            return Err(OciError::TooLarge {
                what,
                digest: name.to_string(),
                size: len,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.by_ref()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| self.error(format!("reading {name}: {e}")))?;
        Ok(buf)
    }
}

struct DirSource {
    dir: PathBuf,
}

impl Source for DirSource {
    fn error(&self, reason: String) -> OciError {
        OciError::Layout {
            dir: self.dir.clone(),
            reason,
        }
    }
    fn has(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
    fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), OciError> {
        let path = self.dir.join(name);
        // The last component must be a regular file, not a symlink out of
        // the layout; content is digest-checked anyway.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| OciError::io("opening", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| OciError::io("stat", &path, e))?;
        if !meta.is_file() {
            return Err(self.error(format!("{name} is not a regular file")));
        }
        Ok((Box::new(file), meta.len()))
    }
}

/// A tar archive, indexed once: regular files by normalised name.
struct TarSource {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl TarSource {
    fn scan(path: &Path) -> Result<Self, OciError> {
        let file = File::open(path).map_err(|e| OciError::io("opening archive", path, e))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let bad = |e: std::io::Error| OciError::Archive {
            path: path.to_path_buf(),
            reason: format!("reading tar: {e}"),
        };
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_string();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            entries,
        })
    }
}

impl Source for TarSource {
    fn error(&self, reason: String) -> OciError {
        OciError::Archive {
            path: self.path.clone(),
            reason,
        }
    }
    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
    fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), OciError> {
        let &(offset, size) = self
            .entries
            .get(name)
            .ok_or_else(|| self.error(format!("no file {name:?} in the archive")))?;
        let mut file =
            File::open(&self.path).map_err(|e| OciError::io("opening archive", &self.path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| OciError::io("seeking in archive", &self.path, e))?;
        Ok((Box::new(file.take(size)), size))
    }
}

fn blob_name(digest: &str) -> Result<String, OciError> {
    Ok(format!("blobs/sha256/{}", sha256_hex(digest)?))
}

/// Imports an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256`).
/// `tag` picks the `index.json` entry by its `org.opencontainers.image.ref.name`
/// annotation; without one, the layout must hold exactly one entry. Nested
/// indexes pick `linux/amd64`.
pub fn import_layout(
    dir: &Path,
    tag: Option<&str>,
    blob_dir: &Path,
) -> Result<FetchedImage, OciError> {
    let source = DirSource {
        dir: dir.to_path_buf(),
    };
    let reference = format!("{}:{}", dir.display(), tag.unwrap_or(""));
    import_from(&source, &reference, tag, blob_dir)
}

fn import_from(
    source: &dyn Source,
    reference: &str,
    tag: Option<&str>,
    blob_dir: &Path,
) -> Result<FetchedImage, OciError> {
    let store = BlobStore::new(blob_dir)?;
    let marker = source.read_small("oci-layout", 4096, "oci-layout")?;
    let marker: serde_json::Value =
        serde_json::from_slice(&marker).map_err(|source| OciError::Json {
            what: "oci-layout".to_string(),
            source,
        })?;
    if marker.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(source.error("oci-layout is not imageLayoutVersion 1.0.0".to_string()));
    }
    let index = source.read_small("index.json", MAX_MANIFEST_BYTES, "index.json")?;
    let index: ImageIndex = serde_json::from_slice(&index).map_err(|source| OciError::Json {
        what: "index.json".to_string(),
        source,
    })?;
    let tags: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.annotations().as_ref()?.get(REF_NAME).cloned())
        .collect();
    let entry = match tag {
        Some(tag) => index.manifests().iter().find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == tag)
        }),
        None if index.manifests().len() == 1 => index.manifests().first(),
        None => None,
    }
    .ok_or_else(|| {
        source.error(format!(
            "{}; tags here: {}",
            match tag {
                Some(t) => format!("no image tagged {t:?}"),
                None => format!(
                    "{} images in index.json, pick one by tag",
                    index.manifests().len()
                ),
            },
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            }
        ))
    })?;

    let mut desc = entry.clone();
    let mut index_digest = None;
    let mut manifest: Option<(Box<ImageManifest>, String)> = None;
    for _ in 0..4 {
        let digest = desc.digest().to_string();
        if desc.size() > MAX_MANIFEST_BYTES {
            return Err(OciError::TooLarge {
                what: "manifest",
                digest,
                size: desc.size(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let bytes = source.read_small(&blob_name(&digest)?, MAX_MANIFEST_BYTES, "manifest")?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(OciError::DigestMismatch { digest, actual });
        }
        if bytes.len() as u64 != desc.size() {
            return Err(OciError::SizeMismatch {
                digest,
                expected: desc.size(),
                actual: bytes.len() as u64,
                more: false,
            });
        }
        match parse_document(reference, &bytes)? {
            Document::Manifest(m) => {
                manifest = Some((m, digest));
                break;
            }
            Document::Index(i) => {
                desc = pick_platform(reference, &i)?.clone();
                index_digest = Some(digest);
            }
        }
    }
    let (manifest, manifest_digest) =
        manifest.ok_or_else(|| source.error("image indexes nested over 4 deep".to_string()))?;
    let planned = plan_layers(reference, &manifest_digest, &manifest)?;
    let config_digest = manifest.config().digest().to_string();
    let config_path = copy_blob(source, &store, &config_digest, manifest.config().size())?;
    let config = parse_config(&config_digest, &config_path)?;
    let mut layers = Vec::with_capacity(planned.len());
    for p in planned {
        let path = copy_blob(source, &store, &p.digest, p.size)?;
        layers.push(p.at(path));
    }
    Ok(FetchedImage {
        reference: reference.to_string(),
        manifest_digest,
        index_digest,
        config_digest,
        config,
        layers,
    })
}

fn copy_blob(
    source: &dyn Source,
    store: &BlobStore,
    digest: &str,
    size: u64,
) -> Result<PathBuf, OciError> {
    if let Some(path) = store.cached(digest, size)? {
        return Ok(path);
    }
    let (mut reader, _) = source.open(&blob_name(digest)?)?;
    store.store_from_reader(digest, size, &mut reader, &mut |_| {})
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The sha256 digest a docker archive names a file by: `<hex>.json`,
/// `<hex>.tar`, `<hex>/layer.tar`'s diff id aside, or `blobs/sha256/<hex>`.
fn digest_from_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let digest = format!("sha256:{hex}");
    sha256_hex(&digest).ok()?;
    Some(digest)
}

/// Imports a `docker save` archive. Layers are the uncompressed tars docker
/// writes, each verified against the config's `rootfs.diff_ids`. An archive
/// without `manifest.json` but with `index.json` is read as an OCI layout.
pub fn import_docker_archive(tar: &Path, blob_dir: &Path) -> Result<FetchedImage, OciError> {
    let source = TarSource::scan(tar)?;
    if !source.has("manifest.json") {
        if source.has("index.json") {
            let reference = format!("{}:", tar.display());
            return import_from(&source, &reference, None, blob_dir);
        }
        return Err(source.error(
            "neither manifest.json nor index.json; not a `docker save` archive".to_string(),
        ));
    }
    let store = BlobStore::new(blob_dir)?;
    let bytes = source.read_small("manifest.json", MAX_MANIFEST_BYTES, "manifest.json")?;
    let mut entries: Vec<DockerEntry> =
        serde_json::from_slice(&bytes).map_err(|e| OciError::Json {
            what: format!("{}: manifest.json", tar.display()),
            source: e,
        })?;
    if entries.len() != 1 {
        let tags: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect();
        return Err(source.error(format!(
            "{} images in the archive, expected one (tags: {}); save one image per archive",
            entries.len(),
            tags.join(", ")
        )));
    }
    let entry = entries.remove(0);
    let reference = entry
        .repo_tags
        .as_ref()
        .and_then(|t| t.first().cloned())
        .unwrap_or_else(|| format!("{}:", tar.display()));

    let config_digest = digest_from_name(&entry.config).ok_or_else(|| {
        source.error(format!(
            "config {:?} is not named by its sha256 digest",
            entry.config
        ))
    })?;
    let (mut reader, size) = source.open(&entry.config)?;
    if size > MAX_CONFIG_BYTES {
        return Err(OciError::TooLarge {
            what: "config",
            digest: config_digest,
            size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let config_path = store.store_from_reader(&config_digest, size, &mut reader, &mut |_| {})?;
    drop(reader);
    let config = parse_config(&config_digest, &config_path)?;
    let diff_ids = config.rootfs().diff_ids();
    if entry.layers.is_empty() {
        return Err(OciError::NoLayers {
            reference,
            digest: config_digest,
        });
    }
    if diff_ids.len() != entry.layers.len() {
        return Err(source.error(format!(
            "{} layers but the config lists {} diff ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
        sha256_hex(diff_id)?;
        let (mut reader, size) = source.open(name)?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut reader, &mut magic)
            .map_err(|e| source.error(format!("reading {name}: {e}")))?;
        if magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(source.error(format!(
                "layer {name} is compressed; docker archives carry uncompressed layers, re-save the image"
            )));
        }
        let mut chained = (&magic[..n]).chain(reader);
        let path = store.store_from_reader(diff_id, size, &mut chained, &mut |_| {})?;
        layers.push(Layer {
            path,
            media_type: UNCOMPRESSED_LAYER.to_string(),
            compression: Compression::None,
            digest: diff_id.clone(),
            size,
        });
    }
    Ok(FetchedImage {
        reference,
        manifest_digest: config_digest.clone(),
        index_digest: None,
        config_digest,
        config,
        layers,
    })
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
