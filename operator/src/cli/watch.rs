//! The verbs that change something and follow it: `move TENANT --to CELL`, `drain CELL` and
//! `rollout status NAME`. Each watches its one object (a watch, not a polling loop) until the
//! change is done or has failed, with a progress bar on a terminal, one line per step
//! otherwise, and one JSON/YAML document per change with `-o json|yaml`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cellstack_api::v1alpha1::{
    Cell, CellRollout, MoveStep, RolloutPhase, TenantAssignment, TenantPhase,
};
use futures::{Stream, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
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

/// Follows object `name` of `api` until `step` says it is done or failed; `step` gives each
/// change's document, its line (`None`: nothing new to say) and the outcome once there is one.
/// `hello` is printed once the watch has the object, so a reader knows changes from then on
/// reach it.
async fn follow<K, R>(
    api: Api<K>,
    name: &str,
    hello: &str,
    timeout: Duration,
    output: Output,
    bar: &ProgressBar,
    mut step: impl FnMut(&K, &ProgressBar) -> (R, Option<String>, Option<Outcome>),
) -> anyhow::Result<Outcome>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    R: Serialize,
{
    let stream = watcher::watch_object(api, name);
    let mut stream: std::pin::Pin<
        Box<dyn Stream<Item = Result<Option<K>, watcher::Error>> + Send>,
    > = Box::pin(stream);
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
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
            _ => emit_update(output, &document)?,
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
    pub step: Option<String>,
    pub keys_copied: u64,
    pub keys_total: u64,
    pub write_pause_millis: Option<u64>,
    pub message: Option<String>,
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
    let outcome = follow(tenants, tenant, &hello, timeout, output, &bar, |ta, bar| {
        let status = ta.status.clone().unwrap_or_default();
        let current = status
            .move_
            .clone()
            .filter(|m| m.to == to && m.started_at != previous_start);
        let progress = MoveProgress {
            tenant: ta.name_any(),
            phase: format!("{:?}", status.phase),
            cell: status.cell.clone(),
            step: current.as_ref().map(|m| format!("{:?}", m.step)),
            keys_copied: current.as_ref().map_or(0, |m| m.keys_copied),
            keys_total: current.as_ref().map_or(0, |m| m.keys_total),
            write_pause_millis: current.as_ref().and_then(|m| m.write_pause_millis),
            message: current.as_ref().and_then(|m| m.message.clone()),
        };
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
        (progress, line, outcome)
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
}

/// Sets `spec.draining` of `cell` (`undo`: clears it); with `watch`, follows the tenants out.
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
    cells
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
    let bar = progress_bar(output);
    bar.set_length(u64::from(at_start));
    let started = Instant::now();
    let hello =
        format!("following the drain of Cell {cell} (Ctrl-C stops following, not the drain)");
    let outcome = follow(cells, cell, &hello, timeout, output, &bar, |c, bar| {
        let status = c.status.clone().unwrap_or_default();
        let drained = crate::logic::conditions::is_true(&status.conditions, "Drained");
        let progress = DrainProgress {
            cell: c.name_any(),
            draining: c.spec.draining,
            tenants_left: status.tenant_count,
            tenants_at_start: at_start,
            drained,
        };
        bar.set_position(u64::from(at_start.saturating_sub(status.tenant_count)));
        let line = Some(format!(
            "{} of {at_start} tenant(s) moved away, {} left",
            at_start.saturating_sub(status.tenant_count),
            status.tenant_count
        ));
        let outcome = if !c.spec.draining {
            Some(Outcome::Failed(format!(
                "spec.draining of Cell {cell} was cleared while draining"
            )))
        } else if status.tenant_count == 0 && drained {
            Some(Outcome::Done(format!(
                "Cell {cell} is drained: {at_start} tenant(s) moved away in {:.1} s",
                started.elapsed().as_secs_f64()
            )))
        } else {
            None
        };
        (progress, line, outcome)
    })
    .await?;
    finish(&bar, &outcome)
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
    let outcome = follow(rollouts, name, &hello, timeout, output, &bar, |r, bar| {
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
        (progress, line, outcome)
    })
    .await?;
    finish(&bar, &outcome)
}
