//! What a pulled or imported OCI image is, and the verified blob store that
//! every source (registry, OCI layout, docker archive) writes through.
//!
//! Every byte that reaches `blob_dir` went through [`BlobWriter`]: a temp file
//! in `blob_dir`, hashed (sha256) and counted while written, renamed into place
//! only when digest and declared size both match. A failed write leaves no
//! file behind (the temp file is removed on drop).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

/// Largest manifest or index accepted (registry, layout or archive).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// An image's layers on disk, verified, plus its config.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// The reference as given, normalised (`docker.io/library/debian:12`);
    /// for imports, `<path>:<tag>` or the archive's first `RepoTags` entry.
    pub reference: String,
    /// sha256 of the platform image manifest. For a legacy docker archive,
    /// which carries no manifest, the config digest (docker's image id).
    pub manifest_digest: String,
    /// The image index the manifest was picked from, when there was one.
    pub index_digest: Option<String>,
    /// The config digest (`sha256:...`).
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
}

/// One layer blob in `blob_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob file, verified against `digest` and `size`.
    pub path: PathBuf,
    pub media_type: String,
    pub compression: Compression,
    pub digest: String,
    pub size: u64,
}

/// How a layer tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Registry credentials. A registry that answers 401 with
/// `WWW-Authenticate: Bearer` gets its token exchange done by the client,
/// with these credentials (or none).
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Progress of one blob, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub digest: String,
    pub done: u64,
    pub total: u64,
    /// The blob was already in `blob_dir`; nothing was transferred.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{reference}: authentication failed ({message}); check the username and password")]
    Auth { reference: String, message: String },
    #[error("{reference}: no such image or tag in the registry ({message})")]
    NotFound { reference: String, message: String },
    #[error("{reference}: registry request failed: {source}")]
    Registry {
        reference: String,
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    #[error("{reference}: unsupported manifest media type {media_type:?} (docker schema 1 images must be re-pushed as schema 2 or OCI)")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: no linux/amd64 image in the index; it offers: {offered}")]
    NoPlatform { reference: String, offered: String },
    #[error("{reference}: manifest {digest} has no layers")]
    NoLayers { reference: String, digest: String },
    #[error("{what} {digest} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("layer {digest} is foreign/non-distributable ({media_type}); banger only pulls layers the registry serves itself")]
    ForeignLayer { digest: String, media_type: String },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error("unsupported digest {digest:?}: only sha256:<64 lowercase hex> is accepted")]
    UnsupportedDigest { digest: String },
    #[error(
        "blob {digest}: content hashes to {actual}; the source is corrupt or was tampered with"
    )]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: declared {expected} bytes, got {actual}{}", if *.more { " or more" } else { "" })]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
        more: bool,
    },
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: invalid json: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("oci layout {}: {reason}", dir.display())]
    Layout { dir: PathBuf, reason: String },
    #[error("docker archive {}: {reason}", path.display())]
    Archive { path: PathBuf, reason: String },
}

impl OciError {
    pub(crate) fn io(context: &'static str, path: &Path, source: std::io::Error) -> Self {
        OciError::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks `sha256:<64 lowercase hex>` and returns the hex part.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| OciError::UnsupportedDigest {
            digest: digest.to_string(),
        })?;
    Ok(hex)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The blob cache directory: `blob_dir/sha256-<hex>`.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub(crate) fn new(dir: &Path) -> Result<Self, OciError> {
        std::fs::create_dir_all(dir).map_err(|e| OciError::io("creating blob dir", dir, e))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, OciError> {
        Ok(self.dir.join(format!("sha256-{}", sha256_hex(digest)?)))
    }

    /// The blob's path if it is already stored with the right size and
    /// content. A stored file that does not verify is removed.
    pub(crate) fn cached(&self, digest: &str, size: u64) -> Result<Option<PathBuf>, OciError> {
        let path = self.path(digest)?;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::io("checking cached blob", &path, e)),
        };
        if meta.is_file() && meta.len() == size {
            let mut file =
                File::open(&path).map_err(|e| OciError::io("opening cached blob", &path, e))?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher)
                .map_err(|e| OciError::io("reading cached blob", &path, e))?;
            if format!("sha256:{}", hex::encode(hasher.finalize())) == digest {
                return Ok(Some(path));
            }
        }
        std::fs::remove_file(&path).map_err(|e| OciError::io("removing stale blob", &path, e))?;
        Ok(None)
    }

    pub(crate) fn writer(&self, digest: &str, size: u64) -> Result<BlobWriter, OciError> {
        let dest = self.path(digest)?;
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.dir)
            .map_err(|e| OciError::io("creating temp blob in", &self.dir, e))?;
        Ok(BlobWriter {
            tmp,
            dest,
            digest: digest.to_string(),
            size,
            written: 0,
            hasher: Sha256::new(),
        })
    }

    /// Copies a blob from `reader` (cache first), verified.
    pub(crate) fn store_from_reader(
        &self,
        digest: &str,
        size: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf, OciError> {
        if let Some(path) = self.cached(digest, size)? {
            progress(Progress {
                digest: digest.to_string(),
                done: size,
                total: size,
                cached: true,
            });
            return Ok(path);
        }
        let mut w = self.writer(digest, size)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OciError::io("reading blob for", &w.dest, e)),
            };
            w.write(&buf[..n])?;
            progress(w.progress());
        }
        w.finish()
    }
}

/// A blob being written: temp file, running hash and count.
pub(crate) struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    digest: String,
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl BlobWriter {
    /// Appends a chunk; refuses to go past the declared size.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), OciError> {
        let total = self.written + chunk.len() as u64;
        if total > self.size {
            return Err(OciError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: total,
                more: true,
            });
        }
        self.hasher.update(chunk);
        self.tmp
            .write_all(chunk)
            .map_err(|e| OciError::io("writing temp blob", self.tmp.path(), e))?;
        self.written = total;
        Ok(())
    }

    pub(crate) fn progress(&self) -> Progress {
        Progress {
            digest: self.digest.clone(),
            done: self.written,
            total: self.size,
            cached: false,
        }
    }

    /// Verifies size and digest, then renames into place.
    pub(crate) fn finish(self) -> Result<PathBuf, OciError> {
        if self.written != self.size {
            return Err(OciError::SizeMismatch {
                digest: self.digest,
                expected: self.size,
                actual: self.written,
                more: false,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != self.digest {
            return Err(OciError::DigestMismatch {
                digest: self.digest,
                actual,
            });
        }
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| OciError::io("syncing temp blob", self.tmp.path(), e))?;
        self.tmp
            .persist(&self.dest)
            .map_err(|e| OciError::io("renaming blob to", &self.dest, e.error))?;
        Ok(self.dest)
    }
}

/// A manifest-ish document: what a registry or layout hands back for a
/// reference.
pub(crate) enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

pub(crate) const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub(crate) const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Parses a manifest or index, by its `mediaType` (or, for OCI documents
/// that omit it, by shape).
pub(crate) fn parse_document(reference: &str, bytes: &[u8]) -> Result<Document, OciError> {
    let json_err = |source| OciError::Json {
        what: format!("{reference}: manifest"),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_err)?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let is_index = match media_type.as_deref() {
        Some(m) if INDEX_TYPES.contains(&m) => true,
        Some(m) if MANIFEST_TYPES.contains(&m) => false,
        None if value.get("manifests").is_some() => true,
        None if value.get("layers").is_some() => false,
        other => {
            return Err(OciError::UnsupportedManifest {
                reference: reference.to_string(),
                media_type: other.unwrap_or("<none>").to_string(),
            })
        }
    };
    if is_index {
        Ok(Document::Index(Box::new(
            serde_json::from_value(value).map_err(json_err)?,
        )))
    } else {
        Ok(Document::Manifest(Box::new(
            serde_json::from_value(value).map_err(json_err)?,
        )))
    }
}

/// The `linux/amd64` entry of an index (variant ignored); none → an error
/// listing what the index offers.
pub(crate) fn pick_platform<'a>(
    reference: &str,
    index: &'a ImageIndex,
) -> Result<&'a Descriptor, OciError> {
    let found = index.manifests().iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    });
    found.ok_or_else(|| {
        let offered: Vec<String> = index
            .manifests()
            .iter()
            .map(|d| match d.platform() {
                Some(p) => match p.variant() {
                    Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                    None => format!("{}/{}", p.os(), p.architecture()),
                },
                None => "<no platform>".to_string(),
            })
            .collect();
        OciError::NoPlatform {
            reference: reference.to_string(),
            offered: if offered.is_empty() {
                "nothing".to_string()
            } else {
                offered.join(", ")
            },
        }
    })
}

/// Maps a layer media type to its compression; foreign and unknown types
/// are errors.
pub(crate) fn layer_compression(digest: &str, media_type: &str) -> Result<Compression, OciError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        m if m.contains("nondistributable") || m.contains("foreign") => {
            Err(OciError::ForeignLayer {
                digest: digest.to_string(),
                media_type: m.to_string(),
            })
        }
        m => Err(OciError::UnsupportedLayer {
            digest: digest.to_string(),
            media_type: m.to_string(),
        }),
    }
}

/// A layer descriptor checked before any byte of it is fetched.
pub(crate) struct PlannedLayer {
    pub digest: String,
    pub media_type: String,
    pub compression: Compression,
    pub size: u64,
}

impl PlannedLayer {
    /// The layer, once its blob is verified at `path`.
    pub(crate) fn at(self, path: PathBuf) -> Layer {
        Layer {
            path,
            media_type: self.media_type,
            compression: self.compression,
            digest: self.digest,
            size: self.size,
        }
    }
}

/// Checks a manifest's layers (at least one, known media types, no foreign
/// URLs, sha256 digests) and its config descriptor size.
pub(crate) fn plan_layers(
    reference: &str,
    manifest_digest: &str,
    manifest: &ImageManifest,
) -> Result<Vec<PlannedLayer>, OciError> {
    let config = manifest.config();
    sha256_hex(config.digest().as_ref())?;
    if config.size() > MAX_CONFIG_BYTES {
        return Err(OciError::TooLarge {
            what: "config",
            digest: config.digest().to_string(),
            size: config.size(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    if manifest.layers().is_empty() {
        return Err(OciError::NoLayers {
            reference: reference.to_string(),
            digest: manifest_digest.to_string(),
        });
    }
    manifest
        .layers()
        .iter()
        .map(|d| {
            let digest = d.digest().to_string();
            let media_type = d.media_type().to_string();
            let compression = layer_compression(&digest, &media_type)?;
            if d.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                return Err(OciError::ForeignLayer { digest, media_type });
            }
            sha256_hex(&digest)?;
            Ok(PlannedLayer {
                digest,
                media_type,
                compression,
                size: d.size(),
            })
        })
        .collect()
}

pub(crate) fn parse_config(digest: &str, path: &Path) -> Result<ImageConfiguration, OciError> {
    let bytes = std::fs::read(path).map_err(|e| OciError::io("reading config blob", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| OciError::Json {
        what: format!("config {digest}"),
        source,
    })
}
