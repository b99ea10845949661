//! `banger doctor`: host checks, each with a verdict and what to do.

use std::path::Path;

use banger_api::{CheckStatus, DoctorCheck, DoctorReport};

use crate::daemon::Shared;

fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> DoctorCheck {
    DoctorCheck {
        name: name.to_string(),
        status,
        detail: detail.into(),
    }
}

use banger_paths::which;

pub async fn report(d: &Shared) -> DoctorReport {
    let mut checks = Vec::new();
    let qemu = &d.cfg.qemu_bin;
    checks.push(match which(&qemu.to_string_lossy()) {
        Some(p) => check("qemu", CheckStatus::Pass, format!("{}", p.display())),
        None => check(
            "qemu",
            CheckStatus::Fail,
            format!(
                "{} not found; install qemu-system-x86 (scripts/install-deps)",
                qemu.display()
            ),
        ),
    });
    let probe = d.accel().await;
    checks.push(match probe.accel {
        banger_vmm::Accel::Kvm => check(
            "accelerator",
            CheckStatus::Pass,
            format!("kvm: {}", probe.reason),
        ),
        banger_vmm::Accel::Tcg => check(
            "accelerator",
            CheckStatus::Warn,
            format!("tcg (software emulation, slower boots): {}", probe.reason),
        ),
    });
    checks.extend(firecracker_checks(d).await);
    for (tool, pkg) in [
        ("qemu-img", "qemu-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        // `vm set --disk` grows work disks with these.
        ("e2fsck", "e2fsprogs"),
        ("resize2fs", "e2fsprogs"),
        ("mmdebstrap", "mmdebstrap"),
    ] {
        checks.push(match which(tool) {
            Some(p) => check(tool, CheckStatus::Pass, p.display().to_string()),
            None => check(tool, CheckStatus::Fail, format!("not found; install {pkg}")),
        });
    }
    checks.push(tun_check());
    checks.push(match d.helper.ping("").await {
        Ok(v) => check(
            "root helper",
            CheckStatus::Pass,
            format!("{} answers ({v})", d.cfg.layout.helper_socket().display()),
        ),
        Err(e) => check("root helper", CheckStatus::Fail, format!("{e}")),
    });
    checks.push(if d.cfg.agent_bin.exists() {
        check(
            "guest agent",
            CheckStatus::Pass,
            d.cfg.agent_bin.display().to_string(),
        )
    } else {
        check(
            "guest agent",
            CheckStatus::Fail,
            format!(
                "{} missing; run scripts/build or set BANGER_AGENT_BIN",
                d.cfg.agent_bin.display()
            ),
        )
    });
    checks.push(
        match banger_store::inspect_schema(&d.cfg.layout.db_path()) {
            Ok(s) if s.exit_code() == 2 => check("state database", CheckStatus::Fail, s.describe()),
            Ok(s) => check(
                "state database",
                CheckStatus::Pass,
                format!("{}: {}", d.cfg.layout.db_path().display(), s.describe()),
            ),
            Err(e) => check("state database", CheckStatus::Fail, e.to_string()),
        },
    );
    checks.push(match crate::images::get(d, banger_image::DEFAULT_IMAGE) {
        Ok(img) => check("default image", CheckStatus::Pass, img.dir.display().to_string()),
        Err(_) => check(
            "default image",
            CheckStatus::Warn,
            format!(
                "{} not built yet; the first `banger vm run` builds it (a few minutes), or run `banger image build`",
                banger_image::DEFAULT_IMAGE
            ),
        ),
    });
    checks.push(crate::dns::doctor_check(d));
    checks.push(warm_check(d));
    DoctorReport { checks }
}

/// Whether new VMs are restored from warm snapshots, and which exist.
fn warm_check(d: &Shared) -> DoctorCheck {
    if !d.cfg.settings.warm {
        return check(
            "warm starts",
            CheckStatus::Warn,
            "off (warm = false or BANGER_WARM=0): every VM boots from scratch",
        );
    }
    let snaps = crate::warm::list(d);
    let current = snaps.iter().filter(|s| s.current).count();
    let detail = match snaps.len() {
        0 => "on; no snapshot yet (the first `vm run` of an image and shape makes one, or `banger image warm`)".to_string(),
        n => format!(
            "on; {n} snapshot(s), {current} current, {} stale, under {} (banger image snapshots)",
            n - current,
            crate::warm::warm_dir(d).display()
        ),
    };
    check("warm starts", CheckStatus::Pass, detail)
}

/// QEMU runs as the daemon's user and opens /dev/net/tun itself for its
/// tap, so that user must be able to open it (Debian's default is 0666).
fn tun_check() -> DoctorCheck {
    let path = Path::new("/dev/net/tun");
    if !path.exists() {
        return check(
            "tun device",
            CheckStatus::Fail,
            "/dev/net/tun missing; load the tun module (modprobe tun)",
        );
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => check("tun device", CheckStatus::Pass, "/dev/net/tun"),
        Err(e) => check(
            "tun device",
            CheckStatus::Fail,
            format!(
                "cannot open /dev/net/tun as this user ({e}); QEMU runs as this user and needs it: sudo chmod 0666 /dev/net/tun (the usual mode)"
            ),
        ),
    }
}

/// Firecracker's version, the jailer, and which VMM new VMs get.
async fn firecracker_checks(d: &Shared) -> Vec<DoctorCheck> {
    use banger_api::VmmChoice;
    use banger_vmm::firecracker::version::{self, Support};

    let settings = &d.cfg.settings;
    let fc = d.firecracker().await;
    let wanted = settings.vmm == VmmChoice::Firecracker;
    // Missing or unusable Firecracker only fails doctor when the user asked
    // for it; with `auto` QEMU takes over, which deserves a warning.
    let missing = if wanted {
        CheckStatus::Fail
    } else {
        CheckStatus::Warn
    };
    let bin = settings.firecracker_bin.display();
    let hint = || {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        crate::install_hint::firecracker_install_hint(&os, &version::KNOWN_TESTED.to_string())
    };
    let range = format!(
        "min v{}, tested v{}",
        version::MIN_SUPPORTED,
        version::KNOWN_TESTED
    );
    let mut checks = vec![match &fc.version {
        Err(e) => check("firecracker", missing, format!("{e}; {}", hint())),
        Ok(v) => match version::classify(*v) {
            Support::TooOld => check(
                "firecracker",
                missing,
                format!("v{v} at {bin} is too old ({range}); {}", hint()),
            ),
            Support::Tested => check(
                "firecracker",
                CheckStatus::Pass,
                format!("v{v} at {bin} (within tested range; {range})"),
            ),
            Support::Newer => check(
                "firecracker",
                CheckStatus::Warn,
                format!("v{v} at {bin} is newer than tested ({range}); it usually works"),
            ),
        },
    }];
    if fc.version.is_ok() && settings.jailer {
        checks.push(if settings.jailer_bin.is_file() {
            check(
                "jailer",
                CheckStatus::Pass,
                settings.jailer_bin.display().to_string(),
            )
        } else {
            check(
                "jailer",
                missing,
                format!(
                    "{} not found; it ships in the same release as firecracker ({}), or set jailer = false in {} on a development host",
                    settings.jailer_bin.display(),
                    hint(),
                    d.cfg.layout.config_file.display()
                ),
            )
        });
    }
    let vmm = match (settings.vmm, &fc.unusable) {
        (VmmChoice::Qemu, _) => check("vmm", CheckStatus::Pass, "qemu (vmm = \"qemu\")"),
        (_, None) => check("vmm", CheckStatus::Pass, "firecracker"),
        (VmmChoice::Firecracker, Some(why)) => check(
            "vmm",
            CheckStatus::Fail,
            format!("vmm = \"firecracker\" but firecracker cannot run here: {why}; set vmm = \"auto\" to use QEMU"),
        ),
        (VmmChoice::Auto, Some(why)) => check(
            "vmm",
            CheckStatus::Warn,
            format!("QEMU will be used: firecracker cannot run here: {why}"),
        ),
    };
    checks.push(vmm);
    checks
}
