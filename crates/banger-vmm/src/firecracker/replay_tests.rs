//! The client and the launch plan replayed over a real Unix socket against
//! [`FakeFirecracker`], which checks every request against the official spec
//! of 1.14.1 and of 1.16.1 in turn.

use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{wait_for_socket, FcClient, FcError};
use super::fake_api::{FakeFirecracker, VmPhase};
use super::launch::tests::{full_config, minimal_config};
use super::launch::{apply, launch_plan};
use super::models::*;
use super::spec::{Spec, VERSIONS};
use super::spec_tests::{p, specs};

fn expected_order(with_log_and_metrics: bool) -> Vec<(String, String)> {
    let mut order = Vec::new();
    if with_log_and_metrics {
        order.push("/logger");
        order.push("/metrics");
        order.push("/serial");
    }
    order.extend([
        "/machine-config",
        "/boot-source",
        "/drives/rootfs",
        "/drives/work",
        "/network-interfaces/eth0",
        "/vsock",
        "/entropy",
        "/actions",
    ]);
    order
        .into_iter()
        .map(|p| ("PUT".to_string(), p.to_string()))
        .collect()
}

/// Each plan on its own fresh process: the fake holds requests to the
/// spec's order, and a booted microVM takes no pre-boot configuration.
#[tokio::test]
async fn the_launch_plan_applies_cleanly_against_both_specs() {
    for version in VERSIONS {
        for (cfg, full, calls) in [(full_config(), true, 11), (minimal_config(), false, 8)] {
            let fake = FakeFirecracker::start(Spec::load(version));
            let client = FcClient::new(&fake.socket);
            apply(&client, &launch_plan(&cfg).unwrap())
                .await
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(fake.calls(), expected_order(full), "{version}");
            assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");
            let bodies = fake.recorded().iter().filter(|r| r.body.is_some()).count();
            assert_eq!(bodies, calls, "{version}: every body was recorded");
            let info = client.describe_instance().await.unwrap();
            assert_eq!(info.state, InstanceInfo::RUNNING);
            assert_eq!(client.version().await.unwrap().firecracker_version, version);
        }
    }
}

#[tokio::test]
async fn every_client_method_sends_a_valid_request() {
    for spec in specs() {
        let version = spec.version;
        let fake = FakeFirecracker::start(spec);
        let c = FcClient::new(&fake.socket);
        let info = c.describe_instance().await.unwrap();
        assert_eq!(info.state, InstanceInfo::NOT_STARTED);
        assert_eq!(info.vmm_version, version);
        c.version().await.unwrap();
        c.put_logger(&Logger {
            log_path: p("/l"),
            level: Some(LogLevel::Debug),
            show_level: Some(true),
            show_log_origin: Some(true),
        })
        .await
        .unwrap();
        c.put_metrics(&Metrics {
            metrics_path: p("/m"),
        })
        .await
        .unwrap();
        c.put_serial(&SerialDevice {
            serial_out_path: p("/console.log"),
        })
        .await
        .unwrap();
        c.put_machine_config(&MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 512,
            smt: Some(false),
            track_dirty_pages: Some(true),
        })
        .await
        .unwrap();
        c.put_boot_source(&BootSource {
            kernel_image_path: p("/k"),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some(p("/i")),
        })
        .await
        .unwrap();
        c.put_drive(&Drive {
            drive_id: "work".into(),
            path_on_host: p("/w"),
            is_root_device: false,
            is_read_only: false,
            cache_type: Some(CacheType::Writeback),
            io_engine: Some(IoEngine::Async),
        })
        .await
        .unwrap();
        c.put_network_interface(&NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:00:00:00:01".into()),
        })
        .await
        .unwrap();
        c.put_vsock(&Vsock {
            guest_cid: 7,
            uds_path: p("/v.sock"),
        })
        .await
        .unwrap();
        c.put_entropy(&EntropyDevice {}).await.unwrap();
        c.instance_start().await.unwrap();
        c.action(InstanceActionInfo::new(ActionType::FlushMetrics))
            .await
            .unwrap();
        c.patch_vm(VmState::Paused).await.unwrap();
        c.create_snapshot(&SnapshotCreateParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: p("/s"),
            mem_file_path: p("/m"),
        })
        .await
        .unwrap();
        c.patch_vm(VmState::Resumed).await.unwrap();
        c.patch_drive(&PartialDrive {
            drive_id: "work".into(),
            path_on_host: Some(p("/w2")),
        })
        .await
        .unwrap();
        c.send_ctrl_alt_del().await.unwrap();

        let want: Vec<(String, String)> = [
            ("GET", "/"),
            ("GET", "/version"),
            ("PUT", "/logger"),
            ("PUT", "/metrics"),
            ("PUT", "/serial"),
            ("PUT", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/drives/work"),
            ("PUT", "/network-interfaces/eth0"),
            ("PUT", "/vsock"),
            ("PUT", "/entropy"),
            ("PUT", "/actions"),
            ("PUT", "/actions"),
            ("PATCH", "/vm"),
            ("PUT", "/snapshot/create"),
            ("PATCH", "/vm"),
            ("PATCH", "/drives/work"),
            ("PUT", "/actions"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        let got: Vec<(String, String)> = fake
            .recorded()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect();
        assert_eq!(got, want, "{version}");
        assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");

        // A snapshot loads only into a fresh process (a logger allowed).
        let fake = FakeFirecracker::start(Spec::load(version));
        let c = FcClient::new(&fake.socket);
        c.put_logger(&Logger {
            log_path: p("/l"),
            level: None,
            show_level: None,
            show_log_origin: None,
        })
        .await
        .unwrap();
        c.load_snapshot(&SnapshotLoadParams {
            snapshot_path: p("/s"),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path: p("/uffd.sock"),
            },
            resume_vm: Some(true),
            track_dirty_pages: Some(false),
            network_overrides: Some(vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap1".into(),
            }]),
            vsock_override: None,
        })
        .await
        .unwrap();
        assert_eq!(fake.problems(), Vec::<String>::new(), "{version}");
        let info = c.describe_instance().await.unwrap();
        assert_eq!(info.state, InstanceInfo::RUNNING, "resume_vm: true");
        assert_eq!(fake.phase(), VmPhase::Running);
    }
}

#[tokio::test]
async fn a_refused_call_stops_the_plan_and_reports_firecrackers_reason() {
    for spec in specs() {
        let version = spec.version;
        let fake = FakeFirecracker::start(spec);
        let fault = "Open tap device failed: Error while creating ifreq structure: \
                     Invalid argument (os error 22). Invalid TUN/TAP Backend provided by bgr-a1.";
        fake.refuse("PUT", "/network-interfaces/eth0", fault);
        let err = apply(
            &FcClient::new(&fake.socket),
            &launch_plan(&full_config()).unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!((err.step, err.total), (8, 11), "{version}");
        assert_eq!(err.path, "/network-interfaces/eth0");
        assert!(
            matches!(&err.source, FcError::Api { status, .. } if status.as_u16() == 400),
            "{err}"
        );
        assert_eq!(err.source.fault_message(), Some(fault));
        let msg = err.to_string();
        assert!(
            msg.contains("step 8 of 11 (PUT /network-interfaces/eth0)"),
            "{msg}"
        );
        assert!(msg.contains("Invalid TUN/TAP Backend"), "{msg}");
        // Nothing after the failed call was sent.
        assert_eq!(fake.calls(), expected_order(true)[..8], "{version}");
    }
}

#[tokio::test]
async fn an_invalid_body_is_refused_like_firecracker_would() {
    let fake = FakeFirecracker::start(Spec::load(VERSIONS[0]));
    let client = FcClient::new(&fake.socket);
    let body =
        serde_json::to_vec(&json!({"vcpu_count": 2, "mem_size_mib": 128, "smt": "no"})).unwrap();
    let err = client
        .request(
            hyper::Method::PUT,
            "/machine-config",
            Some(body),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(err.fault_message().unwrap().contains("smt"), "{err}");
    assert_eq!(fake.problems().len(), 1);
}

#[tokio::test]
async fn waits_for_a_socket_that_appears_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let s = socket.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        FakeFirecracker::start_at(Spec::load(VERSIONS[0]), s, dir)
    });
    let info = wait_for_socket(&socket, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(info.state, InstanceInfo::NOT_STARTED);
    let fake = server.await.unwrap();
    assert!(!fake.recorded().is_empty());

    let missing = fake.socket.with_file_name("missing.sock");
    let started = Instant::now();
    let err = wait_for_socket(&missing, Instant::now() + Duration::from_millis(150))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, FcError::NotReady { last, .. }
        if matches!(**last, FcError::Connect { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("missing.sock"), "{err}");
}
