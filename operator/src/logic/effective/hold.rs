//! A test-only knob that holds back changes of one named cell's policy file, as a ConfigMap
//! volume that is slow to update would: with `CELLSTACK_TEST_HOLD_POLICY_FILE=<cell>=<seconds>`
//! in the operator's environment, each new content of that cell's policy ConfigMap is written
//! only once the operator has computed it, unchanged, for `<seconds>` (content that changes
//! again meanwhile starts its own wait); until then the ConfigMap keeps the content written
//! before. Other cells, and every cell without the variable, are untouched.
//!
//! It exists so a test can show that a moved tenant's policy is in force on the target before
//! the target's file has it, without shortening the kubelet's own sync period (which would hide
//! the delay rather than survive it). The held state lives in this process: a restarted
//! operator writes the current content at once. A held content is written at the first
//! reconcile of the cell after its wait; the cell controller's resync (`--resync-secs`)
//! bounds when that is.

use std::{
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use cellstack_api::policy::CellPolicies;

/// The environment variable: `<cell>=<seconds>`.
pub const ENV: &str = "CELLSTACK_TEST_HOLD_POLICY_FILE";

/// The hold of one cell's file.
struct Hold {
    cell: String,
    state: Mutex<Held>,
}

static HOLD: LazyLock<Option<Hold>> = LazyLock::new(|| {
    let raw = std::env::var(ENV).ok()?;
    match parse(&raw) {
        Some((cell, delay)) => {
            tracing::warn!(%cell, delay_secs = delay.as_secs(), "{ENV} is set: this cell's policy file changes are held back (a test-only knob)");
            Some(Hold {
                cell,
                state: Mutex::new(Held::new(delay)),
            })
        }
        None => {
            tracing::error!(value = %raw, "{ENV} must be <cell>=<seconds>; nothing is held");
            None
        }
    }
});

/// `<cell>=<seconds>`.
fn parse(raw: &str) -> Option<(String, Duration)> {
    let (cell, secs) = raw.split_once('=')?;
    let secs: u64 = secs.trim().parse().ok()?;
    (!cell.trim().is_empty()).then(|| (cell.trim().to_owned(), Duration::from_secs(secs)))
}

/// The file to write for `cell` now, given the file computed now.
pub fn apply(cell: &str, file: CellPolicies, now: Instant) -> CellPolicies {
    match HOLD.as_ref() {
        Some(hold) if hold.cell == cell => match hold.state.lock() {
            Ok(mut held) => held.next(cell, file, now),
            // A panic elsewhere poisoned it: hold nothing rather than stall the cell.
            Err(_) => file,
        },
        _ => file,
    }
}

/// What was written, and the content waiting to be.
#[derive(Debug)]
struct Held {
    delay: Duration,
    written: Option<CellPolicies>,
    waiting: Option<(CellPolicies, Instant)>,
}

impl Held {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            written: None,
            waiting: None,
        }
    }

    fn next(&mut self, cell: &str, file: CellPolicies, now: Instant) -> CellPolicies {
        let Some(written) = &self.written else {
            // The first content this process computes is written as it is.
            self.written = Some(file.clone());
            return file;
        };
        if *written == file {
            self.waiting = None;
            return file;
        }
        match &self.waiting {
            Some((waiting, since)) if *waiting == file => {
                if now.duration_since(*since) >= self.delay {
                    tracing::info!(%cell, version = %file.version, "held policy file released");
                    self.written = Some(file.clone());
                    self.waiting = None;
                    return file;
                }
            }
            _ => {
                tracing::info!(%cell, version = %file.version, held = %written.version, "holding a policy file change back");
                self.waiting = Some((file, now));
            }
        }
        written.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: &str) -> CellPolicies {
        CellPolicies {
            version: version.into(),
            ..CellPolicies::default()
        }
    }

    #[test]
    fn each_change_is_written_only_after_the_delay_and_a_newer_one_waits_afresh() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut held = Held::new(60 * s);
        assert_eq!(held.next("c", file("a"), t0).version, "a");
        assert_eq!(held.next("c", file("b"), t0).version, "a");
        assert_eq!(held.next("c", file("b"), t0 + 59 * s).version, "a");
        // Changed again before release: waits its own full delay.
        assert_eq!(held.next("c", file("c"), t0 + 59 * s).version, "a");
        assert_eq!(held.next("c", file("c"), t0 + 100 * s).version, "a");
        assert_eq!(held.next("c", file("c"), t0 + 119 * s).version, "c");
        assert_eq!(held.next("c", file("c"), t0 + 120 * s).version, "c");
    }

    #[test]
    fn the_knob_names_one_cell_and_a_delay() {
        assert_eq!(
            parse("bravo-x=75"),
            Some(("bravo-x".to_owned(), Duration::from_secs(75)))
        );
        assert_eq!(parse("bravo"), None);
        assert_eq!(parse("=5"), None);
        assert_eq!(parse("b=soon"), None);
    }
}
