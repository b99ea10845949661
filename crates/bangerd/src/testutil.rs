//! Test fixtures shared by the daemon's unit tests: a daemon over
//! temporary directories with a real SQLite state database.

use std::path::Path;
use std::time::Duration;

use crate::daemon::Shared;

/// A daemon over temporary directories and a real SQLite file; the helper
/// socket does not exist (nothing here calls the helper).
pub fn daemon(dir: &Path) -> Shared {
    let layout = banger_paths::Layout::from_lookup(|k| match k {
        "BANGER_STATE_DIR" => Some(dir.join("state")),
        "BANGER_RUNTIME_DIR" => Some(dir.join("run")),
        "BANGER_CACHE_DIR" => Some(dir.join("cache")),
        "BANGER_CONFIG" => Some(dir.join("config.toml")),
        "HOME" => Some(dir.to_path_buf()),
        _ => None,
    });
    std::fs::create_dir_all(&layout.state_dir).unwrap();
    let store = banger_store::Store::open(&layout.db_path()).unwrap();
    let cfg = crate::daemon::Config {
        settings: banger_paths::Settings::default(),
        owner_uid: 0,
        qemu_bin: "/usr/bin/qemu-system-x86_64".into(),
        kvm_dev: "/dev/kvm".into(),
        agent_bin: dir.join("banger-agent"),
        bridge: "br-fc".into(),
        gateway: banger_net::DEFAULT_GATEWAY,
        prefix: banger_net::DEFAULT_PREFIX,
        boot_timeout: Duration::from_secs(1),
        mirror: String::new(),
        layout,
    };
    std::sync::Arc::new(crate::daemon::Daemon::new(cfg, store))
}

/// A stopped VM row of the default image; with `snapshot`, its directory
/// names the warm snapshot its disks back onto.
pub fn vm_row(d: &Shared, id: &str, name: &str, snapshot: Option<&str>) {
    // Addresses are unique in the table: one per id's first byte.
    let octet = u32::from_str_radix(&id[..2], 16).unwrap() % 200;
    d.store
        .insert_vm(&banger_store::VmRecord {
            id: id.into(),
            name: name.into(),
            state: "stopped".into(),
            error: None,
            image: "debian-bookworm".into(),
            vcpus: 2,
            memory_mib: 1024,
            work_disk_mib: 8192,
            ip: format!("172.30.0.{}", 10 + octet),
            mac: format!("52:54:00:1e:00:{:02x}", 10 + octet),
            vmm: "qemu".into(),
            vmm_reason: None,
            root_cow: "qcow2".into(),
            created_at: 1,
            started_at: None,
            nat: false,
            workspace_json: None,
        })
        .unwrap();
    if let Some(snapshot) = snapshot {
        let dir = d.cfg.layout.vm_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::warm::VM_MARKER), format!("{snapshot}\n")).unwrap();
    }
}

/// An image record as the daemon loads it: `rootfs.ext4` and `vmlinuz` in
/// `dir` (not created here), built with `build_hash`.
pub fn image(dir: &Path, name: &str, build_hash: &str) -> crate::images::Image {
    crate::images::Image {
        dir: dir.to_path_buf(),
        manifest: banger_image::Manifest {
            name: name.into(),
            source: "test".into(),
            build_hash: build_hash.into(),
            rootfs: "rootfs.ext4".into(),
            kernel: "vmlinuz".into(),
            initrd: None,
            kernel_name: None,
            init: None,
            work_seed: "work-seed".into(),
            kernel_version: "6.1".into(),
            rootfs_bytes: 4,
            created_at: 1,
        },
        kernel: dir.join("vmlinuz"),
        initrd: None,
    }
}
