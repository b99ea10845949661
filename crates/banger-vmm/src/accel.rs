//! Deciding between KVM and TCG.
//!
//! `/dev/kvm` existing is not enough: some hosts (PVM-only kernels) accept
//! `KVM_CREATE_VM` and then never run a standard guest. So the probe boots
//! a real guest: a 512-byte boot sector that prints a marker on the serial
//! port. If the marker shows up under `-accel kvm`, KVM works.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How the VMM executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (much slower, works everywhere).
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// The outcome of a probe: which accelerator to use and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
    pub accel: Accel,
    pub reason: String,
}

/// The marker the probe guest prints.
pub const PROBE_MARKER: &str = "BANGER-KVM-OK";

/// A real-mode boot sector: `mov dx,0x3f8` then `out` each byte of the
/// marker to COM1 and halt. Hand-assembled (23 bytes of code) because no
/// assembler is needed for something this small.
pub fn probe_boot_sector() -> [u8; 512] {
    const CODE: [u8; 23] = [
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xFC, // cld
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0x17, 0x7C, // mov si, 0x7c17 (the marker, right after the code)
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
        0xFA, // done: cli
        0xF4, // hlt
        0xEB, 0xFD, // jmp hlt
    ];
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(&CODE);
    let marker = format!("{PROBE_MARKER}\r\n\0");
    sector[CODE.len()..CODE.len() + marker.len()].copy_from_slice(marker.as_bytes());
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Probes whether `qemu_bin` can run a standard guest under KVM on this host.
///
/// Never fails: every problem becomes a TCG answer whose reason says what
/// was wrong, because a working (if slow) VM beats no VM.
pub fn probe(qemu_bin: &Path, kvm_dev: &Path, timeout: Duration) -> AccelProbe {
    let tcg = |reason: String| AccelProbe {
        accel: Accel::Tcg,
        reason,
    };
    if !kvm_dev.exists() {
        return tcg(format!("{} does not exist", kvm_dev.display()));
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_dev)
    {
        return tcg(format!(
            "cannot open {}: {e} (add the user to the kvm group)",
            kvm_dev.display()
        ));
    }
    match boot_probe(qemu_bin, "kvm", timeout) {
        Ok(true) => AccelProbe {
            accel: Accel::Kvm,
            reason: format!("{} runs a standard guest", kvm_dev.display()),
        },
        Ok(false) => tcg(format!(
            "{} exists but does not run a standard guest ({}); using TCG software emulation",
            kvm_dev.display(),
            kvm_flavour(Path::new("/sys/module"))
        )),
        Err(e) => tcg(format!(
            "kvm probe failed: {e}; using TCG software emulation"
        )),
    }
}

/// Why a `/dev/kvm` that opens may still refuse standard guests, from the
/// KVM modules loaded (`<sys_module>` is `/sys/module`).
pub fn kvm_flavour(sys_module: &Path) -> String {
    if sys_module.join("kvm_pvm").exists() {
        "the kvm_pvm module is loaded: this host's KVM runs only PVM guests (kernels built \
         for PVM's paravirtual interface), not standard guest kernels"
            .into()
    } else if !sys_module.join("kvm_intel").exists() && !sys_module.join("kvm_amd").exists() {
        "neither kvm_intel nor kvm_amd is loaded: no hardware virtualisation (nested \
         virtualisation off?)"
            .into()
    } else {
        "KVM is loaded but the probe guest never ran; check dmesg for KVM errors".into()
    }
}

/// Boots the probe sector under `accel` and reports whether the marker
/// appeared within `timeout`.
pub fn boot_probe(qemu_bin: &Path, accel: &str, timeout: Duration) -> std::io::Result<bool> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("probe.img");
    std::fs::write(&disk, probe_boot_sector())?;
    let mut child = Command::new(qemu_bin)
        .args(["-accel", accel, "-M", "pc", "-m", "16"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(PROBE_MARKER) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let start = Instant::now();
    let found = rx
        .recv_timeout(timeout.saturating_sub(start.elapsed()))
        .is_ok();
    let _ = child.kill();
    let _ = child.wait();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable_and_points_at_marker() {
        let s = probe_boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        // `mov si, imm16` must point at the marker's load address.
        let si = u16::from_le_bytes([s[9], s[10]]) as usize;
        let off = si - 0x7c00;
        assert_eq!(&s[off..off + PROBE_MARKER.len()], PROBE_MARKER.as_bytes());
    }

    #[test]
    fn missing_kvm_device_means_tcg_with_reason() {
        let p = probe(
            Path::new("/nonexistent/qemu"),
            Path::new("/nonexistent/kvm"),
            Duration::from_secs(1),
        );
        assert_eq!(p.accel, Accel::Tcg);
        assert!(
            p.reason.contains("/nonexistent/kvm does not exist"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn kvm_flavour_names_pvm_hosts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(kvm_flavour(dir.path()).contains("neither kvm_intel nor kvm_amd"));
        std::fs::create_dir(dir.path().join("kvm_intel")).unwrap();
        assert!(kvm_flavour(dir.path()).contains("dmesg"));
        std::fs::create_dir(dir.path().join("kvm_pvm")).unwrap();
        assert!(kvm_flavour(dir.path()).contains("only PVM guests"));
    }

    /// Boots the probe sector for real under TCG, which works on any host
    /// with QEMU: proves the sector and the marker detection are right.
    #[test]
    fn probe_sector_really_boots_under_tcg() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            eprintln!("skipping: {} not installed", qemu.display());
            return;
        }
        assert!(boot_probe(qemu, "tcg", Duration::from_secs(20)).unwrap());
    }
}
