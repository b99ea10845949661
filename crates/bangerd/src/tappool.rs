//! Warm taps: made ahead of time on the bridge, so a booting VM does not
//! wait for one.
//!
//! Pool taps are named `tap-bg-p<n>`. A VM claims one by having the root
//! helper rename it to the VM's own tap name (computed by the helper from
//! the VM id), so everything downstream (launch validation, cleanup,
//! reconcile) sees the same tap names as before. A stopped or deleted VM's
//! tap is renamed back into the pool while it is short, else deleted.
//!
//! Refills run in the background, one at a time, creating up to
//! [`PARALLEL`] taps at once. A batch in which every creation fails ends
//! the refill (logged) rather than trying ever more names; names are the
//! lowest numbers not in the pool, so nothing is "burnt". The pool fills
//! only after the first VM needs the network, so a daemon that never boots
//! a VM never touches the host's links; a stopping daemon deletes it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::daemon::Shared;

/// Most taps one refill creates at once.
pub const PARALLEL: usize = 4;
/// Prefix of pool taps (see the helper's `validate::pool_tap_name`).
pub const PREFIX: &str = "tap-bg-p";
/// Highest pool number (7 digits keep the name within 15 bytes).
const MAX_INDEX: u32 = 9_999_999;

#[derive(Debug, Default)]
pub struct TapPool {
    /// Pool numbers of the taps ready now.
    ready: Mutex<BTreeSet<u32>>,
    /// Held by the one refill running.
    refilling: tokio::sync::Mutex<()>,
}

pub fn name(n: u32) -> String {
    format!("{PREFIX}{n:07}")
}

fn number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?;
    (digits.len() == 7 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl TapPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes a ready tap's name, if there is one.
    pub fn take(&self) -> Option<String> {
        self.lock().pop_first().map(name)
    }

    /// The lowest `count` numbers not in the pool.
    fn free_numbers(&self, count: usize) -> Vec<u32> {
        let ready = self.lock();
        (1..=MAX_INDEX)
            .filter(|n| !ready.contains(n))
            .take(count)
            .collect()
    }

    fn put(&self, n: u32) {
        self.lock().insert(n);
    }
}

/// The tap for VM `vm_id`: a warm one renamed, or (pool empty, disabled, or
/// the claim failing) a new one. Starts a refill afterwards. Returns
/// whether it came from the pool.
pub async fn acquire(d: &Shared, op_id: &str, vm_id: &str) -> Result<bool, String> {
    let tap = banger_net::tap_name_for(vm_id);
    let mut warm = false;
    while let Some(pool_tap) = d.tap_pool.take() {
        match d
            .helper
            .claim_tap(op_id, &pool_tap, vm_id, &d.cfg.bridge)
            .await
        {
            Ok(()) => {
                warm = true;
                break;
            }
            Err(e) => {
                // Gone (someone deleted it) or broken: drop it, try the next.
                tracing::warn!(tap = %pool_tap, error = %e, "warm tap unusable; discarding it");
                let _ = d.helper.delete_tap(op_id, &pool_tap).await;
            }
        }
    }
    if !warm {
        d.helper
            .create_tap(op_id, &tap, &d.cfg.bridge)
            .await
            .map_err(|e| format!("tap {tap}: {e}"))?;
    }
    spawn_refill(d);
    Ok(warm)
}

/// Gives the (VMM-free) tap of `vm_id` back: renamed into the pool while
/// it is short, else deleted.
pub async fn release(d: &Shared, vm_id: &str, tap: &str) {
    if d.tap_pool.len() < d.cfg.settings.tap_pool {
        if let Some(n) = d.tap_pool.free_numbers(1).first().copied() {
            match d
                .helper
                .release_tap("", vm_id, &name(n), &d.cfg.bridge)
                .await
            {
                Ok(()) => {
                    d.tap_pool.put(n);
                    return;
                }
                Err(e) => {
                    tracing::warn!(tap, error = %e, "could not return the tap to the pool; deleting it")
                }
            }
        }
    }
    if let Err(e) = d.helper.delete_tap("", tap).await {
        tracing::warn!(tap, error = %e, "delete tap");
    }
}

/// Refills the pool in the background (no-op while one runs).
pub fn spawn_refill(d: &Shared) {
    if d.cfg.settings.tap_pool == 0 {
        return;
    }
    let d = d.clone();
    tokio::spawn(async move { refill(&d).await });
}

/// Creates taps until the pool holds `tap_pool`, [`PARALLEL`] at a time.
pub async fn refill(d: &Shared) {
    let Ok(_one) = d.tap_pool.refilling.try_lock() else {
        return;
    };
    let target = d.cfg.settings.tap_pool;
    loop {
        let missing = target.saturating_sub(d.tap_pool.len());
        if missing == 0 {
            return;
        }
        let batch = d.tap_pool.free_numbers(missing.min(PARALLEL));
        let made = futures::future::join_all(batch.iter().map(|&n| {
            let d = d.clone();
            async move {
                let r = d.helper.create_tap("", &name(n), &d.cfg.bridge).await;
                (n, r)
            }
        }))
        .await;
        let mut ok = 0;
        for (n, r) in made {
            match r {
                Ok(()) => {
                    d.tap_pool.put(n);
                    ok += 1;
                }
                Err(e) => tracing::warn!(tap = %name(n), error = %e, "warm tap"),
            }
        }
        if ok == 0 {
            tracing::warn!(
                "a whole batch of warm taps failed; the pool stays short until the next VM"
            );
            return;
        }
    }
}

/// At daemon start: adopts pool taps a previous run left (they are still
/// valid taps on the bridge).
pub async fn adopt(d: &Shared) {
    match banger_net::list_links(PREFIX).await {
        Ok(links) => {
            for l in links {
                if let Some(n) = number(&l.name) {
                    d.tap_pool.put(n);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "list pool taps"),
    }
}

/// At daemon stop: deletes every warm tap, so a stopped daemon leaves no
/// link behind.
pub async fn drain(d: &Shared) {
    while let Some(tap) = d.tap_pool.take() {
        if let Err(e) = d.helper.delete_tap("", &tap).await {
            tracing::warn!(tap, error = %e, "delete warm tap");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_fit_an_interface_name() {
        assert_eq!(name(1), "tap-bg-p0000001");
        assert!(name(MAX_INDEX).len() <= 15);
        assert_eq!(number(&name(42)), Some(42));
        assert_eq!(number("tap-bg-p12"), None);
        assert_eq!(number("tap-bg-0123abcd"), None);
    }

    #[test]
    fn numbers_are_reused_lowest_first_never_burnt() {
        let p = TapPool::default();
        assert_eq!(p.free_numbers(3), [1, 2, 3]);
        p.put(1);
        p.put(3);
        assert_eq!(p.free_numbers(2), [2, 4]);
        assert_eq!(p.take().as_deref(), Some("tap-bg-p0000001"));
        assert_eq!(p.free_numbers(1), [1]);
        assert_eq!(p.len(), 1);
    }
}
