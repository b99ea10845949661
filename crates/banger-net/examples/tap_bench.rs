//! Tap acquisition, cold against warm: what `vm create`'s network stage
//! costs with an empty tap pool (create a persistent tap, attach it to the
//! bridge, set it up) and with a warm one (rename a parked pool tap to the
//! VM's name and set it up, in one request). Both go through one root-helper round trip
//! in the daemon, which is not measured here.
//!
//! Runs in a network namespace of its own (needs root), so the host's links
//! are never touched: `sudo scripts/bench-tap [ROUNDS]`.

use std::time::{Duration, Instant};

use banger_net::{create_tap, delete_tap, ensure_bridge, rename_tap, set_down};

const BRIDGE: &str = "br-fc-bench";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare a network namespace (run as root)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        ensure_bridge(BRIDGE, "172.31.255.1".parse().unwrap(), 24)
            .await
            .expect("bridge");
        let (uid, gid) = (0, 0);
        let vm_tap = "tap-bg-0123abcd";
        let mut cold = Vec::with_capacity(rounds);
        let mut warm = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let t = Instant::now();
            create_tap(vm_tap, BRIDGE, uid, gid).await.expect("create");
            cold.push(t.elapsed());
            delete_tap(vm_tap).await.expect("delete");

            // The pool tap is made ahead of time (not timed): that is the point.
            let pool = format!("tap-bg-p{:07}", i % 1000 + 1);
            create_tap(&pool, BRIDGE, uid, gid).await.expect("warm");
            set_down(&pool).await.expect("park");
            let t = Instant::now();
            rename_tap(&pool, vm_tap, BRIDGE, true)
                .await
                .expect("claim");
            warm.push(t.elapsed());
            delete_tap(vm_tap).await.expect("delete");
        }
        let (c, w) = (median(cold), median(warm));
        println!("tap acquisition over {rounds} rounds (medians):");
        println!(
            "  cold (create + attach + up):  {:>8.1} us",
            c.as_secs_f64() * 1e6
        );
        println!(
            "  warm (rename + up, parked):   {:>8.1} us",
            w.as_secs_f64() * 1e6
        );
        println!("  cold / warm: {:.2}x", c.as_secs_f64() / w.as_secs_f64());
    });
}
