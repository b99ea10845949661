//! The on-disk layout shared by the CLI, the daemon and the root helper.
//!
//! Three roots, each overridable for tests and system installs:
//!
//! | root    | env override         | default                                   |
//! |---------|----------------------|-------------------------------------------|
//! | state   | `BANGER_STATE_DIR`   | `$XDG_STATE_HOME/banger`, `~/.local/state/banger` |
//! | runtime | `BANGER_RUNTIME_DIR` | `$XDG_RUNTIME_DIR/banger`, `/tmp/banger-<uid>` |
//! | cache   | `BANGER_CACHE_DIR`   | `$XDG_CACHE_HOME/banger`, `~/.cache/banger` |
//! | config  | `BANGER_CONFIG`      | `$XDG_CONFIG_HOME/banger/config.toml`, `~/.config/banger/config.toml` |
//!
//! The config file holds the few settings a user chooses ([`Settings`]).
//!
//! A system install (`banger system install`) writes [`system::INSTALL_FILE`];
//! while it exists and no `BANGER_STATE_DIR`/`BANGER_RUNTIME_DIR` override is
//! set, every process uses the fixed [`system`] paths instead, so the CLI of
//! any user finds the one system daemon.
//!
//! Runtime paths hold Unix sockets, so they must stay short: `sun_path` is
//! 108 bytes. [`Layout::check_socket_path`] says so before a bind fails.

use std::path::{Path, PathBuf};

mod settings;
pub mod system;
pub use settings::{parse_dns_addr, Settings, SettingsError, DEFAULT_DNS_ADDR};

/// Longest path a Unix socket can be bound at (sun_path minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// File name of a VM's QEMU pidfile inside its runtime dir.
pub const VM_PIDFILE: &str = "qemu.pid";

/// Finds `tool` on PATH, then in /usr/sbin and /sbin (root's tools when
/// PATH is a user's), or takes it as given when it is a path.
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).exists().then(|| tool.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The user's settings file (may not exist: defaults apply).
    pub config_file: PathBuf,
    /// Where the root helper listens (`<runtime>/helper.sock` unless
    /// `BANGER_HELPER_SOCKET` says otherwise; its own dir in a system install).
    pub helper_sock: PathBuf,
    /// True when these are the system install's paths.
    pub system: bool,
}

impl Layout {
    /// Resolves the three roots from the environment of this process.
    pub fn from_env() -> Layout {
        Self::from_lookup(|k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Resolves the roots with an injected environment (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<PathBuf>) -> Layout {
        let install_file =
            get("BANGER_INSTALL_FILE").unwrap_or_else(|| PathBuf::from(system::INSTALL_FILE));
        let overridden = get("BANGER_STATE_DIR").is_some() || get("BANGER_RUNTIME_DIR").is_some();
        if !overridden && install_file.is_file() {
            return Self::system_with(get);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let home = get("HOME").unwrap_or_else(|| PathBuf::from("/root"));
        let state_dir = get("BANGER_STATE_DIR")
            .or_else(|| get("XDG_STATE_HOME").map(|p| p.join("banger")))
            .unwrap_or_else(|| home.join(".local/state/banger"));
        let runtime_dir = get("BANGER_RUNTIME_DIR")
            .or_else(|| get("XDG_RUNTIME_DIR").map(|p| p.join("banger")))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/banger-{uid}")));
        let cache_dir = get("BANGER_CACHE_DIR")
            .or_else(|| get("XDG_CACHE_HOME").map(|p| p.join("banger")))
            .unwrap_or_else(|| home.join(".cache/banger"));
        let config_file = get("BANGER_CONFIG")
            .or_else(|| get("XDG_CONFIG_HOME").map(|p| p.join("banger/config.toml")))
            .unwrap_or_else(|| home.join(".config/banger/config.toml"));
        Layout {
            helper_sock: get("BANGER_HELPER_SOCKET")
                .unwrap_or_else(|| runtime_dir.join("helper.sock")),
            state_dir,
            runtime_dir,
            cache_dir,
            config_file,
            system: false,
        }
    }

    /// The fixed paths of a system install (see [`system`]).
    pub fn system() -> Layout {
        Self::system_with(|_| None)
    }

    fn system_with(get: impl Fn(&str) -> Option<PathBuf>) -> Layout {
        Layout {
            state_dir: PathBuf::from(system::STATE_DIR),
            runtime_dir: PathBuf::from(system::RUNTIME_DIR),
            cache_dir: PathBuf::from(system::CACHE_DIR),
            config_file: get("BANGER_CONFIG").unwrap_or_else(|| PathBuf::from(system::CONFIG_FILE)),
            helper_sock: PathBuf::from(system::HELPER_SOCKET),
            system: true,
        }
    }

    pub fn daemon_socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    pub fn helper_socket(&self) -> PathBuf {
        self.helper_sock.clone()
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    /// Kernels from the catalog or `banger kernel import`, one dir each.
    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    /// The OCI blob cache: only saves re-downloads; `banger image cache
    /// prune` may empty it at any time.
    pub fn oci_cache_dir(&self) -> PathBuf {
        self.cache_dir.join("oci")
    }

    pub fn oci_blobs_dir(&self) -> PathBuf {
        self.oci_cache_dir().join("blobs")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    /// Disks, console log and handles of one VM.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.vms_dir().join(id)
    }

    /// Sockets and pidfile of one VM's running VMM.
    pub fn vm_runtime_dir(&self, id: &str) -> PathBuf {
        self.runtime_dir.join("vms").join(id)
    }

    /// The pidfile QEMU writes for one VM; the helper signals a pid only if
    /// that VMM's `-pidfile` is exactly this path.
    pub fn vm_pidfile(&self, id: &str) -> PathBuf {
        self.vm_runtime_dir(id).join(VM_PIDFILE)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.logs_dir().join("bangerd.log")
    }

    pub fn helper_log(&self) -> PathBuf {
        self.logs_dir().join("helper.log")
    }

    /// Fails with a message naming the path when it is too long to bind.
    pub fn check_socket_path(path: &Path) -> Result<(), String> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte Unix socket limit; \
                 set BANGER_RUNTIME_DIR to a shorter directory",
                path.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn layout(vars: &[(&str, &str)]) -> Layout {
        let m: HashMap<String, PathBuf> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        Layout::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn explicit_overrides_win_over_xdg() {
        let l = layout(&[
            ("HOME", "/home/u"),
            ("XDG_STATE_HOME", "/x/state"),
            ("BANGER_STATE_DIR", "/b/state"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]);
        assert_eq!(l.state_dir, PathBuf::from("/b/state"));
        assert_eq!(l.runtime_dir, PathBuf::from("/run/user/1000/banger"));
        assert_eq!(l.cache_dir, PathBuf::from("/home/u/.cache/banger"));
        assert_eq!(
            l.config_file,
            PathBuf::from("/home/u/.config/banger/config.toml")
        );
        assert_eq!(
            l.daemon_socket(),
            PathBuf::from("/run/user/1000/banger/bangerd.sock")
        );
    }

    #[test]
    fn home_defaults() {
        let l = layout(&[("HOME", "/home/u")]);
        assert_eq!(l.state_dir, PathBuf::from("/home/u/.local/state/banger"));
        assert!(l.runtime_dir.starts_with("/tmp"));
        assert_eq!(
            l.vm_dir("abc"),
            PathBuf::from("/home/u/.local/state/banger/vms/abc")
        );
    }

    #[test]
    fn an_install_file_switches_to_system_paths_unless_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install.toml");
        std::fs::write(&install, "").unwrap();
        let inst = install.to_str().unwrap();
        let l = layout(&[("HOME", "/home/u"), ("BANGER_INSTALL_FILE", inst)]);
        assert!(l.system);
        assert_eq!(l, Layout::system());
        assert_eq!(l.daemon_socket(), PathBuf::from("/run/banger/bangerd.sock"));
        assert_eq!(
            l.helper_socket(),
            PathBuf::from("/run/banger-helper/helper.sock")
        );
        let dev = layout(&[
            ("HOME", "/home/u"),
            ("BANGER_INSTALL_FILE", inst),
            ("BANGER_STATE_DIR", "/s"),
        ]);
        assert!(!dev.system);
        assert_eq!(dev.state_dir, PathBuf::from("/s"));
        let missing = layout(&[
            ("HOME", "/home/u"),
            ("BANGER_INSTALL_FILE", "/nonexistent/x"),
        ]);
        assert!(!missing.system);
        assert_eq!(
            missing.helper_socket(),
            missing.runtime_dir.join("helper.sock")
        );
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("/bin/sh").is_some());
        assert!(which("definitely-not-a-tool-xyz").is_none());
    }

    #[test]
    fn long_socket_paths_are_refused_with_a_hint() {
        let long = PathBuf::from(format!("/{}", "x".repeat(120)));
        let e = Layout::check_socket_path(&long).unwrap_err();
        assert!(e.contains("BANGER_RUNTIME_DIR"), "{e}");
        assert!(Layout::check_socket_path(Path::new("/tmp/b/bangerd.sock")).is_ok());
    }
}
