use std::os::unix::ffi::OsStrExt;

use serde_json::json;

use super::*;

/// A VM with every optional piece set (reused by the spec and replay tests).
pub(crate) fn full_config() -> FcVmConfig {
    FcVmConfig {
        vcpus: 2,
        memory_mib: 1024,
        kernel: PathBuf::from("/var/lib/banger/images/debian/vmlinux"),
        initrd: Some(PathBuf::from("/var/lib/banger/images/debian/initrd.img")),
        boot_args: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw".into(),
        root_drive: PathBuf::from("/var/lib/banger/vms/a1/root.ext4"),
        work_drive: PathBuf::from("/var/lib/banger/vms/a1/work.ext4"),
        tap: "bgr-a1".into(),
        mac: "06:00:ac:10:00:02".into(),
        vsock_uds: PathBuf::from("/run/banger/vms/a1/vsock.sock"),
        guest_cid: 3,
        log_path: Some(PathBuf::from("/var/lib/banger/vms/a1/firecracker.log")),
        metrics_path: Some(PathBuf::from("/var/lib/banger/vms/a1/metrics.json")),
        serial_path: Some(PathBuf::from("/var/lib/banger/vms/a1/console.log")),
    }
}

/// A VM with every optional piece left out.
pub(crate) fn minimal_config() -> FcVmConfig {
    FcVmConfig {
        initrd: None,
        log_path: None,
        metrics_path: None,
        serial_path: None,
        ..full_config()
    }
}

/// The exact requests, in order, with every body: a change here is a
/// change to what banger tells Firecracker.
#[test]
fn the_plan_is_pinned() {
    let plan = launch_plan(&full_config()).unwrap();
    let want = [
        (
            "/logger",
            json!({"log_path": "/var/lib/banger/vms/a1/firecracker.log", "show_level": true}),
        ),
        (
            "/metrics",
            json!({"metrics_path": "/var/lib/banger/vms/a1/metrics.json"}),
        ),
        (
            "/serial",
            json!({"serial_out_path": "/var/lib/banger/vms/a1/console.log"}),
        ),
        (
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 1024}),
        ),
        (
            "/boot-source",
            json!({
                "kernel_image_path": "/var/lib/banger/images/debian/vmlinux",
                "boot_args": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
                "initrd_path": "/var/lib/banger/images/debian/initrd.img",
            }),
        ),
        (
            "/drives/rootfs",
            json!({
                "drive_id": "rootfs", "path_on_host": "/var/lib/banger/vms/a1/root.ext4",
                "is_root_device": true, "is_read_only": false, "cache_type": "Writeback",
            }),
        ),
        (
            "/drives/work",
            json!({
                "drive_id": "work", "path_on_host": "/var/lib/banger/vms/a1/work.ext4",
                "is_root_device": false, "is_read_only": false, "cache_type": "Writeback",
            }),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "bgr-a1", "guest_mac": "06:00:ac:10:00:02"}),
        ),
        (
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "/run/banger/vms/a1/vsock.sock"}),
        ),
        ("/entropy", json!({})),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ];
    assert_eq!(plan.len(), want.len());
    for (call, (path, body)) in plan.iter().zip(want) {
        assert_eq!(call.method, ApiMethod::Put);
        assert_eq!(call.path, path);
        assert_eq!(call.body, body, "{path}");
    }
}

#[test]
fn optional_pieces_are_left_out() {
    let plan = launch_plan(&minimal_config()).unwrap();
    let paths: Vec<&str> = plan.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/machine-config",
            "/boot-source",
            "/drives/rootfs",
            "/drives/work",
            "/network-interfaces/eth0",
            "/vsock",
            "/entropy",
            "/actions",
        ]
    );
    assert!(plan[1].body.get("initrd_path").is_none());
}

#[test]
fn refuses_what_firecracker_would() {
    let bad = |f: fn(&mut FcVmConfig)| {
        let mut cfg = full_config();
        f(&mut cfg);
        launch_plan(&cfg).unwrap_err()
    };
    assert!(matches!(bad(|c| c.vcpus = 0), PlanError::Vcpus(0)));
    assert!(matches!(bad(|c| c.vcpus = 33), PlanError::Vcpus(33)));
    assert!(matches!(bad(|c| c.memory_mib = 0), PlanError::Memory));
    assert!(matches!(bad(|c| c.guest_cid = 2), PlanError::GuestCid(2)));
    let err = bad(|c| {
        c.work_drive = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/w\xff.ext4"));
    });
    assert!(
        matches!(
            err,
            PlanError::NotUtf8 {
                what: "work drive",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("work drive path /tmp/w"),
        "{err}"
    );
}
