//! Host side of `banger vm workspace`: no VM, no daemon.
//!
//! `banger vm workspace prepare <vm> <repo>` ships a developer's git
//! checkout into a VM at `/root/repo`; `banger vm workspace export` brings
//! the guest's edits back as a patch. This crate
//!
//! * finds the checkout ([`open`]) and decides what ships ([`select`]):
//!   git's index plus, on request, untracked files that are not ignored;
//! * streams those files as tar ([`write_tar`]) without ever following a
//!   symlink out of the repo;
//! * builds the argv of the small scripts the daemon runs in the guest
//!   ([`guest`]): tool bootstrap with mise, commands under mise, and the
//!   export of a binary patch;
//! * applies an exported patch to a new branch ([`apply_to_branch`])
//!   without touching the user's checkout, index or HEAD.
//!
//! Every git call is an argv (`std::process::Command`), never a shell
//! line, and runs with `LC_ALL=C` and without the `GIT_DIR`-style
//! variables that would point it at another repository.

mod apply;
mod archive;
mod beneath;
mod error;
mod git;
pub mod guest;
mod repo;
mod select;

#[cfg(test)]
mod testutil;

pub use apply::{apply_to_branch, validate_branch_name};
pub use archive::{write_tar, TarStats};
pub use error::WorkspaceError;
pub use repo::{head_commit, mise_config, open, Repo};
pub use select::{select, Selection};
