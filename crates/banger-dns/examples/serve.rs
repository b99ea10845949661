//! A `vm.` server over a fixed map of 100 names (`vm0.vm` .. `vm99.vm`),
//! for benchmarks (`scripts/bench-dns`) and poking with dig:
//!
//! ```text
//! cargo run --release -p banger-dns --example serve -- 127.0.0.1:5353
//! dig @127.0.0.1 -p 5353 vm7.vm
//! ```
//!
//! Prints `listening on ADDR` once bound (port 0 picks one), then serves
//! until killed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("usage: serve [IPv4:PORT]");
    let map: HashMap<String, Ipv4Addr> = (0..100u8)
        .map(|i| (format!("vm{i}"), Ipv4Addr::new(172, 30, 0, i + 2)))
        .collect();
    let lookup: banger_dns::Lookup = Arc::new(move |n: &str| map.get(n).copied());
    let h = match banger_dns::serve(addr, lookup).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("serve: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", h.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    h.shutdown().await;
}
