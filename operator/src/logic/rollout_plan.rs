//! The rollout state machine, as a plain function: from the rollout, its last status, the cells
//! it selects and (when asked for) the gate's verdicts, the next status, the cell specs to write
//! and the Events to publish. No I/O: the controller gathers the inputs and carries out the
//! outputs.
//!
//! ```text
//! Pending ──start──▶ Updating ──every lane ready on the version──▶ Baking ──gate passes──▶ Done
//!                       │                                             │
//!                       └──progress deadline──┬──────gate fails───────┘
//!                                             ▼
//!                              RolledBack (the whole wave; rollout Halted)
//! ```
//!
//! Writes are level-based: every reconcile derives what each cell's spec should say from its
//! step (Updating, Baking and Done → the new version; RolledBack → what it ran before) and
//! writes only where the cell differs, so a hand edit or a lost write is repaired.

use std::{collections::BTreeMap, time::Duration};

use cellstack_api::v1alpha1::{
    CellRolloutSpec, CellRolloutStatus, RolloutAction, RolloutCell, RolloutCellState, RolloutPhase,
    ServiceSetVersion, condition_type,
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use sha2::{Digest, Sha256};

use crate::logic::conditions::{self, Desired};

pub mod reason {
    pub const WAVE_UPDATING: &str = "WaveUpdating";
    pub const WAVE_BAKING: &str = "WaveBaking";
    pub const PAUSED: &str = "Paused";
    pub const HALTED: &str = "Halted";
    pub const ABORTED: &str = "Aborted";
    pub const COMPLETE: &str = "Complete";
    pub const NO_CELLS: &str = "NoCells";
    pub const GATE_FAILED: &str = "GateFailed";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const HEALTHY: &str = "Healthy";
}

/// A selected cell as the controller found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedCell {
    pub name: String,
    /// What its spec says now.
    pub running: ServiceSetVersion,
    /// Its status describes its current spec and says Ready (every lane ready on the latest
    /// revision, datastore ready).
    pub settled: bool,
    /// Tenants it holds: the first waves take the cells with fewest.
    pub tenants: u32,
}

/// The gate's word on one cell of the wave being judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass(String),
    Fail(String),
    /// Not enough traffic yet to judge.
    Inconclusive(String),
}

/// Everything [`advance`] decides from.
#[derive(Debug)]
pub struct Input<'a> {
    pub spec: &'a CellRolloutSpec,
    pub generation: Option<i64>,
    pub status: &'a CellRolloutStatus,
    /// The cells the rollout selects (those another rollout claims first are left out).
    pub cells: &'a [ObservedCell],
    pub now: Timestamp,
    /// When the controller took its first reading of the wave now baking (`None`: none in
    /// memory, e.g. after a restart: the bake starts over).
    pub bake_started: Option<Timestamp>,
    /// The gate's verdicts on the baking wave's cells, when the controller was asked to judge.
    pub verdicts: Option<&'a BTreeMap<String, Verdict>>,
}

/// What the controller must do before [`advance`] can go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// Take the first reading of the wave now baking and of the baseline cells.
    FirstReading {
        wave: Vec<String>,
        baseline: Vec<String>,
    },
    /// The bake is over: read the wave and the baseline again and judge.
    Verdicts {
        wave: Vec<String>,
        baseline: Vec<String>,
    },
}

/// An Event to publish on the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What [`advance`] decided.
#[derive(Debug)]
pub struct Step {
    pub status: CellRolloutStatus,
    /// Cell specs to write: `(cell, version)`.
    pub writes: Vec<(String, ServiceSetVersion)>,
    pub notes: Vec<Note>,
    pub need: Need,
    /// When to look again at the latest (cell events also bring the rollout back).
    pub requeue: Duration,
}

/// The version a rollout takes its cells to.
pub fn target(spec: &CellRolloutSpec) -> ServiceSetVersion {
    ServiceSetVersion {
        version: Some(spec.version.clone()),
        services: spec.services.clone(),
    }
}

/// A short, stable hash of `version`: a new one starts the waves over.
pub fn revision(version: &ServiceSetVersion) -> String {
    let json = serde_json::to_vec(version).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Wave sizes for `cells` cells: `first`, then each `growth` times the one before.
pub fn wave_sizes(cells: usize, first: u32, growth: u32) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut size = first.max(1) as usize;
    let mut left = cells;
    while left > 0 {
        let take = size.min(left);
        sizes.push(take);
        left -= take;
        size = size.saturating_mul(growth.max(1) as usize);
    }
    sizes
}

/// Longest wait between looks while something is in flight.
const POLL: Duration = Duration::from_secs(5);
/// How long a settled rollout waits for the next look (cell events come sooner).
const IDLE: Duration = Duration::from_secs(300);
/// How soon an inconclusive gate is read again.
const INCONCLUSIVE_RETRY: Duration = Duration::from_secs(10);

/// One step of the rollout.
pub fn advance(input: &Input<'_>) -> Step {
    let target = target(input.spec);
    let revision = revision(&target);
    let now = Time(input.now);
    let mut notes = Vec::new();
    let mut status = input.status.clone();

    if status.revision.as_deref() != Some(revision.as_str()) {
        status = plan(input, &target, &revision, &now);
        if !status.cells.is_empty() {
            notes.push(Note {
                warning: false,
                reason: "RolloutStarted",
                message: format!(
                    "rolling out version {} (revision {revision}) to {} cell(s) in {} wave(s), first: {}",
                    input.spec.version,
                    status.cells.len(),
                    status.waves,
                    wave_names(&status.cells, 1).join(", ")
                ),
            });
        }
    } else {
        follow_selection(&mut status, input, &target, &now);
    }

    let mut need = Need::Nothing;
    let mut requeue = IDLE;
    let mut degraded: Option<(&'static str, String)> = None;
    let halted =
        status.phase == RolloutPhase::Halted && status.halted_attempt == Some(input.spec.attempt);

    if input.spec.action == RolloutAction::Abort {
        let mut rolled = Vec::new();
        for c in &mut status.cells {
            let touched = matches!(
                c.state,
                RolloutCellState::Updating | RolloutCellState::Baking | RolloutCellState::Done
            );
            if touched && c.previous.is_some() {
                c.state = RolloutCellState::RolledBack;
                c.since = Some(now.clone());
                rolled.push(c.name.clone());
            }
        }
        if status.phase != RolloutPhase::Aborted {
            notes.push(Note {
                warning: true,
                reason: "RolloutAborted",
                message: if rolled.is_empty() {
                    "aborted; no cell had been changed".into()
                } else {
                    format!("aborted; rolling back {}", rolled.join(", "))
                },
            });
        }
        status.phase = RolloutPhase::Aborted;
        status.bake_started_at = None;
    } else if halted {
        // Stays put until `attempt` or the version changes; rolled-back cells stay rolled back.
        degraded = Some((
            reason::GATE_FAILED,
            status
                .last_gate
                .clone()
                .unwrap_or_else(|| "a wave failed its gate".into()),
        ));
    } else {
        // Proceeding (or paused): cells rolled back by an earlier halt or abort start over.
        for c in &mut status.cells {
            if c.state == RolloutCellState::RolledBack {
                c.state = RolloutCellState::Pending;
                c.previous = None;
                c.reading = None;
                c.since = Some(now.clone());
            }
        }
        status.halted_attempt = None;
        requeue = progress(
            input,
            &target,
            &mut status,
            &mut notes,
            &mut need,
            &mut degraded,
        );
    }

    let writes = writes(&status, input.cells, &target);
    summarize(&mut status);
    status.observed_generation = input.generation;
    let (progressing, progressing_reason, progressing_message) = match status.phase {
        RolloutPhase::Progressing => (
            true,
            if status.bake_started_at.is_some() {
                reason::WAVE_BAKING
            } else {
                reason::WAVE_UPDATING
            },
            format!(
                "wave {} of {}: {}",
                status.wave,
                status.waves,
                wave_names(&status.cells, status.wave).join(", ")
            ),
        ),
        RolloutPhase::Paused => (false, reason::PAUSED, "action: Pause".to_owned()),
        RolloutPhase::Halted => (
            false,
            reason::HALTED,
            "a wave failed; raise spec.attempt to retry it, or roll out another version".to_owned(),
        ),
        RolloutPhase::Aborted => (false, reason::ABORTED, "action: Abort".to_owned()),
        RolloutPhase::Complete => (
            false,
            reason::COMPLETE,
            format!("every selected cell runs {}", input.spec.version),
        ),
        RolloutPhase::Pending => (
            false,
            reason::NO_CELLS,
            "the selector matches no cell".to_owned(),
        ),
    };
    let (degraded_status, degraded_reason, degraded_message) = match degraded {
        Some((reason, message)) => (true, reason, message),
        None => (false, reason::HEALTHY, "no wave has failed".to_owned()),
    };
    status.conditions = conditions::merge(
        &input.status.conditions,
        &[
            Desired::new(
                condition_type::PROGRESSING,
                progressing,
                progressing_reason,
                progressing_message,
            ),
            Desired::new(
                condition_type::DEGRADED,
                degraded_status,
                degraded_reason,
                degraded_message,
            ),
        ],
        input.generation,
        &now,
    );
    Step {
        status,
        writes,
        notes,
        need,
        requeue,
    }
}

/// A fresh plan for a new revision: cells with fewest tenants first (then by name), in waves;
/// a cell already on the version is Done from the start.
fn plan(
    input: &Input<'_>,
    target: &ServiceSetVersion,
    revision: &str,
    now: &Time,
) -> CellRolloutStatus {
    let mut cells: Vec<&ObservedCell> = input.cells.iter().collect();
    cells.sort_by(|a, b| a.tenants.cmp(&b.tenants).then_with(|| a.name.cmp(&b.name)));
    let sizes = wave_sizes(
        cells.len(),
        input.spec.strategy.first_wave,
        input.spec.strategy.wave_growth,
    );
    let mut planned = Vec::with_capacity(cells.len());
    let mut it = cells.into_iter();
    for (i, size) in sizes.iter().enumerate() {
        for c in it.by_ref().take(*size) {
            planned.push(planned_cell(c, i as u32 + 1, target, now));
        }
    }
    CellRolloutStatus {
        phase: if planned.is_empty() {
            RolloutPhase::Pending
        } else {
            RolloutPhase::Progressing
        },
        revision: Some(revision.to_owned()),
        waves: sizes.len() as u32,
        cells: planned,
        ..CellRolloutStatus::default()
    }
}

/// A cell entering the plan in `wave`: done already if it runs the version.
fn planned_cell(
    cell: &ObservedCell,
    wave: u32,
    target: &ServiceSetVersion,
    now: &Time,
) -> RolloutCell {
    RolloutCell {
        name: cell.name.clone(),
        wave,
        state: if &cell.running == target {
            RolloutCellState::Done
        } else {
            RolloutCellState::Pending
        },
        since: Some(now.clone()),
        previous: None,
        reading: None,
    }
}

/// Cells that left the selection leave the plan; new ones join the last wave.
fn follow_selection(
    status: &mut CellRolloutStatus,
    input: &Input<'_>,
    target: &ServiceSetVersion,
    now: &Time,
) {
    status
        .cells
        .retain(|c| input.cells.iter().any(|o| o.name == c.name));
    let last = status.cells.iter().map(|c| c.wave).max().unwrap_or(1);
    for o in input.cells {
        if !status.cells.iter().any(|c| c.name == o.name) {
            status.cells.push(planned_cell(o, last, target, now));
        }
    }
    status.waves = status.cells.iter().map(|c| c.wave).max().unwrap_or(0);
}

/// Moves the current wave on. Returns when to look again.
fn progress(
    input: &Input<'_>,
    target: &ServiceSetVersion,
    status: &mut CellRolloutStatus,
    notes: &mut Vec<Note>,
    need: &mut Need,
    degraded: &mut Option<(&'static str, String)>,
) -> Duration {
    let now = Time(input.now);
    let strategy = &input.spec.strategy;
    let paused = input.spec.action == RolloutAction::Pause;
    let Some(wave) = status
        .cells
        .iter()
        .filter(|c| c.state != RolloutCellState::Done)
        .map(|c| c.wave)
        .min()
    else {
        if !status.cells.is_empty() && status.phase != RolloutPhase::Complete {
            notes.push(Note {
                warning: false,
                reason: "RolloutComplete",
                message: format!(
                    "every one of {} cell(s) runs version {}",
                    status.cells.len(),
                    input.spec.version
                ),
            });
        }
        status.phase = if status.cells.is_empty() {
            RolloutPhase::Pending
        } else {
            RolloutPhase::Complete
        };
        status.wave = status.waves;
        status.bake_started_at = None;
        return IDLE;
    };
    if status.wave != wave {
        status.wave = wave;
        status.bake_started_at = None;
    }
    let observed = |name: &str| input.cells.iter().find(|o| o.name == name);
    let mut started = Vec::new();
    let mut late = Vec::new();
    for c in status.cells.iter_mut().filter(|c| c.wave == wave) {
        let Some(o) = observed(&c.name) else { continue };
        match c.state {
            RolloutCellState::Pending if !paused => {
                c.previous = (&o.running != target).then(|| o.running.clone());
                c.state = RolloutCellState::Updating;
                c.since = Some(now.clone());
                c.reading = None;
                started.push(c.name.clone());
            }
            RolloutCellState::Updating => {
                if &o.running == target && o.settled {
                    c.state = RolloutCellState::Baking;
                    c.since = Some(now.clone());
                } else if elapsed(c.since.as_ref(), input.now)
                    > Duration::from_secs(u64::from(strategy.progress_deadline_seconds))
                {
                    late.push(c.name.clone());
                }
            }
            _ => {}
        }
    }
    if !started.is_empty() {
        notes.push(Note {
            warning: false,
            reason: "WaveStarted",
            message: format!(
                "wave {wave} of {}: updating {} to version {}",
                status.waves,
                started.join(", "),
                input.spec.version
            ),
        });
    }
    if !late.is_empty() {
        let message = format!(
            "wave {wave}: {} did not run version {} with every lane ready within {} s; rolled back",
            late.join(", "),
            input.spec.version,
            strategy.progress_deadline_seconds
        );
        halt(
            status,
            input,
            wave,
            message,
            reason::DEADLINE_EXCEEDED,
            notes,
            degraded,
        );
        return POLL;
    }

    let in_wave: Vec<&RolloutCell> = status.cells.iter().filter(|c| c.wave == wave).collect();
    let waiting = in_wave.iter().any(|c| c.state == RolloutCellState::Pending);
    let baking = in_wave
        .iter()
        .all(|c| matches!(c.state, RolloutCellState::Baking | RolloutCellState::Done))
        && in_wave.iter().any(|c| c.state == RolloutCellState::Baking);
    status.phase = if paused
        && waiting
        && !in_wave
            .iter()
            .any(|c| c.state == RolloutCellState::Updating)
    {
        RolloutPhase::Paused
    } else {
        RolloutPhase::Progressing
    };
    if !baking {
        status.bake_started_at = None;
        return POLL;
    }

    let wave_cells: Vec<String> = in_wave
        .iter()
        .filter(|c| c.state == RolloutCellState::Baking)
        .map(|c| c.name.clone())
        .collect();
    let baseline: Vec<String> = status
        .cells
        .iter()
        .filter(|c| c.state == RolloutCellState::Pending && c.wave > wave)
        .map(|c| c.name.clone())
        .collect();
    let Some(bake_started) = input.bake_started else {
        status.bake_started_at = Some(now.clone());
        *need = Need::FirstReading {
            wave: wave_cells,
            baseline,
        };
        return Duration::from_secs(u64::from(strategy.bake_seconds));
    };
    status.bake_started_at = Some(Time(bake_started));
    let bake = Duration::from_secs(u64::from(strategy.bake_seconds));
    let baked = elapsed(Some(&Time(bake_started)), input.now);
    if baked < bake {
        return (bake - baked).min(IDLE);
    }
    let Some(verdicts) = input.verdicts else {
        *need = Need::Verdicts {
            wave: wave_cells,
            baseline,
        };
        return POLL;
    };

    let mut failed = Vec::new();
    let mut inconclusive = false;
    let mut readings = Vec::new();
    for c in status
        .cells
        .iter_mut()
        .filter(|c| wave_cells.contains(&c.name))
    {
        let verdict = verdicts
            .get(&c.name)
            .cloned()
            .unwrap_or_else(|| Verdict::Inconclusive("no reading".into()));
        let (text, word) = match &verdict {
            Verdict::Pass(r) => (r.clone(), "pass"),
            Verdict::Fail(r) => (r.clone(), "FAIL"),
            Verdict::Inconclusive(r) => (r.clone(), "waiting"),
        };
        c.reading = Some(format!("{text}: {word}"));
        readings.push(format!("{}: {text}: {word}", c.name));
        match verdict {
            Verdict::Fail(_) => failed.push(c.name.clone()),
            Verdict::Inconclusive(_) => inconclusive = true,
            Verdict::Pass(_) => {}
        }
    }
    status.last_gate = Some(readings.join("; "));
    if !failed.is_empty() {
        let message = format!(
            "wave {wave}: {} failed the health gate after {} s on version {} ({}); rolled back",
            failed.join(", "),
            strategy.bake_seconds,
            input.spec.version,
            readings.join("; ")
        );
        halt(
            status,
            input,
            wave,
            message,
            reason::GATE_FAILED,
            notes,
            degraded,
        );
        return POLL;
    }
    if inconclusive {
        return INCONCLUSIVE_RETRY;
    }
    for c in status
        .cells
        .iter_mut()
        .filter(|c| wave_cells.contains(&c.name))
    {
        c.state = RolloutCellState::Done;
        c.since = Some(now.clone());
    }
    status.bake_started_at = None;
    notes.push(Note {
        warning: false,
        reason: "WavePassed",
        message: format!(
            "wave {wave} of {} passed: {}",
            status.waves,
            readings.join("; ")
        ),
    });
    // The next wave starts on the next look, right away.
    Duration::from_millis(100)
}

/// Stops the rollout at `wave`: each of its cells the rollout changed goes back to what it ran.
fn halt(
    status: &mut CellRolloutStatus,
    input: &Input<'_>,
    wave: u32,
    message: String,
    why: &'static str,
    notes: &mut Vec<Note>,
    degraded: &mut Option<(&'static str, String)>,
) {
    let now = Time(input.now);
    for c in status.cells.iter_mut().filter(|c| c.wave == wave) {
        if matches!(
            c.state,
            RolloutCellState::Updating | RolloutCellState::Baking
        ) || (c.state == RolloutCellState::Done && c.previous.is_some())
        {
            c.state = if c.previous.is_some() {
                RolloutCellState::RolledBack
            } else {
                // It ran the version before the rollout; there is nothing to go back to.
                RolloutCellState::Done
            };
            c.since = Some(now.clone());
        }
    }
    status.phase = RolloutPhase::Halted;
    status.halted_attempt = Some(input.spec.attempt);
    status.bake_started_at = None;
    status.last_gate = Some(message.clone());
    notes.push(Note {
        warning: true,
        reason: if why == reason::GATE_FAILED {
            "WaveHalted"
        } else {
            "WaveDeadlineExceeded"
        },
        message: message.clone(),
    });
    *degraded = Some((why, message));
}

/// The spec each planned cell should carry, where it differs from what it carries.
fn writes(
    status: &CellRolloutStatus,
    cells: &[ObservedCell],
    target: &ServiceSetVersion,
) -> Vec<(String, ServiceSetVersion)> {
    status
        .cells
        .iter()
        .filter_map(|c| {
            let want = match c.state {
                RolloutCellState::Updating | RolloutCellState::Baking => target,
                RolloutCellState::Done if c.previous.is_some() => target,
                RolloutCellState::RolledBack => c.previous.as_ref()?,
                _ => return None,
            };
            let o = cells.iter().find(|o| o.name == c.name)?;
            (&o.running != want).then(|| (c.name.clone(), want.clone()))
        })
        .collect()
}

fn summarize(status: &mut CellRolloutStatus) {
    status.cells_total = status.cells.len() as u32;
    status.cells_done = status
        .cells
        .iter()
        .filter(|c| c.state == RolloutCellState::Done)
        .count() as u32;
    status.cells_summary = Some(format!("{}/{}", status.cells_done, status.cells_total));
    status.wave_summary = Some(format!("{}/{}", status.wave, status.waves));
}

fn wave_names(cells: &[RolloutCell], wave: u32) -> Vec<String> {
    cells
        .iter()
        .filter(|c| c.wave == wave)
        .map(|c| c.name.clone())
        .collect()
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::{
        CellSelector, HealthGate, RolloutStrategy, condition_type::DEGRADED,
    };

    use super::*;

    fn spec(version: &str) -> CellRolloutSpec {
        CellRolloutSpec {
            cells: CellSelector {
                names: vec!["a".into(), "b".into(), "c".into()],
                ..CellSelector::default()
            },
            version: version.into(),
            services: vec![],
            strategy: RolloutStrategy {
                bake_seconds: 30,
                progress_deadline_seconds: 120,
                ..RolloutStrategy::default()
            },
            gate: HealthGate::default(),
            action: RolloutAction::Proceed,
            attempt: 0,
        }
    }

    fn version(v: &str) -> ServiceSetVersion {
        ServiceSetVersion {
            version: Some(v.into()),
            services: vec![],
        }
    }

    /// Three cells on v1: `b` holds fewest tenants, then `c`, then `a`.
    fn cells() -> Vec<ObservedCell> {
        [("a", 10), ("b", 5), ("c", 7)]
            .into_iter()
            .map(|(name, tenants)| ObservedCell {
                name: name.into(),
                running: version("v1"),
                settled: true,
                tenants,
            })
            .collect()
    }

    /// A rollout and its world, stepped like the controller does.
    struct World {
        spec: CellRolloutSpec,
        status: CellRolloutStatus,
        cells: Vec<ObservedCell>,
        now: Timestamp,
        bake_started: Option<Timestamp>,
    }

    impl World {
        fn new(spec: CellRolloutSpec) -> Self {
            Self {
                spec,
                status: CellRolloutStatus::default(),
                cells: cells(),
                now: Timestamp::from_second(1_800_000_000).unwrap(),
                bake_started: None,
            }
        }

        /// One reconcile; `verdicts` answers a request to judge. Writes land in the cells'
        /// specs, unsettled until [`World::settle`].
        fn step(&mut self, verdicts: Option<&BTreeMap<String, Verdict>>) -> Step {
            let mut input = Input {
                spec: &self.spec,
                generation: Some(1),
                status: &self.status,
                cells: &self.cells,
                now: self.now,
                bake_started: self.bake_started,
                verdicts: None,
            };
            let mut step = advance(&input);
            match &step.need {
                Need::FirstReading { .. } => {
                    self.bake_started = Some(self.now);
                    input.bake_started = self.bake_started;
                    step = advance(&input);
                }
                Need::Verdicts { .. } => {
                    input.verdicts = Some(verdicts.expect("the plan asked for verdicts"));
                    step = advance(&input);
                }
                Need::Nothing => {}
            }
            for (name, v) in &step.writes {
                let cell = self.cells.iter_mut().find(|c| &c.name == name).unwrap();
                cell.running = v.clone();
                cell.settled = false;
            }
            if step.status.bake_started_at.is_none() {
                self.bake_started = None;
            }
            self.status = step.status.clone();
            step
        }

        fn settle(&mut self) {
            for c in &mut self.cells {
                c.settled = true;
            }
        }

        fn wait(&mut self, secs: i64) {
            self.now += k8s_openapi::jiff::SignedDuration::from_secs(secs);
        }

        fn state(&self, name: &str) -> RolloutCellState {
            self.status
                .cells
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .state
        }

        fn running(&self, name: &str) -> Option<String> {
            self.cells
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .running
                .version
                .clone()
        }
    }

    fn all(verdict: fn(String) -> Verdict, names: &[&str]) -> BTreeMap<String, Verdict> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), verdict(format!("reading of {n}"))))
            .collect()
    }

    #[test]
    fn waves_grow_from_the_first_by_the_growth_factor() {
        assert_eq!(wave_sizes(3, 1, 2), vec![1, 2]);
        assert_eq!(wave_sizes(10, 1, 2), vec![1, 2, 4, 3]);
        assert_eq!(wave_sizes(5, 2, 1), vec![2, 2, 1]);
        assert_eq!(wave_sizes(0, 1, 2), Vec::<usize>::new());
    }

    #[test]
    fn a_good_version_goes_wave_by_wave_fewest_tenants_first_and_completes() {
        let mut w = World::new(spec("v2"));
        let step = w.step(None);
        assert_eq!(step.writes, vec![("b".to_owned(), version("v2"))]);
        assert_eq!(w.status.waves, 2);
        assert_eq!(w.status.wave_summary.as_deref(), Some("1/2"));
        assert_eq!(w.state("b"), RolloutCellState::Updating);
        assert_eq!(w.state("a"), RolloutCellState::Pending);
        assert!(step.notes.iter().any(|n| n.reason == "RolloutStarted"));
        assert!(step.notes.iter().any(|n| n.reason == "WaveStarted"));

        // Not settled yet: nothing moves, nothing is written again.
        let step = w.step(None);
        assert!(step.writes.is_empty());
        assert_eq!(w.state("b"), RolloutCellState::Updating);

        // Settled: the wave bakes; the first reading covers b and the baseline a, c.
        w.settle();
        let first = advance(&Input {
            spec: &w.spec,
            generation: Some(1),
            status: &w.status,
            cells: &w.cells,
            now: w.now,
            bake_started: None,
            verdicts: None,
        });
        assert_eq!(
            first.need,
            Need::FirstReading {
                wave: vec!["b".into()],
                baseline: vec!["c".into(), "a".into()],
            }
        );
        let step = w.step(None);
        assert_eq!(w.state("b"), RolloutCellState::Baking);
        assert_eq!(step.requeue, Duration::from_secs(30));

        // Halfway through the bake: nothing to judge yet.
        w.wait(15);
        let step = w.step(None);
        assert_eq!(step.need, Need::Nothing);
        assert_eq!(step.requeue, Duration::from_secs(15));

        // Baked and healthy: b is done, the next wave starts.
        w.wait(15);
        let step = w.step(Some(&all(Verdict::Pass, &["b"])));
        assert_eq!(w.state("b"), RolloutCellState::Done);
        assert!(step.notes.iter().any(|n| n.reason == "WavePassed"));
        assert!(
            w.status
                .last_gate
                .as_deref()
                .unwrap()
                .contains("reading of b: pass")
        );
        let step = w.step(None);
        let mut written: Vec<_> = step.writes.iter().map(|(n, _)| n.as_str()).collect();
        written.sort_unstable();
        assert_eq!(written, ["a", "c"]);
        assert_eq!(w.status.wave, 2);

        w.settle();
        w.step(None);
        w.wait(30);
        w.step(Some(&all(Verdict::Pass, &["a", "c"])));
        let step = w.step(None);
        assert_eq!(w.status.phase, RolloutPhase::Complete);
        assert_eq!(w.status.cells_summary.as_deref(), Some("3/3"));
        assert!(
            step.notes.iter().any(|n| n.reason == "RolloutComplete") || w.status.cells_done == 3
        );
        assert!(
            ["a", "b", "c"]
                .iter()
                .all(|c| w.running(c).as_deref() == Some("v2"))
        );
        assert!(!conditions::is_true(&w.status.conditions, DEGRADED));
    }

    #[test]
    fn a_failing_wave_is_rolled_back_and_the_rollout_halts_until_attempt_is_raised() {
        let mut w = World::new(spec("v2-bad"));
        w.step(None);
        w.settle();
        w.step(None);
        w.wait(30);
        let step = w.step(Some(&all(Verdict::Fail, &["b"])));
        assert_eq!(w.status.phase, RolloutPhase::Halted);
        assert_eq!(w.state("b"), RolloutCellState::RolledBack);
        assert_eq!(step.writes, vec![("b".to_owned(), version("v1"))]);
        assert_eq!(w.running("b").as_deref(), Some("v1"));
        assert!(
            step.notes
                .iter()
                .any(|n| n.warning && n.reason == "WaveHalted")
        );
        assert!(conditions::is_true(&w.status.conditions, DEGRADED));
        assert!(
            w.status
                .last_gate
                .as_deref()
                .unwrap()
                .contains("reading of b")
        );
        // The other cells were never touched.
        assert_eq!(w.running("a").as_deref(), Some("v1"));
        assert_eq!(w.running("c").as_deref(), Some("v1"));

        // Halted: nothing more happens, however long it waits.
        w.settle();
        w.wait(600);
        let step = w.step(None);
        assert!(step.writes.is_empty() && step.notes.is_empty());
        assert_eq!(w.status.phase, RolloutPhase::Halted);

        // A person retries: the failed wave starts over.
        w.spec.attempt = 1;
        let step = w.step(None);
        assert_eq!(step.writes, vec![("b".to_owned(), version("v2-bad"))]);
        assert_eq!(w.status.phase, RolloutPhase::Progressing);
    }

    #[test]
    fn a_cell_that_never_turns_ready_fails_the_wave_at_the_progress_deadline() {
        let mut w = World::new(spec("v2"));
        w.step(None);
        w.wait(119);
        w.step(None);
        assert_eq!(w.status.phase, RolloutPhase::Progressing);
        w.wait(2);
        let step = w.step(None);
        assert_eq!(w.status.phase, RolloutPhase::Halted);
        assert!(
            step.notes
                .iter()
                .any(|n| n.reason == "WaveDeadlineExceeded")
        );
        assert_eq!(w.running("b").as_deref(), Some("v1"));
    }

    #[test]
    fn pause_starts_no_cell_and_abort_puts_back_every_updated_one() {
        let mut w = World::new(spec("v2"));
        w.spec.action = RolloutAction::Pause;
        let step = w.step(None);
        assert!(step.writes.is_empty());
        assert_eq!(w.status.phase, RolloutPhase::Paused);

        w.spec.action = RolloutAction::Proceed;
        w.step(None);
        w.settle();
        w.step(None);
        w.wait(30);
        w.step(Some(&all(Verdict::Pass, &["b"])));
        w.step(None); // wave 2 starts: a and c updating
        assert_eq!(w.running("a").as_deref(), Some("v2"));

        w.spec.action = RolloutAction::Abort;
        let step = w.step(None);
        assert_eq!(w.status.phase, RolloutPhase::Aborted);
        assert_eq!(step.writes.len(), 3);
        assert!(
            ["a", "b", "c"]
                .iter()
                .all(|c| w.running(c).as_deref() == Some("v1"))
        );
        assert!(step.notes.iter().any(|n| n.reason == "RolloutAborted"));
        let step = w.step(None);
        assert!(step.notes.is_empty() && step.writes.is_empty());
    }

    #[test]
    fn an_inconclusive_gate_keeps_the_wave_baking() {
        let mut w = World::new(spec("v2"));
        w.step(None);
        w.settle();
        w.step(None);
        w.wait(30);
        let step = w.step(Some(&all(Verdict::Inconclusive, &["b"])));
        assert_eq!(w.state("b"), RolloutCellState::Baking);
        assert_eq!(step.requeue, INCONCLUSIVE_RETRY);
        assert!(w.status.last_gate.as_deref().unwrap().contains("waiting"));
    }

    #[test]
    fn cells_already_on_the_version_count_as_done_and_a_new_version_starts_over() {
        let mut w = World::new(spec("v1"));
        let step = w.step(None);
        assert!(step.writes.is_empty());
        assert_eq!(w.status.phase, RolloutPhase::Complete);

        w.spec.version = "v3".into();
        let step = w.step(None);
        assert_eq!(step.writes, vec![("b".to_owned(), version("v3"))]);
        assert_eq!(w.status.cells_done, 0);
    }

    #[test]
    fn a_cell_added_to_the_selection_joins_the_last_wave() {
        let mut w = World::new(spec("v2"));
        w.step(None);
        w.cells.push(ObservedCell {
            name: "d".into(),
            running: version("v1"),
            settled: true,
            tenants: 0,
        });
        w.step(None);
        let d = w.status.cells.iter().find(|c| c.name == "d").unwrap();
        assert_eq!((d.wave, d.state), (2, RolloutCellState::Pending));
        w.cells.retain(|c| c.name != "a");
        w.step(None);
        assert!(w.status.cells.iter().all(|c| c.name != "a"));
    }
}
