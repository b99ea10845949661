//! The fixed paths of a system install: two systemd services, an owner-user
//! `bangerd` and a root `banger-helper`, set up by `banger system install`.
//!
//! Everything a system install adds lives at one of these paths, so
//! `banger system uninstall` can remove exactly that and nothing else.

/// Who owns the install, which version it is and when it was installed.
pub const INSTALL_FILE: &str = "/etc/banger/install.toml";
/// Directory of [`INSTALL_FILE`] and [`CONFIG_FILE`].
pub const ETC_DIR: &str = "/etc/banger";
/// Settings for the system daemon (the same keys as a user's config.toml).
pub const CONFIG_FILE: &str = "/etc/banger/config.toml";

/// The owner daemon's state: database, images, kernels, VM disks.
pub const STATE_DIR: &str = "/var/lib/banger";
/// The owner daemon's runtime dir: its socket, VMM sockets and pidfiles.
pub const RUNTIME_DIR: &str = "/run/banger";
/// Download caches (OCI blobs).
pub const CACHE_DIR: &str = "/var/cache/banger";
/// The helper's own runtime dir (root-owned, 0711): only its socket.
pub const HELPER_RUNTIME_DIR: &str = "/run/banger-helper";
/// The helper's socket, 0600 and owned by the owner.
pub const HELPER_SOCKET: &str = "/run/banger-helper/helper.sock";

/// The CLI.
pub const BANGER_BIN: &str = "/usr/local/bin/banger";
/// The owner daemon.
pub const BANGERD_BIN: &str = "/usr/local/bin/bangerd";
/// Binaries nobody runs by hand: the root helper and the static guest agent.
pub const LIB_DIR: &str = "/usr/local/lib/banger";
pub const HELPER_BIN: &str = "/usr/local/lib/banger/banger-helper";
pub const AGENT_BIN: &str = "/usr/local/lib/banger/banger-agent";

/// systemd units.
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const DAEMON_UNIT: &str = "bangerd.service";
pub const HELPER_UNIT: &str = "banger-helper.service";
/// Recreates the runtime dir with the owner's uid at every boot, before
/// either service starts (both units need it to exist).
pub const TMPFILES_FILE: &str = "/etc/tmpfiles.d/banger.conf";
