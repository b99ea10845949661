//! Which VMM a VM runs under, and what this host's Firecracker can do.
//!
//! `vmm = "auto"` picks Firecracker when its binary is installed at a
//! supported version and KVM really runs standard guests; otherwise QEMU,
//! and the reason is recorded with the VM (`vm show`).

use banger_api::{ApiError, VmmChoice};
use banger_vmm::firecracker::version::{self, SemVer, Support};

use crate::daemon::Shared;

/// A VM's VMM, as stored in `vms.vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Firecracker,
}

impl Vmm {
    pub fn as_str(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Firecracker => "firecracker",
        }
    }

    /// Rows only ever hold the two names; anything else is read as QEMU,
    /// the backend every row had before Firecracker existed.
    pub fn of(stored: &str) -> Vmm {
        if stored == "firecracker" {
            Vmm::Firecracker
        } else {
            Vmm::Qemu
        }
    }
}

/// What the daemon found out about Firecracker on this host (probed once).
#[derive(Debug, Clone)]
pub struct FcStatus {
    /// The version, or why it could not be read (binary missing...).
    pub version: Result<SemVer, String>,
    /// Why Firecracker cannot run here; `None` when it can.
    pub unusable: Option<String>,
}

/// Probes the configured Firecracker binary and KVM.
pub async fn probe_firecracker(d: &Shared) -> FcStatus {
    let bin = d.cfg.settings.firecracker_bin.clone();
    let version = tokio::task::spawn_blocking(move || {
        if !bin.exists() {
            return Err(format!("{} is not installed", bin.display()));
        }
        version::query_version(&bin).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("version probe panicked: {e}")));
    let accel = d.accel().await;
    // Every reason, not just the first: on a host without Firecracker and
    // with a PVM-only KVM, installing Firecracker alone would not help.
    let mut reasons = Vec::new();
    match &version {
        Err(e) => reasons.push(e.clone()),
        Ok(v) if version::classify(*v) == Support::TooOld => reasons.push(format!(
            "firecracker v{v} is older than the oldest supported v{}",
            version::MIN_SUPPORTED
        )),
        Ok(_) => {}
    }
    if accel.accel != banger_vmm::Accel::Kvm {
        reasons.push(format!(
            "KVM cannot run standard guests here: {}",
            accel.reason
        ));
    }
    let unusable = (!reasons.is_empty()).then(|| reasons.join("; and "));
    FcStatus { version, unusable }
}

/// Resolves a create request's VMM choice (or the configured default).
/// Asking for Firecracker where it cannot run is refused with the reason.
pub async fn select(d: &Shared, asked: Option<VmmChoice>) -> Result<(Vmm, String), ApiError> {
    let choice = asked.unwrap_or(d.cfg.settings.vmm);
    match choice {
        VmmChoice::Qemu => Ok((Vmm::Qemu, "qemu was asked for".into())),
        VmmChoice::Firecracker => {
            let fc = d.firecracker().await;
            match &fc.unusable {
                None => Ok((Vmm::Firecracker, "firecracker was asked for".into())),
                Some(why) => Err(ApiError::bad_request(format!(
                    "firecracker cannot run on this host: {why}; use --vmm qemu (or auto), \
                     and see `banger doctor`"
                ))),
            }
        }
        VmmChoice::Auto => {
            let fc = d.firecracker().await;
            Ok(match (&fc.unusable, &fc.version) {
                (None, Ok(v)) => (Vmm::Firecracker, format!("auto: firecracker v{v} with KVM")),
                (Some(why), _) => (Vmm::Qemu, format!("auto: firecracker unusable ({why})")),
                (None, Err(e)) => (Vmm::Qemu, format!("auto: {e}")),
            })
        }
    }
}
