//! The wire types of the bangerd HTTP/JSON API.
//!
//! Everything here is plain data plus the validators that both the CLI and
//! the daemon run (VM names, shapes), so a check made at the edge is the same
//! check made again behind it. No I/O lives in this crate.

mod error;
mod health;
mod logs;
mod name;
mod size;
mod stats;
mod types;
mod vmset;
mod workspace;

pub use error::{ApiError, ErrorCode};
pub use health::*;
pub use logs::*;
pub use name::{validate_vm_name, NameError};
pub use size::{format_size, parse_size, parse_size_mib};
pub use stats::*;
pub use types::*;
pub use vmset::*;
pub use workspace::*;

/// Header that carries the operation id on every request and response.
pub const OP_ID_HEADER: &str = "x-banger-op-id";

/// API version prefix; every route lives under it.
pub const API_PREFIX: &str = "/v1";
