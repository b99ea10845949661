//! The guest kernel command line under Firecracker.

use super::version::Features;
use crate::qemu::{kernel_cmdline, GuestIdentity};

/// The QEMU command line (same root disk, console and `banger.*` identity
/// keys) plus what Firecracker's machine model needs:
///
/// - `reboot=k`: a guest reboot triple-faults into a Firecracker exit
///   rather than a hang; `pci=off` and the `i8042.*` keys skip probing
///   hardware Firecracker does not have (seconds of boot time otherwise).
/// - By version: Firecracker >= 1.8 describes its virtio-mmio devices in
///   ACPI tables; older ones append `virtio_mmio.device=` entries to this
///   line themselves and provide no ACPI, so the guest is told `acpi=off`
///   and banger never adds `virtio_mmio.device=` (a duplicate would
///   register every disk twice).
pub fn boot_args(id: &GuestIdentity, features: Features) -> String {
    let mut args = kernel_cmdline(id);
    args.push_str(" reboot=k pci=off i8042.noaux i8042.nomux i8042.dumbkbd");
    if !features.acpi {
        args.push_str(" acpi=off");
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firecracker::version::{features, SemVer};

    fn id() -> GuestIdentity {
        GuestIdentity {
            hostname: "box".into(),
            ip: "172.30.0.5".parse().unwrap(),
            prefix: 24,
            gateway: "172.30.0.1".parse().unwrap(),
            dns: None,
            init: None,
        }
    }

    #[test]
    fn acpi_era_and_older_firecracker() {
        let new = boot_args(&id(), features(SemVer::new(1, 14, 1)));
        let old = boot_args(&id(), features(SemVer::new(1, 7, 0)));
        for args in [&new, &old] {
            assert!(args.contains("root=/dev/vda"), "{args}");
            assert!(args.contains("banger.ip=172.30.0.5/24"), "{args}");
            assert!(args.contains("reboot=k pci=off"), "{args}");
            assert!(!args.contains("virtio_mmio.device="), "{args}");
        }
        assert!(!new.contains("acpi=off"), "{new}");
        assert!(old.ends_with(" acpi=off"), "{old}");
    }
}
