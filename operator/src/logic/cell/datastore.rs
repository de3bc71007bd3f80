//! The managed datastore of a cell, as pure desired state: a StatefulSet `redis` of
//! `replicas` pods (a primary and its replicas, each with a Sentinel next to it), its governing
//! headless Service, one ClusterIP Service per pod (the stable name the pods, the sentinels and
//! the lanes know each pod by), the datastore's PodDisruptionBudget, the password Secret's
//! shape, and what the lanes need to reach it.
//!
//! The contract with the cell runtime (`cellstack-cell datastore-init`, the lanes' environment)
//! and the reasons behind it are in docs/durability.md.

use std::collections::BTreeMap;

use cellstack_api::v1alpha1::{Cell, ManagedRedis, StorageKind};
use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy},
        core::v1::{
            Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
            Secret, SecretVolumeSource, Service, Volume, VolumeMount, VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    desired::{
        Builder, POD_NAME_LABEL, container_port, container_security, env_value, pod_security, port,
        requests, tcp_probe,
    },
    scheduling,
};
use crate::names::*;

/// Where each datastore pod's volume (a PVC, or an emptyDir for `Ephemeral`) is mounted; the
/// configuration `datastore-init` writes is under `conf/`, Redis' data under `redis/`.
const MOUNT_DATA: &str = "/data";
const CONF_DIR: &str = "/data/conf";
const DEFAULT_PERSISTENT_SIZE: &str = "1Gi";
/// Terminal grace of a datastore pod: Redis finishes its AOF write and, as a primary, waits for
/// its replicas to catch up (`shutdown-timeout`, 10 s by default) before it exits.
const REDIS_GRACE_SECONDS: i64 = 30;
/// The subcommand of the cell runtime's image that writes a pod's redis.conf and sentinel.conf.
const DATASTORE_INIT: &str = "datastore-init";

/// What a managed datastore's spec decides, with its defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Redis pods (each with a Sentinel): 1 is a lone primary with no failover.
    pub replicas: u32,
    pub storage: StorageKind,
    /// Size of each pod's volume (`Persistent` only).
    pub size: Quantity,
}

impl Plan {
    /// The managed datastore of `cell`, if it has one (an external datastore wins: the managed
    /// section is only the default of the spec).
    pub fn of_cell(cell: &Cell) -> Option<Self> {
        match (&cell.spec.datastore.managed, &cell.spec.datastore.external) {
            (Some(managed), None) => Some(Self::of(managed)),
            _ => None,
        }
    }

    pub fn of(managed: &ManagedRedis) -> Self {
        Self {
            replicas: managed.effective_replicas(),
            storage: managed.storage,
            size: managed
                .size
                .clone()
                .unwrap_or_else(|| Quantity(DEFAULT_PERSISTENT_SIZE.into())),
        }
    }

    /// Replicas a write must reach before the primary takes it (`min-replicas-to-write`) and
    /// the lanes acknowledge it (`WAIT`, `CELLSTACK_REDIS_WRITE_ACKS`): 1 as soon as there is a
    /// replica, so an acknowledged write survives the loss of the primary and an isolated
    /// primary stops taking writes.
    pub fn write_acks(&self) -> u32 {
        u32::from(self.replicas >= 2)
    }

    /// Ready Redis pods enough to take acknowledged writes: the primary plus the replicas a
    /// write must reach.
    pub fn ready_enough(&self, ready: u32) -> bool {
        ready > self.write_acks()
    }

    /// Stable DNS name of datastore pod `i` in `namespace`: its own ClusterIP Service
    /// ([`Builder::redis_pod_service`]), what replicas and sentinels announce and the lanes dial.
    ///
    /// Not the headless Service's per-pod name (`redis-<i>.redis.<ns>.svc`): that name is
    /// NXDOMAIN from the pod's deletion until its successor has an address, and the cluster's
    /// DNS caches that answer (CoreDNS' `cache 30` and the kubernetes plugin's `ttl 30`, the
    /// defaults). A sentinel that cannot resolve the new primary's name when a failover is
    /// announced drops the switch and keeps naming the old primary while its configuration
    /// epoch says it is current: the sentinels disagree, and two primaries can take writes.
    /// A Service's name and ClusterIP exist as long as the Service, whatever its pod does.
    pub fn pod_host(i: u32, namespace: &str) -> String {
        format!("{}.{namespace}.svc.cluster.local", Self::pod_service(i))
    }

    /// The name of pod `i`'s own Service (also the pod's name).
    pub fn pod_service(i: u32) -> String {
        format!("{REDIS}-{i}")
    }

    /// `--nodes` of `datastore-init`: every pod's `host:redis-port:sentinel-port`, by ordinal.
    pub fn nodes(&self, namespace: &str) -> String {
        (0..self.replicas)
            .map(|i| {
                format!(
                    "{}:{REDIS_PORT}:{SENTINEL_PORT}",
                    Self::pod_host(i, namespace)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `CELLSTACK_REDIS_SENTINELS` of the lanes: every pod's Sentinel, `host:port`, comma
    /// separated, in ordinal order.
    pub fn sentinels(&self, namespace: &str) -> String {
        (0..self.replicas)
            .map(|i| format!("{}:{SENTINEL_PORT}", Self::pod_host(i, namespace)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The password file's path, in the datastore's pods and the lanes alike.
pub fn password_file() -> String {
    format!("{REDIS_AUTH_MOUNT}/{REDIS_AUTH_KEY}")
}

/// The volume holding the password Secret (mounted read-only under [`REDIS_AUTH_MOUNT`]).
pub fn password_volume() -> Volume {
    Volume {
        name: REDIS_AUTH.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(REDIS_AUTH.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub fn password_mount() -> VolumeMount {
    VolumeMount {
        name: REDIS_AUTH.into(),
        mount_path: REDIS_AUTH_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The environment that tells a lane how to reach a managed datastore: through its sentinels,
/// with its password, waiting for `write_acks` replicas before acknowledging a write.
pub fn lane_env(plan: &Plan, namespace: &str) -> Vec<EnvVar> {
    vec![
        env_value("CELLSTACK_REDIS_SENTINELS", &plan.sentinels(namespace)),
        env_value("CELLSTACK_REDIS_PASSWORD_FILE", &password_file()),
        env_value("CELLSTACK_REDIS_WRITE_ACKS", &plan.write_acks().to_string()),
    ]
}

fn downward(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn data_mount() -> VolumeMount {
    VolumeMount {
        name: "data".into(),
        mount_path: MOUNT_DATA.into(),
        ..VolumeMount::default()
    }
}

/// A TCP probe (the Redis image has no shell and no redis-cli, so nothing to exec).
fn liveness(port: i32) -> Probe {
    Probe {
        failure_threshold: Some(6),
        ..tcp_probe(port, 10)
    }
}

impl Builder<'_> {
    /// The password Secret's shape: name, labels, owner, immutable, and its key with an empty
    /// value: the controller creates it once with a random password and never changes it.
    pub(super) fn redis_auth(&self) -> Secret {
        Secret {
            metadata: self.meta(REDIS_AUTH, REDIS),
            // The key the controller fills in (an empty value: generate one).
            data: Some(BTreeMap::from([(
                REDIS_AUTH_KEY.to_owned(),
                k8s_openapi::ByteString(Vec::new()),
            )])),
            type_: Some("Opaque".into()),
            immutable: Some(true),
            ..Secret::default()
        }
    }

    /// The StatefulSet's governing Service (headless). The pods are known by their own
    /// Services' names ([`Plan::pod_host`]), not by the names this one gives them.
    pub(super) fn redis_service(&self) -> Service {
        let mut svc = self.service(
            REDIS,
            REDIS,
            self.selector(REDIS),
            vec![port("redis", REDIS_PORT), port("sentinel", SENTINEL_PORT)],
        );
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
            spec.publish_not_ready_addresses = Some(true);
        }
        svc
    }

    /// Pod `i`'s own ClusterIP Service: a name that always resolves, to an address that never
    /// changes, whichever pod object holds ordinal `i` (see [`Plan::pod_host`]). Not-ready
    /// addresses are published: replicas and sentinels must reach a pod while it starts.
    pub(super) fn redis_pod_service(&self, i: u32) -> Service {
        let name = Plan::pod_service(i);
        let mut selector = self.selector(REDIS);
        selector.insert(POD_NAME_LABEL.into(), name.clone());
        let mut svc = self.service(
            &name,
            REDIS,
            selector,
            vec![port("redis", REDIS_PORT), port("sentinel", SENTINEL_PORT)],
        );
        if let Some(spec) = svc.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        svc
    }

    /// Voluntary disruptions (node drains) take one datastore pod at a time, so a replica is
    /// always left to acknowledge writes and a majority of sentinels to fail over.
    pub(super) fn redis_disruption_budget(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(REDIS, REDIS),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(self.selector(REDIS)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    fn datastore_init(&self, plan: &Plan) -> Container {
        let args = [
            DATASTORE_INIT,
            "--nodes",
            &plan.nodes(&self.namespace),
            "--replicas",
            &plan.replicas.to_string(),
            "--password-file",
            &password_file(),
            "--out",
            CONF_DIR,
            "--sentinel-port",
            &SENTINEL_PORT.to_string(),
            "--master-name",
            SENTINEL_MASTER_NAME,
            "--min-replicas-to-write",
            &plan.write_acks().to_string(),
        ]
        .map(String::from)
        .to_vec();
        Container {
            name: DATASTORE_INIT.into(),
            // The cell runtime's image: its entrypoint is `cellstack-cell`.
            image: Some(self.inputs.images.cell.clone()),
            image_pull_policy: Some(self.inputs.images.pull_policy.clone()),
            args: Some(args),
            // `--pod-name` and `--namespace` fall back to these.
            env: Some(vec![
                downward("POD_NAME", "metadata.name"),
                downward("POD_NAMESPACE", "metadata.namespace"),
            ]),
            volume_mounts: Some(vec![data_mount(), password_mount()]),
            resources: Some(requests("10m", "16Mi")),
            security_context: Some(container_security()),
            ..Container::default()
        }
    }

    fn redis_container(&self) -> Container {
        Container {
            name: REDIS.into(),
            image: Some(self.inputs.images.redis.clone()),
            image_pull_policy: Some(self.inputs.images.pull_policy.clone()),
            // The image's entrypoint is redis-server.
            args: Some(vec![format!("{CONF_DIR}/redis.conf")]),
            ports: Some(vec![container_port("redis", REDIS_PORT)]),
            readiness_probe: Some(tcp_probe(REDIS_PORT, 2)),
            liveness_probe: Some(liveness(REDIS_PORT)),
            volume_mounts: Some(vec![data_mount()]),
            resources: Some(requests("50m", "64Mi")),
            security_context: Some(container_security()),
            ..Container::default()
        }
    }

    fn sentinel_container(&self) -> Container {
        Container {
            name: "sentinel".into(),
            image: Some(self.inputs.images.redis.clone()),
            image_pull_policy: Some(self.inputs.images.pull_policy.clone()),
            // Sentinel rewrites this file as it learns (the primary, peers, epochs): it lives
            // on the pod's volume so a restarted datastore keeps the last known primary.
            args: Some(vec![
                format!("{CONF_DIR}/sentinel.conf"),
                "--sentinel".into(),
            ]),
            ports: Some(vec![container_port("sentinel", SENTINEL_PORT)]),
            readiness_probe: Some(tcp_probe(SENTINEL_PORT, 2)),
            liveness_probe: Some(liveness(SENTINEL_PORT)),
            volume_mounts: Some(vec![data_mount()]),
            resources: Some(requests("10m", "16Mi")),
            security_context: Some(container_security()),
            ..Container::default()
        }
    }

    pub(super) fn redis(&self, plan: &Plan) -> StatefulSet {
        let persistent = plan.storage == StorageKind::Persistent;
        let mut volumes = vec![password_volume()];
        let claims = if persistent {
            Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(self.labels(REDIS)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_owned(), plan.size.clone())])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }])
        } else {
            volumes.push(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            None
        };
        StatefulSet {
            metadata: self.meta(REDIS, REDIS),
            spec: Some(StatefulSetSpec {
                replicas: Some(i32::try_from(plan.replicas).unwrap_or(i32::MAX)),
                service_name: Some(REDIS.into()),
                // The pods find their roles through the sentinels, not through start order:
                // start them together, so a whole-datastore restart is not serialised behind
                // pod 0.
                pod_management_policy: Some("Parallel".into()),
                // One pod at a time, highest ordinal first, each waiting for the previous to be
                // ready: the sentinels fail over a restarting primary.
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    ..StatefulSetUpdateStrategy::default()
                }),
                selector: LabelSelector {
                    match_labels: Some(self.selector(REDIS)),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels(REDIS)),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        init_containers: Some(vec![self.datastore_init(plan)]),
                        containers: vec![self.redis_container(), self.sentinel_container()],
                        volumes: Some(volumes),
                        affinity: scheduling::affinity(&self.cell),
                        topology_spread_constraints: Some(scheduling::spread(
                            &self.cell,
                            self.selector(REDIS),
                        )),
                        security_context: Some(pod_security()),
                        termination_grace_period_seconds: Some(REDIS_GRACE_SECONDS),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: claims,
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::CellFixture;

    fn plan(replicas: u32) -> Plan {
        Plan {
            replicas,
            storage: StorageKind::Persistent,
            size: Quantity(DEFAULT_PERSISTENT_SIZE.into()),
        }
    }

    #[test]
    fn a_write_waits_for_one_replica_once_there_is_one() {
        assert_eq!(plan(1).write_acks(), 0);
        for replicas in 2..=7 {
            assert_eq!(plan(replicas).write_acks(), 1, "{replicas}");
        }
    }

    #[test]
    fn a_replicated_datastore_is_ready_with_a_primary_and_a_replica_to_acknowledge() {
        assert!(!plan(1).ready_enough(0));
        assert!(plan(1).ready_enough(1));
        assert!(!plan(3).ready_enough(1));
        assert!(plan(3).ready_enough(2));
        assert!(plan(3).ready_enough(3));
    }

    #[test]
    fn a_cell_gets_a_persistent_datastore_of_three_pods_by_default_and_none_when_external() {
        let default = Plan::of_cell(&Cell::test("alpha")).expect("managed by default");
        assert_eq!(
            (default.replicas, default.storage, default.size.0.as_str()),
            (3, StorageKind::Persistent, "1Gi")
        );
        let ephemeral = Plan::of_cell(&Cell::test("bravo").ephemeral()).expect("managed");
        assert_eq!(
            (ephemeral.replicas, ephemeral.storage),
            (1, StorageKind::Ephemeral)
        );
        let mut external = Cell::test("charlie");
        external.spec.datastore.managed = None;
        external.spec.datastore.external = Some(cellstack_api::v1alpha1::ExternalRedis {
            url_secret_ref: cellstack_api::v1alpha1::SecretKeyRef {
                namespace: "cellstack-system".into(),
                name: "charlie-redis".into(),
                key: "url".into(),
            },
        });
        assert_eq!(Plan::of_cell(&external), None);
    }
}
