//! Every request banger can send, checked against Firecracker's official
//! API specs (1.14.1 and 1.16.1) with unknown fields forbidden, and proof
//! that the check rejects what Firecracker would. `replay_tests.rs` then
//! sends the same requests through the real client to a spec-checking fake.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use super::launch::launch_plan;
use super::launch::tests::{full_config, minimal_config};
use super::models::*;
use super::snapshot::tests::{restore_spec, restore_spec_same_vsock, V1_14, V1_16};
use super::snapshot::{restore_plan, save_plan};
use super::spec::{validate, Spec, VERSIONS};

pub(super) fn specs() -> Vec<Spec> {
    VERSIONS.iter().map(|v| Spec::load(v)).collect()
}

fn v<T: Serialize>(body: &T) -> Value {
    serde_json::to_value(body).unwrap()
}

pub(super) fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Written so that a new variant fails to compile until it is listed (and
/// so checked against the spec).
fn every_action() -> Vec<ActionType> {
    use ActionType::*;
    let all = vec![InstanceStart, SendCtrlAltDel, FlushMetrics];
    for a in &all {
        match a {
            InstanceStart | SendCtrlAltDel | FlushMetrics => {}
        }
    }
    all
}

fn every_log_level() -> Vec<LogLevel> {
    use LogLevel::*;
    let all = vec![Error, Warning, Info, Debug, Trace, Off];
    for l in &all {
        match l {
            Error | Warning | Info | Debug | Trace | Off => {}
        }
    }
    all
}

/// `(method, path, body)` of every request banger can send: each model with
/// its optional fields unset and all set, every enum value, and both launch
/// plans.
fn every_request() -> Vec<(&'static str, String, Value)> {
    let mut r: Vec<(&'static str, String, Value)> = Vec::new();
    let mut put = |path: &str, body: Value| r.push(("PUT", path.to_string(), body));

    put(
        "/machine-config",
        v(&MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
        }),
    );
    put(
        "/machine-config",
        v(&MachineConfiguration {
            vcpu_count: 32,
            mem_size_mib: 65536,
            smt: Some(true),
            track_dirty_pages: Some(true),
        }),
    );
    put(
        "/boot-source",
        v(&BootSource {
            kernel_image_path: p("/k/vmlinux"),
            boot_args: None,
            initrd_path: None,
        }),
    );
    put(
        "/boot-source",
        v(&BootSource {
            kernel_image_path: p("/k/vmlinux"),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some(p("/k/initrd")),
        }),
    );
    let drive = |cache_type, io_engine| Drive {
        drive_id: "rootfs".into(),
        path_on_host: p("/d/root.ext4"),
        is_root_device: true,
        is_read_only: false,
        cache_type,
        io_engine,
    };
    put("/drives/rootfs", v(&drive(None, None)));
    for cache in [CacheType::Unsafe, CacheType::Writeback] {
        for io in [IoEngine::Sync, IoEngine::Async] {
            put("/drives/rootfs", v(&drive(Some(cache), Some(io))));
        }
    }
    let mut work = drive(None, None);
    work.drive_id = "work".into();
    work.is_root_device = false;
    work.is_read_only = true;
    put("/drives/work", v(&work));
    for guest_mac in [None, Some("06:00:ac:10:00:02".to_string())] {
        put(
            "/network-interfaces/eth0",
            v(&NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac,
            }),
        );
    }
    put(
        "/vsock",
        v(&Vsock {
            guest_cid: 3,
            uds_path: p("/run/v.sock"),
        }),
    );
    put(
        "/logger",
        v(&Logger {
            log_path: p("/l/fc.log"),
            level: None,
            show_level: None,
            show_log_origin: None,
        }),
    );
    for level in every_log_level() {
        put(
            "/logger",
            v(&Logger {
                log_path: p("/l/fc.log"),
                level: Some(level),
                show_level: Some(true),
                show_log_origin: Some(false),
            }),
        );
    }
    put(
        "/metrics",
        v(&Metrics {
            metrics_path: p("/l/metrics"),
        }),
    );
    put(
        "/serial",
        v(&SerialDevice {
            serial_out_path: p("/console.log"),
        }),
    );
    put("/entropy", v(&EntropyDevice {}));
    for action in every_action() {
        put("/actions", v(&InstanceActionInfo::new(action)));
    }
    for snapshot_type in [SnapshotType::Full, SnapshotType::Diff] {
        put(
            "/snapshot/create",
            v(&SnapshotCreateParams {
                snapshot_type,
                snapshot_path: p("/s/vm.state"),
                mem_file_path: p("/s/vm.mem"),
            }),
        );
    }
    for backend_type in [MemoryBackendType::File, MemoryBackendType::Uffd] {
        let mem_backend = MemoryBackend {
            backend_type,
            backend_path: p("/s/vm.mem"),
        };
        put(
            "/snapshot/load",
            v(&SnapshotLoadParams {
                snapshot_path: p("/s/vm.state"),
                mem_backend: mem_backend.clone(),
                resume_vm: None,
                track_dirty_pages: None,
                network_overrides: None,
                vsock_override: None,
            }),
        );
        put(
            "/snapshot/load",
            v(&SnapshotLoadParams {
                snapshot_path: p("/s/vm.state"),
                mem_backend,
                resume_vm: Some(true),
                track_dirty_pages: Some(true),
                network_overrides: Some(vec![
                    NetworkOverride {
                        iface_id: "eth0".into(),
                        host_dev_name: "tap1".into(),
                    },
                    NetworkOverride {
                        iface_id: "eth1".into(),
                        host_dev_name: "tap2".into(),
                    },
                ]),
                // 1.16.1 only: see `vsock_override_is_1_16_only`.
                vsock_override: None,
            }),
        );
    }
    for path_on_host in [None, Some(p("/d/other.ext4"))] {
        r.push((
            "PATCH",
            "/drives/rootfs".into(),
            v(&PartialDrive {
                drive_id: "rootfs".into(),
                path_on_host,
            }),
        ));
    }
    for state in [VmState::Paused, VmState::Resumed] {
        r.push(("PATCH", "/vm".into(), v(&Vm { state })));
    }
    let mut plans = vec![
        launch_plan(&full_config()).unwrap(),
        launch_plan(&minimal_config()).unwrap(),
        save_plan(&p("/s/vm.state"), &p("/s/vm.mem")).unwrap(),
    ];
    // The restore plans both specs can take (1.16's own, with the vsock
    // override, is checked in `vsock_override_is_1_16_only`).
    for version in [V1_14, V1_16] {
        plans.push(restore_plan(&restore_spec_same_vsock(), version).unwrap());
    }
    for call in plans.into_iter().flatten() {
        r.push((call.method.as_str(), call.path, call.body));
    }
    r
}

/// `vsock_override` on snapshot load is in the 1.16.1 spec and not in the
/// 1.14.1 one, which is why `restore_plan` only sends it from 1.16 on.
#[test]
fn vsock_override_is_1_16_only() {
    let [old, new] = [Spec::load("1.14.1"), Spec::load("1.16.1")];
    let plan = restore_plan(&restore_spec(), V1_16).unwrap();
    let load = &plan[0];
    assert_eq!(load.path, "/snapshot/load");
    assert!(load.body.get("vsock_override").is_some());
    new.check("PUT", &load.path, Some(&load.body)).unwrap();
    let err = old.check("PUT", &load.path, Some(&load.body)).unwrap_err();
    assert!(err.contains("'vsock_override'"), "{err}");
    // And nothing else in that body is new.
    let mut without = load.body.clone();
    without.as_object_mut().unwrap().remove("vsock_override");
    old.check("PUT", &load.path, Some(&without)).unwrap();
    assert!(new
        .deprecated_fields("PUT", &load.path, &load.body)
        .is_empty());
}

/// The new bodies are checked for real: a field a spec does not list is
/// refused, in the overrides and in the drive patch alike.
#[test]
fn unknown_fields_in_the_restore_bodies_are_refused() {
    let plan = restore_plan(&restore_spec_same_vsock(), V1_14).unwrap();
    let (load, drive) = (&plan[0].body, &plan[1].body);
    let mut bad_override = load.clone();
    bad_override["network_overrides"][0]["guest_mac"] = json!("06:00:00:00:00:01");
    let mut bad_load = load.clone();
    bad_load["tap"] = json!("bgr-b2");
    let mut missing_tap = load.clone();
    missing_tap["network_overrides"][0]
        .as_object_mut()
        .unwrap()
        .remove("host_dev_name");
    let mut bad_drive = drive.clone();
    bad_drive["is_read_only"] = json!(false);
    for spec in specs() {
        for (path, body, mention) in [
            ("/snapshot/load", &bad_override, "'guest_mac'"),
            ("/snapshot/load", &bad_load, "'tap'"),
            ("/snapshot/load", &missing_tap, "\"host_dev_name\""),
            ("/drives/rootfs", &bad_drive, "'is_read_only'"),
        ] {
            let method = if path == "/snapshot/load" {
                "PUT"
            } else {
                "PATCH"
            };
            let err = spec.check(method, path, Some(body)).unwrap_err();
            assert!(err.contains(mention), "{}: {err}", spec.version);
        }
        let bad_vsock = json!({"snapshot_path": "/s",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"},
            "vsock_override": {"uds_path": "/v", "guest_cid": 3}});
        assert!(spec
            .check("PUT", "/snapshot/load", Some(&bad_vsock))
            .is_err());
    }
}

/// What the fake's ordering rules read from the spec.
#[test]
fn the_spec_says_which_operations_are_pre_and_post_boot() {
    use super::spec::BootPhase::*;
    for spec in specs() {
        for (method, path, want) in [
            ("PUT", "/drives/rootfs", Some(PreBoot)),
            ("PATCH", "/drives/rootfs", Some(PostBoot)),
            ("PUT", "/snapshot/load", Some(PreBoot)),
            ("PUT", "/snapshot/create", Some(PostBoot)),
            ("PUT", "/network-interfaces/eth0", Some(PreBoot)),
            ("PUT", "/vsock", Some(PreBoot)),
            ("PATCH", "/vm", None),
            ("PUT", "/logger", None),
            ("PUT", "/actions", None),
        ] {
            assert_eq!(spec.boot_phase(method, path), want, "{method} {path}");
        }
        let load = spec.description("PUT", "/snapshot/load").unwrap();
        assert!(
            load.contains(
                "Only accepted on a fresh Firecracker process (before configuring \
                           any resource other than the Logger and Metrics)"
            ),
            "{load}"
        );
        let create = spec.description("PUT", "/snapshot/create").unwrap();
        assert!(
            create.contains("should be in the `Paused` state"),
            "{create}"
        );
    }
}

#[test]
fn every_request_is_valid_in_both_specs() {
    let requests = every_request();
    assert!(requests.len() > 40, "only {} requests", requests.len());
    let mut failures = Vec::new();
    for spec in specs() {
        for (method, path, body) in &requests {
            if let Err(e) = spec.check(method, path, Some(body)) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_request_sets_a_deprecated_field() {
    let mut found = Vec::new();
    for spec in specs() {
        for (method, path, body) in every_request() {
            for field in spec.deprecated_fields(method, &path, &body) {
                found.push(format!("{} {method} {path}: {field}", spec.version));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The deprecation scan itself works: the spec's deprecated fields are seen.
#[test]
fn the_deprecation_scan_sees_deprecated_fields() {
    for spec in specs() {
        let vsock = json!({"guest_cid": 3, "uds_path": "/v", "vsock_id": "vsock0"});
        assert_eq!(
            spec.deprecated_fields("PUT", "/vsock", &vsock),
            ["vsock_id"]
        );
        let load = json!({
            "snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true
        });
        let mut got = spec.deprecated_fields("PUT", "/snapshot/load", &load);
        got.sort();
        assert_eq!(got, ["enable_diff_snapshots", "mem_file_path"]);
    }
}

/// The validator must catch what Firecracker would reject; otherwise the
/// test above proves nothing.
#[test]
fn the_validator_catches_bad_bodies() {
    // (method, path, body, what the error must mention)
    let bad = [
        // Unknown field, top level (Firecracker denies unknown fields).
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": true,
                   "is_read_only": false, "bogus": 1}),
            "'bogus'",
        ),
        // Unknown field inside a referenced definition.
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s",
                   "mem_backend": {"backend_type": "File", "backend_path": "/m", "extra": true}}),
            "'extra'",
        ),
        // Unknown field on a definition with optional fields only.
        (
            "PUT",
            "/logger",
            json!({"log_path": "/l", "colour": true}),
            "'colour'",
        ),
        // Wrong types.
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": "2", "mem_size_mib": 256}),
            "at '/vcpu_count'",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": "yes",
                   "is_read_only": false}),
            "at '/is_root_device'",
        ),
        // Missing required fields.
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2}),
            "\"mem_size_mib\"",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"path_on_host": "/d", "is_root_device": true, "is_read_only": false}),
            "\"drive_id\"",
        ),
        (
            "PUT",
            "/snapshot/create",
            json!({"snapshot_type": "Full", "mem_file_path": "/m"}),
            "\"snapshot_path\"",
        ),
        // Values outside an enum or a range.
        (
            "PUT",
            "/actions",
            json!({"action_type": "Reboot"}),
            "at '/action_type'",
        ),
        ("PATCH", "/vm", json!({"state": "Stopped"}), "at '/state'"),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 2, "uds_path": "/v"}),
            "at '/guest_cid'",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 33, "mem_size_mib": 256}),
            "at '/vcpu_count'",
        ),
    ];
    for spec in specs() {
        for (method, path, body, mention) in &bad {
            match spec.check(method, path, Some(body)) {
                Ok(()) => panic!("spec {} accepted {method} {path} {body}", spec.version),
                Err(e) => assert!(e.contains(mention), "{e}\nshould mention {mention}"),
            }
        }
    }
}

/// The two specs really differ, and the check sees it: a field added in
/// 1.16 is refused by the 1.14.1 spec. (banger sends neither.)
#[test]
fn fields_newer_than_1_14_are_refused_by_its_spec() {
    let [old, new] = [Spec::load("1.14.1"), Spec::load("1.16.1")];
    let mtu = json!({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400});
    let clock = json!({"snapshot_path": "/s",
                       "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                       "clock_realtime": true});
    for (path, body) in [("/network-interfaces/eth0", mtu), ("/snapshot/load", clock)] {
        assert!(old.check("PUT", path, Some(&body)).is_err(), "{path}");
        new.check("PUT", path, Some(&body)).unwrap();
    }
}

#[test]
fn unknown_operations_and_body_mismatches_are_caught() {
    for spec in specs() {
        for (method, path) in [
            ("PUT", "/nonexistent"),
            ("PATCH", "/boot-source"),
            ("PUT", "/drives"),
        ] {
            let err = spec.check(method, path, Some(&json!({}))).unwrap_err();
            assert!(err.contains("no such operation"), "{err}");
        }
        assert!(spec.check("GET", "/", None).is_ok());
        assert!(spec.check("GET", "/version", None).is_ok());
        assert!(spec.check("GET", "/", Some(&json!({}))).is_err());
        assert!(spec.check("PUT", "/vsock", None).is_err());
        assert_eq!(spec.template("/drives/work"), Some("/drives/{drive_id}"));
        assert_eq!(spec.template("/drives/"), None);
        assert_eq!(spec.template("/vm/config"), Some("/vm/config"));
    }
}

/// Our response models agree with the spec (and so does the fake server).
#[test]
fn response_models_match_the_spec() {
    for spec in specs() {
        let info = v(&InstanceInfo {
            id: "vm1".into(),
            state: InstanceInfo::NOT_STARTED.into(),
            vmm_version: spec.version.into(),
            app_name: "Firecracker".into(),
        });
        validate(&spec.response_schema("GET", "/", 200), &info).unwrap();
        let version = v(&FirecrackerVersion {
            firecracker_version: spec.version.into(),
        });
        validate(&spec.response_schema("GET", "/version", 200), &version).unwrap();
        let error = v(&Error {
            fault_message: "boom".into(),
        });
        validate(&spec.response_schema("PUT", "/actions", 400), &error).unwrap();
        for state in [
            InstanceInfo::NOT_STARTED,
            InstanceInfo::RUNNING,
            InstanceInfo::PAUSED,
        ] {
            let mut info = info.clone();
            info["state"] = state.into();
            validate(&spec.response_schema("GET", "/", 200), &info).unwrap();
        }
    }
}

/// The copies in `specs/` are the published files, unmodified: where the
/// project's shared copies sit next to the checkout, they must match.
#[test]
fn vendored_specs_match_the_published_ones() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/specs");
    if !shared.is_dir() {
        eprintln!(
            "SKIPPED: no shared specs at {} to compare with",
            shared.display()
        );
        return;
    }
    for version in super::spec::VERSIONS {
        let name = format!("firecracker-v{version}.yaml");
        let ours = std::fs::read(super::spec::specs_dir().join(&name)).unwrap();
        let theirs = std::fs::read(shared.join(&name)).unwrap();
        assert!(
            ours == theirs,
            "specs/{name} differs from {}",
            shared.display()
        );
    }
}
