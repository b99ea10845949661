//! Reidentify: a guest restored from a memory snapshot (a warm start) takes
//! on its own identity.
//!
//! Every clone of one snapshot wakes up as the template: its MAC, address
//! and hostname, its clock where the snapshot stopped, the same random
//! state, machine-id and SSH host key. The host sends a
//! [`NewIdentity`] before any user command runs; the agent checks every
//! field first ([`validate`]: an invalid one changes nothing), then applies
//! them in this order ([`apply`]), stopping at the first step that fails
//! and naming it in the error:
//!
//! 1. the MAC (before the address, so the new address is never announced
//!    with the template's MAC);
//! 2. the address: the template's flushed, the new one added, the default
//!    route replaced; then /etc/resolv.conf when DNS servers came;
//! 3. the hostname (sethostname, /etc/hostname, /etc/hosts);
//! 4. the clock (CLOCK_REALTIME);
//! 5. entropy credited to the pool, then a CRNG reseed, so clones stop
//!    sharing the template's random stream;
//! 6. /etc/machine-id;
//! 7. the SSH host key in /root/.banger (where sshd's first `HostKey`
//!    points), the template's keys in /etc/ssh removed, and
//!    /root/.ssh/authorized_keys; sshd reads its host keys per connection,
//!    so it needs no restart;
//! 8. the record of what was applied (`identity::PERSISTED`, without
//!    secrets), which an agent restart applies instead of the template's
//!    kernel command line.
//!
//! One Reidentify runs at a time. Only the syscalls and `ip` are outside
//! the tests' reach (`sys::Guest`); everything else runs against a
//! temporary root there.

use std::sync::{Mutex, PoisonError};

use banger_agent_proto::NewIdentity;

use crate::identity::{self, Identity, Paths, Persisted};
use crate::sys::Guest;

pub const MACHINE_ID: &str = "/etc/machine-id";
pub const SSH_HOST_KEY: &str = "/root/.banger/ssh_host_ed25519_key";
pub const SSH_HOST_KEY_PUB: &str = "/root/.banger/ssh_host_ed25519_key.pub";
pub const ETC_SSH: &str = "/etc/ssh";
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";

/// Least and most entropy accepted, in bytes.
pub const ENTROPY_BYTES: std::ops::RangeInclusive<usize> = 32..=512;
/// 2020-01-01T00:00:00Z: a clock before this is a host without a clock,
/// not one to copy.
const EARLIEST_TIME_NS: u64 = 1_577_836_800 * 1_000_000_000;
const MAX_KEY_BYTES: usize = 16 * 1024;
const MAX_PUB_BYTES: usize = 1024;
const MAX_AUTHORIZED_KEYS_BYTES: usize = 64 * 1024;
const KEY_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const KEY_END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// Serialises Reidentify requests: two at once would interleave their steps.
static RUNNING: Mutex<()> = Mutex::new(());

/// A [`NewIdentity`] whose every field was checked, in the forms the steps
/// use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Hostname, MAC, address, gateway, DNS, interface.
    pub network: Identity,
    pub unix_time_ns: u64,
    pub entropy: Vec<u8>,
    pub machine_id: String,
    /// Ends with a newline (ssh-keygen and sshd want the last line ended).
    pub ssh_host_key: String,
    /// One line, newline-terminated.
    pub ssh_host_key_pub: String,
    /// Newline-terminated.
    pub authorized_keys: String,
    pub instance_id: String,
    /// What [`identity::PERSISTED`] will hold.
    pub record: Persisted,
}

/// Answers a Reidentify request: checks, then (unless `enabled` is false:
/// the agent runs with `--no-identity`, e.g. on a developer's host in
/// tests, and must not touch that machine) applies it to this guest.
pub fn handle(new: &NewIdentity, enabled: bool) -> Result<(), String> {
    let plan = validate(new).map_err(|e| format!("invalid identity: {e}"))?;
    if !enabled {
        return Err("identity changes are disabled (--no-identity)".to_owned());
    }
    let _running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
    log!(
        "reidentify: instance {} as {} ({})",
        plan.instance_id,
        plan.record.hostname,
        plan.record.ip
    );
    apply(&plan, &Paths::system(), &crate::sys::Real)?;
    identity::set_instance_id(&plan.instance_id);
    log!("reidentify: instance {} applied", plan.instance_id);
    Ok(())
}

/// Checks every field; the error names the first bad one.
pub fn validate(new: &NewIdentity) -> Result<Plan, String> {
    let iface = new.iface.as_deref().unwrap_or("eth0");
    let network = identity::network_identity(
        &new.hostname,
        &new.mac,
        &new.ip,
        &new.gateway,
        &new.dns,
        iface,
    )?;
    if new.unix_time_ns < EARLIEST_TIME_NS {
        return Err(format!(
            "unix_time_ns {} is before 2020: the host's clock is not set",
            new.unix_time_ns
        ));
    }
    let entropy = banger_agent_proto::decode_data(&new.entropy)
        .map_err(|e| format!("entropy is not base64: {e}"))?;
    if !ENTROPY_BYTES.contains(&entropy.len()) {
        return Err(format!(
            "entropy of {} bytes; {} to {} wanted",
            entropy.len(),
            ENTROPY_BYTES.start(),
            ENTROPY_BYTES.end()
        ));
    }
    let id = &new.machine_id;
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "machine_id {id:?} is not 32 lowercase hex characters"
        ));
    }
    if id.bytes().all(|b| b == b'0') {
        return Err("machine_id is all zero".to_owned());
    }
    let ssh_host_key = check_private_key(&new.ssh_host_key)?;
    let ssh_host_key_pub = check_public_key(&new.ssh_host_key_pub)?;
    let authorized_keys = check_authorized_keys(&new.authorized_keys)?;
    if !identity::valid_instance_id(&new.instance_id) {
        return Err(format!(
            "instance_id {:?} is not 1 to 64 characters of [A-Za-z0-9-]",
            new.instance_id
        ));
    }
    let record = Persisted {
        hostname: new.hostname.clone(),
        mac: new.mac.clone(),
        ip: new.ip.clone(),
        gateway: new.gateway.clone(),
        dns: new.dns.clone(),
        iface: iface.to_owned(),
        machine_id: new.machine_id.clone(),
        instance_id: new.instance_id.clone(),
    };
    Ok(Plan {
        network,
        unix_time_ns: new.unix_time_ns,
        entropy,
        machine_id: new.machine_id.clone(),
        ssh_host_key,
        ssh_host_key_pub,
        authorized_keys,
        instance_id: new.instance_id.clone(),
        record,
    })
}

/// An OpenSSH private key in its PEM-like armour; returned newline-ended.
fn check_private_key(key: &str) -> Result<String, String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("ssh_host_key of {} bytes is too long", key.len()));
    }
    let body = key.trim_end_matches('\n');
    if !body.starts_with(KEY_BEGIN) || !body.ends_with(KEY_END) || body.contains(['\0', '\r']) {
        return Err("ssh_host_key is not an OpenSSH private key".to_owned());
    }
    Ok(format!("{body}\n"))
}

/// One `ssh-ed25519 BASE64 [comment]` line (a trailing newline is fine);
/// returned newline-ended. A second line would be a second key in a file
/// sshd reads as one.
fn check_public_key(key: &str) -> Result<String, String> {
    let line = key.strip_suffix('\n').unwrap_or(key);
    if line.len() > MAX_PUB_BYTES {
        return Err(format!(
            "ssh_host_key_pub of {} bytes is too long",
            key.len()
        ));
    }
    if line.contains(['\n', '\r', '\0']) {
        return Err("ssh_host_key_pub is more than one line".to_owned());
    }
    let mut fields = line.split(' ');
    let ok = fields.next() == Some("ssh-ed25519") && fields.next().is_some_and(|b| !b.is_empty());
    if !ok {
        return Err("ssh_host_key_pub is not an \"ssh-ed25519 <base64>\" line".to_owned());
    }
    Ok(format!("{line}\n"))
}

/// Some text, at least one key; returned newline-ended.
fn check_authorized_keys(keys: &str) -> Result<String, String> {
    if keys.len() > MAX_AUTHORIZED_KEYS_BYTES {
        return Err(format!(
            "authorized_keys of {} bytes is too long",
            keys.len()
        ));
    }
    if keys.contains('\0') {
        return Err("authorized_keys holds a NUL byte".to_owned());
    }
    if keys.trim().is_empty() {
        return Err("authorized_keys is empty: nobody could log in".to_owned());
    }
    let mut text = keys.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Applies a checked identity, in the order of the module docs; stops at
/// the first failure, whose message names the step.
pub fn apply(plan: &Plan, paths: &Paths, guest: &dyn Guest) -> Result<(), String> {
    let net = &plan.network;
    for step in identity::iface_commands(net) {
        guest
            .ip(&step.argv)
            .map_err(|e| format!("{}: {e}", step.what))?;
    }
    if !net.dns.is_empty() {
        identity::write_resolv_conf(paths, &net.dns, "a warm start's new identity")?;
    }
    if let Some(name) = &net.hostname {
        identity::apply_hostname(paths, guest, name)?;
    }
    guest
        .set_clock(plan.unix_time_ns)
        .map_err(|e| format!("set clock: {e}"))?;
    guest
        .add_entropy(&plan.entropy)
        .map_err(|e| format!("add entropy: {e}"))?;
    write_machine_id(paths, &plan.machine_id)?;
    write_ssh(paths, plan)?;
    identity::store_persisted(paths, &plan.record)
        .map_err(|e| format!("write {}: {e}", identity::PERSISTED))?;
    Ok(())
}

/// Replaces /etc/machine-id atomically. systemd mounts a file over it when
/// it could not (or, on a first boot, would not yet) write the id it made
/// up; a rename onto a mount point fails with EBUSY, so then the id is
/// written into the mounted file instead, which is what systemd reads.
fn write_machine_id(paths: &Paths, id: &str) -> Result<(), String> {
    let path = paths.at(MACHINE_ID);
    let text = format!("{id}\n");
    match identity::write_atomic(&path, text.as_bytes(), 0o444) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => write_in_place(&path, text.as_bytes()),
        other => other,
    }
    .map_err(|e| format!("write {MACHINE_ID}: {e}"))
}

/// Overwrites the existing file at `path` (not following a final symlink),
/// keeping its inode: what a bind mount shows.
fn write_in_place(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The new host key (0600, public half 0644, in a 0700 directory), then the
/// template's keys gone from /etc/ssh (every clone would present them),
/// then authorized_keys (0600 in a 0700 directory). The new key lands
/// before the old ones go, so sshd always has one to offer.
fn write_ssh(paths: &Paths, plan: &Plan) -> Result<(), String> {
    let key = paths.at(SSH_HOST_KEY);
    if let Some(dir) = key.parent() {
        identity::ensure_dir(dir, 0o700)
            .map_err(|e| format!("create the directory of {SSH_HOST_KEY}: {e}"))?;
    }
    identity::write_atomic(&key, plan.ssh_host_key.as_bytes(), 0o600)
        .map_err(|e| format!("write {SSH_HOST_KEY}: {e}"))?;
    identity::write_atomic(
        &paths.at(SSH_HOST_KEY_PUB),
        plan.ssh_host_key_pub.as_bytes(),
        0o644,
    )
    .map_err(|e| format!("write {SSH_HOST_KEY_PUB}: {e}"))?;
    remove_template_host_keys(paths)?;
    let keys = paths.at(AUTHORIZED_KEYS);
    if let Some(dir) = keys.parent() {
        identity::ensure_dir(dir, 0o700)
            .map_err(|e| format!("create the directory of {AUTHORIZED_KEYS}: {e}"))?;
    }
    identity::write_atomic(&keys, plan.authorized_keys.as_bytes(), 0o600)
        .map_err(|e| format!("write {AUTHORIZED_KEYS}: {e}"))
}

/// Removes `/etc/ssh/ssh_host_*_key` and `ssh_host_*_key.pub`.
fn remove_template_host_keys(paths: &Paths) -> Result<(), String> {
    let dir = paths.at(ETC_SSH);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("list {ETC_SSH}: {e}")),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("list {ETC_SSH}: {e}"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_host_key_name(name) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {ETC_SSH}/{name}: {e}")),
        }
    }
    Ok(())
}

/// `ssh_host_<type>_key` or `ssh_host_<type>_key.pub`.
fn is_host_key_name(name: &str) -> bool {
    let base = name.strip_suffix(".pub").unwrap_or(name);
    base.strip_prefix("ssh_host_")
        .and_then(|rest| rest.strip_suffix("_key"))
        .is_some_and(|kind| !kind.is_empty())
}

#[cfg(test)]
mod tests;
