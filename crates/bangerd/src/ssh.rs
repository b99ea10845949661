//! The SSH material the daemon owns: one client key, a host key per VM
//! (made before the VM first boots, so known_hosts never trusts on first
//! use), each VM's known_hosts, and the ssh_config include file that
//! `banger ssh-config --install` points `~/.ssh/config` at.

use std::path::{Path, PathBuf};

use banger_api::{ApiError, SshInfo};
use banger_ssh::{ClientKey, HostKey, SshTarget};
use banger_store::VmRecord;

use crate::daemon::Shared;

/// Where the work disk keeps the VM's host key (the image's sshd reads it).
pub const GUEST_HOST_KEY: &str = ".banger/ssh_host_ed25519_key";

pub fn ssh_dir(d: &Shared) -> PathBuf {
    d.cfg.layout.state_dir.join("ssh")
}

/// The generated ssh_config include file.
pub fn include_path(d: &Shared) -> PathBuf {
    ssh_dir(d).join("config")
}

pub fn known_hosts(vm_dir: &Path) -> PathBuf {
    vm_dir.join("known_hosts")
}

pub fn alias(name: &str) -> String {
    format!("{name}.vm")
}

/// The daemon's client key, made on first use.
pub fn client_key(d: &Shared) -> Result<ClientKey, ApiError> {
    banger_ssh::ensure_client_key(&ssh_dir(d))
        .map_err(|e| ApiError::internal(format!("ssh client key: {e}")))
}

/// A fresh host key for a new VM, recorded in the VM's known_hosts.
pub fn new_host_key(vm_dir: &Path, name: &str) -> Result<HostKey, String> {
    let key = banger_ssh::generate_host_key(&format!("banger-host-{name}"))
        .map_err(|e| format!("generate host key: {e}"))?;
    let line = banger_ssh::known_hosts_line(&alias(name), &key.public_openssh)
        .map_err(|e| e.to_string())?;
    banger_ssh::write_atomic(&known_hosts(vm_dir), &line).map_err(|e| e.to_string())?;
    Ok(key)
}

fn target(d: &Shared, rec: &VmRecord, identity: &Path) -> Option<SshTarget> {
    Some(SshTarget {
        name: rec.name.clone(),
        ip: rec.ip.parse().ok()?,
        known_hosts: known_hosts(&d.cfg.layout.vm_dir(&rec.id)),
        identity: identity.to_path_buf(),
    })
}

/// Rewrites the include file from the VM table. Best effort: a failure is
/// logged, `banger vm ssh` does not depend on it.
pub fn refresh_config(d: &Shared) {
    let result = (|| -> Result<(), String> {
        let key = client_key(d).map_err(|e| e.message)?;
        let vms = d.store.list_vms().map_err(|e| e.to_string())?;
        let targets: Vec<SshTarget> = vms
            .iter()
            .filter(|r| known_hosts(&d.cfg.layout.vm_dir(&r.id)).exists())
            .filter_map(|r| target(d, r, &key.private_path))
            .collect();
        banger_ssh::write_atomic(&include_path(d), &banger_ssh::render_config(&targets))
            .map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not rewrite the ssh config include");
    }
}

/// What `banger vm ssh` needs.
pub fn info(d: &Shared, rec: &VmRecord) -> Result<SshInfo, ApiError> {
    let kh = known_hosts(&d.cfg.layout.vm_dir(&rec.id));
    if !kh.exists() {
        return Err(ApiError::failed(format!(
            "vm {:?} was created without a banger SSH host key (by an older banger); \
             recreate it to use `banger vm ssh`, or use `banger vm exec`",
            rec.name
        )));
    }
    let key = client_key(d)?;
    Ok(SshInfo {
        ip: rec.ip.clone(),
        alias: alias(&rec.name),
        user: "root".into(),
        identity: key.private_path.display().to_string(),
        known_hosts: kh.display().to_string(),
    })
}
