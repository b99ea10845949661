//! Pure tests of the documents and the read-back, then tests against the
//! real `nft`, each in a fresh network namespace of its own.
//!
//! Isolation: [`in_fresh_netns`] runs the test body on a new thread that
//! first calls `unshare(CLONE_NEWNET)`. Namespaces are per thread, so the
//! body, every `nft` it spawns (a child inherits the namespaces of the thread
//! that forks it) and `/proc/sys/net/...` as that thread sees it belong to
//! the new namespace. Nothing has to be deleted afterwards: the namespace is
//! anonymous and the kernel frees it when that thread ends, whether the test
//! passed or panicked. The host's `ip_forward` is checked to be unchanged
//! after every such test. Skipped (with a note) when not root or without
//! `nft`.

use super::*;

const A: &str = "0123456789ab";
const B: &str = "abcdefabcdef";
const BR: &str = "br-fc";
const IP_A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);

// ---- pure ---------------------------------------------------------------

/// What `nft -j list table ip banger` printed (nft 1.0.6) after the rules
/// of vm A were added from the nft syntax in the module docs.
const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "banger", "handle": 1}}, {"chain": {"family": "ip", "table": "banger", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "banger", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"chain": {"family": "ip", "table": "banger", "name": "ip_forward_enabled_by_banger", "handle": 3}}, {"rule": {"family": "ip", "table": "banger", "chain": "postrouting", "handle": 4, "comment": "banger-vm:0123456789ab", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "172.30.0.2"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-fc"}}, {"masquerade": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 5, "comment": "banger-vm:0123456789ab", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-fc"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "172.30.0.2"}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 6, "comment": "banger-vm:0123456789ab", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-fc"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.30.0.2"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}]}"#;

#[test]
fn listed_rules_compare_equal_to_the_wanted_ones() {
    let l = parse_listing(LISTED.as_bytes()).unwrap();
    assert!(l.forward_marker);
    assert_eq!(l.rules.len(), 3);
    let ours: Vec<_> = l.rules_of(A).collect();
    assert_eq!(ours.len(), 3);
    assert_eq!(l.rules_of(B).count(), 0);
    let want = vm_rules(A, IP_A, BR);
    for (w, r) in want.iter().zip(&ours) {
        assert!(r.is_same_as(w), "{r:?} vs {w:?}");
    }
    assert_eq!(ours[0].source_address(), Some(IP_A));
    assert_eq!(
        ours.iter().map(|r| r.handle).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    // Another address or bridge is a different rule set.
    for other in [vm_rules(A, IP_B, BR), vm_rules(A, IP_A, "br-fc-2")] {
        assert!(!other.iter().all(|w| ours.iter().any(|r| r.is_same_as(w))));
    }
}

#[test]
fn rules_the_schema_cannot_parse_are_still_found() {
    let text = r#"{"nftables":[{"rule":{"family":"ip","table":"banger","chain":"forward","handle":9,"comment":"banger-vm:0123456789ab","expr":[{"no such statement":{}}]}},{"rule":{"family":"ip","table":"banger","chain":"forward","handle":10,"expr":[{"accept":null}]}}]}"#;
    let l = parse_listing(text.as_bytes()).unwrap();
    assert!(!l.forward_marker);
    let ours: Vec<_> = l.rules_of(A).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].handle, 9);
    assert!(ours[0].expr.is_none());
    assert!(vm_rules(A, IP_A, BR).iter().all(|w| !ours[0].is_same_as(w)));
    assert!(parse_listing(b"not json").is_err());
}

#[test]
fn documents_on_the_wire() {
    let mut cmds = skeleton(true);
    cmds.push(delete_rule(FORWARD_CHAIN, 7));
    cmds.extend(
        vm_rules(A, IP_A, BR)
            .into_iter()
            .map(|r| add(NfListObject::Rule(r))),
    );
    let doc = Nftables {
        objects: Cow::Owned(cmds),
    };
    let v: serde_json::Value = serde_json::to_value(&doc).unwrap();
    let objs = v["nftables"].as_array().unwrap();
    assert_eq!(
        objs[0],
        serde_json::json!({"add": {"table": {"family": "ip", "name": "banger"}}})
    );
    assert_eq!(
        objs[1],
        serde_json::json!({"add": {"chain": {"family": "ip", "table": "banger", "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}})
    );
    assert_eq!(
        objs[2],
        serde_json::json!({"add": {"chain": {"family": "ip", "table": "banger", "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}})
    );
    assert_eq!(
        objs[3],
        serde_json::json!({"add": {"chain": {"family": "ip", "table": "banger",
            "name": "ip_forward_enabled_by_banger"}}})
    );
    assert_eq!(
        objs[4],
        serde_json::json!({"delete": {"rule": {"family": "ip", "table": "banger",
            "chain": "forward", "expr": [], "handle": 7}}})
    );
    assert_eq!(
        objs[5],
        serde_json::json!({"add": {"rule": {"family": "ip", "table": "banger", "chain": "postrouting",
            "comment": "banger-vm:0123456789ab", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "172.30.0.2"}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-fc"}},
                {"masquerade": null}]}}})
    );
    assert_eq!(objs.len(), 8);
    assert_eq!(skeleton(false).len(), 3);
}

#[test]
fn inputs_are_checked() {
    for ok in [A, "a", "vm-1"] {
        assert!(check_vm_id(ok).is_ok(), "{ok}");
    }
    let long = "a".repeat(MAX_VM_ID + 1);
    for bad in ["", "ABC", "a b", "a\"b", "a\nb", "a:b", long.as_str()] {
        assert!(
            matches!(check_vm_id(bad), Err(NatError::InvalidVmId { .. })),
            "{bad:?}"
        );
    }
    assert!(check_bridge(BR).is_ok());
    for bad in ["", "br-fc-0123456789", "a b", "a/b", "a:b"] {
        assert!(
            matches!(check_bridge(bad), Err(NatError::InvalidBridge { .. })),
            "{bad:?}"
        );
    }
    assert!(check_guest(IP_A).is_ok());
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1"] {
        let ip: Ipv4Addr = bad.parse().unwrap();
        assert!(
            matches!(check_guest(ip), Err(NatError::InvalidGuest(_))),
            "{bad}"
        );
    }
}

// ---- real nft, fresh network namespaces ---------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn host_ip_forward() -> String {
    std::fs::read_to_string(IP_FORWARD).unwrap()
}

/// Runs `f` on a new thread in a new, empty network namespace; see the
/// module docs.
fn in_fresh_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if !is_root() {
        eprintln!("note: skipping {name}: needs root to create a network namespace");
        return;
    }
    if !NFT_PATHS.iter().any(|p| Path::new(p).exists()) {
        eprintln!("note: skipping {name}: no nft binary");
        return;
    }
    let host_before = host_ip_forward();
    let res = std::thread::spawn(move || {
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        // SAFETY: unshare only changes the calling thread's namespaces;
        // CLONE_NEWNET is allowed in a multi-threaded process.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
        // /proc/self is the process (its main thread); thread-self is us.
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(
            ours, host_ns,
            "this thread must be in a namespace of its own"
        );
        f();
    })
    .join();
    assert_eq!(
        host_ip_forward(),
        host_before,
        "the host's ip_forward must not change"
    );
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

/// Runs nft (in the calling thread's namespace) and returns its stdout.
fn nft(args: &[&str]) -> String {
    let out = Command::new(nft_program()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The whole ruleset of the namespace, as JSON objects.
fn ruleset() -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&nft(&["-j", "list", "ruleset"])).unwrap();
    v["nftables"].as_array().unwrap().clone()
}

/// Rules anywhere in the ruleset (any table) with the comment of `vm_id`, as
/// `(chain, handle)`.
fn rules_of(vm_id: &str) -> Vec<(String, u64)> {
    let tag = rule_comment(vm_id);
    ruleset()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"] == tag.as_str())
        .map(|r| {
            (
                r["chain"].as_str().unwrap().to_string(),
                r["handle"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn has_table() -> bool {
    ruleset()
        .iter()
        .filter_map(|o| o.get("table"))
        .any(|t| t["name"] == TABLE && t["family"] == "ip")
}

fn has_marker() -> bool {
    ruleset()
        .iter()
        .filter_map(|o| o.get("chain"))
        .any(|c| c["table"] == TABLE && c["name"] == FORWARD_MARKER_CHAIN)
}

fn forwarding() -> bool {
    ip_forward_enabled().unwrap()
}

fn chains(rules: &[(String, u64)]) -> Vec<&str> {
    let mut c: Vec<&str> = rules.iter().map(|(c, _)| c.as_str()).collect();
    c.sort();
    c
}

#[test]
fn ensure_twice_is_one_rule_set_and_remove_cleans_up() {
    in_fresh_netns("ensure_twice_is_one_rule_set_and_remove_cleans_up", || {
        set_ip_forward(false).unwrap();
        assert!(!has_table());

        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Added);
        let first = rules_of(A);
        assert_eq!(chains(&first), vec!["forward", "forward", "postrouting"]);
        assert!(forwarding(), "ip_forward switched on");
        assert!(has_marker(), "and recorded as switched on by banger");

        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Unchanged);
        assert_eq!(rules_of(A), first, "same rules, same handles");
        assert_eq!(list_vm_nat().unwrap(), vec![(A.to_string(), IP_A)]);

        // The chains are what the module docs promise.
        let listing = nft(&["list", "table", "ip", TABLE]);
        for want in [
            "type nat hook postrouting priority srcnat; policy accept;",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 172.30.0.2 oifname != \"br-fc\" masquerade comment \"banger-vm:0123456789ab\"",
            "iifname \"br-fc\" ip saddr 172.30.0.2 accept comment \"banger-vm:0123456789ab\"",
            "oifname \"br-fc\" ip daddr 172.30.0.2 ct state established,related accept comment \"banger-vm:0123456789ab\"",
        ] {
            assert!(listing.contains(want), "{want} missing from:\n{listing}");
        }

        remove_vm_nat(A).unwrap();
        assert!(!has_table(), "the last VM takes the table with it");
        assert!(ruleset().iter().all(|o| o.get("metainfo").is_some()));
        assert!(!forwarding(), "ip_forward back off");
        remove_vm_nat(A).unwrap();
        assert!(list_vm_nat().unwrap().is_empty());
    });
}

#[test]
fn a_second_vm_adds_its_own_and_removal_keeps_the_other() {
    in_fresh_netns(
        "a_second_vm_adds_its_own_and_removal_keeps_the_other",
        || {
            set_ip_forward(false).unwrap();
            ensure_vm_nat(A, IP_A, BR).unwrap();
            assert_eq!(ensure_vm_nat(B, IP_B, BR).unwrap(), NatChange::Added);
            assert_eq!(rules_of(A).len(), 3);
            assert_eq!(rules_of(B).len(), 3);
            assert_eq!(
                list_vm_nat().unwrap(),
                vec![(A.to_string(), IP_A), (B.to_string(), IP_B)]
            );

            let b_rules = rules_of(B);
            remove_vm_nat(A).unwrap();
            assert!(rules_of(A).is_empty());
            assert_eq!(rules_of(B), b_rules, "B untouched");
            assert!(has_table() && has_marker());
            assert!(forwarding(), "still needed by B");
            remove_vm_nat(A).unwrap();
            assert_eq!(rules_of(B), b_rules);

            remove_vm_nat(B).unwrap();
            assert!(!has_table());
            assert!(!forwarding());
        },
    );
}

#[test]
fn a_new_address_or_bridge_replaces_the_rules() {
    in_fresh_netns("a_new_address_or_bridge_replaces_the_rules", || {
        ensure_vm_nat(A, IP_A, BR).unwrap();
        ensure_vm_nat(B, IP_B, BR).unwrap();
        let b_rules = rules_of(B);
        let old = rules_of(A);

        assert_eq!(
            ensure_vm_nat(A, Ipv4Addr::new(172, 30, 0, 9), BR).unwrap(),
            NatChange::Replaced
        );
        let new = rules_of(A);
        assert_eq!(new.len(), 3);
        assert!(new.iter().all(|r| !old.contains(r)), "old handles gone");
        assert_eq!(
            list_vm_nat().unwrap(),
            vec![
                (A.to_string(), Ipv4Addr::new(172, 30, 0, 9)),
                (B.to_string(), IP_B)
            ]
        );
        assert_eq!(rules_of(B), b_rules);

        assert_eq!(
            ensure_vm_nat(A, Ipv4Addr::new(172, 30, 0, 9), "br-fc-2").unwrap(),
            NatChange::Replaced
        );
        assert_eq!(rules_of(A).len(), 3);
        let listing = nft(&["list", "table", "ip", TABLE]);
        assert!(!listing.contains("172.30.0.2"), "{listing}");
        assert!(listing.contains("oifname != \"br-fc-2\""), "{listing}");
        assert_eq!(
            ensure_vm_nat(A, Ipv4Addr::new(172, 30, 0, 9), "br-fc-2").unwrap(),
            NatChange::Unchanged
        );
    });
}

#[test]
fn damaged_rules_and_forwarding_are_repaired() {
    in_fresh_netns("damaged_rules_and_forwarding_are_repaired", || {
        set_ip_forward(false).unwrap();
        ensure_vm_nat(A, IP_A, BR).unwrap();
        // Someone deletes one of the rules.
        let (chain, handle) = rules_of(A)
            .into_iter()
            .find(|(c, _)| c == FORWARD_CHAIN)
            .unwrap();
        let handle = handle.to_string();
        nft(&["delete", "rule", "ip", TABLE, &chain, "handle", &handle]);
        assert_eq!(rules_of(A).len(), 2);
        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Replaced);
        assert_eq!(rules_of(A).len(), 3);

        // Someone switches forwarding off: back on, rules left as they are.
        let before = rules_of(A);
        set_ip_forward(false).unwrap();
        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Unchanged);
        assert!(forwarding());
        assert_eq!(rules_of(A), before);

        // A rule that is ours by comment but not by content is replaced.
        // (nft joins its arguments into one command line.)
        nft(&["add rule ip banger forward ip saddr 172.30.0.99 drop comment \"banger-vm:0123456789ab\""]);
        assert_eq!(rules_of(A).len(), 4);
        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Replaced);
        assert_eq!(rules_of(A).len(), 3);
        assert!(!nft(&["list", "table", "ip", TABLE]).contains("drop"));
        remove_vm_nat(A).unwrap();
        assert!(!has_table());
    });
}

#[test]
fn forwarding_that_was_already_on_stays_on() {
    in_fresh_netns("forwarding_that_was_already_on_stays_on", || {
        set_ip_forward(true).unwrap();
        assert_eq!(ensure_vm_nat(A, IP_A, BR).unwrap(), NatChange::Added);
        assert!(!has_marker(), "banger did not switch it on");
        remove_vm_nat(A).unwrap();
        assert!(!has_table());
        assert!(forwarding(), "left as banger found it");
    });
}

#[test]
fn removing_from_an_empty_ruleset_is_fine() {
    in_fresh_netns("removing_from_an_empty_ruleset_is_fine", || {
        set_ip_forward(false).unwrap();
        remove_vm_nat(A).unwrap();
        assert!(list_vm_nat().unwrap().is_empty());
        assert!(!has_table());
        assert!(!forwarding());

        // Someone else's table with a lookalike comment is not ours.
        nft(&["add", "table", "ip", "other"]);
        nft(&["add chain ip other c { type filter hook forward priority 0; }"]);
        nft(&["add rule ip other c accept comment \"banger-vm:0123456789ab\""]);
        remove_vm_nat(A).unwrap();
        assert_eq!(rules_of(A).len(), 1, "the other table is left alone");
        assert!(list_vm_nat().unwrap().is_empty());
    });
}

#[test]
fn nft_failures_carry_status_and_stderr() {
    in_fresh_netns("nft_failures_carry_status_and_stderr", || {
        // A `postrouting` chain that is not what banger creates.
        nft(&["add", "table", "ip", TABLE]);
        nft(&["add chain ip banger postrouting { type filter hook forward priority 0; }"]);
        let e = ensure_vm_nat(A, IP_A, BR).unwrap_err();
        let NatError::Nft {
            action,
            status,
            stderr,
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(status.code(), Some(1), "{e}");
        assert!(stderr.contains("Error"), "{e}");
        assert!(action.contains(A), "{e}");
        assert!(e.to_string().contains("exit status: 1"), "{e}");
        assert!(rules_of(A).is_empty(), "the transaction is all or nothing");

        // Invalid input never reaches nft.
        for e in [
            ensure_vm_nat("../x", IP_A, BR).unwrap_err(),
            ensure_vm_nat(A, IP_A, "a b").unwrap_err(),
            ensure_vm_nat(A, Ipv4Addr::LOCALHOST, BR).unwrap_err(),
            remove_vm_nat("").unwrap_err(),
        ] {
            assert!(!matches!(e, NatError::Nft { .. }), "{e}");
        }
        assert!(rules_of(A).is_empty());
    });
}
