//! OCI images: turning pulled layers into a root tree.
//!
//! - [`flatten`]: applying layer tar streams, bottom first, into one
//!   directory that `mkfs.ext4 -d` can pack, treating every byte as hostile.

pub mod build;
pub mod flatten;
pub mod layout;
pub mod registry;
pub mod source;

pub use flatten::{FlattenError, FlattenReport, Flattener, Limits};
