//! `kubectl cellstack status`: the whole installation on one screen — cells by zone with their
//! lanes, tenants, utilization and datastore, tenants by phase, moves and rollouts in progress,
//! and every condition that is not healthy.

use cellstack_api::v1alpha1::{Cell, CellRollout, RolloutPhase, TenantAssignment, TenantPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;

use super::output::{Painter, Tone, percent, table};

/// Condition types that are healthy when `True`; the others listed in [`NEGATIVE`] when
/// `False`; any other type (`Progressing`, `Drained`) is information, not health.
const POSITIVE: [&str; 3] = ["Ready", "Available", "Placed"];
const NEGATIVE: [&str; 4] = ["Degraded", "DataLost", "Halted", "Stalled"];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub cells: Vec<CellLine>,
    pub tenants: TenantCounts,
    pub moves: Vec<MoveLine>,
    pub rollouts: Vec<RolloutLine>,
    /// Every condition that is not healthy, of any object.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CellLine {
    pub name: String,
    pub zone: Option<String>,
    pub phase: String,
    pub lanes: u32,
    pub ready_lanes: u32,
    pub tenants: u32,
    pub utilization_percent: u32,
    /// Redis pods of a managed datastore (0: external).
    pub datastore_replicas: u32,
    pub version: Option<String>,
    pub draining: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantCounts {
    pub total: u32,
    pub placed: u32,
    pub moving: u32,
    pub pending: u32,
    pub data_lost: u32,
    pub other: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MoveLine {
    pub tenant: String,
    pub from: String,
    pub to: String,
    pub step: String,
    pub keys_copied: u64,
    pub keys_total: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutLine {
    pub name: String,
    pub phase: String,
    pub wave: u32,
    pub waves: u32,
    pub cells_done: u32,
    pub cells_total: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub kind: String,
    pub name: String,
    pub condition: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

fn problems_of(kind: &str, name: &str, conditions: &[Condition], out: &mut Vec<Problem>) {
    for c in conditions {
        let bad = (POSITIVE.contains(&c.type_.as_str()) && c.status != "True")
            || (NEGATIVE.contains(&c.type_.as_str()) && c.status == "True");
        if bad {
            out.push(Problem {
                kind: kind.into(),
                name: name.into(),
                condition: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        }
    }
}

impl StatusReport {
    /// The report of these objects (cells and rollouts sorted by name, tenants counted).
    pub fn build(cells: &[Cell], tenants: &[TenantAssignment], rollouts: &[CellRollout]) -> Self {
        let mut problems = Vec::new();
        let mut lines: Vec<CellLine> = cells
            .iter()
            .map(|cell| {
                let status = cell.status.clone().unwrap_or_default();
                problems_of("Cell", &cell.name_any(), &status.conditions, &mut problems);
                CellLine {
                    name: cell.name_any(),
                    zone: cell.spec.zone.clone(),
                    phase: format!("{:?}", status.phase),
                    lanes: status.lanes,
                    ready_lanes: status.ready_lanes,
                    tenants: status.tenant_count,
                    utilization_percent: status.utilization_percent,
                    datastore_replicas: status.datastore_replicas,
                    version: cell.spec.version.clone(),
                    draining: cell.spec.draining,
                }
            })
            .collect();
        lines.sort_by(|a, b| (&a.zone, &a.name).cmp(&(&b.zone, &b.name)));

        let mut counts = TenantCounts::default();
        let mut moves = Vec::new();
        for ta in tenants {
            counts.total += 1;
            let Some(status) = &ta.status else {
                counts.pending += 1;
                continue;
            };
            problems_of(
                "TenantAssignment",
                &ta.name_any(),
                &status.conditions,
                &mut problems,
            );
            match status.phase {
                TenantPhase::Placed => counts.placed += 1,
                TenantPhase::Moving => counts.moving += 1,
                TenantPhase::Pending => counts.pending += 1,
                TenantPhase::DataLost => counts.data_lost += 1,
                _ => counts.other += 1,
            }
            if let Some(m) = &status.move_
                && status.phase == TenantPhase::Moving
            {
                moves.push(MoveLine {
                    tenant: ta.name_any(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                    step: format!("{:?}", m.step),
                    keys_copied: m.keys_copied,
                    keys_total: m.keys_total,
                });
            }
        }
        moves.sort_by(|a, b| a.tenant.cmp(&b.tenant));

        let mut rollout_lines: Vec<RolloutLine> = rollouts
            .iter()
            .map(|r| {
                let status = r.status.clone().unwrap_or_default();
                problems_of(
                    "CellRollout",
                    &r.name_any(),
                    &status.conditions,
                    &mut problems,
                );
                RolloutLine {
                    name: r.name_any(),
                    phase: format!("{:?}", status.phase),
                    wave: status.wave,
                    waves: status.waves,
                    cells_done: status.cells_done,
                    cells_total: status.cells_total,
                }
            })
            .collect();
        rollout_lines.sort_by(|a, b| a.name.cmp(&b.name));
        problems.sort_by(|a, b| {
            (&a.kind, &a.name, &a.condition).cmp(&(&b.kind, &b.name, &b.condition))
        });
        Self {
            cells: lines,
            tenants: counts,
            moves,
            rollouts: rollout_lines,
            problems,
        }
    }

    /// The report for a terminal.
    pub fn render(&self, painter: Painter) -> String {
        let mut out = String::new();
        out.push_str(&painter.heading(&format!("CELLS ({})", self.cells.len())));
        out.push('\n');
        if self.cells.is_empty() {
            out.push_str("no cells (kubectl apply -f examples/cells.yaml)\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .cells
                .iter()
                .map(|c| {
                    let tone = match c.phase.as_str() {
                        "Ready" => Tone::Good,
                        "Degraded" | "Unknown" => Tone::Bad,
                        _ => Tone::Busy,
                    };
                    let lanes_tone = if c.ready_lanes == c.lanes && c.lanes > 0 {
                        Tone::Good
                    } else {
                        Tone::Bad
                    };
                    vec![
                        c.zone.clone().unwrap_or_else(|| "-".into()),
                        c.name.clone(),
                        painter.paint(&c.phase, tone) + if c.draining { " (draining)" } else { "" },
                        painter.paint(&format!("{}/{}", c.ready_lanes, c.lanes), lanes_tone),
                        c.tenants.to_string(),
                        format!("{}%", c.utilization_percent),
                        if c.datastore_replicas == 0 {
                            "external".into()
                        } else {
                            format!("{} redis", c.datastore_replicas)
                        },
                        c.version.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "ZONE",
                    "CELL",
                    "PHASE",
                    "LANES",
                    "TENANTS",
                    "UTIL",
                    "DATASTORE",
                    "VERSION",
                ],
                &rows,
            ));
        }
        let t = &self.tenants;
        out.push('\n');
        out.push_str(&painter.heading(&format!("TENANTS ({})", t.total)));
        out.push('\n');
        out.push_str(&format!(
            "{} placed, {} moving, {} pending, {}{}\n",
            t.placed,
            t.moving,
            t.pending,
            painter.paint(
                &format!("{} data lost", t.data_lost),
                if t.data_lost > 0 {
                    Tone::Bad
                } else {
                    Tone::Plain
                }
            ),
            if t.other > 0 {
                format!(", {} other", t.other)
            } else {
                String::new()
            }
        ));
        if !self.moves.is_empty() {
            out.push('\n');
            out.push_str(&painter.heading(&format!("MOVES ({})", self.moves.len())));
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .moves
                .iter()
                .map(|m| {
                    vec![
                        m.tenant.clone(),
                        m.from.clone(),
                        m.to.clone(),
                        painter.paint(&m.step, Tone::Busy),
                        format!(
                            "{}/{} keys ({})",
                            m.keys_copied,
                            m.keys_total,
                            percent(m.keys_copied, m.keys_total)
                        ),
                    ]
                })
                .collect();
            out.push_str(&table(&["TENANT", "FROM", "TO", "STEP", "COPIED"], &rows));
        }
        if !self.rollouts.is_empty() {
            out.push('\n');
            out.push_str(&painter.heading(&format!("ROLLOUTS ({})", self.rollouts.len())));
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .rollouts
                .iter()
                .map(|r| {
                    let tone = match r.phase.as_str() {
                        "Complete" => Tone::Good,
                        "Halted" | "Aborted" => Tone::Bad,
                        _ => Tone::Busy,
                    };
                    vec![
                        r.name.clone(),
                        painter.paint(&r.phase, tone),
                        format!("{}/{}", r.wave, r.waves),
                        format!("{}/{}", r.cells_done, r.cells_total),
                    ]
                })
                .collect();
            out.push_str(&table(&["ROLLOUT", "PHASE", "WAVE", "CELLS"], &rows));
        }
        out.push('\n');
        if self.problems.is_empty() {
            out.push_str(&painter.paint("every condition is healthy", Tone::Good));
            out.push('\n');
        } else {
            out.push_str(&painter.heading(&format!("NOT HEALTHY ({})", self.problems.len())));
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .problems
                .iter()
                .map(|p| {
                    vec![
                        format!("{}/{}", p.kind, p.name),
                        painter.paint(&format!("{}={}", p.condition, p.status), Tone::Bad),
                        p.reason.clone(),
                        p.message.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["OBJECT", "CONDITION", "REASON", "MESSAGE"], &rows));
        }
        out
    }
}

/// Whether a rollout has finished, well or not.
pub fn rollout_finished(phase: &RolloutPhase) -> bool {
    matches!(
        phase,
        RolloutPhase::Complete | RolloutPhase::Halted | RolloutPhase::Aborted
    )
}
