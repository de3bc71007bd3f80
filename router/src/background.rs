//! Work off the request path that must also stay out of its way on a busy CPU: decoding a new
//! routing table, writing the last-known-good copy, and freeing the table it replaced.
//!
//! - [`lower_priority`] gives the calling thread a nice value of [`BACKGROUND_NICE`], so when the
//!   traffic workers want the CPU the kernel gives them most of it (on Linux a thread's nice
//!   value is its own). The table sources' thread and the blocking threads, where a table is decoded and
//!   persisted, run at it.
//! - [`Retirer`] frees a replaced table on a thread of its own, once no request holds it any
//!   more. A request keeps the snapshot it was routed with to its end, so the last reference to
//!   the old table is most often dropped by a traffic worker — which would then spend tens of
//!   milliseconds freeing a million-tenant index between two requests.

use std::{
    sync::{
        Arc,
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// The nice value of background threads: against one traffic worker at nice 0 they get about
/// a quarter of a core both want (the kernel's weights 335 against 1024). At 10 (a tenth) a
/// 1M-tenant table took 14 s to swap in on a saturated core (bench/table-swap.sh), past the
/// 10 s the operator's publication is meant to take to reach a router.
pub const BACKGROUND_NICE: i32 = 5;
/// Replaced tables waiting to be freed; a further one is freed where it was replaced.
const RETIRE_QUEUE: usize = 4;
/// How often a retired table is checked for requests still holding it.
const RETIRE_POLL: Duration = Duration::from_millis(10);

/// The time slice background threads ask for: `sched_runtime` of sched_setattr(2), which sets a
/// fair thread's slice on Linux 6.12 and later (older kernels ignore it). A traffic worker that
/// wakes up on a CPU where a background thread runs waits for the end of that thread's slice,
/// a few milliseconds by default — in a 1M-tenant table swap under load that wait, repeated at
/// every wake-up for the half second the swap's CPU work takes, was most of what the swap added
/// to the requests' p99 (bench/table-swap.sh, docs/router.md). The kernel's floor is 0.1 ms.
pub const BACKGROUND_SLICE: Duration = Duration::from_micros(100);

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`], with a time slice of
/// [`BACKGROUND_SLICE`] where the kernel supports it. A failure (a platform or a sandbox that
/// refuses it) leaves the thread as it was: only latency under load is at stake.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = sched::set_fair(BACKGROUND_NICE, BACKGROUND_SLICE) {
        tracing::debug!(%error, "cannot set a background thread's slice; setting its nice value only");
        if let Err(error) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
            tracing::debug!(%error, "cannot lower a background thread's priority");
        }
    }
}

#[cfg(target_os = "linux")]
mod sched {
    use std::time::Duration;

    /// `struct sched_attr` of the kernel's uapi (`linux/sched/types.h`), its first version
    /// (`SCHED_ATTR_SIZE_VER0`, 48 bytes); libc has no binding for it.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }

    /// Makes the calling thread a `SCHED_OTHER` thread of nice value `nice` asking for time
    /// slices of `slice` (sched_setattr(2)).
    #[allow(unsafe_code)]
    pub fn set_fair(nice: i32, slice: Duration) -> std::io::Result<()> {
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: sched_setattr(2) reads a `struct sched_attr` of the size its `size` field
        // states from the pointer, which points at `attr` for the whole call; pid 0 is the
        // calling thread and flags must be 0. Nothing is written through the pointer.
        let rc =
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sched_attr_has_the_kernels_first_layout() {
            assert_eq!(std::mem::size_of::<SchedAttr>(), 48);
        }

        /// On a thread of its own (the nice value and slice stay with it): the call is accepted,
        /// the nice value is the one asked for, and so is the slice the kernel reports for the
        /// thread (`se.slice` in `/proc/thread-self/sched`, shown by kernels with settable
        /// slices; the slice is asserted only where the kernel shows it).
        #[test]
        fn a_thread_gets_the_nice_value_and_the_slice_it_asks_for() {
            std::thread::spawn(|| {
                set_fair(5, Duration::from_micros(100)).expect("sched_setattr");
                assert_eq!(
                    rustix::process::getpriority_process(None).expect("getpriority"),
                    5
                );
                let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
                let slice = sched.lines().find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    (key.trim() == "se.slice").then(|| value.trim().to_owned())
                });
                if let Some(slice) = slice {
                    assert_eq!(slice, "100000", "the thread's slice in ns");
                }
            })
            .join()
            .expect("thread");
        }
    }
}

/// Frees values on a background thread once the retirer holds their last reference.
pub struct Retirer<T: Send + Sync + 'static> {
    queue: Option<SyncSender<Arc<T>>>,
}

impl<T: Send + Sync + 'static> Retirer<T> {
    /// Starts the thread (named `name`). Values are held at most `hold_for` waiting for other
    /// holders (the router's request deadline bounds how long a request keeps its snapshot);
    /// after that the retirer lets its reference go and the last holder frees the value.
    /// Without a thread (it could not be started) every value is dropped where it is retired.
    pub fn start(name: &str, hold_for: Duration) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Arc<T>>(RETIRE_QUEUE);
        let spawned = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                lower_priority();
                for value in rx {
                    let until = Instant::now() + hold_for;
                    while Arc::strong_count(&value) > 1 && Instant::now() < until {
                        thread::sleep(RETIRE_POLL);
                    }
                    drop(value);
                }
            });
        match spawned {
            Ok(_) => Self { queue: Some(tx) },
            Err(error) => {
                tracing::warn!(%error, name, "cannot start a retiring thread; replaced values are freed in place");
                Self { queue: None }
            }
        }
    }

    /// Hands `value` over to be freed off the calling thread (or drops it here when the queue
    /// is full or there is no thread).
    pub fn retire(&self, value: Arc<T>) {
        if let Some(queue) = &self.queue {
            match queue.try_send(value) {
                Ok(()) => {}
                Err(TrySendError::Full(value) | TrySendError::Disconnected(value)) => drop(value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Sets its flag when dropped, and says on which thread.
    struct Tracked(Arc<AtomicBool>, Arc<std::sync::Mutex<Option<String>>>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            *self.1.lock().unwrap() = thread::current().name().map(str::to_string);
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn wait_for(flag: &AtomicBool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while !flag.load(Ordering::SeqCst) {
            if Instant::now() > until {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_retired_value_is_freed_on_the_retiring_thread_after_its_last_other_holder_lets_go() {
        let retirer = Retirer::start("test-retire", Duration::from_secs(30));
        let (dropped, on) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let value = Arc::new(Tracked(dropped.clone(), Arc::clone(&on)));
        let request = value.clone();
        retirer.retire(value);
        thread::sleep(Duration::from_millis(50));
        assert!(
            !dropped.load(Ordering::SeqCst),
            "freed while a request still held it"
        );
        drop(request);
        assert!(wait_for(&dropped), "not freed within 10 s");
        assert_eq!(on.lock().unwrap().as_deref(), Some("test-retire"));
    }

    #[test]
    fn a_holder_past_the_bound_frees_the_value_itself() {
        let retirer = Retirer::start("test-retire-bound", Duration::from_millis(20));
        let (dropped, on) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let value = Arc::new(Tracked(dropped.clone(), Arc::clone(&on)));
        let request = value.clone();
        retirer.retire(value);
        // Once the retirer has let go, this is the last reference.
        let until = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&request) > 1 {
            assert!(Instant::now() < until, "the retirer held on past its bound");
            thread::sleep(Duration::from_millis(1));
        }
        assert!(!dropped.load(Ordering::SeqCst));
        drop(request);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(on.lock().unwrap().as_deref(), thread::current().name());
    }
}
