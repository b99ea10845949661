//! Pulling an image from a registry (distribution API) into the blob store.
//!
//! `oci-client` speaks the protocol (token exchange on a `Bearer`
//! challenge, basic auth, manifests, blob streams); everything it hands
//! back is bounded and re-verified here before it lands in `blob_dir`.

use std::path::Path;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::source::{
    parse_config, parse_document, pick_platform, plan_layers, sha256_digest, BlobStore, Document,
    FetchedImage, OciError, Progress, INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_BYTES,
};

/// Pulls `reference` (`registry/name:tag` or `...@sha256:...`; docker hub
/// names are normalised) into `blob_dir`. An index picks `linux/amd64`.
/// `insecure_http` talks plain http to this one registry (loopback test
/// registries).
pub async fn pull(
    reference: &str,
    creds: &super::source::Credentials,
    blob_dir: &Path,
    insecure_http: bool,
    mut progress: impl FnMut(Progress),
) -> Result<FetchedImage, OciError> {
    let image: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| OciError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?;
    let whole = image.whole();
    let store = BlobStore::new(blob_dir)?;
    // The workspace builds rustls with ring only; reqwest needs a process
    // default. Already installed (by us or the embedder) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if insecure_http {
            ClientProtocol::HttpsExcept(vec![image.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    };
    let client = Client::new(config);
    let auth = match creds {
        super::source::Credentials::Anonymous => RegistryAuth::Anonymous,
        super::source::Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
    };
    let err = |e: OciDistributionError| map_error(&whole, e);
    client
        .auth(&image, &auth, RegistryOperation::Pull)
        .await
        .map_err(err)?;

    let accepted: Vec<&str> = MANIFEST_TYPES
        .iter()
        .chain(INDEX_TYPES.iter())
        .copied()
        .collect();
    let (bytes, _) = client
        .pull_manifest_raw(&image, &auth, &accepted)
        .await
        .map_err(err)?;
    let mut digest = checked_manifest(&bytes, image.digest(), None)?;
    let mut index_digest = None;
    let manifest = match parse_document(&whole, &bytes)? {
        Document::Manifest(m) => m,
        Document::Index(index) => {
            let entry = pick_platform(&whole, &index)?;
            let by_digest = Reference::with_digest(
                image.registry().to_string(),
                image.repository().to_string(),
                entry.digest().to_string(),
            );
            let (bytes, _) = client
                .pull_manifest_raw(&by_digest, &auth, &MANIFEST_TYPES)
                .await
                .map_err(err)?;
            index_digest = Some(digest);
            digest = checked_manifest(&bytes, Some(entry.digest().as_ref()), Some(entry.size()))?;
            match parse_document(&whole, &bytes)? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(OciError::UnsupportedManifest {
                        reference: whole,
                        media_type: "nested image index".to_string(),
                    })
                }
            }
        }
    };
    let planned = plan_layers(&whole, &digest, &manifest)?;

    let config_desc = manifest.config();
    let config_digest = config_desc.digest().to_string();
    let config_path = fetch_blob(
        &client,
        &image,
        &store,
        &config_digest,
        config_desc.size(),
        &mut progress,
    )
    .await?;
    let config = parse_config(&config_digest, &config_path)?;

    let mut layers = Vec::with_capacity(planned.len());
    for p in planned {
        let path = fetch_blob(&client, &image, &store, &p.digest, p.size, &mut progress).await?;
        layers.push(p.at(path));
    }
    Ok(FetchedImage {
        reference: whole,
        manifest_digest: digest,
        index_digest,
        config_digest,
        config,
        layers,
    })
}

/// Bounds a manifest and checks it against the digest (and size) it was
/// asked for by; returns its sha256 digest.
fn checked_manifest(
    bytes: &[u8],
    want: Option<&str>,
    want_size: Option<u64>,
) -> Result<String, OciError> {
    let digest = sha256_digest(bytes);
    let len = bytes.len() as u64;
    if len > MAX_MANIFEST_BYTES {
        return Err(OciError::TooLarge {
            what: "manifest",
            digest,
            size: len,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    if let Some(want) = want {
        if want != digest {
            return Err(OciError::DigestMismatch {
                digest: want.to_string(),
                actual: digest,
            });
        }
    }
    if let Some(size) = want_size {
        if size != len {
            return Err(OciError::SizeMismatch {
                digest,
                expected: size,
                actual: len,
                more: false,
            });
        }
    }
    Ok(digest)
}

async fn fetch_blob(
    client: &Client,
    image: &Reference,
    store: &BlobStore,
    digest: &str,
    size: u64,
    progress: &mut impl FnMut(Progress),
) -> Result<std::path::PathBuf, OciError> {
    if let Some(path) = store.cached(digest, size)? {
        progress(Progress {
            digest: digest.to_string(),
            done: size,
            total: size,
            cached: true,
        });
        return Ok(path);
    }
    let mut writer = store.writer(digest, size)?;
    progress(writer.progress());
    let mut stream = client
        .pull_blob_stream(image, digest)
        .await
        .map_err(|e| map_error(&image.whole(), e))?
        .stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| OciError::Io {
            context: "downloading blob",
            path: digest.into(),
            source: e,
        })?;
        writer.write(&chunk)?;
        progress(writer.progress());
    }
    writer.finish()
}

fn map_error(reference: &str, e: OciDistributionError) -> OciError {
    let reference = reference.to_string();
    match &e {
        OciDistributionError::AuthenticationFailure(m) => OciError::Auth {
            reference,
            message: m.clone(),
        },
        OciDistributionError::UnauthorizedError { url } => OciError::Auth {
            reference,
            message: format!("401 from {url}"),
        },
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => OciError::Auth {
            reference,
            message: e.to_string(),
        },
        OciDistributionError::ImageManifestNotFoundError(m) => OciError::NotFound {
            reference,
            message: m.clone(),
        },
        OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound {
            reference,
            message: e.to_string(),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes = envelope.errors.iter().map(|x| &x.code);
            let message = envelope.to_string();
            if codes
                .clone()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                OciError::Auth { reference, message }
            } else if codes
                .clone()
                .any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
            {
                OciError::NotFound { reference, message }
            } else {
                OciError::Registry {
                    reference,
                    source: Box::new(e),
                }
            }
        }
        _ => OciError::Registry {
            reference,
            source: Box::new(e),
        },
    }
}
