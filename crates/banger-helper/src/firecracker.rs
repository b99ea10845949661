//! The Firecracker ops.
//!
//! - [`checks`]: validating launch requests and the configured binaries.
//! - [`fsx`]: filesystem operations anchored on directory descriptors.

pub mod checks;
pub mod fsx;
