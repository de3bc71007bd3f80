//! Giving back to the system the heap a burst of work freed.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse and returns to the system only a
//! free block at the very top of the main heap. A burst — placing thousands of tenants parses
//! each object, clones it into the cache, builds and encodes routing tables — leaves most of its
//! memory free but resident, scattered between live objects and across the arenas of the
//! runtime's threads. `malloc_trim(0)` returns every whole free page of every arena (glibc 2.8
//! and later release pages inside the heap, not only at its end); live allocations are untouched.
//!
//! [`trim_after_changes`] calls it in the background at most once per interval, and only after
//! the caches changed: an idle operator never calls it. On other allocators (musl, the router's
//! mimalloc) there is nothing to call, and [`release`] does nothing.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::{sync::watch, time::MissedTickBehavior};
use tracing::{debug, warn};

/// How often, at most, freed heap is given back while the caches change.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(20);

/// A trim taking this long is logged as a warning.
const SLOW_TRIM: Duration = Duration::from_millis(250);

/// Until `stop` resolves: every `every`, if `changes` moved since the last trim, gives freed heap
/// back ([`release`]) on a blocking thread (it walks and locks each arena in turn).
pub async fn trim_after_changes(
    mut changes: watch::Receiver<u64>,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut trimmed_at = *changes.borrow_and_update();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let now = *changes.borrow_and_update();
        if now == trimmed_at {
            continue;
        }
        trimmed_at = now;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(release).await;
        let took_ms = started.elapsed().as_millis();
        match result {
            // Allocations on other threads wait while it holds an arena's lock: say when that
            // was long enough to matter.
            Ok(released) if took_ms >= SLOW_TRIM.as_millis() => warn!(
                released,
                took_ms, "giving freed heap back to the system was slow"
            ),
            Ok(released) => debug!(released, took_ms, "freed heap given back to the system"),
            Err(e) => warn!(error = %e, "giving freed heap back failed"),
        }
    }
}

/// Asks glibc to return the free pages of every arena to the system; whether any came back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "malloc_trim is a C function; it has no safe binding"
)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes no pointers and only rearranges glibc's own free lists, under
    // the locks every other allocator call takes.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators give large free blocks back themselves and have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_below_live_memory_is_given_back() {
        fn resident_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in /proc/self/status")
        }
        // 16 MiB in small blocks (below glibc's mmap threshold, so in an arena, and within one of
        // a thread arena's 64 MiB heaps), then every block freed but one in 64: the freed runs
        // between the kept ones cannot merge into the top of the heap, so free() gives none of
        // them back.
        let mut blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let before = resident_kib();
        assert!(release(), "malloc_trim reported nothing given back");
        let after = resident_kib();
        assert!(
            before.saturating_sub(after) > 8 * 1024,
            "resident {before} KiB before, {after} KiB after: less than 8 of the 16 MiB freed given back"
        );
        drop(kept);
    }
}
