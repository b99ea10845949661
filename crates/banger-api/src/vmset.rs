//! `banger vm set`: a new shape for a stopped VM, and the check of that
//! shape against what the host can give. The CLI runs the check early with
//! the limits it can see; the daemon runs it again, authoritatively, with
//! its own, under the VM's lock.

use serde::{Deserialize, Serialize};

use crate::{format_size, VmInfo, VmSpec};

const MIB: u64 = 1 << 20;

/// `PATCH /v1/vms/{name}`: what to change on a stopped VM; an absent field
/// How many vCPUs a VM may have per host CPU.
pub const VCPU_OVERCOMMIT: u32 = 4;

/// stays as it is. The work disk only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// New size of the work disk (/root); at least the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_mib: Option<u64>,
}

/// The answer to [`SetVmRequest`]: the shape before, and the VM after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetVmResult {
    pub before: VmSpec,
    pub vm: VmInfo,
}

/// What the host can give one VM, measured by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// CPUs this process may run on (`available_parallelism`).
    pub cpus: u32,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory_bytes: u64,
    /// Free bytes (for an unprivileged writer) on the filesystem that holds
    /// the VM's disks; `None` when the caller cannot tell (the CLI of a
    /// system install cannot look into the daemon's state dir).
    pub disk_free_bytes: Option<u64>,
}

impl SetVmRequest {
    /// True when the request names nothing to change.
    pub fn is_empty(&self) -> bool {
        self.vcpus.is_none() && self.memory_mib.is_none() && self.work_disk_mib.is_none()
    }

    /// The shape `current` becomes, checked against `limits`. Only the
    /// fields being set are checked against the host, so a VM made before
    /// a limit applied can still change its other fields. The message names
    /// the flag and the limit.
    pub fn apply(&self, current: &VmSpec, limits: &HostLimits) -> Result<VmSpec, String> {
        if self.is_empty() {
            return Err("nothing to change: pass --vcpu, --memory or --disk".into());
        }
        let mut next = *current;
        if let Some(v) = self.vcpus {
            if v == 0 {
                return Err("--vcpu must be at least 1".into());
            }
            // vCPUs may outnumber the host's CPUs (they time-share, as under
            // any hypervisor), up to OVERCOMMIT of them; beyond that a guest
            // mostly waits for a core.
            let host_max = limits.cpus.saturating_mul(VCPU_OVERCOMMIT);
            let max = host_max.min(VmSpec::MAX_VCPUS);
            if v > max {
                return Err(if host_max <= VmSpec::MAX_VCPUS {
                    format!(
                        "--vcpu {v} is more than {VCPU_OVERCOMMIT} per CPU of this host's {} CPUs; the most a vm can have here is {max}",
                        limits.cpus
                    )
                } else {
                    format!("--vcpu {v} is more than banger's limit of {max} vcpus per vm")
                });
            }
            next.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            let min = u64::from(VmSpec::MIN_MEMORY_MIB);
            if m < min {
                return Err(format!(
                    "--memory must be at least {}, got {}",
                    format_size(min * MIB),
                    format_size(m.saturating_mul(MIB))
                ));
            }
            let host_mib = limits.memory_bytes / MIB;
            if m > host_mib {
                return Err(format!(
                    "--memory {} is more than this host's memory ({}, MemTotal in /proc/meminfo)",
                    format_size(m.saturating_mul(MIB)),
                    format_size(limits.memory_bytes)
                ));
            }
            next.memory_mib = u32::try_from(m).map_err(|_| {
                format!(
                    "--memory {} is too large",
                    format_size(m.saturating_mul(MIB))
                )
            })?;
        }
        if let Some(disk) = self.work_disk_mib {
            if disk < current.work_disk_mib {
                return Err(format!(
                    "--disk {} is smaller than the work disk's {}: a work disk can only grow",
                    format_size(disk.saturating_mul(MIB)),
                    format_size(current.work_disk_mib.saturating_mul(MIB))
                ));
            }
            let growth = (disk - current.work_disk_mib).saturating_mul(MIB);
            if let Some(free) = limits.disk_free_bytes {
                if growth > free {
                    return Err(format!(
                        "--disk {} needs {} more, but the filesystem holding the vm's disks has only {} free",
                        format_size(disk.saturating_mul(MIB)),
                        format_size(growth),
                        format_size(free)
                    ));
                }
            }
            next.work_disk_mib = disk;
        }
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host() -> HostLimits {
        HostLimits {
            cpus: 8,
            memory_bytes: 16 * GIB,
            disk_free_bytes: Some(20 * GIB),
        }
    }

    fn req(vcpus: Option<u32>, memory_mib: Option<u64>, disk_mib: Option<u64>) -> SetVmRequest {
        SetVmRequest {
            vcpus,
            memory_mib,
            work_disk_mib: disk_mib,
        }
    }

    #[test]
    fn a_request_within_the_limits_gives_the_new_shape() {
        let cur = VmSpec::DEFAULT;
        let next = req(Some(4), Some(2048), Some(16384))
            .apply(&cur, &host())
            .unwrap();
        assert_eq!(
            next,
            VmSpec {
                vcpus: 4,
                memory_mib: 2048,
                work_disk_mib: 16384
            }
        );
        // Absent fields stay; the same size is no change.
        let next = req(None, Some(512), Some(cur.work_disk_mib))
            .apply(&cur, &host())
            .unwrap();
        assert_eq!(next.vcpus, cur.vcpus);
        assert_eq!(next.memory_mib, 512);
        assert_eq!(next.work_disk_mib, cur.work_disk_mib);
        // Exactly the host's CPUs and memory is allowed.
        assert!(req(Some(8), Some(16384), None).apply(&cur, &host()).is_ok());
    }

    #[test]
    fn nothing_to_change_is_refused() {
        assert!(req(None, None, None).is_empty());
        let e = req(None, None, None)
            .apply(&VmSpec::DEFAULT, &host())
            .unwrap_err();
        assert!(e.contains("--vcpu, --memory or --disk"), "{e}");
    }

    #[test]
    fn vcpus_are_bounded_by_the_host_and_banger() {
        let cur = VmSpec::DEFAULT;
        let e = req(Some(0), None, None).apply(&cur, &host()).unwrap_err();
        assert!(e.contains("--vcpu must be at least 1"), "{e}");
        let e = req(Some(4096), None, None)
            .apply(&cur, &host())
            .unwrap_err();
        assert_eq!(
            e,
            "--vcpu 4096 is more than 4 per CPU of this host's 8 CPUs; the most a vm can have here is 32"
        );
        let two = HostLimits { cpus: 2, ..host() };
        assert_eq!(req(Some(4), None, None).apply(&cur, &two).unwrap().vcpus, 4);
        assert!(req(Some(9), None, None).apply(&cur, &two).is_err());
        let big = HostLimits { cpus: 64, ..host() };
        let e = req(Some(100), None, None).apply(&cur, &big).unwrap_err();
        assert!(e.contains("banger's limit of 64"), "{e}");
    }

    #[test]
    fn memory_has_a_floor_and_the_host_as_ceiling() {
        let cur = VmSpec::DEFAULT;
        let e = req(None, Some(64), None).apply(&cur, &host()).unwrap_err();
        assert_eq!(e, "--memory must be at least 128 MiB, got 64 MiB");
        let e = req(None, Some(100_000 * 1024), None)
            .apply(&cur, &host())
            .unwrap_err();
        assert_eq!(
            e,
            "--memory 97.7 TiB is more than this host's memory (16 GiB, MemTotal in /proc/meminfo)"
        );
        // Larger than a u32 of MiB on an (imaginary) host that large.
        let huge = HostLimits {
            memory_bytes: u64::MAX,
            ..host()
        };
        let e = req(None, Some(1 << 40), None)
            .apply(&cur, &huge)
            .unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn the_work_disk_only_grows_and_within_the_free_space() {
        let cur = VmSpec::DEFAULT;
        let e = req(None, None, Some(4096))
            .apply(&cur, &host())
            .unwrap_err();
        assert_eq!(
            e,
            "--disk 4 GiB is smaller than the work disk's 8 GiB: a work disk can only grow"
        );
        // 8 GiB -> 40 GiB needs 32 GiB; 20 GiB are free.
        let e = req(None, None, Some(40 * 1024))
            .apply(&cur, &host())
            .unwrap_err();
        assert_eq!(
            e,
            "--disk 40 GiB needs 32 GiB more, but the filesystem holding the vm's disks has only 20 GiB free"
        );
        assert!(req(None, None, Some(28 * 1024))
            .apply(&cur, &host())
            .is_ok());
        // Unknown free space (the CLI of a system install): left to the daemon.
        let blind = HostLimits {
            disk_free_bytes: None,
            ..host()
        };
        assert!(req(None, None, Some(40 * 1024)).apply(&cur, &blind).is_ok());
    }

    #[test]
    fn the_request_serialises_only_what_is_set() {
        let r = req(Some(4), None, Some(8192));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"vcpus":4,"work_disk_mib":8192}"#);
        assert_eq!(serde_json::from_str::<SetVmRequest>(&json).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<SetVmRequest>("{}").unwrap(),
            SetVmRequest::default()
        );
    }
}
