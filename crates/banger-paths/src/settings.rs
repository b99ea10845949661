//! The user's settings: `config.toml`, with `BANGER_*` environment
//! overrides (tests, CI, one-off runs).
//!
//! ```toml
//! # Which VMM new VMs run under: "auto" (Firecracker when it is installed
//! # at a supported version and KVM really works, else QEMU), "firecracker"
//! # or "qemu". `banger vm create --vmm` overrides it per VM.
//! vmm = "auto"
//! firecracker_bin = "/usr/bin/firecracker"
//! jailer_bin = "/usr/bin/jailer"
//! # Run Firecracker inside jailer's per-VM chroot as the owner (default).
//! # false runs it directly as the owner: for development hosts only.
//! jailer = true
//! # The catalog of prebuilt images and kernels (file://, http:// or https://).
//! catalog_url = "https://catalog.banger.dev/v1/catalog.json"
//! # The kernel OCI images boot when `image pull --kernel` is not given.
//! default_kernel = "debian-6.1"
//! # Taps kept ready on the bridge so a VM does not wait to create one
//! # (filled after the first VM needs the network; 0 turns it off).
//! tap_pool = 4
//! # Where bangerd answers DNS for `<name>.vm` (UDP and TCP, IPv4 only), or
//! # "off". Env: BANGER_DNS_ADDR. The daemon also listens on the bridge's
//! # address, same port, once the bridge exists.
//! dns_addr = "127.0.0.1:42069"
//! # Start new VMs by restoring a snapshot of a booted guest of the same
//! # image and shape (built on first use, `banger image warm`), or boot
//! # every VM from scratch. Env: BANGER_WARM.
//! warm = true
//! ```
//!
//! Unknown keys are refused, so a typo never silently means "default".

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use banger_api::VmmChoice;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
}

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub vmm: VmmChoice,
    pub firecracker_bin: PathBuf,
    pub jailer_bin: PathBuf,
    pub jailer: bool,
    pub catalog_url: String,
    pub default_kernel: String,
    pub tap_pool: usize,
    /// The `.vm` DNS server's address; `None` when set to `off`.
    pub dns_addr: Option<SocketAddrV4>,
    /// Warm starts: restore new VMs from a snapshot of a booted guest.
    pub warm: bool,
}

/// Most warm taps a pool may hold.
pub const MAX_TAP_POOL: usize = 64;

/// Where `banger image pull NAME` and `banger kernel pull` look by default.
pub const DEFAULT_CATALOG_URL: &str = "https://catalog.banger.dev/v1/catalog.json";
/// The kernel OCI images boot unless told otherwise.
pub const DEFAULT_KERNEL: &str = "debian-6.1";
/// Where the `.vm` DNS server listens unless told otherwise.
pub const DEFAULT_DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 42069);

/// `IPv4:PORT` or `off` (case-insensitive): the `dns_addr` setting.
pub fn parse_dns_addr(v: &str) -> Result<Option<SocketAddrV4>, String> {
    if v.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddrV4>()
        .map(Some)
        .map_err(|_| format!("expected IPv4:PORT (like 127.0.0.1:42069) or off, got {v:?}"))
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            vmm: VmmChoice::Auto,
            firecracker_bin: PathBuf::from("/usr/bin/firecracker"),
            jailer_bin: PathBuf::from("/usr/bin/jailer"),
            jailer: true,
            catalog_url: DEFAULT_CATALOG_URL.to_string(),
            default_kernel: DEFAULT_KERNEL.to_string(),
            tap_pool: 4,
            dns_addr: Some(DEFAULT_DNS_ADDR),
            warm: true,
        }
    }
}

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    vmm: Option<String>,
    firecracker_bin: Option<PathBuf>,
    jailer_bin: Option<PathBuf>,
    jailer: Option<bool>,
    catalog_url: Option<String>,
    default_kernel: Option<String>,
    tap_pool: Option<usize>,
    dns_addr: Option<String>,
    warm: Option<bool>,
}

impl Settings {
    /// Reads `path` (a missing file means defaults), then applies
    /// `BANGER_VMM`, `BANGER_FIRECRACKER_BIN`, `BANGER_JAILER_BIN` and
    /// `BANGER_JAILER`, `BANGER_CATALOG_URL`, `BANGER_DEFAULT_KERNEL` and
    /// `BANGER_DNS_ADDR` from `env`.
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let parse_err = |message: String| SettingsError::Parse {
            path: path.to_owned(),
            message,
        };
        let file: File = toml::from_str(&text).map_err(|e| parse_err(e.message().to_owned()))?;
        let mut s = Settings::default();
        if let Some(v) = file.vmm {
            s.vmm = v
                .parse()
                .map_err(|m: String| parse_err(format!("vmm: {m}")))?;
        }
        if let Some(p) = file.firecracker_bin {
            s.firecracker_bin = p;
        }
        if let Some(p) = file.jailer_bin {
            s.jailer_bin = p;
        }
        if let Some(j) = file.jailer {
            s.jailer = j;
        }
        if let Some(u) = file.catalog_url {
            s.catalog_url = u;
        }
        if let Some(k) = file.default_kernel {
            s.default_kernel = k;
        }
        if let Some(n) = file.tap_pool {
            s.tap_pool = n;
        }
        if let Some(a) = file.dns_addr {
            s.dns_addr = parse_dns_addr(&a).map_err(|m| parse_err(format!("dns_addr: {m}")))?;
        }

        if let Some(w) = file.warm {
            s.warm = w;
        }

        let env = |k| env(k).filter(|v: &String| !v.is_empty());
        if let Some(v) = env("BANGER_VMM") {
            s.vmm = v.parse().map_err(|message| SettingsError::Env {
                var: "BANGER_VMM",
                value: v.clone(),
                message,
            })?;
        }
        if let Some(u) = env("BANGER_CATALOG_URL") {
            s.catalog_url = u;
        }
        if let Some(k) = env("BANGER_DEFAULT_KERNEL") {
            s.default_kernel = k;
        }
        if let Some(v) = env("BANGER_TAP_POOL") {
            s.tap_pool = v.parse().map_err(|_| SettingsError::Env {
                var: "BANGER_TAP_POOL",
                value: v.clone(),
                message: "expected a number of taps".into(),
            })?;
        }
        if s.tap_pool > MAX_TAP_POOL {
            return Err(parse_err(format!(
                "tap_pool must be at most {MAX_TAP_POOL}, got {}",
                s.tap_pool
            )));
        }
        if let Some(v) = env("BANGER_DNS_ADDR") {
            s.dns_addr = parse_dns_addr(&v).map_err(|message| SettingsError::Env {
                var: "BANGER_DNS_ADDR",
                value: v.clone(),
                message,
            })?;
        }
        if let Some(p) = env("BANGER_FIRECRACKER_BIN") {
            s.firecracker_bin = p.into();
        }
        if let Some(p) = env("BANGER_JAILER_BIN") {
            s.jailer_bin = p.into();
        }
        for (var, field) in [
            ("BANGER_JAILER", &mut s.jailer),
            ("BANGER_WARM", &mut s.warm),
        ] {
            if let Some(v) = env(var) {
                *field = match v.as_str() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => {
                        return Err(SettingsError::Env {
                            var,
                            value: v,
                            message: "expected true or false".into(),
                        })
                    }
                };
            }
        }
        let scheme = s.catalog_url.get(..8).unwrap_or("").to_ascii_lowercase();
        if !(scheme.starts_with("file://")
            || scheme.starts_with("http://")
            || scheme.starts_with("https://"))
        {
            return Err(parse_err(format!(
                "catalog_url must start with file://, http:// or https://, got {:?}",
                s.catalog_url
            )));
        }
        for (key, p) in [
            ("firecracker_bin", &s.firecracker_bin),
            ("jailer_bin", &s.jailer_bin),
        ] {
            if !p.is_absolute() {
                return Err(parse_err(format!(
                    "{key} must be an absolute path, got {}",
                    p.display()
                )));
            }
        }
        Ok(s)
    }

    /// [`Settings::load`] with the process environment.
    pub fn from_env(path: &Path) -> Result<Settings, SettingsError> {
        Self::load(path, |k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&path, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn catalog_and_kernel_from_file_and_env() {
        let s = load(
            Some("catalog_url = \"file:///srv/c.json\"\ndefault_kernel = \"k1\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.catalog_url, "file:///srv/c.json");
        assert_eq!(s.default_kernel, "k1");
        let s = load(None, &[("BANGER_CATALOG_URL", "http://127.0.0.1:1/c.json")]).unwrap();
        assert_eq!(s.catalog_url, "http://127.0.0.1:1/c.json");
        let e = load(Some("catalog_url = \"ftp://x\"\n"), &[]).unwrap_err();
        assert!(
            e.to_string().contains("file://, http:// or https://"),
            "{e}"
        );
    }

    #[test]
    fn tap_pool_size_from_file_and_env_with_a_cap() {
        assert_eq!(load(Some("tap_pool = 0\n"), &[]).unwrap().tap_pool, 0);
        assert_eq!(load(None, &[("BANGER_TAP_POOL", "8")]).unwrap().tap_pool, 8);
        assert!(load(None, &[("BANGER_TAP_POOL", "many")]).is_err());
        let e = load(Some("tap_pool = 65\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
    }

    #[test]
    fn dns_addr_from_file_and_env() {
        assert_eq!(
            load(None, &[]).unwrap().dns_addr,
            Some("127.0.0.1:42069".parse().unwrap())
        );
        let s = load(Some("dns_addr = \"127.0.0.53:5353\"\n"), &[]).unwrap();
        assert_eq!(s.dns_addr, Some("127.0.0.53:5353".parse().unwrap()));
        let s = load(Some("dns_addr = \"off\"\n"), &[]).unwrap();
        assert_eq!(s.dns_addr, None);
        let s = load(
            Some("dns_addr = \"off\"\n"),
            &[("BANGER_DNS_ADDR", "127.0.0.1:1053")],
        )
        .unwrap();
        assert_eq!(s.dns_addr, Some("127.0.0.1:1053".parse().unwrap()));
        let s = load(None, &[("BANGER_DNS_ADDR", "OFF")]).unwrap();
        assert_eq!(s.dns_addr, None);
        for bad in [
            "[::1]:53",
            "localhost:53",
            "127.0.0.1",
            "127.0.0.1:70000",
            "",
        ] {
            let e = load(Some(&format!("dns_addr = {bad:?}\n")), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("dns_addr") && e.contains("IPv4:PORT"), "{e}");
        }
        let e = load(None, &[("BANGER_DNS_ADDR", "::1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BANGER_DNS_ADDR") && e.contains("::1"), "{e}");
    }

    #[test]
    fn missing_file_means_defaults() {
        assert_eq!(load(None, &[]).unwrap(), Settings::default());
        assert_eq!(load(Some(""), &[]).unwrap(), Settings::default());
    }

    #[test]
    fn file_values_then_env_overrides() {
        let s = load(
            Some("vmm = \"qemu\"\nfirecracker_bin = \"/opt/fc/firecracker\"\njailer = false\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.vmm, VmmChoice::Qemu);
        assert_eq!(s.firecracker_bin, PathBuf::from("/opt/fc/firecracker"));
        assert!(!s.jailer);
        let s = load(
            Some("vmm = \"qemu\"\n"),
            &[("BANGER_VMM", "firecracker"), ("BANGER_JAILER", "true")],
        )
        .unwrap();
        assert_eq!(s.vmm, VmmChoice::Firecracker);
        assert!(s.jailer);
    }

    #[test]
    fn warm_starts_are_on_unless_turned_off() {
        assert!(load(None, &[]).unwrap().warm);
        assert!(!load(Some("warm = false\n"), &[]).unwrap().warm);
        assert!(!load(None, &[("BANGER_WARM", "0")]).unwrap().warm);
        assert!(
            load(Some("warm = false\n"), &[("BANGER_WARM", "yes")])
                .unwrap()
                .warm
        );
        let e = load(None, &[("BANGER_WARM", "perhaps")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BANGER_WARM") && e.contains("perhaps"), "{e}");
    }

    #[test]
    fn bad_values_name_the_file_or_variable() {
        let e = load(Some("vmm = \"xen\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("xen"), "{e}");
        let e = load(Some("vmn = \"qemu\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field") && e.contains("vmn"), "{e}");
        let e = load(Some("firecracker_bin = \"firecracker\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = load(None, &[("BANGER_VMM", "kvm")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BANGER_VMM") && e.contains("kvm"), "{e}");
        let e = load(None, &[("BANGER_JAILER", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BANGER_JAILER"), "{e}");
    }
}
