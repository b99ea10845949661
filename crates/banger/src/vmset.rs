//! `banger vm set`: a new shape (vCPUs, memory, work disk) for a stopped VM.
//!
//! The CLI checks what it can before asking: the sizes parse, the VM is
//! stopped, and the shape fits this host as the CLI sees it. The daemon
//! checks everything again under the VM's lock; its answer is the one
//! that counts.

use anyhow::bail;
use banger_api::{
    format_size, validate_vm_name, HostLimits, SetVmRequest, SetVmResult, VmInfo, VmSpec, VmState,
};
use banger_paths::Layout;
use clap::Args;

use crate::vmcmd::{client, print_json};

#[derive(Args, Debug)]
pub struct SetArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// Virtual CPUs (at most 4 per CPU of this host, and 64).
    #[arg(long)]
    vcpu: Option<u32>,
    /// Memory, e.g. 512M, 2G (a bare number is MiB); at most this host's.
    #[arg(long)]
    memory: Option<String>,
    /// New work disk (/root) size, e.g. 20G; it only grows, keeping its files.
    #[arg(long)]
    disk: Option<String>,
    /// Print the shape before and the VM after as JSON.
    #[arg(long)]
    json: bool,
}

/// The request the flags ask for; bad sizes and "nothing to change" fail here.
fn request(a: &SetArgs) -> anyhow::Result<SetVmRequest> {
    validate_vm_name(&a.name)?;
    let req = SetVmRequest {
        vcpus: a.vcpu,
        memory_mib: crate::vmcmd::size_flag("--memory", a.memory.as_deref())?,
        work_disk_mib: crate::vmcmd::size_flag("--disk", a.disk.as_deref())?,
    };
    if req.is_empty() {
        bail!("nothing to change: pass --vcpu, --memory or --disk");
    }
    Ok(req)
}

/// This host's limits as the CLI can see them; what it cannot read is left
/// to the daemon (a system install's state dir is not the caller's).
fn local_limits(layout: &Layout) -> HostLimits {
    HostLimits {
        cpus: banger_vmm::host::cpus(),
        memory_bytes: banger_vmm::host::memory_bytes().unwrap_or(u64::MAX),
        disk_free_bytes: banger_vmm::host::free_bytes(&layout.state_dir).ok(),
    }
}

/// The early refusal of a VM that is not stopped; the daemon says the same.
fn check_stopped(v: &VmInfo) -> anyhow::Result<()> {
    let name = &v.name;
    match v.state {
        VmState::Running => bail!("vm {name} is running; stop it first: banger vm stop {name}"),
        VmState::Creating => bail!("vm {name} is still being created"),
        VmState::Stopped | VmState::Error => Ok(()),
    }
}

pub async fn run(layout: &Layout, a: SetArgs) -> anyhow::Result<u8> {
    let req = request(&a)?;
    let c = client(layout).await?;
    let v: VmInfo = c.get(&format!("/vms/{}", a.name)).await?;
    check_stopped(&v)?;
    req.apply(&v.spec, &local_limits(layout))
        .map_err(anyhow::Error::msg)?;
    let r: SetVmResult = c.patch(&format!("/vms/{}", a.name), &req).await?;
    if a.json {
        print_json(&r)?;
    } else {
        print!("{}", summary(&r.vm.name, &r.before, &r.vm.spec));
    }
    Ok(0)
}

/// One line per field that changed, then when it takes effect.
fn summary(name: &str, before: &VmSpec, after: &VmSpec) -> String {
    let mib = |m: u64| format_size(m * 1024 * 1024);
    let mut lines = Vec::new();
    if before.vcpus != after.vcpus {
        lines.push(format!("vcpu       {} -> {}", before.vcpus, after.vcpus));
    }
    if before.memory_mib != after.memory_mib {
        lines.push(format!(
            "memory     {} -> {}",
            mib(before.memory_mib.into()),
            mib(after.memory_mib.into())
        ));
    }
    if before.work_disk_mib != after.work_disk_mib {
        lines.push(format!(
            "work disk  {} -> {} (grown in place)",
            mib(before.work_disk_mib),
            mib(after.work_disk_mib)
        ));
    }
    if lines.is_empty() {
        return format!("{name}: nothing changed\n");
    }
    format!(
        "{}\n{name} boots with this shape on its next start: banger vm start {name}\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vcpu: Option<u32>, memory: Option<&str>, disk: Option<&str>) -> SetArgs {
        SetArgs {
            name: "box".into(),
            vcpu,
            memory: memory.map(str::to_string),
            disk: disk.map(str::to_string),
            json: false,
        }
    }

    #[test]
    fn flags_become_the_request() {
        let r = request(&args(Some(4), Some("1G"), Some("8GiB"))).unwrap();
        assert_eq!(
            r,
            SetVmRequest {
                vcpus: Some(4),
                memory_mib: Some(1024),
                work_disk_mib: Some(8192)
            }
        );
        let r = request(&args(None, Some("512"), None)).unwrap();
        assert_eq!(r.memory_mib, Some(512));
    }

    #[test]
    fn bad_flags_fail_before_any_request() {
        let e = request(&args(None, Some("12XB"), None)).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("--memory: invalid size \"12XB\""), "{e}");
        let e = format!("{:#}", request(&args(None, None, Some("big"))).unwrap_err());
        assert!(e.starts_with("--disk: invalid size"), "{e}");
        let e = request(&args(None, None, None)).unwrap_err().to_string();
        assert!(e.contains("nothing to change"), "{e}");
        let mut a = args(Some(2), None, None);
        a.name = "Bad Name".into();
        assert!(request(&a).unwrap_err().to_string().contains("lowercase"));
    }

    #[test]
    fn this_hosts_limits_refuse_the_impossible() {
        let limits = HostLimits {
            cpus: banger_vmm::host::cpus(),
            memory_bytes: banger_vmm::host::memory_bytes().unwrap(),
            disk_free_bytes: None,
        };
        let cur = VmSpec::DEFAULT;
        let e = request(&args(Some(4096), None, None))
            .unwrap()
            .apply(&cur, &limits)
            .unwrap_err();
        assert!(e.contains("this host's") && e.contains("CPUs"), "{e}");
        let e = request(&args(None, Some("100000G"), None))
            .unwrap()
            .apply(&cur, &limits)
            .unwrap_err();
        assert!(e.contains("MemTotal"), "{e}");
    }

    #[test]
    fn a_running_vm_is_refused_with_the_stop_command() {
        let mut v: VmInfo = serde_json::from_value(serde_json::json!({
            "id": "x", "name": "box", "state": "running", "image": "i",
            "spec": {"vcpus": 2, "memory_mib": 1024, "work_disk_mib": 8192},
            "ip": "1.2.3.4", "mac": "m", "vmm": "qemu", "created_at": 0
        }))
        .unwrap();
        let e = check_stopped(&v).unwrap_err().to_string();
        assert_eq!(e, "vm box is running; stop it first: banger vm stop box");
        v.state = VmState::Stopped;
        assert!(check_stopped(&v).is_ok());
    }

    #[test]
    fn the_summary_names_what_changed() {
        let before = VmSpec::DEFAULT;
        let after = VmSpec {
            vcpus: 4,
            memory_mib: 1024,
            work_disk_mib: 16384,
        };
        assert_eq!(
            summary("box", &before, &after),
            "vcpu       2 -> 4\n\
             work disk  8 GiB -> 16 GiB (grown in place)\n\
             box boots with this shape on its next start: banger vm start box\n"
        );
        assert_eq!(summary("box", &before, &before), "box: nothing changed\n");
    }
}
