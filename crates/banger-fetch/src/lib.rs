//! Bounded, hashed downloads from `file://`, `http://` and `https://` URLs.
//!
//! Every transfer goes through a byte cap: an advertised size (the
//! `Content-Length`, or a local file's length) over the cap is refused before
//! any of the body is read, and a body that runs past the cap anyway (a
//! server lying about its length, or a close-delimited or chunked body) is
//! cut off at the first chunk that would cross it. Everything is hashed with
//! sha256 on the way in.
//!
//! [`fetch_bytes`] returns a small document (a catalog, a manifest, a
//! checksum file) in memory. [`download_verified`] streams into a temp file
//! (`.download-*.part`) inside the destination directory and only renames it
//! into place once size and hash match; on any failure, or if the future is
//! dropped, the temp file is removed and the directory is left as it was.
//!
//! https uses rustls with the ring provider and the Mozilla roots compiled
//! in (no system store, no process-wide provider needed). Redirects are
//! followed up to [`MAX_REDIRECTS`] times, only to http or https and never
//! from https down to http.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// TCP (and TLS) connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for response headers or for the next piece of the body.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad url {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("{name:?} is not a plain file name (no '/', not starting with '.')")]
    BadName { name: String },
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
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

enum Scheme {
    File,
    Http,
}

fn scheme(url: &str) -> Result<Scheme, FetchError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("file://") {
        Ok(Scheme::File)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Scheme::Http)
    } else {
        Err(FetchError::BadUrl {
            url: url.to_string(),
            problem: "scheme must be file, http or https".into(),
        })
    }
}

/// Checks that `url` has a scheme this crate fetches (file, http, https).
pub fn check_url(url: &str) -> Result<(), FetchError> {
    scheme(url).map(|_| ())
}

/// Checks that `name` is a single path component we are willing to create
/// in a destination directory: not empty, at most 255 bytes, no `/` or NUL,
/// not starting with `.` (so never `.`, `..` or one of our temp files).
pub fn check_file_name(name: &str) -> Result<(), FetchError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(FetchError::BadName {
            name: name.to_string(),
        })
    }
}

/// Fetches the whole body of `url` into memory, refusing more than `cap`
/// bytes (before reading when the size is advertised).
pub async fn fetch_bytes(url: &str, cap: u64) -> Result<Vec<u8>, FetchError> {
    let mut buf = Vec::new();
    fetch_to(url, cap, None, &mut buf, &mut |_, _| {}).await?;
    Ok(buf)
}

/// Downloads `url` into a temp file inside `dest_dir` through a cap of
/// `cap` bytes (or `expected_size`, when that is smaller), hashing on the
/// way in; only when the sha256 (and `expected_size`, if given) match is it
/// renamed to `dest_dir/<final_name>`, replacing a file of that name.
///
/// `progress(done, total)` is called after each chunk; `total` is
/// `expected_size` when given, else the advertised length when the server
/// sent one, else the cap. On any failure, or if the future is dropped, the
/// temp file is removed.
pub async fn download_verified(
    url: &str,
    expected_sha256: &[u8; 32],
    expected_size: Option<u64>,
    cap: u64,
    dest_dir: &Path,
    final_name: &str,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<PathBuf, FetchError> {
    check_file_name(final_name)?;
    check_url(url)?;
    let cap = match expected_size {
        Some(size) if size > cap => {
            return Err(FetchError::AdvertisedTooLarge {
                url: url.to_string(),
                advertised: size,
                cap,
            })
        }
        Some(size) => size,
        None => cap,
    };

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
    let (got, digest) = fetch_to(url, cap, expected_size, &mut out, &mut progress).await?;
    if let Some(expected) = expected_size {
        if got != expected {
            return Err(FetchError::SizeMismatch {
                url: url.to_string(),
                expected,
                got,
            });
        }
    }
    if &digest != expected_sha256 {
        return Err(FetchError::HashMismatch {
            url: url.to_string(),
            expected: hex::encode(expected_sha256),
            actual: hex::encode(digest),
        });
    }
    out.flush().await.map_err(io_err(tmp_ctx()))?;
    out.sync_all().await.map_err(io_err(tmp_ctx()))?;
    drop(out);

    let dest = dest_dir.join(final_name);
    tmp.persist(&dest).map_err(|e| FetchError::Io {
        context: format!("renaming download to {}", dest.display()),
        source: e.error,
    })?;
    // Best effort: make the rename durable.
    if let Ok(dir) = std::fs::File::open(dest_dir) {
        let _ = dir.sync_all();
    }
    Ok(dest)
}

/// Streams `url` into `out`, refusing more than `cap` bytes; returns the
/// byte count and sha256 of what was written.
async fn fetch_to<W: AsyncWrite + Unpin>(
    url: &str,
    cap: u64,
    expected_size: Option<u64>,
    out: &mut W,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(u64, [u8; 32]), FetchError> {
    let mut sink = Sink {
        url: url.to_string(),
        cap,
        total: 0,
        total_hint: expected_size,
        hasher: Sha256::new(),
        out,
        progress,
    };
    match scheme(url)? {
        Scheme::File => fetch_file(url, &mut sink).await?,
        Scheme::Http => fetch_http(url, &mut sink).await?,
    }
    Ok((sink.total, sink.hasher.finalize().into()))
}

struct Sink<'a, W> {
    url: String,
    cap: u64,
    total: u64,
    /// What progress reports as the total when known.
    total_hint: Option<u64>,
    hasher: Sha256,
    out: &'a mut W,
    progress: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    /// Takes one chunk; refuses it whole if it would go past the cap.
    async fn take(&mut self, data: &[u8]) -> Result<(), FetchError> {
        let total = self.total + data.len() as u64;
        if total > self.cap {
            return Err(FetchError::CapExceeded {
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
        (self.progress)(total, self.total_hint.unwrap_or(self.cap));
        Ok(())
    }

    /// The size the source announces; refused at once if over the cap.
    fn advertised(&mut self, len: u64) -> Result<(), FetchError> {
        if len > self.cap {
            return Err(FetchError::AdvertisedTooLarge {
                url: self.url.clone(),
                advertised: len,
                cap: self.cap,
            });
        }
        self.total_hint.get_or_insert(len);
        Ok(())
    }
}

async fn fetch_file<W: AsyncWrite + Unpin>(
    url: &str,
    sink: &mut Sink<'_, W>,
) -> Result<(), FetchError> {
    // `file:///abs/path` only; the path is taken literally (no %-decoding).
    let path = &url["file://".len()..];
    if !path.starts_with('/') {
        return Err(FetchError::BadUrl {
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
        return Err(FetchError::BadUrl {
            url: url.to_string(),
            problem: "not a regular file".into(),
        });
    }
    sink.advertised(meta.len())?;
    // Read at most cap+1 bytes even if the file grows meanwhile.
    let mut reader = file.take(sink.cap.saturating_add(1));
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

fn http_client() -> Result<HttpClient, FetchError> {
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
    .map_err(FetchError::Tls)?
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
) -> Result<(), FetchError> {
    let client = http_client()?;
    let mut current = url.to_string();
    let mut hops = 0;
    let response = loop {
        let uri: hyper::Uri = current.parse().map_err(|e| FetchError::BadUrl {
            url: current.clone(),
            problem: format!("{e}"),
        })?;
        let request = hyper::Request::get(uri)
            .header(
                hyper::header::USER_AGENT,
                concat!("banger/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::BadUrl {
                url: current.clone(),
                problem: format!("{e}"),
            })?;
        let response = tokio::time::timeout(IDLE_READ_TIMEOUT, client.request(request))
            .await
            .map_err(|_| FetchError::Timeout {
                url: current.clone(),
                secs: IDLE_READ_TIMEOUT.as_secs(),
                what: "response headers",
            })?
            .map_err(|e| FetchError::Http {
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
                    return Err(FetchError::TooManyRedirects {
                        url: url.to_string(),
                        max: MAX_REDIRECTS,
                    });
                }
                hops += 1;
                current = resolve_redirect(&current, location)?;
            }
            _ if !status.is_success() => {
                return Err(FetchError::Status {
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
            .map_err(|_| FetchError::Timeout {
                url: sink.url.clone(),
                secs: IDLE_READ_TIMEOUT.as_secs(),
                what: "body data",
            })?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = frame.map_err(|e| FetchError::Http {
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
fn resolve_redirect(base: &str, location: &str) -> Result<String, FetchError> {
    let bad = |problem: &str| FetchError::BadUrl {
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

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
