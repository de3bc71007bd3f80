//! Loopback ports for the processes a test starts (cells, routers, Redis servers, sentinels).
//!
//! Asking the kernel for port 0 and closing the listener again (the usual trick) hands out a port
//! from the *ephemeral* range, the same range every outgoing connection takes its source port
//! from. On a busy test run (dozens of HTTP and Redis clients connecting in parallel) one of them
//! can take that port between the test learning it and the child process binding it, and the
//! child dies with "Address already in use" — which is how CI once failed a cell test.
//!
//! [`free_port`] hands out ports from a range the kernel never uses for outgoing connections
//! (below `ip_local_port_range`, above the well-known ports and below the NodePort range of the
//! local cluster), never the same one twice in a process, and only ports it could bind just now.
//! Test binaries of one `cargo test` run one after another, and each starts at a different place
//! in the range (picked from its process id and the clock), so two binaries do not walk the same
//! ports either.

use std::{
    net::TcpListener,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// First port handed out (inclusive).
const FIRST: u32 = 20_000;
/// Number of ports in the range: 20000..=29999. Below 30000, where the cluster's NodePorts start,
/// and well below 32768, where Linux's default ephemeral range starts.
const SPAN: u32 = 10_000;

/// The offset of the next candidate in the range, starting somewhere that depends on the process.
fn next_offset() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let start = (std::process::id().wrapping_mul(7919) ^ nanos) % SPAN;
        // Only the first caller's start counts; the others find it set.
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT.fetch_add(1, Ordering::Relaxed) % SPAN
}

/// A loopback port nothing listens on right now, outside the ephemeral range, that this process
/// has not handed out before.
///
/// # Panics
/// When the whole range is taken, which means something else is badly wrong on the machine.
pub fn free_port() -> u16 {
    for _ in 0..SPAN {
        let port = FIRST + next_offset();
        let port = u16::try_from(port).expect("the range is within u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: the counter is per process, and a second test walking the range in
    /// parallel would make the first see a port again.
    #[test]
    fn ports_are_outside_the_ephemeral_range_unrepeated_and_never_one_that_is_taken() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        assert!(
            ports.iter().all(|&p| (20_000..30_000).contains(&p)),
            "{ports:?}"
        );

        let taken = free_port();
        let _listener = TcpListener::bind(("127.0.0.1", taken)).expect("binding the port");
        // Walk the whole range once more: the taken port must never come back.
        assert!((0..SPAN).all(|_| free_port() != taken));
    }
}
