//! Where a cell's pods may run, as pure functions of the Cell: a zoned cell's lanes and
//! datastore only on its zone's nodes (required node affinity: a cell is a failure domain, so it
//! never lands in another zone, it waits instead); every cell's lanes, and its datastore pods,
//! apart from each other on different nodes; a cell without a zone also spread over zones.

use std::collections::BTreeMap;

use cellstack_api::v1alpha1::{Cell, HOSTNAME_LABEL, ZONE_LABEL};
use k8s_openapi::{
    api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        TopologySpreadConstraint,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

/// A zoned cell's pods: only on nodes of its zone.
pub(super) fn affinity(cell: &Cell) -> Option<Affinity> {
    let zone = cell.spec.zone.as_ref()?;
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: ZONE_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![zone.clone()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// The pods `selector` picks (a cell's lanes, or its datastore pods) spread evenly over nodes,
/// so one node's loss takes at most its share; nodes that are tainted (e.g. unreachable) do not
/// count, so a lost node does not keep a replacement pending. A cell without a zone also prefers
/// spreading over zones; a zoned cell is one failure domain by design and spreads over its
/// zone's nodes (its affinity limits the nodes counted).
pub(super) fn spread(
    cell: &Cell,
    selector: BTreeMap<String, String>,
) -> Vec<TopologySpreadConstraint> {
    let spread = |key: &str, when: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: when.into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        node_taints_policy: Some("Honor".into()),
        ..TopologySpreadConstraint::default()
    };
    let mut constraints = vec![spread(HOSTNAME_LABEL, "DoNotSchedule")];
    if cell.spec.zone.is_none() {
        constraints.push(spread(ZONE_LABEL, "ScheduleAnyway"));
    }
    constraints
}
