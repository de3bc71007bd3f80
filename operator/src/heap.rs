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
    let mut since = ChangesSince::start(&mut changes);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        if !since.changed(&mut changes) {
            continue;
        }
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

/// Whether the caches changed since the last look: the count of changes
/// [`trim_after_changes`] last trimmed at.
struct ChangesSince(u64);

impl ChangesSince {
    /// Counting from the changes made so far: they were before this trimmer started.
    fn start(changes: &mut watch::Receiver<u64>) -> Self {
        Self(*changes.borrow_and_update())
    }

    /// Whether `changes` moved since the last call (or [`ChangesSince::start`]); counts from here.
    fn changed(&mut self, changes: &mut watch::Receiver<u64>) -> bool {
        let now = *changes.borrow_and_update();
        std::mem::replace(&mut self.0, now) != now
    }
}

/// How many malloc arenas the operator's threads share, unless `MALLOC_ARENA_MAX` says otherwise:
/// one. glibc gives each thread that contends for an arena one of its own (up to eight per
/// core), and what a burst frees in one arena is reused only by allocations made there: at 40k
/// tenants one arena held 131 and 133 MiB after a restart where the default held 145 and 137
/// (`bench/operator-restart.sh`, docs/operator.md). The operator's few threads seldom allocate
/// at the same time.
pub const ARENAS: i32 = 1;

/// Limits glibc to [`ARENAS`] malloc arenas, unless the environment sets `MALLOC_ARENA_MAX`
/// (glibc reads it itself); whether the limit was set here. Call it before any thread starts:
/// an arena made before the call stays.
pub fn limit_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt is a C function; it has no safe binding"
)]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt takes no pointers; M_ARENA_MAX only bounds how many arenas later
    // allocations may create.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

/// Other allocators have no arenas to limit.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
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

    #[test]
    fn the_arena_limit_is_set_unless_the_environment_sets_one() {
        assert_eq!(
            limit_arenas(),
            std::env::var_os("MALLOC_ARENA_MAX").is_none(),
            "glibc refused M_ARENA_MAX"
        );
    }

    #[test]
    fn a_trim_is_due_once_after_changes_and_not_for_changes_before_the_start() {
        let (tx, mut rx) = watch::channel(0u64);
        tx.send_modify(|n| *n += 3);
        let mut since = ChangesSince::start(&mut rx);
        assert!(
            !since.changed(&mut rx),
            "changes before the start are not due"
        );
        tx.send_modify(|n| *n += 1);
        assert!(since.changed(&mut rx), "a change since the start is due");
        assert!(!since.changed(&mut rx), "the same change is due once");
        tx.send_modify(|n| *n += 1);
        tx.send_modify(|n| *n += 1);
        assert!(
            since.changed(&mut rx),
            "two changes in one interval are due"
        );
        assert!(!since.changed(&mut rx), "and due once, not twice");
    }

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
