//! Test fixtures that read like sentences: `Cell::test("alpha").ephemeral().with_lanes(4)`.

use cellstack_api::v1alpha1::{
    AutomaticPlacement, Cell, CellSpec, Datastore, ManagedRedis, MoveStatus, MoveStep, StorageKind,
    TenantAssignment, TenantAssignmentSpec, TenantAssignmentStatus,
};
use kube::api::ObjectMeta;

use crate::cached_tenant::CachedTenant;

pub trait CellFixture {
    fn test(name: &str) -> Self;
    fn ephemeral(self) -> Self;
    fn with_lanes(self, lanes: u32) -> Self;
    fn with_generation(self, generation: i64) -> Self;
    fn draining(self) -> Self;
    fn labelled(self, labels: &[(&str, &str)]) -> Self;
    fn serving(self, endpoints: &[&str]) -> Self;
    fn in_cluster(self, member: &str) -> Self;
    fn reachable_across_clusters_at(self, endpoints: &[&str]) -> Self;
}

impl CellFixture for Cell {
    fn test(name: &str) -> Self {
        let spec: CellSpec =
            serde_json::from_value(serde_json::json!({})).expect("defaults deserialize");
        let mut cell = Cell::new(name, spec);
        cell.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("00000000-0000-0000-0000-{:0>12}", name.len())),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        cell
    }

    fn ephemeral(mut self) -> Self {
        self.spec.datastore = Datastore {
            managed: Some(ManagedRedis {
                storage: StorageKind::Ephemeral,
                size: None,
                replicas: None,
            }),
            external: None,
        };
        self
    }

    fn with_lanes(mut self, lanes: u32) -> Self {
        self.spec.lanes = lanes;
        self
    }

    fn with_generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    fn draining(mut self) -> Self {
        self.spec.draining = true;
        self
    }

    fn labelled(mut self, labels: &[(&str, &str)]) -> Self {
        self.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self
    }

    /// Status as the Cell controller reports a cell whose lanes answer on `endpoints`.
    fn serving(mut self, endpoints: &[&str]) -> Self {
        let status = self.status.get_or_insert_with(Default::default);
        status.lanes = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        status.ready_lanes = status.lanes;
        status.endpoints = endpoints.iter().map(|e| (*e).to_owned()).collect();
        self
    }

    /// A cell in member cluster `member` (`spec.cluster`).
    fn in_cluster(mut self, member: &str) -> Self {
        self.spec.cluster = Some(member.to_owned());
        self
    }

    /// Status as the Cell controller reports with `--multicluster`: other clusters reach the
    /// lanes' tenant port at `endpoints`.
    fn reachable_across_clusters_at(mut self, endpoints: &[&str]) -> Self {
        let status = self.status.get_or_insert_with(Default::default);
        status.cross_cluster_endpoints = endpoints.iter().map(|e| (*e).to_owned()).collect();
        self
    }
}

pub trait TenantFixture {
    fn test(id: &str) -> Self;
    fn pinned_to(self, cell: &str) -> Self;
    fn automatic(self) -> Self;
    fn served_by(self, cell: &str) -> Self;
    fn moving(self, from: &str, to: &str, step: MoveStep) -> Self;
}

impl TenantFixture for TenantAssignment {
    fn test(id: &str) -> Self {
        let spec: TenantAssignmentSpec =
            serde_json::from_value(serde_json::json!({ "tenantId": id, "automatic": {} }))
                .expect("spec deserializes");
        TenantAssignment::new(id, spec)
    }

    fn pinned_to(mut self, cell: &str) -> Self {
        self.spec.cell = Some(cell.to_owned());
        self.spec.automatic = None;
        self
    }

    fn automatic(mut self) -> Self {
        self.spec.cell = None;
        self.spec.automatic = Some(AutomaticPlacement::default());
        self
    }

    fn served_by(mut self, cell: &str) -> Self {
        self.status
            .get_or_insert_with(TenantAssignmentStatus::default)
            .cell = Some(cell.to_owned());
        self
    }

    fn moving(mut self, from: &str, to: &str, step: MoveStep) -> Self {
        let status = self
            .status
            .get_or_insert_with(TenantAssignmentStatus::default);
        status.cell = Some(from.to_owned());
        let mv: MoveStatus = serde_json::from_value(serde_json::json!({
            "from": from, "to": to, "step": step,
        }))
        .expect("move status deserializes");
        status.move_ = Some(Box::new(mv));
        self
    }
}

/// The same sentences for a tenant as the operator caches it.
impl TenantFixture for CachedTenant {
    fn test(id: &str) -> Self {
        TenantAssignment::test(id).into()
    }

    fn pinned_to(self, cell: &str) -> Self {
        TenantAssignment::from(self).pinned_to(cell).into()
    }

    fn automatic(self) -> Self {
        TenantAssignment::from(self).automatic().into()
    }

    fn served_by(self, cell: &str) -> Self {
        TenantAssignment::from(self).served_by(cell).into()
    }

    fn moving(self, from: &str, to: &str, step: MoveStep) -> Self {
        TenantAssignment::from(self).moving(from, to, step).into()
    }
}

pub trait PoolFixture {
    fn test(name: &str, lanes: u32, shard_size: u32) -> Self;
    fn with_cells(self, names: &[&str]) -> Self;
    fn with_labels(self, labels: &[(&str, &str)]) -> Self;
}

impl PoolFixture for cellstack_api::v1alpha1::ShuffleShardPool {
    fn test(name: &str, lanes: u32, shard_size: u32) -> Self {
        let spec = serde_json::from_value(serde_json::json!({
            "cells": { "names": [] }, "lanes": lanes, "shardSize": shard_size,
        }))
        .expect("pool spec deserializes");
        Self::new(name, spec)
    }

    fn with_cells(mut self, names: &[&str]) -> Self {
        self.spec.cells.names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    fn with_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.spec.cells.match_labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }
}
