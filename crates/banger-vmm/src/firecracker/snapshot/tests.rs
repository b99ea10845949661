use std::os::unix::ffi::OsStrExt;

use serde_json::{json, Value};

use super::*;
use crate::firecracker::fake_api::{FakeFirecracker, VmPhase};
use crate::firecracker::launch::tests::full_config;
use crate::firecracker::launch::{launch_plan, ApiMethod, IFACE_ID, ROOT_DRIVE_ID, WORK_DRIVE_ID};
use crate::firecracker::models::InstanceInfo;
use crate::firecracker::spec::Spec;
use crate::firecracker::spec_tests::specs;

pub(crate) const V1_14: SemVer = SemVer::new(1, 14, 1);
pub(crate) const V1_16: SemVer = SemVer::new(1, 16, 1);

/// The spec file's version as a [`SemVer`].
fn semver(spec: &Spec) -> SemVer {
    let n: Vec<u32> = spec
        .version
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    SemVer::new(n[0], n[1], n[2])
}

const STATE: &str = "/var/lib/banger/templates/t1/vm.state";
const MEM: &str = "/var/lib/banger/templates/t1/vm.mem";

/// A clone with both drives and its own vsock socket (direct mode).
pub(crate) fn restore_spec() -> RestoreSpec {
    RestoreSpec {
        state: PathBuf::from(STATE),
        mem: PathBuf::from(MEM),
        iface_id: IFACE_ID.into(),
        host_dev_name: "bgr-b2".into(),
        vsock_uds: Some(PathBuf::from("/run/banger/vms/b2/vsock.sock")),
        drives: vec![
            (
                ROOT_DRIVE_ID.into(),
                PathBuf::from("/var/lib/banger/vms/b2/root.ext4"),
            ),
            (
                WORK_DRIVE_ID.into(),
                PathBuf::from("/var/lib/banger/vms/b2/work.ext4"),
            ),
        ],
    }
}

/// The same clone where the socket path is the template's (jailer).
pub(crate) fn restore_spec_same_vsock() -> RestoreSpec {
    RestoreSpec {
        vsock_uds: None,
        ..restore_spec()
    }
}

fn as_triples(plan: &[ApiCall]) -> Vec<(&'static str, String, Value)> {
    plan.iter()
        .map(|c| (c.method.as_str(), c.path.clone(), c.body.clone()))
        .collect()
}

fn save_want() -> Vec<(&'static str, String, Value)> {
    vec![
        ("PATCH", "/vm".into(), json!({"state": "Paused"})),
        (
            "PUT",
            "/snapshot/create".into(),
            json!({"snapshot_type": "Full", "snapshot_path": STATE, "mem_file_path": MEM}),
        ),
    ]
}

/// The restore requests, with or without the vsock override.
fn restore_want(vsock_override: bool) -> Vec<(&'static str, String, Value)> {
    let mut load = json!({
        "snapshot_path": STATE,
        "mem_backend": {"backend_type": "File", "backend_path": MEM},
        "resume_vm": false,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "bgr-b2"}],
    });
    if vsock_override {
        load["vsock_override"] = json!({"uds_path": "/run/banger/vms/b2/vsock.sock"});
    }
    vec![
        ("PUT", "/snapshot/load".into(), load),
        (
            "PATCH",
            "/drives/rootfs".into(),
            json!({"drive_id": "rootfs", "path_on_host": "/var/lib/banger/vms/b2/root.ext4"}),
        ),
        (
            "PATCH",
            "/drives/work".into(),
            json!({"drive_id": "work", "path_on_host": "/var/lib/banger/vms/b2/work.ext4"}),
        ),
        ("PATCH", "/vm".into(), json!({"state": "Resumed"})),
    ]
}

#[test]
fn the_save_plan_is_pinned() {
    let plan = save_plan(Path::new(STATE), Path::new(MEM)).unwrap();
    assert_eq!(as_triples(&plan), save_want());
    assert_eq!(plan[0].method, ApiMethod::Patch);
}

#[test]
fn the_restore_plan_is_pinned_by_version() {
    // 1.16: the clone's own socket through vsock_override.
    let plan = restore_plan(&restore_spec(), V1_16).unwrap();
    assert_eq!(as_triples(&plan), restore_want(true));
    // Either version: no override asked for, none sent.
    for version in [V1_14, V1_16] {
        let plan = restore_plan(&restore_spec_same_vsock(), version).unwrap();
        assert_eq!(as_triples(&plan), restore_want(false), "{version}");
    }
    // No drives: load and resume only.
    let bare = RestoreSpec {
        drives: Vec::new(),
        ..restore_spec_same_vsock()
    };
    let paths: Vec<String> = restore_plan(&bare, V1_14)
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(paths, ["/snapshot/load", "/vm"]);
}

#[test]
fn a_vsock_override_is_refused_where_the_api_has_none() {
    for version in [V1_14, SemVer::new(1, 15, 9)] {
        let err = restore_plan(&restore_spec(), version).unwrap_err();
        assert!(
            matches!(err, PlanError::RestoreUnsupported { version: v, .. } if v == version),
            "{err}"
        );
        assert!(err.to_string().contains("vsock_override"), "{err}");
    }
}

#[test]
fn a_restore_without_network_overrides_is_refused() {
    let err = restore_plan(&restore_spec_same_vsock(), SemVer::new(1, 13, 0)).unwrap_err();
    assert!(matches!(err, PlanError::RestoreUnsupported { .. }), "{err}");
    assert!(err.to_string().contains("network_overrides"), "{err}");
}

#[test]
fn refuses_specs_that_cannot_be_sent() {
    let bad = |f: fn(&mut RestoreSpec)| {
        let mut spec = restore_spec();
        f(&mut spec);
        restore_plan(&spec, V1_16).unwrap_err()
    };
    assert!(matches!(bad(|s| s.host_dev_name.clear()), PlanError::NoTap));
    assert!(matches!(
        bad(|s| s.iface_id.clear()),
        PlanError::BadId {
            what: "interface",
            ..
        }
    ));
    assert!(matches!(
        bad(|s| s.drives[1].0 = "a/b".into()),
        PlanError::BadId { what: "drive", .. }
    ));
    assert!(matches!(
        bad(|s| s.drives[1].0 = ROOT_DRIVE_ID.into()),
        PlanError::DuplicateDrive(id) if id == ROOT_DRIVE_ID
    ));
    let non_utf8 = || PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/x\xff"));
    let mut spec = restore_spec();
    spec.drives[0].1 = non_utf8();
    assert!(matches!(
        restore_plan(&spec, V1_16).unwrap_err(),
        PlanError::NotUtf8 { what: "drive", .. }
    ));
    let err = save_plan(&non_utf8(), Path::new(MEM)).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::NotUtf8 {
                what: "snapshot state",
                ..
            }
        ),
        "{err}"
    );
}

/// Boot a template through the launch plan, then save it: every request
/// valid and in an order the spec allows, for both spec versions.
#[tokio::test]
async fn save_applies_cleanly_to_a_booted_template() {
    for spec in specs() {
        let version = spec.version;
        let fake = FakeFirecracker::start(spec);
        let client = FcClient::new(&fake.socket);
        apply(&client, &launch_plan(&full_config()).unwrap())
            .await
            .unwrap();
        let booted = fake.recorded().len();
        save(&client, Path::new(STATE), Path::new(MEM))
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");
        let got: Vec<(String, String, Value)> = fake.recorded()[booted..]
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.body.clone().unwrap()))
            .collect();
        let want: Vec<(String, String, Value)> = save_want()
            .into_iter()
            .map(|(m, p, b)| (m.to_string(), p, b))
            .collect();
        assert_eq!(got, want, "{version}");
        assert_eq!(fake.phase(), VmPhase::Paused, "{version}");
        let info = client.describe_instance().await.unwrap();
        assert_eq!(info.state, InstanceInfo::PAUSED);
    }
}

/// A fresh Firecracker restored from the snapshot: exactly the load, the
/// two drive patches and the resume, each valid and allowed in its order,
/// with the vsock override on 1.16 and without it on 1.14.
#[tokio::test]
async fn restore_applies_cleanly_to_a_fresh_process() {
    for spec in specs() {
        let version = spec.version;
        let fc = semver(&spec);
        let with_vsock = fc >= V1_16;
        let rs = if with_vsock {
            restore_spec()
        } else {
            restore_spec_same_vsock()
        };
        let fake = FakeFirecracker::start(spec);
        let client = FcClient::new(&fake.socket);
        assert_eq!(
            client.describe_instance().await.unwrap().state,
            InstanceInfo::NOT_STARTED
        );
        restore(&client, &rs, fc)
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");
        let got: Vec<(String, String, Value)> = fake
            .recorded()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| (r.method, r.path, r.body.unwrap()))
            .collect();
        let want: Vec<(String, String, Value)> = restore_want(with_vsock)
            .into_iter()
            .map(|(m, p, b)| (m.to_string(), p, b))
            .collect();
        assert_eq!(got, want, "{version}");
        assert_eq!(fake.phase(), VmPhase::Running, "{version}");
        assert_eq!(
            client.describe_instance().await.unwrap().state,
            InstanceInfo::RUNNING
        );
    }
}

/// The 1.14.1 spec has no `vsock_override`: had the plan not refused it,
/// the fake would have (so the refusal is not just caution).
#[tokio::test]
async fn the_1_14_spec_refuses_a_vsock_override() {
    let fake = FakeFirecracker::start(Spec::load("1.14.1"));
    let client = FcClient::new(&fake.socket);
    // The 1.16 plan, sent to a 1.14.1 API.
    let plan = restore_plan(&restore_spec(), V1_16).unwrap();
    let err = apply(&client, &plan).await.unwrap_err();
    assert_eq!((err.step, err.path.as_str()), (1, "/snapshot/load"));
    let problems = fake.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("vsock_override"), "{}", problems[0]);
}

/// The fake enforces the order, not just the bodies: each of these is
/// refused, by both specs, for the reason the spec gives.
#[tokio::test]
async fn the_fake_refuses_snapshot_calls_out_of_order() {
    for spec in specs() {
        let version = spec.version;
        let fc = semver(&spec);
        let restoring = restore_plan(&restore_spec_same_vsock(), fc).unwrap();
        let saving = save_plan(Path::new(STATE), Path::new(MEM)).unwrap();

        // Loading after configuring anything but the logger and metrics.
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        let launch = launch_plan(&full_config()).unwrap();
        // Logger, metrics, serial: the serial console already counts.
        apply(&client, &launch[..3]).await.unwrap();
        let err = apply(&client, &restoring).await.unwrap_err();
        assert_eq!(err.path, "/snapshot/load", "{version}");
        assert!(
            err.source.fault_message().unwrap().contains("fresh"),
            "{err}"
        );
        // Logger and metrics alone leave the process fresh.
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        apply(&client, &launch[..2]).await.unwrap();
        apply(&client, &restoring).await.unwrap();
        assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");

        // Pausing (and so saving) a microVM that was never started.
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        let err = apply(&client, &saving).await.unwrap_err();
        assert_eq!((err.step, err.path.as_str()), (1, "/vm"), "{version}");

        // A snapshot of a running (not paused) microVM.
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        apply(&client, &launch).await.unwrap();
        let err = apply(&client, &saving[1..]).await.unwrap_err();
        assert!(
            err.source.fault_message().unwrap().contains("Paused"),
            "{err}"
        );

        // A drive patched before boot ("Post-boot only"), and a drive put
        // after a load ("Pre-boot only").
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        let err = apply(&client, &restoring[1..2]).await.unwrap_err();
        assert!(
            err.source
                .fault_message()
                .unwrap()
                .contains("post-boot only"),
            "{err}"
        );
        let fake = FakeFirecracker::start(Spec::load(version));
        let client = FcClient::new(&fake.socket);
        apply(&client, &restoring[..1]).await.unwrap();
        let put_drive = launch
            .iter()
            .find(|c| c.path == "/drives/rootfs")
            .unwrap()
            .clone();
        let err = apply(&client, &[put_drive]).await.unwrap_err();
        assert!(
            err.source
                .fault_message()
                .unwrap()
                .contains("pre-boot only"),
            "{err}"
        );
        // A second load into the same process.
        let err = apply(&client, &restoring[..1]).await.unwrap_err();
        assert_eq!(err.path, "/snapshot/load", "{version}");
    }
}

#[test]
fn the_new_models_round_trip() {
    let o = NetworkOverride {
        iface_id: "eth0".into(),
        host_dev_name: "bgr-b2".into(),
    };
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v, json!({"iface_id": "eth0", "host_dev_name": "bgr-b2"}));
    assert_eq!(serde_json::from_value::<NetworkOverride>(v).unwrap(), o);

    let load = SnapshotLoadParams {
        snapshot_path: PathBuf::from("/s"),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: PathBuf::from("/m"),
        },
        resume_vm: Some(false),
        track_dirty_pages: None,
        network_overrides: Some(vec![o]),
        vsock_override: Some(VsockOverride {
            uds_path: PathBuf::from("/v.sock"),
        }),
    };
    let v = serde_json::to_value(&load).unwrap();
    assert_eq!(
        v,
        json!({
            "snapshot_path": "/s",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"},
            "resume_vm": false,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "bgr-b2"}],
            "vsock_override": {"uds_path": "/v.sock"},
        })
    );
    assert_eq!(
        serde_json::from_value::<SnapshotLoadParams>(v).unwrap(),
        load
    );

    // Unset, the new fields are left out, and a body without them decodes.
    let bare = SnapshotLoadParams {
        network_overrides: None,
        vsock_override: None,
        ..load
    };
    let v = serde_json::to_value(&bare).unwrap();
    assert!(v.get("network_overrides").is_none() && v.get("vsock_override").is_none());
    assert_eq!(
        serde_json::from_value::<SnapshotLoadParams>(v).unwrap(),
        bare
    );

    let d = PartialDrive {
        drive_id: "work".into(),
        path_on_host: Some(PathBuf::from("/w")),
    };
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v, json!({"drive_id": "work", "path_on_host": "/w"}));
    assert_eq!(serde_json::from_value::<PartialDrive>(v).unwrap(), d);

    let rs = restore_spec();
    let back: RestoreSpec = serde_json::from_value(serde_json::to_value(&rs).unwrap()).unwrap();
    assert_eq!(back, rs);
}
