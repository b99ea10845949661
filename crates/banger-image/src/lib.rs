//! Golden images.
//!
//! A golden image is a directory holding an immutable ext4 root filesystem,
//! the kernel and initramfs to boot it, a seed for the per-VM work disk, and
//! a `manifest.json` describing all of it. VMs never write to it: each gets
//! a copy-on-write overlay.
//!
//! - [`debian`]: building the default image from Debian with mmdebstrap.
//! - [`ext4`]: packing a directory into an ext4 image with `mkfs.ext4 -d`
//!   (no loop mount, so no privilege needed for the packing itself).
//! - [`manifest`]: the manifest format and image-directory checks.
//! - [`tool`]: running external tools with argv and keeping their stderr.

pub mod bundle;
pub mod catalog;
pub mod debian;
pub mod ext4;
pub mod kernels;
pub mod manifest;
pub mod oci;
pub mod staged;
pub mod tool;

pub use manifest::Manifest;

/// Name of the image `vm run` and `vm create` use when none is given.
pub const DEFAULT_IMAGE: &str = "debian-bookworm";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Tool(#[from] tool::ToolError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {dir} is incomplete: {problem}")]
    Incomplete { dir: String, problem: String },
    #[error("bad manifest {path}: {source}")]
    Manifest {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }
}
