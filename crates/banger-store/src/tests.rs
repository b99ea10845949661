use super::*;

fn vm(id: &str, name: &str, ip: &str) -> VmRecord {
    VmRecord {
        id: id.into(),
        name: name.into(),
        state: "stopped".into(),
        error: None,
        image: "debian-bookworm".into(),
        vcpus: 2,
        memory_mib: 1024,
        work_disk_mib: 8192,
        ip: ip.into(),
        mac: "52:54:00:00:00:02".into(),
        vmm: "qemu".into(),
        vmm_reason: None,
        root_cow: "qcow2".into(),
        created_at: 1,
        started_at: None,
        nat: false,
        workspace_json: None,
    }
}

#[test]
fn fresh_file_migrates_and_reports_each_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    assert_eq!(
        inspect_schema(&path).unwrap(),
        SchemaState::MigrationsNeeded {
            pending: vec![1, 2, 3]
        }
    );
    drop(Store::open(&path).unwrap());
    assert_eq!(inspect_schema(&path).unwrap(), SchemaState::Compatible);

    // A newer binary's migration makes this one refuse the database.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (id, name, applied_at) VALUES (99, 'future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    assert_eq!(
        inspect_schema(&path).unwrap(),
        SchemaState::Incompatible { unknown: vec![99] }
    );
    let err = Store::open(&path).err().expect("must refuse").to_string();
    assert!(err.contains("newer banger") && err.contains("99"), "{err}");
}

#[test]
fn wal_mode_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let mode: String = store
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn vm_crud_and_uniqueness() {
    let s = Store::open_in_memory().unwrap();
    s.insert_vm(&vm("a1", "box", "172.30.0.2")).unwrap();
    let dup = s.insert_vm(&vm("a2", "box", "172.30.0.3")).unwrap_err();
    assert!(
        dup.to_string().contains("vm \"box\" already exists"),
        "{dup}"
    );
    let dup_ip = s.insert_vm(&vm("a3", "other", "172.30.0.2")).unwrap_err();
    assert!(dup_ip.to_string().contains("ip"), "{dup_ip}");

    let mut got = s.vm_by_name("box").unwrap().unwrap();
    got.state = "running".into();
    got.started_at = Some(5);
    got.vmm = "firecracker".into();
    got.vmm_reason = Some("auto: firecracker v1.14.1 with KVM".into());
    got.root_cow = "sparse-copy".into();
    s.update_vm(&got).unwrap();
    assert_eq!(s.vm_by_name("box").unwrap().unwrap(), got);
    assert_eq!(s.used_ips().unwrap(), ["172.30.0.2"]);
    assert_eq!(s.list_vms().unwrap().len(), 1);
    assert!(s.delete_vm("a1").unwrap());
    assert!(!s.delete_vm("a1").unwrap());
    assert!(s.vm_by_name("box").unwrap().is_none());
}

#[test]
fn set_vm_spec_changes_the_shape_of_a_stopped_vm_only() {
    let s = Store::open_in_memory().unwrap();
    let mut rec = vm("a1", "box", "172.30.0.2");
    rec.workspace_json = Some("{}".into());
    s.insert_vm(&rec).unwrap();
    assert!(s.set_vm_spec("a1", 4, 2048, 16384).unwrap());
    let got = s.vm_by_name("box").unwrap().unwrap();
    assert_eq!(
        (got.vcpus, got.memory_mib, got.work_disk_mib),
        (4, 2048, 16384)
    );
    // Everything else is as it was.
    assert_eq!(
        VmRecord {
            vcpus: rec.vcpus,
            memory_mib: rec.memory_mib,
            work_disk_mib: rec.work_disk_mib,
            ..got
        },
        rec
    );
    // A running or creating row, or no row at all, is left alone.
    for state in ["running", "creating"] {
        let mut r = s.vm_by_name("box").unwrap().unwrap();
        r.state = state.into();
        s.update_vm(&r).unwrap();
        assert!(!s.set_vm_spec("a1", 1, 512, 32768).unwrap(), "{state}");
        assert_eq!(s.vm_by_name("box").unwrap().unwrap().vcpus, 4);
    }
    assert!(!s.set_vm_spec("nope", 1, 512, 8192).unwrap());
}

#[test]
fn images_upsert_and_usage() {
    let s = Store::open_in_memory().unwrap();
    let mut img = ImageRecord {
        name: "debian-bookworm".into(),
        dir: "/s/images/debian-bookworm".into(),
        source: "debian:bookworm".into(),
        build_hash: "h1".into(),
        kernel: "vmlinuz".into(),
        initrd: Some("initrd.img".into()),
        rootfs_bytes: 10,
        created_at: 1,
    };
    s.upsert_image(&img).unwrap();
    img.build_hash = "h2".into();
    s.upsert_image(&img).unwrap();
    assert_eq!(
        s.image("debian-bookworm").unwrap().unwrap().build_hash,
        "h2"
    );
    assert_eq!(s.list_images().unwrap().len(), 1);
    s.insert_vm(&vm("a1", "box", "172.30.0.2")).unwrap();
    assert_eq!(s.vms_using_image("debian-bookworm").unwrap(), ["box"]);
    assert!(s.delete_image("debian-bookworm").unwrap());
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    Store::open(&path)
        .unwrap()
        .insert_vm(&vm("a1", "box", "172.30.0.2"))
        .unwrap();
    let again = Store::open(&path).unwrap();
    assert_eq!(again.vm_by_name("box").unwrap().unwrap().id, "a1");
}

#[test]
fn migration_2_keeps_rows_from_before_the_firecracker_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    // A database as the walking skeleton left it: migration 1 only, one VM.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                         applied_at INTEGER NOT NULL);",
    )
    .unwrap();
    conn.execute_batch(migrations::MIGRATIONS[0].2).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (id, name, applied_at) VALUES (1, 'vms and images', 0)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO vms (id, name, state, image, vcpus, memory_mib, work_disk_mib, ip, mac,
                          vmm, created_at)
         VALUES ('0123456789ab', 'old', 'stopped', 'debian-bookworm', 2, 1024, 8192,
                 '172.30.0.2', '52:54:00:00:00:02', 'qemu', 1)",
        [],
    )
    .unwrap();
    drop(conn);
    assert_eq!(
        inspect_schema(&path).unwrap(),
        SchemaState::MigrationsNeeded {
            pending: vec![2, 3]
        }
    );
    let store = Store::open(&path).unwrap();
    let old = store.vm_by_name("old").unwrap().expect("row kept");
    assert_eq!(old.root_cow, "qcow2");
    assert_eq!(old.vmm_reason, None);
    assert_eq!(inspect_schema(&path).unwrap(), SchemaState::Compatible);
}

#[test]
fn workspace_survives_reopen_and_lifecycle_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    let mut rec = vm("a1", "box", "172.30.0.2");
    rec.nat = true;
    store.insert_vm(&rec).unwrap();
    let ws = r#"{"guest_path":"/root/repo"}"#;
    assert!(store.set_vm_workspace("a1", Some(ws)).unwrap());
    assert!(!store.set_vm_workspace("nope", Some(ws)).unwrap());
    // A lifecycle update from a copy read before prepare keeps the workspace.
    rec.state = "running".into();
    store.update_vm(&rec).unwrap();
    drop(store);
    let again = Store::open(&path).unwrap();
    let got = again.vm_by_name("box").unwrap().unwrap();
    assert_eq!(got.workspace_json.as_deref(), Some(ws));
    assert!(got.nat);
    assert_eq!(got.state, "running");
    again.set_vm_workspace("a1", None).unwrap();
    assert_eq!(
        again.vm_by_name("box").unwrap().unwrap().workspace_json,
        None
    );
}

/// Addresses are allocated from the rows, so a restarted daemon sees every
/// address a VM holds, stopped VMs included, and the schema refuses a
/// second row with the same address whatever the allocator does.
#[test]
fn used_addresses_survive_a_restart_and_are_never_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.insert_vm(&vm("a1", "stopped-one", "172.30.0.2")).unwrap();
        let mut running = vm("a2", "running-one", "172.30.0.3");
        running.state = "running".into();
        s.insert_vm(&running).unwrap();
    }
    let s = Store::open(&path).unwrap();
    let mut used = s.used_ips().unwrap();
    used.sort();
    assert_eq!(used, ["172.30.0.2", "172.30.0.3"]);
    let e = s
        .insert_vm(&vm("a3", "late", "172.30.0.2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ip"), "{e}");
    // Deleting a VM frees its address.
    assert!(s.delete_vm("a1").unwrap());
    assert_eq!(s.used_ips().unwrap(), ["172.30.0.3"]);
    s.insert_vm(&vm("a3", "late", "172.30.0.2")).unwrap();
}
