//! Per-VM outbound NAT (`banger vm create --nat`) through nftables.
//!
//! # Why nftables JSON
//!
//! nftables is the kernel's packet filter on every current distribution
//! (`iptables` there is usually `iptables-nft`, a translation layer on top
//! of it). Driving `nft` with JSON (`nft -j -f -`, the document on stdin) and
//! reading state back as JSON (`nft -j list table ip banger`) gives typed
//! documents both ways (built from the [`nftables`] crate's schema structs),
//! applies every change as one atomic transaction, and needs no shell and no
//! string-built rule syntax: `nft` is run with a fixed argv and the only
//! variable data (vm id, address, bridge name) travels as JSON strings, after
//! validation. A table of our own also keeps banger's state apart from
//! whatever else manages the host firewall.
//!
//! # What gets installed
//!
//! One table, `ip banger`, created on demand, with
//!
//! - chain `postrouting`: `type nat hook postrouting priority srcnat`;
//! - chain `forward`: `type filter hook forward priority filter (0); policy accept`;
//! - chain `ip_forward_enabled_by_banger` (regular, empty, never jumped to),
//!   present only when banger switched `net.ipv4.ip_forward` on: a marker.
//!
//! and per VM three rules, each with the comment `banger-vm:<vm_id>`:
//!
//! ```text
//! postrouting: ip saddr <guest> oifname != "<bridge>" masquerade
//! forward:     iifname "<bridge>" ip saddr <guest> accept
//! forward:     oifname "<bridge>" ip daddr <guest> ct state established,related accept
//! ```
//!
//! (`ip saddr <guest>` is the guest's /32.) Traffic from the guest to the
//! host or to other guests on the bridge is not rewritten.
//!
//! Ours is only one table among others. An `accept` ends the packet's walk
//! through *this* table only: every other base chain on the forward hook
//! still sees it, and a `drop` there (Docker sets the iptables `FORWARD`
//! policy to DROP, for one) wins. The forward accepts here state what banger
//! expects to pass and keep working if our chain's policy is ever tightened;
//! on a host whose own firewall drops forwarded traffic, the administrator
//! has to let the bridge through in that firewall too (for Docker: rules in
//! `DOCKER-USER`).
//!
//! # Idempotency and cleanup
//!
//! [`ensure_vm_nat`] reads the table back and compares the VM's rules (found
//! by comment) with the three it wants, statement by statement. Identical:
//! nothing is written, so stop/start never duplicates anything. Different
//! (another address, another bridge, edited or partial): the old rules are
//! deleted by handle and the new ones added in the same transaction.
//!
//! [`remove_vm_nat`] deletes the VM's rules by handle. When no `banger-vm:`
//! rule of any VM is left it deletes the whole table instead, so nothing
//! global stays behind once the last NAT VM is gone. A missing table or
//! missing rules are not errors.
//!
//! # IP forwarding
//!
//! NAT for guests needs `net.ipv4.ip_forward = 1`. [`ensure_vm_nat`] turns it
//! on when it is off and, in the same nft transaction that adds the rules,
//! creates the marker chain. When the table is deleted with the last VM and
//! the marker was there, forwarding is switched back off; when forwarding was
//! already on before banger (no marker), it is left alone. (Someone else who
//! starts relying on forwarding after banger enabled it is not detected.)
//! The sysctl, like the ruleset, belongs to the network namespace of the
//! calling thread.
//!
//! # Callers
//!
//! Everything here needs `CAP_NET_ADMIN` in the current network namespace
//! (the root helper is the only caller), blocks on `nft` (call it from a
//! blocking thread in async code), and acts on the calling thread's network
//! namespace: `nft` is spawned from the calling thread and so inherits it.
//! Each operation is read-compare-write; callers serialise them (the helper
//! holds its network lock).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::Deserialize;

/// The table banger owns (family `ip`).
pub const TABLE: &str = "banger";
/// The nat chain on the postrouting hook.
pub const POSTROUTING_CHAIN: &str = "postrouting";
/// The filter chain on the forward hook.
pub const FORWARD_CHAIN: &str = "forward";
/// The empty chain whose presence records that banger switched
/// `net.ipv4.ip_forward` on.
pub const FORWARD_MARKER_CHAIN: &str = "ip_forward_enabled_by_banger";
/// Every per-VM rule carries the comment `banger-vm:<vm_id>`.
pub const COMMENT_PREFIX: &str = "banger-vm:";
/// Longest vm id accepted: the comment must fit nft's 128-byte limit.
pub const MAX_VM_ID: usize = 64;

/// `srcnat` (`NF_IP_PRI_NAT_SRC`).
const PRIO_SRCNAT: i32 = 100;
/// `filter` (`NF_IP_PRI_FILTER`).
const PRIO_FILTER: i32 = 0;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where `nft` is looked for before falling back to `$PATH`.
const NFT_PATHS: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

/// Everything that can go wrong managing NAT rules.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("invalid vm id {id:?} for a NAT rule: {reason}")]
    InvalidVmId { id: String, reason: &'static str },
    #[error("invalid bridge name {name:?}: {reason}")]
    InvalidBridge { name: String, reason: &'static str },
    #[error("refusing to NAT {0}: not a unicast host address")]
    InvalidGuest(Ipv4Addr),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("nft failed to {action} ({status}): {stderr}")]
    Nft {
        action: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot encode the nftables document: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot parse nft's listing of table ip {TABLE}: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("cannot {action} {IP_FORWARD}: {source}")]
    IpForward {
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What [`ensure_vm_nat`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatChange {
    /// The VM's rules were already in place and left alone (forwarding is
    /// switched back on, with the marker, if someone had switched it off).
    Unchanged,
    /// The VM had no rules; they were added.
    Added,
    /// The VM had different rules (another address or bridge, or edited);
    /// they were replaced.
    Replaced,
}

/// Installs the outbound NAT of one VM: `guest` (its /32) leaving through
/// anything but `bridge` is masqueraded, and forwarding for it is accepted
/// in banger's table. Idempotent; see the module docs.
pub fn ensure_vm_nat(vm_id: &str, guest: Ipv4Addr, bridge: &str) -> Result<NatChange, NatError> {
    check_vm_id(vm_id)?;
    check_bridge(bridge)?;
    check_guest(guest)?;
    let want = vm_rules(vm_id, guest, bridge);
    let current = read_table()?.unwrap_or_default();
    let ours: Vec<&ListedRule> = current.rules_of(vm_id).collect();
    let in_place =
        ours.len() == want.len() && want.iter().all(|w| ours.iter().any(|r| r.is_same_as(w)));
    let forwarding = ip_forward_enabled()?;
    if in_place && forwarding {
        return Ok(NatChange::Unchanged);
    }

    let mut cmds = skeleton(!forwarding);
    if !in_place {
        cmds.extend(ours.iter().map(|r| delete_rule(&r.chain, r.handle)));
        cmds.extend(want.into_iter().map(|r| add(NfListObject::Rule(r))));
    }
    apply(cmds, &format!("install the NAT rules of vm {vm_id}"))?;
    if !forwarding {
        set_ip_forward(true)?;
    }
    Ok(match (in_place, ours.is_empty()) {
        (true, _) => NatChange::Unchanged,
        (false, true) => NatChange::Added,
        (false, false) => NatChange::Replaced,
    })
}

/// Removes the NAT rules of one VM; deletes the whole table (and switches
/// forwarding back off if banger switched it on) when no VM's rule is left.
/// Nothing to remove is fine.
pub fn remove_vm_nat(vm_id: &str) -> Result<(), NatError> {
    check_vm_id(vm_id)?;
    let Some(current) = read_table()? else {
        return Ok(());
    };
    let others_left = current.rules.iter().any(|r| match r.vm_id() {
        Some(id) => id != vm_id,
        None => false,
    });
    if !others_left {
        apply(
            vec![NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
                table(),
            )))],
            &format!("delete table ip {TABLE} with the last NAT rules (vm {vm_id})"),
        )?;
        if current.forward_marker {
            set_ip_forward(false)?;
        }
        return Ok(());
    }
    let cmds: Vec<NfObject> = current
        .rules_of(vm_id)
        .map(|r| delete_rule(&r.chain, r.handle))
        .collect();
    if cmds.is_empty() {
        return Ok(());
    }
    apply(cmds, &format!("delete the NAT rules of vm {vm_id}"))
}

/// The VMs with NAT rules and their guest addresses (from the masquerade
/// rules), sorted by vm id. An absent table is an empty list.
pub fn list_vm_nat() -> Result<Vec<(String, Ipv4Addr)>, NatError> {
    let Some(current) = read_table()? else {
        return Ok(Vec::new());
    };
    let mut out = BTreeMap::new();
    for r in &current.rules {
        if r.chain != POSTROUTING_CHAIN {
            continue;
        }
        if let (Some(id), Some(ip)) = (r.vm_id(), r.source_address()) {
            out.insert(id.to_string(), ip);
        }
    }
    Ok(out.into_iter().collect())
}

/// The comment on every rule of `vm_id`.
pub fn rule_comment(vm_id: &str) -> String {
    format!("{COMMENT_PREFIX}{vm_id}")
}

fn check_vm_id(id: &str) -> Result<(), NatError> {
    let bad = |reason| {
        Err(NatError::InvalidVmId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > MAX_VM_ID {
        return bad("must be 1 to 64 bytes");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only [a-z0-9-]");
    }
    Ok(())
}

fn check_bridge(name: &str) -> Result<(), NatError> {
    match crate::link::ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(NatError::InvalidBridge {
            name: name.to_string(),
            reason,
        }),
    }
}

fn check_guest(ip: Ipv4Addr) -> Result<(), NatError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(NatError::InvalidGuest(ip));
    }
    Ok(())
}

// ---- documents ----------------------------------------------------------

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain(name: &'static str) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    }
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(name)
    })
}

fn add(obj: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(obj))
}

/// `add` for the table and its chains: creates what is missing, changes
/// nothing that is already there as specified.
fn skeleton(forward_marker: bool) -> Vec<NfObject<'static>> {
    let mut cmds = vec![
        add(NfListObject::Table(table())),
        add(base_chain(
            POSTROUTING_CHAIN,
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
        )),
        add(base_chain(
            FORWARD_CHAIN,
            NfChainType::Filter,
            NfHook::Forward,
            PRIO_FILTER,
        )),
    ];
    if forward_marker {
        cmds.push(add(NfListObject::Chain(chain(FORWARD_MARKER_CHAIN))));
    }
    cmds
}

fn delete_rule(chain: &str, handle: u32) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Delete(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: Cow::Owned(Vec::new()),
        handle: Some(handle),
        index: None,
        comment: None,
    })))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

/// The three rules of one VM, written the way `nft -j` lists them back, so
/// that a listed rule can be compared with a wanted one as typed values.
fn vm_rules(vm_id: &str, guest: Ipv4Addr, bridge: &str) -> [Rule<'static>; 3] {
    let comment = rule_comment(vm_id);
    let rule = |chain: &'static str, expr: Vec<Statement<'static>>| Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment.clone())),
    };
    let saddr = || {
        matches(
            payload("ip", "saddr"),
            Operator::EQ,
            string(guest.to_string()),
        )
    };
    [
        rule(
            POSTROUTING_CHAIN,
            vec![
                saddr(),
                matches(meta(MetaKey::Oifname), Operator::NEQ, string(bridge)),
                Statement::Masquerade(None),
            ],
        ),
        rule(
            FORWARD_CHAIN,
            vec![
                matches(meta(MetaKey::Iifname), Operator::EQ, string(bridge)),
                saddr(),
                Statement::Accept(None),
            ],
        ),
        rule(
            FORWARD_CHAIN,
            vec![
                matches(meta(MetaKey::Oifname), Operator::EQ, string(bridge)),
                matches(
                    payload("ip", "daddr"),
                    Operator::EQ,
                    string(guest.to_string()),
                ),
                matches(
                    Expression::Named(NamedExpression::CT(CT {
                        key: "state".into(),
                        family: None,
                        dir: None,
                    })),
                    Operator::IN,
                    Expression::List(vec![string("established"), string("related")]),
                ),
                Statement::Accept(None),
            ],
        ),
    ]
}

// ---- reading back -------------------------------------------------------

/// What matters about banger's table as listed by nft.
#[derive(Debug, Default)]
struct Listing {
    rules: Vec<ListedRule>,
    forward_marker: bool,
}

impl Listing {
    fn rules_of<'a>(&'a self, vm_id: &'a str) -> impl Iterator<Item = &'a ListedRule> + 'a {
        self.rules.iter().filter(move |r| r.vm_id() == Some(vm_id))
    }
}

/// One listed rule. The statements are parsed leniently: a rule whose
/// statements the schema does not cover still has a handle and a comment,
/// so it can be found and deleted; it just never compares equal.
#[derive(Debug)]
struct ListedRule {
    chain: String,
    handle: u32,
    comment: Option<String>,
    expr: Option<Vec<Statement<'static>>>,
}

impl ListedRule {
    fn vm_id(&self) -> Option<&str> {
        self.comment.as_deref()?.strip_prefix(COMMENT_PREFIX)
    }

    fn is_same_as(&self, want: &Rule<'_>) -> bool {
        self.chain == want.chain
            && self.comment.as_deref() == want.comment.as_deref()
            && self.expr.as_deref() == Some(&*want.expr)
    }

    /// The address of an `ip saddr == <address>` match.
    fn source_address(&self) -> Option<Ipv4Addr> {
        let want_left = payload("ip", "saddr");
        self.expr.as_ref()?.iter().find_map(|s| match s {
            Statement::Match(Match {
                left,
                right: Expression::String(ip),
                op: Operator::EQ,
            }) if *left == want_left => ip.parse().ok(),
            _ => None,
        })
    }
}

#[derive(Deserialize)]
struct RawListing {
    nftables: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRule {
    chain: String,
    handle: u32,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expr: serde_json::Value,
}

#[derive(Deserialize)]
struct RawChain {
    name: String,
}

fn parse_listing(json: &[u8]) -> Result<Listing, NatError> {
    let raw: RawListing = serde_json::from_slice(json).map_err(NatError::Decode)?;
    let mut listing = Listing::default();
    for obj in raw.nftables {
        if let Some(v) = obj.get("rule") {
            let r = RawRule::deserialize(v).map_err(NatError::Decode)?;
            listing.rules.push(ListedRule {
                chain: r.chain,
                handle: r.handle,
                comment: r.comment,
                expr: serde_json::from_value(r.expr).ok(),
            });
        } else if let Some(v) = obj.get("chain") {
            let c = RawChain::deserialize(v).map_err(NatError::Decode)?;
            listing.forward_marker |= c.name == FORWARD_MARKER_CHAIN;
        }
    }
    Ok(listing)
}

/// Banger's table as it is now; `None` when it does not exist.
fn read_table() -> Result<Option<Listing>, NatError> {
    match run_nft(
        &["-j", "list", "table", "ip", TABLE],
        None,
        "list table ip banger",
    ) {
        Ok(out) => parse_listing(&out).map(Some),
        Err(NatError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

// ---- running nft --------------------------------------------------------

fn nft_program() -> &'static str {
    NFT_PATHS
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nft")
}

/// Applies one transaction: `nft -j -f -` with the document on stdin.
fn apply(cmds: Vec<NfObject<'static>>, action: &str) -> Result<(), NatError> {
    let doc = Nftables {
        objects: Cow::Owned(cmds),
    };
    let json = serde_json::to_vec(&doc).map_err(NatError::Encode)?;
    run_nft(&["-j", "-f", "-"], Some(&json), action).map(drop)
}

/// Runs nft with a fixed argv (never a shell) in the calling thread's
/// network namespace; returns its stdout. The C locale keeps its error
/// messages recognisable.
fn run_nft(args: &[&str], stdin: Option<&[u8]>, action: &str) -> Result<Vec<u8>, NatError> {
    let program = nft_program();
    let spawn_err = |source| NatError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of its input before it writes anything, and the
        // pipe is closed (dropped) before waiting.
        if let Err(e) = pipe.write_all(data) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_err(e));
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NatError::Nft {
            action: action.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

// ---- ip_forward ---------------------------------------------------------

fn ip_forward_enabled() -> Result<bool, NatError> {
    let v = std::fs::read_to_string(IP_FORWARD).map_err(|source| NatError::IpForward {
        action: "read",
        source,
    })?;
    Ok(v.trim() != "0")
}

fn set_ip_forward(on: bool) -> Result<(), NatError> {
    std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" }).map_err(|source| {
        NatError::IpForward {
            action: "write",
            source,
        }
    })
}

#[cfg(test)]
mod tests;
