//! The pure core of `banger update`: everything but the CLI and the final
//! install.
//!
//! 1. [`Manifest`]: a small JSON document at [`DEFAULT_MANIFEST_URL`] (or
//!    another `http`, `https` or `file` URL) listing releases; its URLs may
//!    be relative to the manifest's own. The manifest is *not* trusted: it
//!    only says where to look.
//! 2. [`download_release`]: fetches the release's `SHA256SUMS` and its
//!    signature, checks the signature ([`verify_signature`]: ECDSA P-256 over
//!    SHA-256, base64 of a DER signature, as `cosign sign-blob` and
//!    `openssl dgst -sha256 -sign` make it) against the release key before
//!    reading a single hash, then downloads the tarball through
//!    [`banger_fetch::download_verified`] against the signed hash.
//! 3. [`stage_tarball`]: unpacks exactly the four binaries
//!    ([`EXPECTED_ENTRIES`]) as fresh 0755 files in a new directory.
//! 4. [`parse_version_output`]: reads what a staged `banger` says about
//!    itself, so the caller can check it is the version it asked for.
//!
//! Every size is capped (`MAX_*`). Errors are [`UpdateError`].

use banger_fetch::FetchError;

mod download;
mod manifest;
mod signature;
mod stage;
mod sums;
mod version;

#[cfg(test)]
mod testkit;

pub use download::{download_release, DownloadedRelease};
pub use manifest::{Manifest, Release};
pub use signature::{release_public_key, verify_signature, RELEASE_PUBLIC_KEY};
pub use stage::{stage_tarball, StagedRelease, EXPECTED_ENTRIES, MAX_STAGED_FILE_BYTES};
pub use sums::parse_sha256sums;
pub use version::{compare_versions, parse_version_output, BuildInfo, Version};

/// Where `banger update` looks for releases unless told otherwise.
pub const DEFAULT_MANIFEST_URL: &str = "https://releases.banger.dev/manifest.json";
/// The manifest `schema_version` this banger understands.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;
/// Most bytes read for the manifest.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Most bytes read for a `SHA256SUMS` file.
pub const MAX_SUMS_BYTES: u64 = 16 * 1024;
/// Most bytes read for a `SHA256SUMS` signature file.
pub const MAX_SIG_BYTES: u64 = 4 * 1024;
/// Most bytes downloaded for a release tarball.
pub const MAX_TARBALL_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("bad release manifest json: {0}")]
    ManifestJson(#[source] serde_json::Error),
    #[error(
        "release manifest schema_version {found} is newer than this banger supports ({supported}); update banger manually"
    )]
    SchemaTooNew { found: u64, supported: u32 },
    #[error("bad release manifest: {0}")]
    Manifest(String),
    #[error("bad version {version:?}: {problem}")]
    BadVersion { version: String, problem: String },
    #[error("bad url {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    /// A transfer failed (each names its URL); see [`FetchError`].
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("SHA256SUMS line {line}: {problem}")]
    Sums { line: usize, problem: String },
    #[error("{sums_url} does not list {name:?}")]
    NotInSums { sums_url: String, name: String },
    #[error("bad release public key: {0}")]
    PublicKey(String),
    #[error("bad signature: {0}")]
    Signature(String),
    #[error(
        "this banger build embeds no release signing key, so it cannot verify releases; update banger manually"
    )]
    NoReleaseKey,
    #[error("release tarball {tarball}: {problem}")]
    Tarball { tarball: String, problem: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("version output: {0}")]
    VersionOutput(String),
    /// Another error, with what was being read when it happened.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<UpdateError>,
    },
}

impl UpdateError {
    fn context(self, context: impl Into<String>) -> UpdateError {
        UpdateError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The error under any [`UpdateError::Context`] wrappers.
    pub fn innermost(&self) -> &UpdateError {
        match self {
            UpdateError::Context { source, .. } => source.innermost(),
            e => e,
        }
    }
}
