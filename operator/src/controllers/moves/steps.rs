//! The steps of a move, each idempotent, each recorded in the TenantAssignment status before
//! or after the cell calls it makes, so that a restarted operator resumes from the record:
//!
//! | step | cell calls | recorded |
//! | --- | --- | --- |
//! | Prepare | target: purge leftovers, create the tenant `importing`; source: `mark` | then Copy, with the key count |
//! | Copy | source `export` pages → target `import` | progress every 2 s, then Fence with `fencedAt` (before fencing) |
//! | Fence (+ Catch up, verify) | source `fence`; source `changes` → target `import`; both `checksum` | then Flip |
//! | Flip | target `activate` at epoch + 1; source `moved` | then Cleanup, with the new cell and epoch |
//! | Cleanup | source: purge, keep a `moved` record for routers with an old table | then Done |
//! | RollingBack | source `activate` at the old epoch (unfences); target purge | then RolledBack |
//!
//! Catch-up and verification run inside the fence window without a status write of their own
//! (each write is a round trip added to the pause); a crash there resumes at Fence, which is
//! idempotent, and the pause bound then decides whether to go on or roll back.
//!
//! Each step has a test-only pause point ([`super::pause`]) after its cell calls and before its
//! status write (CatchUp's after the catch-up and verification, inside the fence window), so a
//! test can kill the operator at exactly that step; it does nothing unless a test arms it.
//!
//! Every status write carries the resourceVersion this mover last saw, so two writers (an old
//! leader still running, say) cannot both advance a move: the second gets a conflict.

use std::time::{Duration, Instant};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    v1alpha1::{
        Cell, MoveStatus, MoveStep, StepDuration, TenantAssignment, TenantAssignmentStatus,
        TenantPhase, condition_type,
    },
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::pause;
use crate::{
    cached_tenant::CachedTenant,
    cell_admin::{CellAdmin, Provisioned},
    context::Context,
    controllers,
    error::{Error, Result},
    logic::{
        conditions::{self, Desired},
        move_plan::{self as plan, Next, Settings},
    },
    metrics::{MoveResultLabels, MoveStepLabels},
};

/// Keys per export page of the bulk copy.
const COPY_PAGE: usize = 1000;
/// Pages of the bulk copy read ahead of the one being written.
const COPY_PAGES_AHEAD: usize = 2;
/// Keys per page of the catch-up.
const CATCH_UP_PAGE: usize = 1000;
/// How often copy progress is written to status.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Catch-up rounds before fencing, at most: each copies what was written during the one before.
const PRE_FENCE_ROUNDS: usize = 3;
/// A pre-fence round that took this few keys is enough: the fenced catch-up will be as short.
const PRE_FENCE_ENOUGH: u64 = 100;
/// How soon a move waiting for its target cell looks again.
const TARGET_RECHECK: Duration = Duration::from_secs(5);

pub mod reason {
    pub const MOVING: &str = "Moving";
    pub const MOVED: &str = "Moved";
    pub const ROLLING_BACK: &str = "RollingBack";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const WAITING_FOR_TARGET: &str = "WaitingForTarget";
}

/// What the driver ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No move wanted and none under way: the caller goes on with plain placement.
    Idle,
    /// Come back after this long.
    Requeue(Duration),
}

/// Drives one tenant's move as far as it can go now.
pub struct Mover<'a> {
    ctx: &'a Context,
    cells: &'a [Cell],
    settings: Settings,
    api: Api<TenantAssignment>,
    /// The object as last read or written by this mover.
    ta: TenantAssignment,
    /// When this mover recorded the Fence step: `fencedAt` in status has whole seconds only,
    /// too coarse for a pause of milliseconds (a resumed move uses it, which overstates).
    fenced: Option<Instant>,
    /// When this mover began the current step (the record's time has whole seconds only).
    step_started: Option<Instant>,
    /// [`Context::fence_gate`], held for writing through this move's write pause.
    pause_alone: Option<tokio::sync::RwLockWriteGuard<'a, ()>>,
}

fn step_label(step: MoveStep) -> &'static str {
    match step {
        MoveStep::Prepare => "prepare",
        MoveStep::Copy => "copy",
        MoveStep::Fence => "fence",
        MoveStep::CatchUp => "catch_up",
        MoveStep::Flip => "flip",
        MoveStep::Cleanup => "cleanup",
        MoveStep::Done => "done",
        MoveStep::RollingBack => "rolling_back",
        MoveStep::RolledBack => "rolled_back",
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// The merge patch that replaces `status.move` whole: fields the new value leaves out are
/// nulled, or a merge patch would keep their old values.
fn move_value(mv: &MoveStatus) -> Result<Value> {
    let mut v = serde_json::to_value(mv).map_err(|source| Error::Encode {
        what: "move status".into(),
        source,
    })?;
    if let Value::Object(map) = &mut v {
        for key in [
            "startedAt",
            "stepStartedAt",
            "fencedAt",
            "writePauseMillis",
            "stepMillis",
            "message",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    Ok(v)
}

impl<'a> Mover<'a> {
    /// A mover for `name`, reading the object fresh from the API server: the cache may lag
    /// behind this operator's own last writes, and a move must never redo an earlier step.
    pub async fn load(
        ctx: &'a Context,
        cells: &'a [Cell],
        settings: Settings,
        name: &str,
    ) -> Result<Self> {
        let api: Api<TenantAssignment> = Api::all(ctx.client.clone());
        let ta = ctx
            .call(format!("read TenantAssignment {name}"), api.get(name))
            .await?;
        Ok(Self {
            ctx,
            cells,
            settings,
            api,
            ta,
            fenced: None,
            step_started: None,
            pause_alone: None,
        })
    }

    /// The object as this mover last saw it.
    pub fn into_object(self) -> TenantAssignment {
        self.ta
    }

    fn tenant(&self) -> &str {
        &self.ta.spec.tenant_id
    }

    fn status(&self) -> TenantAssignmentStatus {
        self.ta.status.clone().unwrap_or_default()
    }

    fn recorded(&self) -> Option<MoveStatus> {
        self.ta
            .status
            .as_ref()
            .and_then(|s| s.move_.as_deref().cloned())
    }

    /// Drives the move until it has to wait, or finds nothing to do.
    pub async fn drive(&mut self, wanted: Option<&str>) -> Result<Outcome> {
        pause::hold_if_held().await;
        // Bounded: each pass moves the state machine at least one step forward.
        for _ in 0..16 {
            let status = self.status();
            let Some(cell) = status.cell.clone() else {
                return Ok(Outcome::Idle);
            };
            let recorded = status.move_.clone();
            match plan::next(
                &cell,
                wanted,
                recorded.as_deref(),
                self.fenced.map(|at| at.elapsed()),
                Timestamp::now(),
                &self.settings,
            ) {
                Next::Idle => return Ok(Outcome::Idle),
                Next::Wait(d) => return Ok(Outcome::Requeue(d)),
                Next::Start { from, to } => self.start(from, to).await?,
                Next::RollBack(why) => self.begin_rollback(why).await?,
                Next::Run(step) => {
                    if let Some(wait) = self.run(step).await? {
                        return Ok(Outcome::Requeue(wait));
                    }
                }
            }
        }
        Ok(Outcome::Requeue(Duration::from_secs(1)))
    }

    async fn run(&mut self, step: MoveStep) -> Result<Option<Duration>> {
        let Some(mv) = self.recorded() else {
            return Ok(None);
        };
        match step {
            MoveStep::Prepare => self.prepare(mv).await,
            MoveStep::Copy => self.copy(mv).await.map(|()| None),
            MoveStep::Fence | MoveStep::CatchUp => self.fence(mv).await.map(|()| None),
            MoveStep::Flip => self.flip(mv).await.map(|()| None),
            MoveStep::Cleanup => self.cleanup(mv).await.map(|()| None),
            MoveStep::RollingBack => self.roll_back(mv).await.map(|()| None),
            MoveStep::Done | MoveStep::RolledBack => Ok(None),
        }
    }

    fn admin_of(&self, cell: &str) -> Option<&'a Cell> {
        self.cells.iter().find(|c| c.name_any() == cell)
    }

    async fn admin(&self, cell: &str) -> Result<CellAdmin> {
        let found = self.admin_of(cell).ok_or_else(|| Error::CellAdmin {
            cell: cell.to_owned(),
            action: "find the cell".into(),
            reason: "no such Cell".into(),
        })?;
        // `target_of` names the cluster the cell lives in, not a move's target cell.
        CellAdmin::of(self.ctx, &self.ctx.target_of(found)?, found).await
    }

    /// Writes `status` (with the move replaced whole), guarded by the last resourceVersion seen.
    async fn save(&mut self, status: TenantAssignmentStatus) -> Result<()> {
        let name = self.ta.name_any();
        let mut value = serde_json::to_value(&status).map_err(|source| Error::Encode {
            what: "tenant status".into(),
            source,
        })?;
        if let Value::Object(map) = &mut value {
            let mv = match &status.move_ {
                Some(mv) => move_value(mv)?,
                None => Value::Null,
            };
            map.insert("move".into(), mv);
        }
        let patch = json!({
            "metadata": { "resourceVersion": self.ta.resource_version() },
            "status": value,
        });
        self.ta = self
            .ctx
            .call(
                format!("record the move of tenant {name}"),
                self.api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        Ok(())
    }

    /// Records `mv` moving on to `step` (the finished step's duration appended), with the
    /// Progressing condition saying where it is.
    fn advanced(&mut self, mut mv: MoveStatus, step: MoveStep) -> MoveStatus {
        let finished = mv.step;
        let took = self
            .step_started
            .replace(Instant::now())
            .map(|at| at.elapsed())
            .unwrap_or_else(|| since(mv.step_started_at.as_ref()));
        if finished != step {
            self.ctx
                .metrics
                .move_step_seconds
                .get_or_create(&MoveStepLabels {
                    step: step_label(finished),
                })
                .observe(took.as_secs_f64());
            mv.step_millis.retain(|d| d.step != finished);
            mv.step_millis.push(StepDuration {
                step: finished,
                millis: millis(took),
            });
        }
        mv.step = step;
        mv.step_started_at = Some(now());
        mv
    }

    fn with_move(
        &self,
        mv: MoveStatus,
        phase: TenantPhase,
        desired: &[Desired],
    ) -> TenantAssignmentStatus {
        let mut status = self.status();
        status.phase = phase;
        status.observed_generation = self.ta.metadata.generation;
        status.conditions = conditions::merge(
            &status.conditions,
            desired,
            self.ta.metadata.generation,
            &now(),
        );
        status.recent_moves =
            crate::logic::move_history::remember(&status.recent_moves, &mv, &now());
        status.move_ = Some(Box::new(mv));
        status
    }

    fn progressing(mv: &MoveStatus) -> Desired {
        Desired::new(
            condition_type::PROGRESSING,
            true,
            reason::MOVING,
            format!("moving from {} to {}: {:?}", mv.from, mv.to, mv.step),
        )
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        controllers::publish(self.ctx, &self.ta.object_ref(&()), type_, reason, note).await;
    }

    async fn start(&mut self, from: String, to: String) -> Result<()> {
        let at = now();
        let mv = MoveStatus {
            from: from.clone(),
            to: to.clone(),
            step: MoveStep::Prepare,
            started_at: Some(at.clone()),
            step_started_at: Some(at),
            keys_copied: 0,
            keys_total: 0,
            fenced_at: None,
            write_pause_millis: None,
            step_millis: vec![],
            message: None,
        };
        let desired = [Self::progressing(&mv)];
        self.step_started = Some(Instant::now());
        self.save(self.with_move(mv, TenantPhase::Moving, &desired))
            .await?;
        info!(tenant = %self.tenant(), %from, %to, "move started");
        self.event(
            EventType::Normal,
            "MoveStarted",
            format!("moving tenant {} from {from} to {to}", self.tenant()),
        )
        .await;
        Ok(())
    }

    /// The target is Ready; the tenant is created there, importing, at its current epoch, and
    /// the source starts recording the tenant's writes.
    async fn prepare(&mut self, mv: MoveStatus) -> Result<Option<Duration>> {
        let tenant = self.tenant().to_owned();
        let epoch = self.status().epoch;
        let ready = self.admin_of(&mv.to).is_some_and(|c| {
            c.metadata.deletion_timestamp.is_none()
                && !c.spec.draining
                && c.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, condition_type::READY))
        });
        if !ready {
            let message = format!(
                "waiting for cell {} to exist, be Ready and not be draining or deleted",
                mv.to
            );
            if mv.message.as_deref() != Some(message.as_str()) {
                let mut waiting = mv.clone();
                waiting.message = Some(message.clone());
                let desired = [Desired::new(
                    condition_type::PROGRESSING,
                    true,
                    reason::WAITING_FOR_TARGET,
                    message,
                )];
                self.save(self.with_move(waiting, TenantPhase::Moving, &desired))
                    .await?;
            }
            return Ok(Some(TARGET_RECHECK));
        }
        let (source, target) = (self.admin(&mv.from).await?, self.admin(&mv.to).await?);
        // A tenant the source never got a record for has no data yet: give it one, so the
        // fence and the `moved` answer below have something to act on. One whose data the
        // source lost is not moved: an empty copy would hide the loss.
        let expected = self.status().data_marker;
        let marker = match source
            .provision(&tenant, epoch, expected.as_deref())
            .await?
        {
            Provisioned::Lost { .. } | Provisioned::StillLost { .. } => {
                self.begin_rollback(format!(
                    "cell {} lost the tenant's data: it is not moved until the data is restored or the loss accepted (condition DataLost)",
                    mv.from
                ))
                .await?;
                return Ok(None);
            }
            found => found.marker().map(str::to_owned),
        };
        // Whatever an earlier, unfinished move left in the target goes first.
        target.purge(&tenant).await?;
        target
            .put(
                &tenant,
                &TenantRecord {
                    state: TenantState::Importing,
                    epoch,
                    moved_to: None,
                    tracking: false,
                    // The data keeps its marker wherever it lives.
                    marker,
                },
            )
            .await?;
        // The tenant's own policy, acknowledged by every target lane before any traffic can
        // reach it there: the target's policy file may take a minute or more to follow.
        let cached = CachedTenant::from(self.ta.clone());
        if let Some(handed) = self.ctx.policy_override(&cached, &mv.to)? {
            target.hand_over_policy(&tenant, &handed).await?;
        }
        source.mark(&tenant).await?;
        let total = source.checksum(&tenant).await?.keys;
        pause::reached(MoveStep::Prepare, &tenant).await;
        let mut next = self.advanced(mv, MoveStep::Copy);
        next.keys_total = total;
        next.keys_copied = 0;
        next.message = None;
        let desired = [Self::progressing(&next)];
        self.save(self.with_move(next, TenantPhase::Moving, &desired))
            .await?;
        Ok(None)
    }

    /// Bulk copy while the source serves; writes meanwhile are recorded by the source. The
    /// next pages are read from the source while one is written to the target (up to
    /// [`COPY_PAGES_AHEAD`] ahead), so the copy takes about as long as the slower side, not both.
    async fn copy(&mut self, mv: MoveStatus) -> Result<()> {
        let tenant = self.tenant().to_owned();
        let (source, target) = (self.admin(&mv.from).await?, self.admin(&mv.to).await?);
        let (pages_tx, mut pages) = tokio::sync::mpsc::channel(COPY_PAGES_AHEAD);
        // Each call waits while another move's writes are paused (`Context::fence_gate`).
        let ctx = self.ctx;
        let gate = &ctx.fence_gate;
        let export = async {
            // Owned here, so the importer's loop ends when the export does.
            let pages_tx = pages_tx;
            let mut cursor: Option<String> = None;
            loop {
                let page = {
                    let _copying = gate.read().await;
                    source.export(&tenant, cursor.as_deref(), COPY_PAGE).await?
                };
                cursor = page.cursor.clone();
                // The importer stopped: its error is the one reported.
                if pages_tx.send(page).await.is_err() || cursor.is_none() {
                    return Ok::<_, Error>(());
                }
            }
        };
        let metrics = self.ctx.metrics.clone();
        let mut progress = mv.clone();
        let import = async {
            let mut copied = 0u64;
            let mut reported = Instant::now();
            while let Some(page) = pages.recv().await {
                let n = page.entries.len() as u64;
                if n > 0 {
                    let _copying = gate.read().await;
                    target.import(&tenant, page.entries).await?;
                    copied += n;
                    metrics.move_keys_copied.inc_by(n);
                }
                if reported.elapsed() >= PROGRESS_EVERY {
                    progress.keys_copied = copied;
                    let desired = [Self::progressing(&progress)];
                    self.save(self.with_move(progress.clone(), TenantPhase::Moving, &desired))
                        .await?;
                    reported = Instant::now();
                }
            }
            Ok::<_, Error>(copied)
        };
        let ((), mut copied) = tokio::try_join!(export, import)?;
        copied += self
            .catch_up_before_fence(&source, &target, &tenant)
            .await?;
        // The write pause starts with the status write below: after any other move's has ended.
        self.pause_alone().await;
        pause::reached(MoveStep::Copy, &tenant).await;
        let mut next = self.advanced(progress, MoveStep::Fence);
        next.keys_copied = copied;
        // The pause starts now (an upper bound: the fence call follows this write).
        next.fenced_at = next.step_started_at.clone();
        let desired = [Self::progressing(&next)];
        self.fenced = Some(Instant::now());
        self.save(self.with_move(next, TenantPhase::Moving, &desired))
            .await
    }

    /// Copies what was written during the bulk copy while the source still serves, so the
    /// fenced catch-up only has what was written during the last of these rounds: the write
    /// pause no longer grows with the tenant's size and write rate. Each round takes the change
    /// set atomically (writes after it are recorded afresh) and copies the keys it held. A cell
    /// too old to take changes is caught up under the fence alone, as before.
    ///
    /// A crash here resumes at Copy, whose bulk copy reads every key again: nothing taken but
    /// not yet copied is lost.
    async fn catch_up_before_fence(
        &self,
        source: &CellAdmin,
        target: &CellAdmin,
        tenant: &str,
    ) -> Result<u64> {
        let mut copied = 0u64;
        let gate = &self.ctx.fence_gate;
        for round in 1..=PRE_FENCE_ROUNDS {
            let taken = {
                let _copying = gate.read().await;
                source.take_changes(tenant).await?
            };
            let Some(taken) = taken else {
                info!(%tenant, cell = %source.cell(), "the source cannot take changes; catching up under the fence only");
                break;
            };
            let mut cursor: Option<String> = None;
            loop {
                let _copying = gate.read().await;
                let page = source
                    .taken_changes(tenant, cursor.as_deref(), CATCH_UP_PAGE)
                    .await?;
                let n = page.entries.len() as u64;
                if n > 0 {
                    target.import(tenant, page.entries).await?;
                    copied += n;
                }
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            debug!(%tenant, round, taken, "caught up before fencing");
            if taken <= PRE_FENCE_ENOUGH {
                break;
            }
        }
        self.ctx.metrics.move_keys_copied.inc_by(copied);
        Ok(copied)
    }

    /// Takes [`Context::fence_gate`] for writing for this move's write pause, unless this mover
    /// holds it already (taken before the Fence step is recorded; a move resumed in its pause
    /// takes it in the step it resumes at): moves pause one at a time, and the other moves'
    /// copies wait for the pause to end. Released once the move has flipped or rolled back, or
    /// when this mover is dropped.
    async fn pause_alone(&mut self) {
        if self.pause_alone.is_none() {
            let waiting = Instant::now();
            self.pause_alone = Some(self.ctx.fence_gate.write().await);
            debug!(tenant = %self.tenant(), waited_ms = millis(waiting.elapsed()), "no other move in its write pause");
        }
    }

    /// How long the tenant's writes have been paused.
    fn paused(&self, mv: &MoveStatus) -> Duration {
        self.fenced
            .map_or_else(|| since(mv.fenced_at.as_ref()), |at| at.elapsed())
    }

    /// Fence the source, copy what changed since the mark, verify, and record Flip — or roll
    /// back when verification fails or the pause bound is reached.
    async fn fence(&mut self, mv: MoveStatus) -> Result<()> {
        let tenant = self.tenant().to_owned();
        let (source, target) = (self.admin(&mv.from).await?, self.admin(&mv.to).await?);
        self.pause_alone().await;
        let fence_started = Instant::now();
        source.fence(&tenant).await?;
        let fence_took = fence_started.elapsed();
        pause::reached(MoveStep::Fence, &tenant).await;
        let catch_up_started = Instant::now();
        let mut cursor: Option<String> = None;
        let mut caught_up = 0u64;
        loop {
            let page = source
                .changes(&tenant, cursor.as_deref(), CATCH_UP_PAGE)
                .await?;
            let n = page.entries.len() as u64;
            if n > 0 {
                target.import(&tenant, page.entries).await?;
                caught_up += n;
            }
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        self.ctx.metrics.move_keys_copied.inc_by(caught_up);
        let (a, b) = tokio::try_join!(source.checksum(&tenant), target.checksum(&tenant))?;
        let catch_up_took = catch_up_started.elapsed();
        if a != b {
            return self
                .begin_rollback(format!(
                    "verification failed after catch-up: source {} holds {} keys (digest {}), target {} holds {} keys (digest {})",
                    mv.from, a.keys, a.digest, mv.to, b.keys, b.digest
                ))
                .await;
        }
        let paused = self.paused(&mv);
        if paused > self.settings.max_pause {
            return self
                .begin_rollback(format!(
                    "catch-up of {caught_up} keys took the write pause to {} ms, more than the {} ms bound: undoing the move",
                    paused.as_millis(),
                    self.settings.max_pause.as_millis()
                ))
                .await;
        }
        pause::reached(MoveStep::CatchUp, &tenant).await;
        let mut next = self.advanced(mv, MoveStep::Flip);
        // The fence itself and the catch-up, as two steps of the record.
        next.step_millis
            .retain(|d| d.step != MoveStep::Fence && d.step != MoveStep::CatchUp);
        // (The histogram's `fence` covers the whole window; `catch_up` the part after the fence.)
        self.ctx
            .metrics
            .move_step_seconds
            .get_or_create(&MoveStepLabels {
                step: step_label(MoveStep::CatchUp),
            })
            .observe(catch_up_took.as_secs_f64());
        for (step, took) in [
            (MoveStep::Fence, fence_took),
            (MoveStep::CatchUp, catch_up_took),
        ] {
            next.step_millis.push(StepDuration {
                step,
                millis: millis(took),
            });
        }
        next.keys_copied += caught_up;
        let desired = [Self::progressing(&next)];
        self.save(self.with_move(next, TenantPhase::Moving, &desired))
            .await
    }

    /// The target serves the tenant at the next epoch; the source sends everyone there.
    async fn flip(&mut self, mv: MoveStatus) -> Result<()> {
        let tenant = self.tenant().to_owned();
        let status = self.status();
        // The epoch changes together with the cell (below), so while the record says Flip and
        // the cell is still the source, the new epoch is the current one plus one.
        let epoch = if status.cell.as_deref() == Some(mv.to.as_str()) {
            status.epoch
        } else {
            status.epoch + 1
        };
        let (source, target) = (self.admin(&mv.from).await?, self.admin(&mv.to).await?);
        self.pause_alone().await;
        target.activate(&tenant, epoch).await?;
        source.moved(&tenant, &mv.to, epoch).await?;
        pause::reached(MoveStep::Flip, &tenant).await;
        let paused = self.paused(&mv);
        self.ctx
            .metrics
            .move_write_pause_seconds
            .observe(paused.as_secs_f64());
        let mut next = self.advanced(mv, MoveStep::Cleanup);
        next.write_pause_millis = Some(millis(paused));
        let mut status = self.with_move(
            next.clone(),
            TenantPhase::Placed,
            &[
                Desired::new(
                    condition_type::PLACED,
                    true,
                    reason::MOVED,
                    format!("served by {} since a move from {}", next.to, next.from),
                ),
                Self::progressing(&next),
            ],
        );
        status.cell = Some(next.to.clone());
        status.epoch = epoch;
        // The lane set of the first candidate; the overlap bound is applied at placement only.
        status.shard_variant = 0;
        self.save(status).await?;
        // The tenant's writes go to the target now: the next move may pause.
        self.pause_alone = None;
        info!(tenant = %tenant, from = %next.from, to = %next.to, epoch, pause_ms = millis(paused), "move flipped");
        self.event(
            EventType::Normal,
            "MoveFlipped",
            format!(
                "tenant {tenant} is served by {} at epoch {epoch}; writes were paused {} ms",
                next.to,
                millis(paused)
            ),
        )
        .await;
        Ok(())
    }

    /// After the grace period: the source's copy goes, but its `moved` record stays, so a
    /// router with an old table is still sent to the new cell.
    async fn cleanup(&mut self, mv: MoveStatus) -> Result<()> {
        let tenant = self.tenant().to_owned();
        let epoch = self.status().epoch;
        if self.admin_of(&mv.from).is_some() {
            let source = self.admin(&mv.from).await?;
            source.purge(&tenant).await?;
            source
                .put(
                    &tenant,
                    &TenantRecord {
                        state: TenantState::Moved,
                        epoch,
                        moved_to: Some(mv.to.clone()),
                        tracking: false,
                        marker: None,
                    },
                )
                .await?;
        }
        pause::reached(MoveStep::Cleanup, &tenant).await;
        let next = self.advanced(mv, MoveStep::Done);
        let total: u64 = next.step_millis.iter().map(|d| d.millis).sum();
        let note = format!(
            "moved tenant {tenant} from {} to {}: {} keys, write pause {} ms, {} ms in all",
            next.from,
            next.to,
            next.keys_copied,
            next.write_pause_millis.unwrap_or_default(),
            total
        );
        let desired = [Desired::new(
            condition_type::PROGRESSING,
            false,
            reason::MOVED,
            note.clone(),
        )];
        self.save(self.with_move(next, TenantPhase::Placed, &desired))
            .await?;
        self.ctx
            .metrics
            .moves
            .get_or_create(&MoveResultLabels { result: "done" })
            .inc();
        self.event(EventType::Normal, "MoveDone", note).await;
        Ok(())
    }

    async fn begin_rollback(&mut self, why: String) -> Result<()> {
        let Some(mv) = self.recorded() else {
            return Ok(());
        };
        info!(tenant = %self.tenant(), reason = %why, "rolling a move back");
        let mut next = self.advanced(mv, MoveStep::RollingBack);
        next.message = Some(why.clone());
        let desired = [Desired::new(
            condition_type::PROGRESSING,
            true,
            reason::ROLLING_BACK,
            why.clone(),
        )];
        self.save(self.with_move(next, TenantPhase::Moving, &desired))
            .await?;
        self.event(EventType::Warning, "MoveRollingBack", why).await;
        Ok(())
    }

    /// The source serves the tenant again at its unchanged epoch; the target's copy goes.
    async fn roll_back(&mut self, mv: MoveStatus) -> Result<()> {
        let tenant = self.tenant().to_owned();
        let epoch = self.status().epoch;
        let source = self.admin(&mv.from).await?;
        if mv.fenced_at.is_some() {
            // Undoing a move whose source was fenced ends its write pause.
            self.pause_alone().await;
        }
        // A source that lost the tenant's data keeps answering it as lost (Prepare rolls such a
        // move back before anything was copied); it is not made to serve an empty tenant.
        let lost = source
            .tenant(&tenant)
            .await?
            .is_some_and(|r| r.state == TenantState::Lost);
        if !lost {
            source.activate(&tenant, epoch).await?;
        }
        if self
            .admin_of(&mv.to)
            .is_some_and(crate::cell_admin::reachable)
        {
            // A target that is gone or unreachable keeps an importing copy nobody is routed
            // to; the next move there purges it first.
            if let Ok(target) = self.admin(&mv.to).await {
                target.purge(&tenant).await?;
            }
        }
        pause::reached(MoveStep::RollingBack, &tenant).await;
        let why = mv.message.clone().unwrap_or_default();
        let next = self.advanced(mv, MoveStep::RolledBack);
        let desired = [Desired::new(
            condition_type::PROGRESSING,
            false,
            reason::ROLLED_BACK,
            format!(
                "the move from {} to {} was undone: {why}",
                next.from, next.to
            ),
        )];
        self.save(self.with_move(next, TenantPhase::Placed, &desired))
            .await?;
        self.pause_alone = None;
        self.ctx
            .metrics
            .moves
            .get_or_create(&MoveResultLabels {
                result: "rolled_back",
            })
            .inc();
        self.event(
            EventType::Warning,
            reason::ROLLED_BACK,
            format!("tenant {tenant} stays on its cell: {why}"),
        )
        .await;
        Ok(())
    }
}

fn since(at: Option<&Time>) -> Duration {
    at.and_then(|t| Timestamp::now().duration_since(t.0).try_into().ok())
        .unwrap_or(Duration::ZERO)
}
