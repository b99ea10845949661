//! Netlink and tun tests, each run in a fresh network namespace created for
//! one dedicated thread, so the host's interfaces are never touched. Skipped
//! (with a note) when not root.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_net::{
    create_tap, delete_tap, ensure_bridge, ipv4_addresses, link, link_exists, list_links,
    rename_tap, set_down, NetError,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a new thread that first moves itself into a new network
/// namespace and a private mount namespace (where a sysfs showing that
/// network namespace is mounted at the path handed to `f`).
fn in_fresh_netns<F, Fut>(name: &str, f: F)
where
    F: FnOnce(Option<PathBuf>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !is_root() {
        eprintln!("note: skipping {name}: needs root to create a network namespace");
        return;
    }
    let sysfs_dir = tempfile::tempdir().unwrap();
    let sysfs_path = sysfs_dir.path().to_path_buf();
    let res = std::thread::spawn(move || {
        // SAFETY: unshare only changes the namespaces of the calling thread
        // (namespaces are per task); CLONE_NEWNET|CLONE_NEWNS is allowed in a
        // multi-threaded process (only CLONE_NEWUSER is not).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let sysfs = mount_private_sysfs(&sysfs_path).then_some(sysfs_path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f(sysfs));
    })
    .join();
    drop(sysfs_dir);
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

/// /sys shows the network namespace of whoever mounted it, so a fresh sysfs
/// mounted from inside the namespace is the only way to read
/// /sys/class/net/<tap>/owner for it. Mount propagation is made private first
/// so nothing leaks to the host's mount table.
fn mount_private_sysfs(at: &Path) -> bool {
    use std::ffi::CString;
    let root = CString::new("/").unwrap();
    let none = CString::new("none").unwrap();
    let sysfs = CString::new("sysfs").unwrap();
    let target = CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // calls; a NULL fstype/data is allowed for a propagation change.
    let rc = unsafe {
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "note: cannot make mounts private ({}); skipping sysfs checks",
            std::io::Error::last_os_error()
        );
        return false;
    }
    // SAFETY: as above; sysfs takes no data.
    let rc = unsafe {
        libc::mount(
            sysfs.as_ptr(),
            target.as_ptr(),
            sysfs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "note: cannot mount sysfs ({}); skipping sysfs checks",
            std::io::Error::last_os_error()
        );
        return false;
    }
    true
}

const BR: &str = "br-fc-test";
const GW: Ipv4Addr = Ipv4Addr::new(172, 30, 9, 1);

#[test]
fn bridge_is_idempotent() {
    in_fresh_netns("bridge_is_idempotent", |_| async {
        assert!(!link_exists(BR).await.unwrap());
        ensure_bridge(BR, GW, 24).await.unwrap();
        ensure_bridge(BR, GW, 24).await.unwrap();

        let l = link(BR).await.unwrap().expect("bridge exists");
        assert_eq!(l.kind.as_deref(), Some("bridge"));
        assert!(l.up, "bridge is up");
        let addrs = ipv4_addresses(BR).await.unwrap();
        assert_eq!(addrs, vec![(GW, 24)], "exactly one address, added once");

        // The same address with another prefix is a conflict, not a second address.
        let e = ensure_bridge(BR, GW, 16).await.unwrap_err();
        assert!(matches!(e, NetError::AddressConflict { .. }), "{e}");

        // A bridge that was set down is brought back up.
        let idx = l.index;
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(idx).down().build())
            .execute()
            .await
            .unwrap();
        assert!(!link(BR).await.unwrap().unwrap().up);
        ensure_bridge(BR, GW, 24).await.unwrap();
        assert!(link(BR).await.unwrap().unwrap().up);

        // "lo" is not a bridge.
        let e = ensure_bridge("lo", GW, 24).await.unwrap_err();
        assert!(matches!(e, NetError::WrongKind { .. }), "{e}");
    });
}

#[test]
fn tap_lifecycle() {
    in_fresh_netns("tap_lifecycle", |sysfs| async move {
        let tap = "tap-bg-0123abcd";
        let (uid, gid) = (4242, 4343);

        // No bridge yet: refused, and nothing left behind.
        let e = create_tap(tap, BR, uid, gid).await.unwrap_err();
        assert!(matches!(e, NetError::NoSuchLink(_)), "{e}");
        assert!(!link_exists(tap).await.unwrap());

        ensure_bridge(BR, GW, 24).await.unwrap();
        let br = link(BR).await.unwrap().unwrap();

        create_tap(tap, BR, uid, gid).await.unwrap();
        create_tap(tap, BR, uid, gid).await.unwrap();
        let t = link(tap).await.unwrap().expect("tap exists");
        assert_eq!(t.kind.as_deref(), Some("tun"));
        assert_eq!(t.controller, Some(br.index), "enslaved to the bridge");
        assert!(t.up);
        let info = t.tun.expect("tun info");
        assert!(info.tap && info.persist, "{info:?}");
        assert_eq!(info.owner, Some(uid));
        assert_eq!(info.group, Some(gid));

        if let Some(sys) = &sysfs {
            let read = |f: &str| {
                std::fs::read_to_string(sys.join("class/net").join(tap).join(f))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            assert_eq!(read("owner"), uid.to_string());
            assert_eq!(read("group"), gid.to_string());
            let master =
                std::fs::read_link(sys.join("class/net").join(tap).join("master")).unwrap();
            assert_eq!(master.file_name().unwrap(), BR);
        }

        // Re-owning an existing tap works too.
        create_tap(tap, BR, 5000, 5001).await.unwrap();
        let info = link(tap).await.unwrap().unwrap().tun.unwrap();
        assert_eq!((info.owner, info.group), (Some(5000), Some(5001)));

        // delete_tap never deletes something that is not a tap.
        let e = delete_tap(BR).await.unwrap_err();
        assert!(matches!(e, NetError::WrongKind { .. }), "{e}");

        delete_tap(tap).await.unwrap();
        assert!(!link_exists(tap).await.unwrap());
        delete_tap(tap).await.unwrap();
        assert!(link_exists(BR).await.unwrap());

        // A name that is not a tap cannot be "created" over.
        let e = create_tap(BR, BR, uid, gid).await.unwrap_err();
        assert!(matches!(e, NetError::WrongKind { .. }), "{e}");
    });
}

#[test]
fn a_warm_tap_is_renamed_into_a_vm_tap_and_back() {
    in_fresh_netns("tap_rename", |_| async move {
        let (pool, vm) = ("tap-bg-p0000001", "tap-bg-0123abcd");
        ensure_bridge(BR, GW, 24).await.unwrap();
        let br = link(BR).await.unwrap().unwrap();
        create_tap(pool, BR, 4242, 4343).await.unwrap();
        assert_eq!(
            list_links("tap-bg-p")
                .await
                .unwrap()
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>(),
            [pool]
        );

        rename_tap(pool, vm, BR, true).await.unwrap();
        assert!(!link_exists(pool).await.unwrap());
        let t = link(vm).await.unwrap().expect("renamed");
        assert!(t.up, "up again after the rename");
        assert_eq!(t.controller, Some(br.index), "still on the bridge");
        assert_eq!(t.tun.unwrap().owner, Some(4242), "owner kept");

        // Never renamed over an existing link, never a non-tap.
        create_tap(pool, BR, 4242, 4343).await.unwrap();
        let e = rename_tap(pool, vm, BR, true).await.unwrap_err();
        assert!(matches!(e, NetError::Exists(_)), "{e}");
        // The bridge must be a bridge, as for create_tap.
        let e = rename_tap(pool, "tap-bg-p0000003", "lo", true)
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::WrongKind { .. }), "{e}");
        assert!(link_exists(pool).await.unwrap(), "nothing renamed");
        let e = rename_tap(BR, "tap-bg-p0000002", BR, true)
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::WrongKind { .. }), "{e}");
        let e = rename_tap("tap-bg-p0000009", "tap-bg-p0000008", BR, true)
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::NoSuchLink(_)), "{e}");

        // And back to the pool, parked down; a parked tap is claimed (renamed
        // and brought up) in one request.
        delete_tap(pool).await.unwrap();
        rename_tap(vm, pool, BR, false).await.unwrap();
        assert!(!link(pool).await.unwrap().unwrap().up);
        assert!(!link_exists(vm).await.unwrap());
        rename_tap(pool, vm, BR, true).await.unwrap();
        let t = link(vm).await.unwrap().unwrap();
        assert!(t.up);
        assert_eq!(t.controller, Some(br.index));
        set_down(vm).await.unwrap();
        assert!(!link(vm).await.unwrap().unwrap().up);
    });
}

#[test]
fn invalid_names_are_refused_before_any_syscall() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for bad in ["", "this-name-is-too-long", "a/b", "a b"] {
            let e = create_tap(bad, BR, 1, 1).await.unwrap_err();
            assert!(matches!(e, NetError::InvalidName { .. }), "{bad:?}: {e}");
            let e = delete_tap(bad).await.unwrap_err();
            assert!(matches!(e, NetError::InvalidName { .. }), "{bad:?}: {e}");
            let e = ensure_bridge(bad, GW, 24).await.unwrap_err();
            assert!(matches!(e, NetError::InvalidName { .. }), "{bad:?}: {e}");
        }
        let e = ensure_bridge(BR, GW, 33).await.unwrap_err();
        assert!(matches!(e, NetError::InvalidPrefix(33)), "{e}");
    });
}
