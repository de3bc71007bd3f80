//! Child processes of tests and benchmarks.

/// Kills a child process when dropped, so a failing test or benchmark leaves nothing running.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
