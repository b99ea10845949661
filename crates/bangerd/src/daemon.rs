//! The daemon's shared state and configuration.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_agent_proto::client::AgentClient;
use banger_helper::client::HelperClient;
use banger_paths::{Layout, Settings};
use banger_store::Store;
use banger_vmm::AccelProbe;

use crate::ops::Registry;

/// Settings fixed at daemon start.
#[derive(Debug, Clone)]
pub struct Config {
    pub layout: Layout,
    pub owner_uid: u32,
    pub qemu_bin: PathBuf,
    pub kvm_dev: PathBuf,
    /// The static guest agent baked into images this daemon builds.
    pub agent_bin: PathBuf,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// How long a guest may take from VMM start to agent-ready.
    pub boot_timeout: Duration,
    /// Debian mirror for image builds.
    pub mirror: String,
    /// The user's settings (config.toml + env): VMM choice, Firecracker.
    pub settings: Settings,
}

impl Config {
    /// Defaults, the user's config file, and `BANGER_*` environment
    /// overrides for tests and CI. Fails on a bad config file.
    pub fn from_env(layout: Layout) -> Result<Config, banger_paths::SettingsError> {
        let settings = Settings::from_env(&layout.config_file)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Config {
            settings,
            layout,
            owner_uid: uid,
            qemu_bin: env("BANGER_QEMU_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
            kvm_dev: env("BANGER_KVM_DEVICE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/kvm")),
            agent_bin: env("BANGER_AGENT_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| exe_dir.join("banger-agent")),
            bridge: env("BANGER_BRIDGE").unwrap_or_else(|| banger_net::DEFAULT_BRIDGE.to_string()),
            gateway: banger_net::DEFAULT_GATEWAY,
            prefix: banger_net::DEFAULT_PREFIX,
            boot_timeout: Duration::from_secs(
                env("BANGER_BOOT_TIMEOUT_SECS")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(300),
            ),
            mirror: env("BANGER_DEBIAN_MIRROR")
                .unwrap_or_else(|| banger_image::debian::DEFAULT_MIRROR.to_string()),
        })
    }
}

/// Everything request handlers share.
pub struct Daemon {
    pub cfg: Config,
    pub store: Store,
    pub helper: HelperClient,
    pub ops: Registry,
    /// One lock per VM id: lifecycle changes to one VM never interleave.
    vm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while picking an IP and inserting the row, so two creates never
    /// pick the same address.
    pub reserve_lock: tokio::sync::Mutex<()>,
    /// Held while building the default image, so parallel creates build it once.
    pub image_lock: tokio::sync::Mutex<()>,
    /// Held while a warm snapshot is built: each build is a cold boot.
    pub warm_lock: tokio::sync::Mutex<()>,
    /// Per-image-name locks: pull, import, register, promote and delete of
    /// one name never interleave, and parallel creates pull a missing
    /// catalog image once.
    pub image_locks: banger_image::kernels::NameLocks,
    pub kernels: banger_image::kernels::KernelStore,
    /// Per-kernel-name locks (pull, auto-pull, import, delete).
    pub kernel_locks: banger_image::kernels::NameLocks,
    /// Warm taps on the bridge (see `tappool`).
    pub tap_pool: crate::tappool::TapPool,
    /// Open agent connections by VM id (QEMU accepts one client per VM).
    agents: Mutex<HashMap<String, Arc<AgentClient>>>,
    accel: tokio::sync::OnceCell<AccelProbe>,
    firecracker: tokio::sync::OnceCell<crate::backend::FcStatus>,
    /// The `.vm` DNS server's listeners (see [`crate::dns`]).
    pub dns: crate::dns::Dns,
    /// Per-VM log keepers while their VMMs run (see [`crate::logs`]).
    pub logs: crate::logs::Keepers,
}

pub type Shared = Arc<Daemon>;

impl Daemon {
    pub fn new(cfg: Config, store: Store) -> Daemon {
        let helper = HelperClient::new(cfg.layout.helper_socket());
        Daemon {
            kernels: banger_image::kernels::KernelStore::new(cfg.layout.kernels_dir()),
            cfg,
            store,
            helper,
            ops: Registry::default(),
            vm_locks: Mutex::new(HashMap::new()),
            reserve_lock: tokio::sync::Mutex::new(()),
            image_lock: tokio::sync::Mutex::new(()),
            warm_lock: tokio::sync::Mutex::new(()),
            image_locks: Default::default(),
            kernel_locks: Default::default(),
            tap_pool: Default::default(),
            agents: Mutex::new(HashMap::new()),
            accel: tokio::sync::OnceCell::new(),
            firecracker: tokio::sync::OnceCell::new(),
            dns: Default::default(),
            logs: Default::default(),
        }
    }

    pub fn vm_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.vm_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn forget_vm_lock(&self, id: &str) {
        self.vm_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The accelerator QEMU should use, probed once per daemon run.
    pub async fn accel(&self) -> AccelProbe {
        self.accel
            .get_or_init(|| async {
                let qemu = self.cfg.qemu_bin.clone();
                let kvm = self.cfg.kvm_dev.clone();
                tokio::task::spawn_blocking(move || {
                    banger_vmm::accel::probe(&qemu, &kvm, Duration::from_secs(3))
                })
                .await
                .unwrap_or_else(|e| AccelProbe {
                    accel: banger_vmm::Accel::Tcg,
                    reason: format!("kvm probe panicked: {e}"),
                })
            })
            .await
            .clone()
    }

    /// Firecracker's version and usability, probed once per daemon run.
    pub async fn firecracker(self: &Arc<Self>) -> crate::backend::FcStatus {
        self.firecracker
            .get_or_init(|| crate::backend::probe_firecracker(self))
            .await
            .clone()
    }

    pub fn cached_agent(&self, id: &str) -> Option<Arc<AgentClient>> {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn put_agent(&self, id: &str, c: Arc<AgentClient>) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), c);
    }

    pub fn drop_agent(&self, id: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
