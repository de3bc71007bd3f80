//! The CellRollout controller: takes a new version of the service set to the cells a rollout
//! selects, one growing wave at a time, gated on the updated cells' error rate and p99 read from
//! their lanes' own `/metrics` against the cells not yet updated.
//!
//! The decisions are [`plan::advance`] (pure); this module gathers its inputs — the rollout,
//! the cells from the Cell controller's cache, gate readings — and carries out its outputs:
//! writing the cells' `version` and `services` (server-side apply, field manager
//! [`FIELD_MANAGER`]), status, Events and metrics. Inside each cell the Cell controller
//! replaces the lanes one at a time ([`crate::controllers::cell::lanes`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use cellstack_api::{
    health::Counts,
    v1alpha1::{
        Cell, CellRollout, ROLLOUT_MAX_CELLS, RolloutPhase, ServiceSetVersion, condition_type,
    },
};
use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tokio::sync::Mutex;
use tracing::{info, warn};

pub mod forget;

use crate::{
    context::{Context, readable},
    controllers,
    error::{Error, Result},
    logic::{
        rollout_gate as gate,
        rollout_plan::{self as plan, Input, Need, ObservedCell, Verdict},
    },
    metrics::{RolloutCellLabels, RolloutLabels},
};

const CONTROLLER: &str = "cellrollout";
/// The field manager rollouts write cells' `version` and `services` with: a manifest that sets
/// them too would fight the rollout (the HorizontalPodAutoscaler-and-`replicas` rule).
pub const FIELD_MANAGER: &str = "cellstack-rollout";
/// Timeout of one `/metrics` read from a lane.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries per lane before its reading counts as missing.
const SCRAPE_TRIES: u32 = 2;
/// Lanes read at once: a rollout of 256 cells has thousands of lanes.
const SCRAPE_CONCURRENCY: usize = 16;

/// What every rollout reconcile shares.
pub struct Rollouts {
    pub ctx: Arc<Context>,
    pub cells: Store<DeserializeGuard<Cell>>,
    pub rollouts: Store<DeserializeGuard<CellRollout>>,
    /// The first reading of each rollout's baking wave, by rollout name. Kept in memory only:
    /// after a restart the bake starts over, which errs on the side of watching longer.
    readings: Mutex<HashMap<String, FirstReading>>,
    /// The cells each rollout has gate metric series for, so [`Rollouts::forget`] can remove them.
    gated: std::sync::Mutex<HashMap<String, BTreeSet<String>>>,
}

impl Rollouts {
    pub fn new(
        ctx: Arc<Context>,
        cells: Store<DeserializeGuard<Cell>>,
        rollouts: Store<DeserializeGuard<CellRollout>>,
    ) -> Self {
        Self {
            ctx,
            cells,
            rollouts,
            readings: Mutex::new(HashMap::new()),
            gated: std::sync::Mutex::default(),
        }
    }

    /// Forgets rollout `name` (deleted): its metric series and its bake reading.
    pub async fn forget(&self, name: &str) {
        self.readings.lock().await.remove(name);
        let m = &self.ctx.metrics;
        let labels = RolloutLabels {
            rollout: name.to_owned(),
        };
        m.rollout_wave.remove(&labels);
        m.rollout_cells_done.remove(&labels);
        m.rollout_cells_total.remove(&labels);
        m.rollout_halted.remove(&labels);
        m.rollout_halts.remove(&labels);
        let cells = match self.gated.lock() {
            Ok(mut gated) => gated.remove(name).unwrap_or_default(),
            Err(_) => BTreeSet::new(),
        };
        for cell in cells {
            let labels = RolloutCellLabels {
                rollout: name.to_owned(),
                cell,
            };
            m.rollout_gate_error_ratio.remove(&labels);
            m.rollout_gate_p99_seconds.remove(&labels);
        }
        info!(rollout = %name, "rollout deleted: its metrics and readings are forgotten");
    }
}

/// The counters of the wave's and the baseline's lanes when the wave started baking.
struct FirstReading {
    /// Revision, attempt and wave the reading belongs to.
    key: (String, u32, u32),
    taken: Timestamp,
    /// By cell, by lane address.
    lanes: HashMap<String, HashMap<String, Counts>>,
}

/// The rollouts, brought back by any change of a cell they select.
pub fn controller(
    client: &kube::Client,
    selector: &str,
) -> Controller<DeserializeGuard<CellRollout>> {
    let controller = Controller::new(
        Api::<DeserializeGuard<CellRollout>>::all(client.clone()),
        controllers::selected(selector),
    );
    let rollouts = controller.store();
    controller.watches(
        Api::<DeserializeGuard<Cell>>::all(client.clone()),
        controllers::selected(selector),
        move |guard: DeserializeGuard<Cell>| {
            let Ok(cell) = guard.0 else { return Vec::new() };
            let name = cell.name_any();
            rollouts
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter(|r| r.spec.cells.selects(&name, cell.labels()))
                .map(|r| ObjectRef::new(&r.name_any()))
                .collect::<Vec<_>>()
        },
    )
}

/// Runs until `stop`.
pub fn run(
    controller: Controller<DeserializeGuard<CellRollout>>,
    shared: Arc<Rollouts>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller.with_config(
        controller::Config::default()
            .concurrency(2)
            .debounce(Duration::from_millis(500)),
    );
    controllers::run(controller, shared, stop)
}

impl controllers::Reconciler for Rollouts {
    type Kind = CellRollout;
    const NAME: &'static str = CONTROLLER;
    // Cell writes, status, Events, and two rounds of scrapes.
    const API_TIMEOUTS: u32 = 6;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, guard: &DeserializeGuard<CellRollout>) -> Result<Action> {
        reconcile_inner(guard, self).await
    }
}

/// Whether `cell`'s status describes its current spec and says Ready.
fn settled(cell: &Cell) -> bool {
    cell.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == cell.metadata.generation
            && crate::logic::conditions::is_true(&s.conditions, condition_type::READY)
    })
}

/// The cells `rollout` selects, less those a rollout earlier by name selects first.
fn selected_cells(
    rollout: &CellRollout,
    rollouts: &[CellRollout],
    cells: &[Cell],
) -> Vec<ObservedCell> {
    let name = rollout.name_any();
    cells
        .iter()
        .filter(|c| c.meta().deletion_timestamp.is_none())
        .filter(|c| {
            let cell = c.name_any();
            rollout.spec.cells.selects(&cell, c.labels())
                && !rollouts
                    .iter()
                    .any(|r| r.name_any() < name && r.spec.cells.selects(&cell, c.labels()))
        })
        .map(|c| ObservedCell {
            name: c.name_any(),
            running: ServiceSetVersion {
                version: c.spec.version.clone(),
                services: c.spec.services.clone(),
            },
            settled: settled(c),
            tenants: c.status.as_ref().map_or(0, |s| s.tenant_count),
        })
        .collect()
}

async fn reconcile_inner(
    guard: &DeserializeGuard<CellRollout>,
    shared: &Rollouts,
) -> Result<Action> {
    let ctx = &shared.ctx;
    let rollout = controllers::object_of(guard)?;
    let name = rollout.name_any();
    let cells = readable(&shared.cells);
    let rollouts = readable(&shared.rollouts);
    let observed = selected_cells(rollout, &rollouts, &cells);
    if observed.len() > ROLLOUT_MAX_CELLS {
        let e = Error::RolloutTooLarge {
            rollout: name.clone(),
            cells: observed.len(),
            max: ROLLOUT_MAX_CELLS,
        };
        controllers::publish(
            ctx,
            &rollout.object_ref(&()),
            EventType::Warning,
            "TooManyCells",
            e.to_string(),
        )
        .await;
        return Err(e);
    }
    let status = rollout.status.clone().unwrap_or_default();
    let target_revision = plan::revision(&plan::target(&rollout.spec));
    let reading_key = (target_revision, rollout.spec.attempt, status.wave);
    // Taken out of the map (the controller never reconciles one rollout twice at once), so no
    // lock is held across the scrapes below.
    let mut first = shared
        .readings
        .lock()
        .await
        .remove(&name)
        .filter(|r| r.key == reading_key);
    let bake_started = first.as_ref().map(|r| r.taken);
    let mut input = Input {
        spec: &rollout.spec,
        generation: rollout.metadata.generation,
        status: &status,
        cells: &observed,
        now: Timestamp::now(),
        bake_started,
        verdicts: None,
    };
    let mut step = plan::advance(&input);
    let verdicts;
    match step.need.clone() {
        Need::Nothing => {}
        Need::FirstReading { wave, baseline } => {
            let lanes = read_cells(shared, &cells, wave.iter().chain(&baseline)).await;
            let taken = Timestamp::now();
            first = Some(FirstReading {
                key: (reading_key.0.clone(), reading_key.1, step.status.wave),
                taken,
                lanes,
            });
            info!(rollout = %name, wave = step.status.wave, cells = ?wave, ?baseline, "wave baking: first gate reading taken");
            input.bake_started = Some(taken);
            input.now = taken;
            step = plan::advance(&input);
        }
        Need::Verdicts { wave, baseline } => {
            let now = read_cells(shared, &cells, wave.iter().chain(&baseline)).await;
            let window = |cell: &str| -> Option<Counts> {
                let lanes = now.get(cell)?;
                let mut total = Counts::default();
                for (lane, counts) in lanes {
                    let earlier = first
                        .as_ref()
                        .and_then(|f| f.lanes.get(cell))
                        .and_then(|l| l.get(lane));
                    total.add(&earlier.map_or_else(|| counts.clone(), |e| counts.since(e)));
                }
                Some(total)
            };
            let mut base: Option<Counts> = None;
            for cell in &baseline {
                if let Some(w) = window(cell) {
                    base.get_or_insert_with(Counts::default).add(&w);
                }
            }
            let mut judged = BTreeMap::new();
            for cell in &wave {
                let verdict = match window(cell) {
                    Some(w) => {
                        let labels = RolloutCellLabels {
                            rollout: name.clone(),
                            cell: cell.clone(),
                        };
                        if let Ok(mut gated) = shared.gated.lock() {
                            gated.entry(name.clone()).or_default().insert(cell.clone());
                        }
                        ctx.metrics
                            .rollout_gate_error_ratio
                            .get_or_create(&labels)
                            .set(w.error_rate());
                        // NaN when the window had no answers: a p99 of nothing is undefined,
                        // and the series still says the gate read this cell.
                        ctx.metrics
                            .rollout_gate_p99_seconds
                            .get_or_create(&labels)
                            .set(w.quantile(0.99).unwrap_or(f64::NAN));
                        gate::judge(&rollout.spec.gate, &w, base.as_ref())
                    }
                    None => Verdict::Fail("no lane's /metrics could be read".into()),
                };
                judged.insert(cell.clone(), verdict);
            }
            verdicts = judged;
            input.verdicts = Some(&verdicts);
            step = plan::advance(&input);
        }
    }
    // The reading lives on while its wave bakes.
    let baking = !matches!(
        step.status.phase,
        RolloutPhase::Halted | RolloutPhase::Aborted | RolloutPhase::Complete
    ) && step.status.bake_started_at.is_some();
    if let Some(first) = first.filter(|_| baking) {
        shared.readings.lock().await.insert(name.clone(), first);
    }

    for (cell, version) in &step.writes {
        write_cell(ctx, cell, version).await?;
        info!(rollout = %name, %cell, version = ?version.version, "cell spec written");
    }
    let labels = RolloutLabels {
        rollout: name.clone(),
    };
    let m = &ctx.metrics;
    m.rollout_wave
        .get_or_create(&labels)
        .set(i64::from(step.status.wave));
    m.rollout_cells_done
        .get_or_create(&labels)
        .set(i64::from(step.status.cells_done));
    m.rollout_cells_total
        .get_or_create(&labels)
        .set(i64::from(step.status.cells_total));
    m.rollout_halted
        .get_or_create(&labels)
        .set(i64::from(step.status.phase == RolloutPhase::Halted));
    // Created at zero with the rollout's other series, so "no halt yet" reads as 0.
    let halts = m.rollout_halts.get_or_create_owned(&labels);
    if step.status.phase == RolloutPhase::Halted && status.phase != RolloutPhase::Halted {
        halts.inc();
    }
    if rollout.status.as_ref() != Some(&step.status) {
        controllers::apply_status::<CellRollout>(ctx, &name, &step.status).await?;
    }
    let reference = rollout.object_ref(&());
    for note in step.notes {
        let kind = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        info!(rollout = %name, reason = note.reason, message = %note.message, "rollout event");
        controllers::publish(ctx, &reference, kind, note.reason, note.message).await;
    }
    Ok(Action::requeue(step.requeue))
}

/// Writes `version` into cell `name`'s spec, owning exactly `version` and `services`.
async fn write_cell(ctx: &Context, name: &str, version: &ServiceSetVersion) -> Result<()> {
    let mut spec = serde_json::json!({ "services": version.services });
    if let Some(v) = &version.version {
        spec["version"] = serde_json::Value::String(v.clone());
    }
    let patch = serde_json::json!({
        "apiVersion": Cell::api_version(&()),
        "kind": Cell::kind(&()),
        "metadata": { "name": name },
        "spec": spec,
    });
    let api: Api<Cell> = Api::all(ctx.client.clone());
    ctx.call(
        format!("write version {:?} into cell {name}", version.version),
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        ),
    )
    .await?;
    Ok(())
}

/// Reads every lane's counters of the named cells, [`SCRAPE_CONCURRENCY`] at a time; a lane
/// that cannot be read is left out (and logged).
async fn read_cells<'a>(
    shared: &Rollouts,
    cells: &[Cell],
    names: impl Iterator<Item = &'a String>,
) -> HashMap<String, HashMap<String, Counts>> {
    let mut jobs = Vec::new();
    for name in names {
        let Some(cell) = cells.iter().find(|c| &c.name_any() == name) else {
            continue;
        };
        for host in crate::logic::cell::exposure::admin_addresses(cell) {
            let http = shared.ctx.lanes.http();
            let url = shared.ctx.lanes.url(&host, "/metrics");
            let cell = name.clone();
            jobs.push(async move {
                let mut last = String::new();
                for _ in 0..SCRAPE_TRIES {
                    match scrape(&http, &url).await {
                        Ok(counts) => return (cell, host, Ok(counts)),
                        Err(e) => last = e,
                    }
                }
                (cell, host, Err(last))
            });
        }
    }
    let mut out: HashMap<String, HashMap<String, Counts>> = HashMap::new();
    let mut results = futures::stream::iter(jobs).buffer_unordered(SCRAPE_CONCURRENCY);
    while let Some((cell, lane, result)) = results.next().await {
        match result {
            Ok(counts) => {
                out.entry(cell).or_default().insert(lane, counts);
            }
            Err(e) => {
                warn!(%cell, %lane, error = %e, "cannot read a lane's metrics for the rollout gate")
            }
        }
    }
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> std::result::Result<Counts, String> {
    let answer = http
        .get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("GET {url}: {}", answer.status()));
    }
    let page = answer.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    Counts::parse(&page).map_err(|e| format!("{url}: {e}"))
}
