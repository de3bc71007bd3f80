//! The verbs that change something and follow it: `move TENANT --to CELL`, `drain CELL` and
//! `rollout status NAME`. Each watches its one object (a watch, not a polling loop) until the
//! change is done or has failed, with a progress bar on a terminal, one line per step
//! otherwise, and one JSON/YAML document per change with `-o json|yaml`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cellstack_api::v1alpha1::{
    Cell, CellRollout, MoveStatus, MoveStep, RolloutPhase, TenantAssignment, TenantPhase,
};
use futures::{Stream, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::WatchStreamExt as _;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::output::{Output, emit_update};

/// How a watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(String),
    Failed(String),
}

/// The changes a verb follows: `Some(item)` per change, `None` once its object is deleted.
type Changes<T> = std::pin::Pin<Box<dyn Stream<Item = Result<Option<T>, watcher::Error>> + Send>>;

/// Watches object `name` of `api`.
fn watch_one<K>(api: Api<K>, name: &str) -> Changes<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    Box::pin(watcher::watch_object(api, name))
}

/// Follows `name`'s changes until `step` says it is done or failed; `step` gives each
/// change's document (`None`: nothing to show yet), its line (`None`: nothing new to say) and the outcome once there is one.
/// `hello` is printed once the watch has the object, so a reader knows changes from then on
/// reach it.
async fn follow<T, R>(
    mut stream: Changes<T>,
    name: &str,
    hello: &str,
    timeout: Duration,
    output: Output,
    bar: &ProgressBar,
    mut step: impl FnMut(&T, &ProgressBar) -> (Option<R>, Option<String>, Option<Outcome>),
) -> anyhow::Result<Outcome>
where
    R: Serialize,
{
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
    let mut last_document = None;
    let mut greeted = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.try_next())
            .await
            .map_err(|_| anyhow::anyhow!("still not done after {timeout:?} (--timeout)"))?
            .with_context(|| format!("watching {name}"))?;
        let Some(event) = next else {
            bail!("the watch of {name} ended");
        };
        let Some(object) = event else {
            return Ok(Outcome::Failed(format!("{name} was deleted")));
        };
        if !greeted && output == Output::Table {
            if bar.is_hidden() {
                println!("{hello}");
            } else {
                bar.println(hello);
            }
            greeted = true;
        }
        let (document, line, outcome) = step(&object, bar);
        match output {
            Output::Table => {
                if let Some(line) = line
                    && line != last_line
                {
                    if bar.is_hidden() {
                        println!("{line}");
                    } else {
                        bar.set_message(line.clone());
                    }
                    last_line = line;
                }
            }
            _ => {
                // One document per change of what the verb shows, not per event watched.
                if let Some(document) = document {
                    let document = serde_json::to_value(&document)?;
                    if last_document.as_ref() != Some(&document) {
                        emit_update(output, &document)?;
                        last_document = Some(document);
                    }
                }
            }
        }
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

fn progress_bar(output: Output) -> ProgressBar {
    if output != Output::Table {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn finish(bar: &ProgressBar, outcome: &Outcome) -> anyhow::Result<()> {
    bar.finish_and_clear();
    match outcome {
        Outcome::Done(line) => {
            println!("{line}");
            Ok(())
        }
        Outcome::Failed(why) => bail!("{why}"),
    }
}

/// What a move looks like at one moment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveProgress {
    pub tenant: String,
    pub phase: String,
    pub cell: Option<String>,
    /// Where the move goes.
    pub to: String,
    pub step: Option<String>,
    pub keys_copied: u64,
    pub keys_total: u64,
    pub write_pause_millis: Option<u64>,
    pub message: Option<String>,
}

impl MoveProgress {
    /// Tenant `ta` with `current`, its move to `to` (`None`: not started yet).
    fn of(ta: &TenantAssignment, to: &str, current: Option<&MoveStatus>) -> Self {
        let status = ta.status.as_ref();
        Self {
            tenant: ta.name_any(),
            phase: format!("{:?}", status.map(|s| s.phase).unwrap_or_default()),
            cell: status.and_then(|s| s.cell.clone()),
            to: to.to_string(),
            step: current.map(|m| format!("{:?}", m.step)),
            keys_copied: current.map_or(0, |m| m.keys_copied),
            keys_total: current.map_or(0, |m| m.keys_total),
            write_pause_millis: current.and_then(|m| m.write_pause_millis),
            message: current.and_then(|m| m.message.clone()),
        }
    }

    /// One line for a move that ended: its result, keys and write pause.
    fn ended_line(&self) -> String {
        match self.step.as_deref() {
            Some("RolledBack") => format!(
                "the move of TenantAssignment {} to cell {} rolled back: {}",
                self.tenant,
                self.to,
                self.message.clone().unwrap_or_default()
            ),
            _ => format!(
                "moved TenantAssignment {} to cell {}: {} keys, writes paused {} ms",
                self.tenant,
                self.to,
                self.keys_total,
                self.write_pause_millis
                    .map_or_else(|| "?".into(), |p| p.to_string()),
            ),
        }
    }
}

/// Asks for `tenant` to move to `to`; with `watch`, follows the move to its end.
pub async fn move_tenant(
    client: &Client,
    tenant: &str,
    to: &str,
    watch: bool,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<()> {
    let tenants: Api<TenantAssignment> = Api::all(client.clone());
    let cells: Api<Cell> = Api::all(client.clone());
    let ta = tenants
        .get_opt(tenant)
        .await
        .with_context(|| format!("cannot read TenantAssignment {tenant}"))?
        .with_context(|| {
            format!("TenantAssignment {tenant} does not exist (kubectl get tenantassignments)")
        })?;
    let target = cells
        .get_opt(to)
        .await
        .with_context(|| format!("cannot read Cell {to}"))?
        .with_context(|| format!("Cell {to} does not exist (kubectl get cells)"))?;
    if target.spec.draining {
        bail!("Cell {to} is draining: it takes no tenants (kubectl cellstack drain {to} --undo)");
    }
    let already = ta.status.as_ref().and_then(|s| s.cell.as_deref()) == Some(to);
    if already && ta.spec.cell.as_deref() == Some(to) {
        println!("TenantAssignment {tenant} is already in cell {to}");
        return Ok(());
    }
    if ta
        .status
        .as_ref()
        .is_some_and(|s| s.phase == TenantPhase::DataLost)
    {
        bail!(
            "TenantAssignment {tenant} is DataLost: the operator moves no tenant whose data its cell lost; restore it (kubectl cellstack restore {tenant}) or accept the loss first (kubectl cellstack tenant {tenant})"
        );
    }
    // A fresh `startedAt` tells this move's status apart from the last one's; a move to `to`
    // already under way is followed as it is.
    let under_way = ta.status.as_ref().is_some_and(|s| {
        s.phase == TenantPhase::Moving && s.move_.as_ref().is_some_and(|m| m.to == to)
    });
    let previous_start = ta
        .status
        .as_ref()
        .and_then(|s| s.move_.as_ref())
        .and_then(|m| m.started_at.clone())
        .filter(|_| !under_way);
    tenants
        .patch(
            tenant,
            &PatchParams::default(),
            // Pinned there: an automatic tenant stops being placed by the operator.
            &Patch::Merge(json!({"spec": {"cell": to, "automatic": null}})),
        )
        .await
        .with_context(|| format!("cannot set spec.cell of TenantAssignment {tenant} to {to}"))?;
    if !watch {
        println!(
            "move of TenantAssignment {tenant} to cell {to} requested; follow it with --watch"
        );
        return Ok(());
    }
    let bar = progress_bar(output);
    let started = Instant::now();
    let hello = format!(
        "following the move of TenantAssignment {tenant} to cell {to} (Ctrl-C stops following, not the move)"
    );
    let outcome = follow(watch_one(tenants, tenant), tenant, &hello, timeout, output, &bar, |ta, bar| {
        let status = ta.status.clone().unwrap_or_default();
        let current = status
            .move_
            .clone()
            .filter(|m| m.to == to && m.started_at != previous_start);
        let progress = MoveProgress::of(ta, to, current.as_deref());
        bar.set_length(progress.keys_total);
        bar.set_position(progress.keys_copied);
        let line = progress.step.as_ref().map(|step| {
            format!(
                "{step}: {}/{} keys copied",
                progress.keys_copied, progress.keys_total
            )
        });
        let outcome = match current.as_ref().map(|m| m.step) {
            Some(MoveStep::Done) if status.cell.as_deref() == Some(to) => Some(Outcome::Done(
                format!(
                    "moved TenantAssignment {tenant} to cell {to}: {} keys, writes paused {} ms, {:.1} s",
                    progress.keys_total,
                    progress
                        .write_pause_millis
                        .map_or_else(|| "?".into(), |p| p.to_string()),
                    started.elapsed().as_secs_f64()
                ),
            )),
            Some(MoveStep::RolledBack) => Some(Outcome::Failed(format!(
                "the move of TenantAssignment {tenant} to cell {to} rolled back: {} (the operator tries again later; kubectl cellstack tenant {tenant})",
                progress.message.clone().unwrap_or_default()
            ))),
            _ if status.phase == TenantPhase::Placed
                && status.cell.as_deref() == Some(to)
                && current.is_none() =>
            {
                // Placed there without a move (the tenant had no data yet).
                Some(Outcome::Done(format!(
                    "TenantAssignment {tenant} is in cell {to}"
                )))
            }
            _ => None,
        };
        (Some(progress), line, outcome)
    })
    .await?;
    finish(&bar, &outcome)
}

/// What a drain looks like at one moment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainProgress {
    pub cell: String,
    pub draining: bool,
    pub tenants_left: u32,
    pub tenants_at_start: u32,
    pub drained: bool,
    /// The moves away from the cell seen since the drain was asked for (under way or ended),
    /// by tenant.
    pub moves: Vec<MoveProgress>,
    /// The longest write pause of the moves that ended, in milliseconds.
    pub worst_write_pause_millis: Option<u64>,
}

/// A change a drain follows: the cell's own, or one of any tenant's.
enum DrainChange {
    Cell(Box<Cell>),
    Tenant(Box<TenantAssignment>),
}

/// The moves a drain shows, with a keys bar per move under way on a terminal.
struct DrainMoves {
    cell: String,
    /// Moves that started before this (the server's time of the drain request) and had ended
    /// are earlier history, not this drain's.
    since: Option<Time>,
    moves: BTreeMap<String, MoveProgress>,
    bars: BTreeMap<String, ProgressBar>,
    multi: Option<MultiProgress>,
}

impl DrainMoves {
    /// Takes in tenant `ta`; gives the line to print if one of this drain's moves just ended.
    fn update(&mut self, ta: &TenantAssignment) -> Option<String> {
        let name = ta.name_any();
        let current = ta
            .status
            .as_ref()
            .and_then(|s| s.move_.as_ref())
            .filter(|m| m.from == self.cell)?;
        let ended = matches!(current.step, MoveStep::Done | MoveStep::RolledBack);
        let ours = !ended
            || self.moves.contains_key(&name)
            || match (&current.started_at, &self.since) {
                (Some(started), Some(since)) => started.0 >= since.0,
                _ => false,
            };
        if !ours {
            return None;
        }
        let progress = MoveProgress::of(ta, &current.to, Some(current));
        let was_ended = self
            .moves
            .get(&name)
            .is_some_and(|m| matches!(m.step.as_deref(), Some("Done" | "RolledBack")));
        if let Some(multi) = &self.multi {
            let bar = self.bars.entry(name.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("  {bar:24} {pos}/{len} keys {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            });
            bar.set_length(progress.keys_total);
            bar.set_position(progress.keys_copied);
            bar.set_message(format!(
                "{name} → {}: {}",
                progress.to,
                progress.step.clone().unwrap_or_default()
            ));
            if ended && let Some(bar) = self.bars.remove(&name) {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
        }
        let line = (ended && !was_ended).then(|| progress.ended_line());
        self.moves.insert(name, progress);
        line
    }

    fn worst_pause(&self) -> Option<u64> {
        self.moves
            .values()
            .filter(|m| m.step.as_deref() == Some("Done"))
            .filter_map(|m| m.write_pause_millis)
            .max()
    }

    /// The moves under way, for the status line: `t1 Copy 400/800`.
    fn under_way(&self) -> String {
        self.moves
            .values()
            .filter(|m| !matches!(m.step.as_deref(), Some("Done" | "RolledBack")))
            .map(|m| {
                format!(
                    "{} {} {}/{}",
                    m.tenant,
                    m.step.clone().unwrap_or_default(),
                    m.keys_copied,
                    m.keys_total
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sets `spec.draining` of `cell` (`undo`: clears it); with `watch`, follows the tenants out:
/// each move's step, keys copied and write pause, and the cell's count of tenants left.
pub async fn drain_cell(
    client: &Client,
    cell: &str,
    undo: bool,
    watch: bool,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cells: Api<Cell> = Api::all(client.clone());
    let current = cells
        .get_opt(cell)
        .await
        .with_context(|| format!("cannot read Cell {cell}"))?
        .with_context(|| format!("Cell {cell} does not exist (kubectl get cells)"))?;
    let patched = cells
        .patch(
            cell,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"draining": !undo}})),
        )
        .await
        .with_context(|| format!("cannot set spec.draining of Cell {cell}"))?;
    if undo {
        println!("Cell {cell} takes tenants again (spec.draining is false)");
        return Ok(());
    }
    let at_start = current.status.as_ref().map_or(0, |s| s.tenant_count);
    if !watch {
        println!(
            "draining Cell {cell} ({at_start} tenant(s) to move away); follow it with --watch"
        );
        return Ok(());
    }
    let multi = MultiProgress::new();
    let bar = progress_bar(output);
    let bar = if bar.is_hidden() { bar } else { multi.add(bar) };
    bar.set_length(u64::from(at_start));
    let mut moves = DrainMoves {
        cell: cell.to_string(),
        // The server's clock, not ours: the newest managed-fields time is our patch's.
        since: patched
            .managed_fields()
            .iter()
            .filter_map(|f| f.time.clone())
            .max_by_key(|t| t.0),
        moves: BTreeMap::new(),
        bars: BTreeMap::new(),
        multi: (!bar.is_hidden()).then_some(multi),
    };
    let changes: Changes<DrainChange> = Box::pin(futures::stream::select(
        watcher::watch_object(cells, cell).map_ok(|c| c.map(|c| DrainChange::Cell(Box::new(c)))),
        watcher::watcher(
            Api::<TenantAssignment>::all(client.clone()),
            watcher::Config::default(),
        )
        .applied_objects()
        .map_ok(|t| Some(DrainChange::Tenant(Box::new(t)))),
    ));
    let started = Instant::now();
    let hello =
        format!("following the drain of Cell {cell} (Ctrl-C stops following, not the drain)");
    let mut last_cell: Option<Cell> = None;
    let outcome = follow(changes, cell, &hello, timeout, output, &bar, |change, bar| {
        match change {
            DrainChange::Cell(c) => last_cell = Some((**c).clone()),
            DrainChange::Tenant(ta) => {
                if let Some(line) = moves.update(ta) {
                    say(bar, output, &line);
                }
            }
        }
        let (draining, status) = last_cell.as_ref().map_or((true, Default::default()), |c| {
            (c.spec.draining, c.status.clone().unwrap_or_default())
        });
        let drained = crate::logic::conditions::is_true(&status.conditions, "Drained");
        let progress = DrainProgress {
            cell: cell.to_string(),
            draining,
            tenants_left: status.tenant_count,
            tenants_at_start: at_start,
            drained,
            moves: moves.moves.values().cloned().collect(),
            worst_write_pause_millis: moves.worst_pause(),
        };
        let moved = at_start.saturating_sub(status.tenant_count);
        bar.set_position(u64::from(moved));
        let under_way = moves.under_way();
        let line = last_cell.as_ref().map(|_| {
            if under_way.is_empty() {
                format!("{moved} of {at_start} tenant(s) moved away, {} left", status.tenant_count)
            } else {
                format!(
                    "{moved} of {at_start} tenant(s) moved away, {} left; moving: {under_way}",
                    status.tenant_count
                )
            }
        });
        let outcome = if last_cell.is_none() {
            None
        } else if !draining {
            Some(Outcome::Failed(format!(
                "spec.draining of Cell {cell} was cleared while draining"
            )))
        } else if status.tenant_count == 0 && drained {
            Some(Outcome::Done(format!(
                "Cell {cell} is drained: {at_start} tenant(s) moved away in {:.1} s, longest write pause {} ms",
                started.elapsed().as_secs_f64(),
                progress
                    .worst_write_pause_millis
                    .map_or_else(|| "-".into(), |p| p.to_string())
            )))
        } else {
            None
        };
        (last_cell.is_some().then_some(progress), line, outcome)
    })
    .await?;
    finish(&bar, &outcome)
}

/// Prints a line that stays, above the bars on a terminal; nothing with `-o json|yaml` (the
/// documents carry it).
fn say(bar: &ProgressBar, output: Output, line: &str) {
    if output != Output::Table {
        return;
    }
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// What a rollout looks like at one moment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    pub rollout: String,
    pub phase: String,
    pub wave: u32,
    pub waves: u32,
    pub cells_done: u32,
    pub cells_total: u32,
    pub message: Option<String>,
}

/// Shows rollout `name`; with `watch`, until it completes, halts or aborts.
pub async fn rollout_status(
    client: &Client,
    name: &str,
    watch: bool,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<()> {
    let rollouts: Api<CellRollout> = Api::all(client.clone());
    let current = rollouts
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read CellRollout {name}"))?
        .with_context(|| format!("CellRollout {name} does not exist (kubectl get cellrollouts)"))?;
    let view = |r: &CellRollout| -> (RolloutProgress, Option<Outcome>) {
        let status = r.status.clone().unwrap_or_default();
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Halted" && c.status == "True")
            .or_else(|| status.conditions.iter().find(|c| c.type_ == "Progressing"))
            .map(|c| c.message.clone());
        let progress = RolloutProgress {
            rollout: r.name_any(),
            phase: format!("{:?}", status.phase),
            wave: status.wave,
            waves: status.waves,
            cells_done: status.cells_done,
            cells_total: status.cells_total,
            message: message.clone(),
        };
        let outcome = match status.phase {
            RolloutPhase::Complete => Some(Outcome::Done(format!(
                "CellRollout {name} is complete: {}/{} cells in {} wave(s)",
                status.cells_done, status.cells_total, status.waves
            ))),
            RolloutPhase::Halted => Some(Outcome::Failed(format!(
                "CellRollout {name} halted at wave {}/{}: {} (raise spec.attempt or change the spec to go on)",
                status.wave,
                status.waves,
                message.unwrap_or_default()
            ))),
            RolloutPhase::Aborted => Some(Outcome::Failed(format!(
                "CellRollout {name} was aborted: its updated cells are back on what they ran"
            ))),
            _ => None,
        };
        (progress, outcome)
    };
    if !watch {
        let (progress, _) = view(&current);
        return super::output::emit(output, &progress, |p| {
            super::output::table(
                &["ROLLOUT", "PHASE", "WAVE", "CELLS", "MESSAGE"],
                &[vec![
                    p.rollout.clone(),
                    p.phase.clone(),
                    format!("{}/{}", p.wave, p.waves),
                    format!("{}/{}", p.cells_done, p.cells_total),
                    p.message.clone().unwrap_or_default(),
                ]],
            )
        });
    }
    let bar = progress_bar(output);
    let hello = format!("following CellRollout {name}");
    let outcome = follow(
        watch_one(rollouts, name),
        name,
        &hello,
        timeout,
        output,
        &bar,
        |r, bar| {
            let (progress, outcome) = view(r);
            bar.set_length(u64::from(progress.cells_total));
            bar.set_position(u64::from(progress.cells_done));
            let line = Some(format!(
                "{} wave {}/{}: {}/{} cells",
                progress.phase,
                progress.wave,
                progress.waves,
                progress.cells_done,
                progress.cells_total
            ));
            (Some(progress), line, outcome)
        },
    )
    .await?;
    finish(&bar, &outcome)
}
