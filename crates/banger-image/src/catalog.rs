//! The catalog of prebuilt images and kernels, and verified downloads.
//!
//! A catalog is a small JSON document (fetched from a configurable
//! `file://`, `http://` or `https://` URL) listing bundles with their URL,
//! size and sha256. [`download_verified`] fetches one bundle into a temp file
//! inside the destination directory through a size cap, hashing on the way
//! in, and only renames it into place once size and hash match; nothing is
//! decompressed before that. [`unpack_bundle`] then unpacks a verified
//! `.tar.zst` bundle, accepting only regular files and directories.
//!
//! On any failure (or if the future is dropped) the temp file or directory
//! is removed, so the destination directory is left as it was.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The catalog `schema_version` this banger understands.
pub const SCHEMA_VERSION: u32 = 1;
/// A sensible cap for [`fetch_catalog`].
pub const DEFAULT_CATALOG_MAX_BYTES: u64 = 1024 * 1024;
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// TCP (and TLS) connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for response headers or for the next piece of the body.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
    #[error("bad url {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{url}: http status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: timed out after {secs} s waiting for {what}")]
    Timeout {
        url: String,
        secs: u64,
        what: &'static str,
    },
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects { url: String, max: usize },
    #[error("{url}: advertised size {advertised} bytes exceeds the cap of {cap} bytes")]
    AdvertisedTooLarge {
        url: String,
        advertised: u64,
        cap: u64,
    },
    #[error("{url}: body exceeds the cap of {cap} bytes (more than advertised)")]
    CapExceeded { url: String, cap: u64 },
    #[error("{url}: got {got} bytes, expected {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{url}: sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
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
    check_scheme(&entry.url)?;
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

enum Scheme {
    File,
    Http,
}

fn check_scheme(url: &str) -> Result<Scheme, CatalogError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("file://") {
        Ok(Scheme::File)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Scheme::Http)
    } else {
        Err(CatalogError::BadUrl {
            url: url.to_string(),
            problem: "scheme must be file, http or https".into(),
        })
    }
}

/// Fetches and parses the catalog at `url`, reading at most `max_bytes`.
pub async fn fetch_catalog(url: &str, max_bytes: u64) -> Result<Catalog, CatalogError> {
    let mut buf = Vec::new();
    fetch_to(url, max_bytes, &mut buf, &mut |_, _| {}).await?;
    parse_catalog(&buf)
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
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<PathBuf, CatalogError> {
    check_file_name(final_name).map_err(|p| invalid(&entry.name, p))?;
    validate_entry(entry)?;
    let expected = parse_sha256(&entry.sha256).map_err(|p| invalid(&entry.name, p))?;

    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".part")
        .tempfile_in(dest_dir)
        .map_err(io_err(format!(
            "creating temp file in {}",
            dest_dir.display()
        )))?;
    let tmp_ctx = || format!("writing {}", tmp.path().display());
    let std_file = tmp.as_file().try_clone().map_err(io_err(tmp_ctx()))?;
    let mut out = tokio::fs::File::from_std(std_file);

    // From here an early return drops `tmp`, which removes the file.
    let (got, digest) = fetch_to(&entry.url, entry.size, &mut out, &mut progress).await?;
    if got != entry.size {
        return Err(CatalogError::SizeMismatch {
            url: entry.url.clone(),
            expected: entry.size,
            got,
        });
    }
    if digest != expected {
        return Err(CatalogError::HashMismatch {
            url: entry.url.clone(),
            expected: entry.sha256.to_ascii_lowercase(),
            actual: hex::encode(digest),
        });
    }
    out.flush().await.map_err(io_err(tmp_ctx()))?;
    out.sync_all().await.map_err(io_err(tmp_ctx()))?;
    drop(out);

    let dest = dest_dir.join(final_name);
    tmp.persist(&dest).map_err(|e| CatalogError::Io {
        context: format!("renaming download to {}", dest.display()),
        source: e.error,
    })?;
    // Best effort: make the rename durable.
    if let Ok(dir) = std::fs::File::open(dest_dir) {
        let _ = dir.sync_all();
    }
    Ok(dest)
}

/// A single path component we are willing to create in a destination dir.
fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a plain file name (no '/', not starting with '.')"
        ))
    }
}

/// Streams `url` into `out`, refusing more than `cap` bytes; returns the
/// byte count and sha256 of what was written.
async fn fetch_to<W: AsyncWrite + Unpin>(
    url: &str,
    cap: u64,
    out: &mut W,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(u64, [u8; 32]), CatalogError> {
    let mut sink = Sink {
        url: url.to_string(),
        cap,
        total: 0,
        hasher: Sha256::new(),
        out,
        progress,
    };
    match check_scheme(url)? {
        Scheme::File => fetch_file(url, &mut sink).await?,
        Scheme::Http => fetch_http(url, &mut sink).await?,
    }
    Ok((sink.total, sink.hasher.finalize().into()))
}

struct Sink<'a, W> {
    url: String,
    cap: u64,
    total: u64,
    hasher: Sha256,
    out: &'a mut W,
    progress: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    /// Takes one chunk; refuses it whole if it would go past the cap.
    async fn take(&mut self, data: &[u8]) -> Result<(), CatalogError> {
        let total = self.total + data.len() as u64;
        if total > self.cap {
            return Err(CatalogError::CapExceeded {
                url: self.url.clone(),
                cap: self.cap,
            });
        }
        self.hasher.update(data);
        self.out
            .write_all(data)
            .await
            .map_err(io_err(format!("writing download of {}", self.url)))?;
        self.total = total;
        (self.progress)(total, self.cap);
        Ok(())
    }

    fn advertised(&self, len: u64) -> Result<(), CatalogError> {
        if len > self.cap {
            return Err(CatalogError::AdvertisedTooLarge {
                url: self.url.clone(),
                advertised: len,
                cap: self.cap,
            });
        }
        Ok(())
    }
}

async fn fetch_file<W: AsyncWrite + Unpin>(
    url: &str,
    sink: &mut Sink<'_, W>,
) -> Result<(), CatalogError> {
    // `file:///abs/path` only; the path is taken literally (no %-decoding).
    let path = &url["file://".len()..];
    if !path.starts_with('/') {
        return Err(CatalogError::BadUrl {
            url: url.to_string(),
            problem: "file url must be file:///absolute/path (no host)".into(),
        });
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io_err(format!("opening {path}")))?;
    let meta = file
        .metadata()
        .await
        .map_err(io_err(format!("stat {path}")))?;
    if !meta.is_file() {
        return Err(CatalogError::BadUrl {
            url: url.to_string(),
            problem: "not a regular file".into(),
        });
    }
    sink.advertised(meta.len())?;
    // Read at most cap+1 bytes even if the file grows meanwhile.
    let mut reader = file.take(sink.cap + 1);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(io_err(format!("reading {path}")))?;
        if n == 0 {
            return Ok(());
        }
        sink.take(&buf[..n]).await?;
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn http_client() -> Result<HttpClient, CatalogError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(CatalogError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

async fn fetch_http<W: AsyncWrite + Unpin>(
    url: &str,
    sink: &mut Sink<'_, W>,
) -> Result<(), CatalogError> {
    let client = http_client()?;
    let mut current = url.to_string();
    let mut hops = 0;
    let response = loop {
        let uri: hyper::Uri = current.parse().map_err(|e| CatalogError::BadUrl {
            url: current.clone(),
            problem: format!("{e}"),
        })?;
        let request = hyper::Request::get(uri)
            .header(
                hyper::header::USER_AGENT,
                concat!("banger/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| CatalogError::BadUrl {
                url: current.clone(),
                problem: format!("{e}"),
            })?;
        let response = tokio::time::timeout(IDLE_READ_TIMEOUT, client.request(request))
            .await
            .map_err(|_| CatalogError::Timeout {
                url: current.clone(),
                secs: IDLE_READ_TIMEOUT.as_secs(),
                what: "response headers",
            })?
            .map_err(|e| CatalogError::Http {
                url: current.clone(),
                source: Box::new(e),
            })?;
        let status = response.status();
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok());
        match location {
            Some(location) if status.is_redirection() => {
                if hops == MAX_REDIRECTS {
                    return Err(CatalogError::TooManyRedirects {
                        url: url.to_string(),
                        max: MAX_REDIRECTS,
                    });
                }
                hops += 1;
                current = resolve_redirect(&current, location)?;
            }
            _ if !status.is_success() => {
                return Err(CatalogError::Status {
                    url: current,
                    status: status.as_u16(),
                });
            }
            _ => break response,
        }
    };
    if sink.url != current {
        sink.url = format!("{url} (redirected to {current})");
    }
    let advertised = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = advertised {
        // Refuse before reading any of the body.
        sink.advertised(len)?;
    }
    let mut body = response.into_body();
    loop {
        let frame = tokio::time::timeout(IDLE_READ_TIMEOUT, body.frame())
            .await
            .map_err(|_| CatalogError::Timeout {
                url: sink.url.clone(),
                secs: IDLE_READ_TIMEOUT.as_secs(),
                what: "body data",
            })?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = frame.map_err(|e| CatalogError::Http {
            url: sink.url.clone(),
            source: Box::new(e),
        })?;
        if let Ok(data) = frame.into_data() {
            sink.take(&data).await?;
        }
    }
}

/// Resolves a `Location` against the URL that returned it; only http and
/// https targets, and never from https down to http.
fn resolve_redirect(base: &str, location: &str) -> Result<String, CatalogError> {
    let bad = |problem: &str| CatalogError::BadUrl {
        url: location.to_string(),
        problem: format!("redirect from {base}: {problem}"),
    };
    let base_uri: hyper::Uri = base.parse().map_err(|_| bad("bad base url"))?;
    let scheme = base_uri.scheme_str().unwrap_or("http");
    let authority = base_uri
        .authority()
        .map(|a| a.as_str())
        .ok_or_else(|| bad("base url has no host"))?;
    let lower = location.get(..8).unwrap_or(location).to_ascii_lowercase();
    let target = if lower.starts_with("http://") || lower.starts_with("https://") {
        location.to_string()
    } else if location.contains("://") {
        return Err(bad("scheme must be http or https"));
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base_uri.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    if scheme.eq_ignore_ascii_case("https") && target.to_ascii_lowercase().starts_with("http://") {
        return Err(bad("refusing to downgrade https to http"));
    }
    Ok(target)
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
    check_file_name(name).map_err(&fail)?;
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
