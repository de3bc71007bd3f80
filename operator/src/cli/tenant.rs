//! `kubectl cellstack tenant NAME`: where a tenant lives (cell, zone, lanes and their
//! addresses from the routing table the routers serve), its epoch, the limits in force (its
//! effective policy, resolved as the operator resolves it), its move in progress or its last
//! one, and its conditions.

use cellstack_api::{
    policy::EffectivePolicy,
    routing::RoutingTable,
    shard,
    v1alpha1::{Cell, FinishedMove, RateLimitPolicy, TenantAssignment},
};
use kube::ResourceExt;
use serde::Serialize;

use super::output::{Painter, Tone, percent, table};
use crate::{cached_tenant::CachedTenant, logic::effective};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantReport {
    pub name: String,
    pub tenant_id: String,
    pub phase: String,
    pub cell: Option<String>,
    pub zone: Option<String>,
    pub epoch: u64,
    /// Lanes serving the tenant in the routing table (empty before it is published).
    pub lanes: Vec<LaneLine>,
    /// The routing-table version the lanes come from.
    pub table_version: Option<u64>,
    /// Its effective policy; none: not limited.
    pub limits: Option<EffectivePolicy>,
    #[serde(rename = "move")]
    pub move_: Option<MoveLine>,
    /// Its last moves that ended, newest first (`status.recentMoves`).
    pub recent_moves: Vec<FinishedMove>,
    pub conditions: Vec<ConditionLine>,
    pub data_loss: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaneLine {
    pub lane: u32,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MoveLine {
    pub from: String,
    pub to: String,
    pub step: String,
    pub keys_copied: u64,
    pub keys_total: u64,
    pub write_pause_millis: Option<u64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl TenantReport {
    /// The report of `ta`, with the cells (for its zone), the policies (for its limits) and the
    /// published routing table (for its lanes), when there is one.
    pub fn build(
        ta: &TenantAssignment,
        cells: &[Cell],
        policies: &[RateLimitPolicy],
        table: Option<&RoutingTable>,
    ) -> Self {
        let status = ta.status.clone().unwrap_or_default();
        let id = ta.spec.tenant_id.clone();
        let zone = status.cell.as_ref().and_then(|name| {
            cells
                .iter()
                .find(|c| c.name_any() == *name)
                .and_then(|c| c.spec.zone.clone())
        });
        let lanes = table
            .and_then(|t| {
                let route = t.tenants.iter().find(|r| r.id.as_str() == id)?;
                let cell = t.cell(route);
                let params = cell.shard_params().ok()?;
                Some(
                    shard::lanes_for(&id, route.shard_variant, params)
                        .iter()
                        .map(|lane| LaneLine {
                            lane,
                            address: cell.lanes.get(lane as usize).cloned().unwrap_or_default(),
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        let views = effective::policy_views(policies);
        let cached = CachedTenant::from(ta.clone());
        let limits = effective::cell_file(std::iter::once(&cached), &views)
            .ok()
            .and_then(|file| {
                file.tenants
                    .iter()
                    .find(|(k, _)| k.as_str() == id)
                    .map(|(_, p)| p.clone())
                    .or(file.default)
            });
        Self {
            name: ta.name_any(),
            tenant_id: id,
            phase: format!("{:?}", status.phase),
            cell: status.cell.clone(),
            zone,
            epoch: status.epoch,
            lanes,
            table_version: table.map(|t| t.version),
            limits,
            move_: status.move_.as_ref().map(|m| MoveLine {
                from: m.from.clone(),
                to: m.to.clone(),
                step: format!("{:?}", m.step),
                keys_copied: m.keys_copied,
                keys_total: m.keys_total,
                write_pause_millis: m.write_pause_millis,
                message: m.message.clone(),
            }),
            recent_moves: status.recent_moves.clone(),
            conditions: status
                .conditions
                .iter()
                .map(|c| ConditionLine {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect(),
            data_loss: status.data_loss.as_ref().map(|d| {
                format!(
                    "the datastore of cell {} lost marker {}: {}",
                    d.cell, d.marker, d.found
                )
            }),
        }
    }

    pub fn render(&self, painter: Painter) -> String {
        let phase_tone = match self.phase.as_str() {
            "Placed" => Tone::Good,
            "Moving" | "Pending" => Tone::Busy,
            _ => Tone::Bad,
        };
        let mut out = format!(
            "{} {} (tenant id {})\n",
            painter.heading("tenant"),
            self.name,
            self.tenant_id
        );
        out.push_str(&format!(
            "phase {}, cell {} (zone {}), epoch {}\n",
            painter.paint(&self.phase, phase_tone),
            self.cell.as_deref().unwrap_or("-"),
            self.zone.as_deref().unwrap_or("-"),
            self.epoch
        ));
        if let Some(loss) = &self.data_loss {
            out.push_str(&painter.paint(&format!("DATA LOST: {loss}"), Tone::Bad));
            out.push('\n');
        }
        out.push('\n');
        match self.table_version {
            Some(v) if !self.lanes.is_empty() => {
                out.push_str(&painter.heading(&format!("LANES (routing table version {v})")));
                out.push('\n');
                let rows: Vec<Vec<String>> = self
                    .lanes
                    .iter()
                    .map(|l| vec![l.lane.to_string(), l.address.clone()])
                    .collect();
                out.push_str(&table(&["LANE", "ADDRESS"], &rows));
            }
            Some(v) => out.push_str(&format!(
                "not in routing table version {v} yet: no lanes serve it\n"
            )),
            None => out.push_str("no routing table published: no lanes serve it\n"),
        }
        out.push('\n');
        match &self.limits {
            None => out.push_str("LIMITS none: no RateLimitPolicy selects the tenant\n"),
            Some(p) => {
                out.push_str(&painter.heading(&format!(
                    "LIMITS (policy {}, priority {:?}, fail {:?}{})",
                    p.policy,
                    p.request_priority,
                    p.fail_mode,
                    if p.shadow { ", shadow" } else { "" }
                )));
                out.push('\n');
                let rows: Vec<Vec<String>> = p
                    .limits
                    .iter()
                    .map(|l| {
                        vec![
                            l.name.clone(),
                            format!("{:?}", l.algorithm),
                            format!("{}/{}ms", l.requests, l.period_ms),
                            l.burst.to_string(),
                            if l.methods.is_empty() {
                                "*".into()
                            } else {
                                l.methods
                                    .iter()
                                    .map(|m| format!("{m:?}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            },
                            l.path_prefix.clone().unwrap_or_else(|| "/".into()),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &["LIMIT", "ALGORITHM", "RATE", "BURST", "METHODS", "PATH"],
                    &rows,
                ));
            }
        }
        out.push('\n');
        match &self.move_ {
            None => out.push_str("MOVE none yet\n"),
            Some(m) => {
                out.push_str(&format!(
                    "{} {} → {}: {}, {}/{} keys ({}){}{}\n",
                    painter.heading(if self.phase == "Moving" {
                        "MOVE"
                    } else {
                        "LAST MOVE"
                    }),
                    m.from,
                    m.to,
                    m.step,
                    m.keys_copied,
                    m.keys_total,
                    percent(m.keys_copied, m.keys_total),
                    m.write_pause_millis
                        .map(|p| format!(", writes paused {p} ms"))
                        .unwrap_or_default(),
                    m.message
                        .as_deref()
                        .map(|msg| format!(": {msg}"))
                        .unwrap_or_default()
                ));
            }
        }
        if !self.recent_moves.is_empty() {
            out.push('\n');
            out.push_str(&painter.heading("RECENT MOVES"));
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .recent_moves
                .iter()
                .map(|m| {
                    let done = m.result == cellstack_api::v1alpha1::MoveStep::Done;
                    vec![
                        m.finished_at
                            .as_ref()
                            .map_or_else(|| "-".into(), |t| t.0.to_string()),
                        m.from.clone(),
                        m.to.clone(),
                        painter.paint(
                            &format!("{:?}", m.result),
                            if done { Tone::Good } else { Tone::Bad },
                        ),
                        m.keys_copied.to_string(),
                        m.write_pause_millis
                            .map_or_else(|| "-".into(), |p| format!("{p} ms")),
                        m.message.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["FINISHED", "FROM", "TO", "RESULT", "KEYS", "PAUSE", "WHY"],
                &rows,
            ));
        }
        if !self.conditions.is_empty() {
            out.push('\n');
            out.push_str(&painter.heading("CONDITIONS"));
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .conditions
                .iter()
                .map(|c| {
                    vec![
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows));
        }
        out
    }
}
