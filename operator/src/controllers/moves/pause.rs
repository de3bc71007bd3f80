//! Test-only pause points, one per step of a move: with `CELLSTACK_TEST_PAUSE_AT=<step>` (and
//! `CELLSTACK_TEST_PAUSE_MARKER=<file>`) in its environment, the operator stops the first move
//! that reaches that step after the step's cell calls and before its status write, writes the
//! step and the tenant to the marker file, and holds there until it is killed. Tests use it to
//! kill an operator at an exact step (CatchUp writes no status of its own, so a watch cannot
//! catch it) and to change a cell's data at an exact moment of a move.
//!
//! Inert and nearly free when the variable is unset: it is read once, the first time a move
//! reaches a pause point, and every later pause point costs one atomic load. Never set it in
//! production: a held move keeps its tenant's writes fenced or its move unfinished until the
//! process dies.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{
        LazyLock,
        atomic::{AtomicBool, Ordering},
    },
};

use cellstack_api::v1alpha1::MoveStep;
use tracing::{error, warn};

/// The step to pause at (`Prepare`, `Copy`, `Fence`, `CatchUp`, `Flip`, `Cleanup`,
/// `RollingBack`).
pub const PAUSE_AT: &str = "CELLSTACK_TEST_PAUSE_AT";
/// The file written when the pause point is reached: `<step> <tenant>` and a newline.
pub const PAUSE_MARKER: &str = "CELLSTACK_TEST_PAUSE_MARKER";

/// Why the pause variables cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    #[error(
        "{PAUSE_AT}={0:?} names no step with a pause point (Prepare, Copy, Fence, CatchUp, Flip, Cleanup, RollingBack)"
    )]
    UnknownStep(String),
    #[error(
        "{PAUSE_AT} is set but {PAUSE_MARKER} is not: the test would never learn the pause was reached"
    )]
    NoMarker,
}

/// Where to pause, and the file that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub step: MoveStep,
    pub marker: PathBuf,
}

/// The pause asked for by the two variables' values, if any.
pub fn parse(at: Option<OsString>, marker: Option<OsString>) -> Result<Option<Pause>, PauseError> {
    let Some(at) = at else {
        return Ok(None);
    };
    let name = at.to_string_lossy().into_owned();
    let step = serde_json::from_value::<MoveStep>(serde_json::Value::String(name.clone()))
        .ok()
        .filter(|s| !matches!(s, MoveStep::Done | MoveStep::RolledBack))
        .ok_or(PauseError::UnknownStep(name))?;
    let marker = marker
        .filter(|m| !m.is_empty())
        .ok_or(PauseError::NoMarker)?;
    Ok(Some(Pause {
        step,
        marker: PathBuf::from(marker),
    }))
}

static PAUSE: LazyLock<Option<Pause>> = LazyLock::new(|| {
    match parse(std::env::var_os(PAUSE_AT), std::env::var_os(PAUSE_MARKER)) {
        Ok(pause) => {
            if let Some(p) = &pause {
                warn!(step = ?p.step, marker = %p.marker.display(), "test pause point armed: the first move to reach this step will be held until the process is killed");
            }
            pause
        }
        Err(e) => {
            error!(error = %e, "ignoring the test pause point");
            None
        }
    }
});

/// Set once a move has been held: every move of this process stops before acting from then on,
/// so a reconcile cancelled by its deadline does not go on past the held point.
static HELD: AtomicBool = AtomicBool::new(false);

/// The pause point of `step`, reached by `tenant`'s move: returns at once unless this is the
/// step the test asked to hold at, else never.
pub async fn reached(step: MoveStep, tenant: &str) {
    let Some(pause) = PAUSE.as_ref().filter(|p| p.step == step) else {
        return;
    };
    HELD.store(true, Ordering::SeqCst);
    match write_marker(&pause.marker, &format!("{step:?} {tenant}\n")) {
        Ok(()) => {
            warn!(?step, %tenant, marker = %pause.marker.display(), "test pause point reached: holding the move here");
        }
        Err(e) => {
            error!(?step, %tenant, marker = %pause.marker.display(), error = %e, "test pause point reached but the marker cannot be written; holding the move all the same");
        }
    }
    std::future::pending::<()>().await;
}

/// Holds every move for good once one has reached its pause point.
pub async fn hold_if_held() {
    if HELD.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Writes the marker whole or not at all (a reader polling for it never sees half of it).
fn write_marker(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn unset_means_no_pause() {
        assert_eq!(parse(None, os("/tmp/m")), Ok(None));
        assert_eq!(parse(None, None), Ok(None));
    }

    #[test]
    fn every_step_with_effects_can_be_paused_at() {
        for (name, step) in [
            ("Prepare", MoveStep::Prepare),
            ("Copy", MoveStep::Copy),
            ("Fence", MoveStep::Fence),
            ("CatchUp", MoveStep::CatchUp),
            ("Flip", MoveStep::Flip),
            ("Cleanup", MoveStep::Cleanup),
            ("RollingBack", MoveStep::RollingBack),
        ] {
            assert_eq!(
                parse(os(name), os("/tmp/m")),
                Ok(Some(Pause {
                    step,
                    marker: PathBuf::from("/tmp/m")
                })),
                "{name}"
            );
        }
    }

    #[test]
    fn a_final_or_unknown_step_or_a_missing_marker_is_refused() {
        for name in ["Done", "RolledBack", "catchup", ""] {
            assert_eq!(
                parse(os(name), os("/tmp/m")),
                Err(PauseError::UnknownStep(name.into())),
                "{name}"
            );
        }
        assert_eq!(parse(os("Copy"), None), Err(PauseError::NoMarker));
        assert_eq!(parse(os("Copy"), os("")), Err(PauseError::NoMarker));
    }

    #[test]
    fn the_marker_names_the_step_and_the_tenant() {
        let dir = std::env::temp_dir().join(format!("pause-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("marker");
        write_marker(&path, "CatchUp acme\n").expect("marker written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("marker read"),
            "CatchUp acme\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
