//! The objects a Cell's stack consists of, built by pure functions from the Cell and a few
//! inputs: no client, no clock, so the same inputs always give the same objects (snapshot-tested).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{
    datastore::{self, Plan},
    ownership::Owner,
    scheduling,
};
use crate::{
    error::{Error, Result},
    names::*,
};
use cellstack_api::{
    policy::POLICY_FILE_KEY,
    services::{RUNTIME_CONTAINER, SPEC_SEPARATOR, STATE_LISTEN, ServiceSpec as RuntimeService},
    v1alpha1::{
        Cell, CellService, EPHEMERAL_REPLICAS, INTERNAL_CA_BUNDLE_KEY, LANE_TLS_SECRET,
        MAX_DATASTORE_REPLICAS, PORT_ENV, STATE_URL_ENV, StorageKind,
    },
};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            EnvVarSource, HTTPGetAction, Namespace, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
            SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
            TCPSocketAction, Volume, VolumeMount,
        },
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

/// Label the StatefulSet controller puts on each pod: its name.
pub(super) const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

const MOUNT_POLICIES: &str = "/etc/cellstack/policies";
const MOUNT_ADMIN: &str = "/etc/cellstack/admin";
const MOUNT_TLS: &str = "/etc/cellstack/tls";
/// Terminal grace of a lane: the runtime's drain delay (5 s) and shutdown timeout (20 s), plus
/// margin.
const LANE_GRACE_SECONDS: i64 = 30;

/// Images and pull policy the operator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub cell: String,
    pub redis: String,
    pub pull_policy: String,
}

/// Everything besides the Cell that decides its stack.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Lanes to run (the Cell's own count, or the one of the pool that selects it).
    pub lanes: u32,
    pub images: &'a Images,
    /// Namespace of the operator and router, admitted by the NetworkPolicy.
    pub system_namespace: &'a str,
    /// Namespace admitted to the lanes' metrics port only (Prometheus); `None`: nobody.
    pub monitoring_namespace: Option<&'a str>,
    /// The admin API token (generated once, then kept).
    pub admin_token: &'a str,
    /// The effective-policy file's content.
    pub policies_json: &'a str,
    /// The external Redis URL, read from the Secret the spec names.
    pub external_redis_url: Option<&'a str>,
    /// Where the lanes export their spans; `None`: their traces are off.
    pub otlp_endpoint: Option<&'a str>,
    /// The lanes serve both ports over TLS with the certificate the controller issues into
    /// [`LANE_TLS_SECRET`] (`--internal-tls`).
    pub tls: bool,
    /// How every object of the stack (the namespace included) names the Cell: an owner
    /// reference in the Cell's own cluster, labels in a member cluster.
    pub owner: Owner,
    /// With `--multicluster`, the address blocks node-port traffic reaches the lanes from:
    /// this cluster's nodes (kube-proxy SNATs what one node forwards to another to its own
    /// address, [`super::exposure::policy_sources`]) and other clusters' sources
    /// (`--cross-cluster-sources`: a lane on the node the traffic arrives at sees the client's
    /// address). The lane Services are `NodePort`s and the NetworkPolicy admits these on the
    /// lanes' tenant and admin ports. `None`: the lanes are reached only inside the cluster.
    pub cross_cluster: Option<&'a [IpNet]>,
}

/// A cell's stack: every object the operator applies for it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stack {
    pub namespace: Namespace,
    pub secrets: Vec<Secret>,
    /// Secrets the controller creates once, with a value it generates, and never changes or
    /// deletes afterwards (the managed datastore's password): here with the keys to generate
    /// holding empty values.
    pub generated_secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// Secrets the controller issues and renews itself after applying the rest (the lanes'
    /// certificate), by name: kept, not deleted as orphans.
    pub issued_secrets: Vec<String>,
}

/// The name of lane `i`'s pod and Service.
pub fn lane_name(i: u32) -> String {
    format!("{LANES}-{i}")
}

/// Builds the stack of `cell`.
pub fn stack(cell: &Cell, inputs: &Inputs<'_>) -> Result<Stack> {
    let name = cell
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.name"))?;
    let datastore = Plan::of_cell(cell);
    let b = Builder {
        cell: cell.clone(),
        name: name.clone(),
        namespace: namespace_of(&name),
        inputs: inputs.clone(),
        datastore,
    };
    b.validate()?;

    let mut stack = Stack {
        namespace: b.namespace_object(),
        ..Stack::default()
    };
    stack.secrets.push(b.admin_secret());
    stack.config_maps.push(b.policies());
    if let Some(url) = inputs.external_redis_url {
        stack.secrets.push(b.redis_url_secret(url));
    }
    if let Some(plan) = &b.datastore {
        stack.generated_secrets.push(b.redis_auth());
        stack.services.push(b.redis_service());
        for i in 0..plan.replicas {
            stack.services.push(b.redis_pod_service(i));
        }
        stack.stateful_sets.push(b.redis(plan));
    }
    stack.services.push(b.lanes_governing_service());
    for i in 0..inputs.lanes {
        stack.services.push(b.lane_service(i));
    }
    stack.stateful_sets.push(b.lanes());
    stack.disruption_budgets.push(b.disruption_budget());
    if b.datastore.is_some() {
        stack.disruption_budgets.push(b.redis_disruption_budget());
    }
    stack.network_policies.push(b.isolation());
    if inputs.tls {
        stack.issued_secrets.push(LANE_TLS_SECRET.to_owned());
    }
    Ok(stack)
}

/// Builds the objects of one cell's stack (the datastore's in [`super::datastore`]).
pub(super) struct Builder<'a> {
    pub(super) cell: Cell,
    name: String,
    pub(super) namespace: String,
    pub(super) inputs: Inputs<'a>,
    /// The managed datastore, if the cell has one.
    datastore: Option<Plan>,
}

impl Builder<'_> {
    /// What the API server's schema cannot check: facts that need the operator's inputs.
    fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidSpec {
            kind: "Cell",
            name: self.name.clone(),
            reason,
        };
        if self.inputs.lanes == 0 {
            return Err(invalid("a cell needs at least one lane".into()));
        }
        let external = self.cell.spec.datastore.external.is_some();
        if external && self.inputs.external_redis_url.is_none() {
            return Err(invalid(
                "datastore.external is set but no Redis URL was read from its Secret".into(),
            ));
        }
        if let Some(managed) = &self.cell.spec.datastore.managed
            && let Some(size) = &managed.size
            && size.0.trim().is_empty()
        {
            return Err(invalid(
                "datastore.managed.size is empty; give a size such as 1Gi".into(),
            ));
        }
        // The CRD's schema refuses these too; an older CRD still installed might not.
        if let Some(plan) = &self.datastore {
            if !(1..=MAX_DATASTORE_REPLICAS).contains(&plan.replicas) {
                return Err(invalid(format!(
                    "datastore.managed.replicas is {}; give 1 to {MAX_DATASTORE_REPLICAS}",
                    plan.replicas
                )));
            }
            if plan.storage == StorageKind::Ephemeral && plan.replicas > EPHEMERAL_REPLICAS {
                return Err(invalid(format!(
                    "datastore.managed.replicas is {} but an Ephemeral datastore runs exactly {EPHEMERAL_REPLICAS} Redis pod; remove replicas or use storage: Persistent",
                    plan.replicas
                )));
            }
        }
        Ok(())
    }

    pub(super) fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        labels.insert(PART_OF_LABEL.into(), PART_OF.into());
        labels
    }

    /// The labels that select a component's pods (never change, as selectors are immutable).
    pub(super) fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CELL_LABEL.to_owned(), self.name.clone()),
            (COMPONENT_LABEL.to_owned(), component.to_owned()),
        ])
    }

    /// The metadata of a namespaced object of the stack: its labels, marked as the Cell's.
    pub(super) fn meta(&self, name: &str, component: &str) -> ObjectMeta {
        let mut meta = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            ..ObjectMeta::default()
        };
        self.inputs.owner.mark(&mut meta);
        meta
    }

    fn namespace_object(&self) -> Namespace {
        let mut labels = self.labels("cell");
        // Every pod of a cell passes the `restricted` Pod Security Standard.
        labels.insert(
            "pod-security.kubernetes.io/enforce".into(),
            "restricted".into(),
        );
        let mut metadata = ObjectMeta {
            name: Some(self.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        self.inputs.owner.mark(&mut metadata);
        Namespace {
            metadata,
            ..Namespace::default()
        }
    }

    fn admin_secret(&self) -> Secret {
        Secret {
            metadata: self.meta(ADMIN_TOKEN, "cell"),
            data: Some(BTreeMap::from([(
                ADMIN_TOKEN_KEY.to_owned(),
                ByteString(self.inputs.admin_token.as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }
    }

    fn redis_url_secret(&self, url: &str) -> Secret {
        Secret {
            metadata: self.meta(REDIS_URL, "cell"),
            data: Some(BTreeMap::from([(
                REDIS_URL_KEY.to_owned(),
                ByteString(url.as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }
    }

    fn policies(&self) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(POLICIES, "cell"),
            data: Some(BTreeMap::from([(
                POLICY_FILE_KEY.to_owned(),
                self.inputs.policies_json.to_owned(),
            )])),
            ..ConfigMap::default()
        }
    }

    pub(super) fn service(
        &self,
        name: &str,
        component: &str,
        selector: BTreeMap<String, String>,
        ports: Vec<ServicePort>,
    ) -> Service {
        Service {
            metadata: self.meta(name, component),
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn lanes_governing_service(&self) -> Service {
        let mut svc = self.service(
            LANES_GOVERNING,
            LANES,
            self.selector(LANES),
            vec![port("http", HTTP_PORT), port("admin", ADMIN_PORT)],
        );
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
            // Lanes get DNS names while starting, so a lane can be reached for diagnosis.
            spec.publish_not_ready_addresses = Some(true);
        }
        svc
    }

    /// One Service per lane: a stable address for lane `i` whatever its pod's IP. With
    /// `--multicluster` a `NodePort` too (ports allocated by the API server), forwarded by any
    /// node to wherever the lane runs (`externalTrafficPolicy: Cluster`), so an address other
    /// clusters hold stays valid while its node lives (docs/multicluster.md, D7).
    fn lane_service(&self, i: u32) -> Service {
        let lane = lane_name(i);
        let mut selector = self.selector(LANES);
        selector.insert(POD_NAME_LABEL.into(), lane.clone());
        let mut svc = self.service(
            &lane,
            LANES,
            selector,
            vec![port("http", HTTP_PORT), port("admin", ADMIN_PORT)],
        );
        if self.inputs.cross_cluster.is_some()
            && let Some(spec) = svc.spec.as_mut()
        {
            spec.type_ = Some("NodePort".into());
            spec.external_traffic_policy = Some("Cluster".into());
        }
        svc
    }

    /// Environment every container of a lane gets: how to reach the cell's datastore, policies
    /// and admin token, whatever image it runs.
    fn lane_env(&self) -> Vec<EnvVar> {
        let mut env = vec![
            env_value("CELLSTACK_CELL", &self.name),
            env_value(
                "CELLSTACK_POLICY_FILE",
                &format!("{MOUNT_POLICIES}/{POLICY_FILE_KEY}"),
            ),
            env_value(
                "CELLSTACK_ADMIN_TOKEN_FILE",
                &format!("{MOUNT_ADMIN}/{ADMIN_TOKEN_KEY}"),
            ),
            env_value("CELLSTACK_LOG_JSON", "true"),
            env_value(
                "CELLSTACK_METRICS_LISTEN",
                &format!("0.0.0.0:{METRICS_PORT}"),
            ),
        ];
        // Traces (docs/tracing.md): the standard OTLP variables; the lanes sample as the
        // router's request says (the SDK's default, parent-based).
        if let Some(endpoint) = self.inputs.otlp_endpoint {
            env.push(env_value("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            env.push(env_value(
                "OTEL_RESOURCE_ATTRIBUTES",
                &format!("cellstack.cell={}", self.name),
            ));
        }
        if self.inputs.tls {
            env.push(env_value(
                "CELLSTACK_TLS_CERT_FILE",
                &format!("{MOUNT_TLS}/tls.crt"),
            ));
            env.push(env_value(
                "CELLSTACK_TLS_KEY_FILE",
                &format!("{MOUNT_TLS}/tls.key"),
            ));
            // Reached through node ports, a lane asks its clients for a certificate of the
            // bundle it was issued under (docs/security.md "Client certificates").
            if self.inputs.cross_cluster.is_some() {
                env.push(env_value(
                    "CELLSTACK_CLIENT_CA_FILE",
                    &format!("{MOUNT_TLS}/{INTERNAL_CA_BUNDLE_KEY}"),
                ));
            }
        }
        if self.inputs.external_redis_url.is_some() {
            env.push(EnvVar {
                name: "CELLSTACK_REDIS_URL".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: REDIS_URL.into(),
                        key: REDIS_URL_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        } else if let Some(plan) = &self.datastore {
            env.extend(datastore::lane_env(plan, &self.namespace));
        }
        env
    }

    fn lane_mounts(&self) -> Vec<VolumeMount> {
        let mut mounts = vec![
            VolumeMount {
                name: "policies".into(),
                mount_path: MOUNT_POLICIES.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "admin".into(),
                mount_path: MOUNT_ADMIN.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ];
        if self.datastore.is_some() {
            mounts.push(datastore::password_mount());
        }
        if self.inputs.tls {
            mounts.push(VolumeMount {
                name: "tls".into(),
                mount_path: MOUNT_TLS.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        mounts
    }

    /// The default service set: the cell runtime with the reference tenant service.
    fn runtime_container(&self) -> Container {
        let mut env = self.lane_env();
        let services = &self.cell.spec.services;
        if !services.is_empty() {
            // The gateway to the services (docs/services.md) and the state API they call.
            let specs: Vec<String> = services
                .iter()
                .map(|s| RuntimeService::from(s).to_string())
                .collect();
            env.push(env_value(
                "CELLSTACK_SERVICES",
                &specs.join(&SPEC_SEPARATOR.to_string()),
            ));
            env.push(env_value("CELLSTACK_STATE_LISTEN", STATE_LISTEN));
        }
        Container {
            name: RUNTIME_CONTAINER.into(),
            image: Some(self.inputs.images.cell.clone()),
            image_pull_policy: Some(self.inputs.images.pull_policy.clone()),
            ports: Some(vec![
                container_port("http", HTTP_PORT),
                container_port("admin", ADMIN_PORT),
                container_port("metrics", METRICS_PORT),
            ]),
            env: Some(env),
            // Two misses in a row, each given 2 s: one slow Redis ping on a busy node must not
            // take a lane out of its Service. Still out within 4 s of SIGTERM, inside the
            // runtime's 5 s drain delay. With services, `/readyz` also fails while one of them
            // fails its health check.
            readiness_probe: Some(Probe {
                timeout_seconds: Some(2),
                ..self.http_probe("/readyz", 2, 2)
            }),
            liveness_probe: Some(self.http_probe("/livez", 10, 3)),
            volume_mounts: Some(self.lane_mounts()),
            resources: Some(requests("50m", "32Mi")),
            security_context: Some(container_security()),
            ..Container::default()
        }
    }

    /// A probe of the admin port's `path` (over HTTPS when the lanes serve TLS: the kubelet
    /// does not verify the certificate).
    fn http_probe(&self, path: &str, period: i32, failures: i32) -> Probe {
        let mut probe = http_probe(path, ADMIN_PORT, period, failures);
        if self.inputs.tls
            && let Some(get) = probe.http_get.as_mut()
        {
            get.scheme = Some("HTTPS".into());
        }
        probe
    }

    /// A service the spec lists, behind the runtime: it listens on the pod's loopback and
    /// keeps its tenants' data through the state API, so it gets neither ports the lane
    /// Services target, nor the datastore's address, password or the admin token; its health
    /// is the runtime's to check (a kubelet probe could not reach a loopback port).
    fn service_container(&self, service: &CellService) -> Container {
        let mut env = vec![
            env_value("CELLSTACK_CELL", &self.name),
            env_value(STATE_URL_ENV, &format!("http://{STATE_LISTEN}")),
        ];
        if !service.env.iter().any(|e| e.name == PORT_ENV) {
            env.push(env_value(PORT_ENV, &service.port.to_string()));
        }
        env.extend(service.env.iter().map(|e| env_value(&e.name, &e.value)));
        Container {
            name: service.name.clone(),
            image: Some(service.image.clone()),
            image_pull_policy: Some(self.inputs.images.pull_policy.clone()),
            args: (!service.args.is_empty()).then(|| service.args.clone()),
            env: Some(env),
            resources: Some(
                service
                    .resources
                    .clone()
                    .unwrap_or_else(|| requests("50m", "32Mi")),
            ),
            security_context: Some(container_security()),
            ..Container::default()
        }
    }

    fn lane_volumes(&self) -> Vec<Volume> {
        let mut volumes = vec![
            Volume {
                name: "policies".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: POLICIES.into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "admin".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ADMIN_TOKEN.into()),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
        ];
        if self.datastore.is_some() {
            volumes.push(datastore::password_volume());
        }
        if self.inputs.tls {
            volumes.push(Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(LANE_TLS_SECRET.into()),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        volumes
    }

    fn lanes(&self) -> StatefulSet {
        let containers = std::iter::once(self.runtime_container())
            .chain(
                self.cell
                    .spec
                    .services
                    .iter()
                    .map(|s| self.service_container(s)),
            )
            .collect();
        let mut pod_labels = self.labels(LANES);
        if let Some(version) = &self.cell.spec.version {
            pod_labels.insert(VERSION_LABEL.into(), version.clone());
        }
        StatefulSet {
            metadata: self.meta(LANES, LANES),
            spec: Some(StatefulSetSpec {
                replicas: Some(i32::try_from(self.inputs.lanes).unwrap_or(i32::MAX)),
                service_name: Some(LANES_GOVERNING.into()),
                // Lanes are independent replicas: start them together, not one after another.
                pod_management_policy: Some("Parallel".into()),
                // The operator replaces outdated lanes itself, one at a time through the Eviction
                // API, so the PodDisruptionBudget is honoured (see `lanes`); the StatefulSet
                // controller then recreates each evicted lane from the new revision.
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    ..StatefulSetUpdateStrategy::default()
                }),
                selector: LabelSelector {
                    match_labels: Some(self.selector(LANES)),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        // How a scraper that discovers pods reaches the admin port.
                        annotations: self.inputs.tls.then(|| {
                            BTreeMap::from([(
                                ADMIN_SCHEME_ANNOTATION.to_owned(),
                                "https".to_owned(),
                            )])
                        }),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers,
                        volumes: Some(self.lane_volumes()),
                        affinity: scheduling::affinity(&self.cell),
                        topology_spread_constraints: Some(scheduling::spread(
                            &self.cell,
                            self.selector(LANES),
                        )),
                        security_context: Some(pod_security()),
                        termination_grace_period_seconds: Some(LANE_GRACE_SECONDS),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        ..PodSpec::default()
                    }),
                },
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }

    /// Voluntary disruptions (node drains) take one lane at a time.
    fn disruption_budget(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(DISRUPTION_BUDGET, LANES),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(self.selector(LANES)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    /// Admits the cell's own pods to its datastore's ports, the router to the lanes' tenant port,
    /// the operator to their admin port and the monitoring namespace to their metrics port;
    /// nothing else (so no pod, even of the cell, reaches a service container behind the
    /// runtime, whatever address it binds). No address block is named unless the lanes are
    /// exposed to other clusters: then the blocks node-port traffic comes from
    /// ([`Inputs::cross_cluster`]) are admitted to the tenant and admin ports
    /// (docs/multicluster.md, D8).
    fn isolation(&self) -> NetworkPolicy {
        let namespace = |name: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                name.to_owned(),
            )])),
            ..LabelSelector::default()
        };
        let from_system = |component: &str| NetworkPolicyPeer {
            namespace_selector: Some(namespace(self.inputs.system_namespace)),
            pod_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: COMPONENT_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec![component.to_owned()]),
                }]),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        let tcp = |p: i32| NetworkPolicyPort {
            protocol: Some("TCP".into()),
            port: Some(IntOrString::Int(p)),
            ..NetworkPolicyPort::default()
        };
        // Never an empty `from`: that would admit every source.
        let forwarded = self
            .inputs
            .cross_cluster
            .filter(|sources| !sources.is_empty())
            .map(|sources| NetworkPolicyIngressRule {
                from: Some(
                    sources
                        .iter()
                        .map(|net| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: net.to_string(),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect(),
                ),
                ports: Some(vec![tcp(HTTP_PORT), tcp(ADMIN_PORT)]),
            });
        let monitoring = self
            .inputs
            .monitoring_namespace
            .map(|ns| NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespace(ns)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp(METRICS_PORT)]),
            });
        NetworkPolicy {
            metadata: self.meta(ISOLATION, "cell"),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(
                    vec![
                        NetworkPolicyIngressRule {
                            from: Some(vec![NetworkPolicyPeer {
                                pod_selector: Some(LabelSelector::default()),
                                ..NetworkPolicyPeer::default()
                            }]),
                            ports: Some(vec![tcp(REDIS_PORT), tcp(SENTINEL_PORT)]),
                        },
                        NetworkPolicyIngressRule {
                            from: Some(vec![from_system(ROUTER_COMPONENT)]),
                            ports: Some(vec![tcp(HTTP_PORT)]),
                        },
                        NetworkPolicyIngressRule {
                            from: Some(vec![from_system(OPERATOR_COMPONENT)]),
                            ports: Some(vec![tcp(ADMIN_PORT)]),
                        },
                    ]
                    .into_iter()
                    .chain(forwarded)
                    .chain(monitoring)
                    .collect(),
                ),
                ..NetworkPolicySpec::default()
            }),
        }
    }
}

pub(super) fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub(super) fn container_port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(super) fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub(super) fn tcp_probe(port: i32, period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

pub(super) fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])),
        ..ResourceRequirements::default()
    }
}

pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        fs_group: Some(NONROOT),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

pub(super) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::{
        CellService, Datastore, EnvVar as SpecEnvVar, ExternalRedis, HOSTNAME_LABEL, ManagedRedis,
        SecretKeyRef, ZONE_LABEL,
    };

    use kube::{Resource, ResourceExt};

    use super::*;
    use crate::{
        fixtures::CellFixture,
        logic::cell::ownership::{cell_of, controls},
    };

    fn images() -> Images {
        Images {
            cell: "localhost/cellstack/cell:0.1.0".into(),
            redis: "localhost/cellstack/redis:7.0.15".into(),
            pull_policy: "IfNotPresent".into(),
        }
    }

    /// The inputs of `cell`'s stack in the cluster the Cell is in.
    fn inputs<'a>(
        cell: &Cell,
        images: &'a Images,
        lanes: u32,
        external: Option<&'a str>,
    ) -> Inputs<'a> {
        Inputs {
            lanes,
            images,
            system_namespace: "cellstack-system",
            monitoring_namespace: Some("monitoring"),
            admin_token: "0123456789abcdef0123456789abcdef",
            policies_json: "{\"version\":\"0\",\"tenants\":{}}",
            external_redis_url: external,
            otlp_endpoint: None,
            tls: false,
            owner: Owner::of(cell, None).expect("the fixture has a uid"),
            cross_cluster: None,
        }
    }

    #[test]
    fn with_cross_cluster_lanes_each_lane_service_is_a_node_port_and_only_the_given_blocks_join_the_policy()
     {
        let images = images();
        let cell = Cell::test("alpha").ephemeral().with_lanes(2);
        let nodes: Vec<IpNet> = vec![
            "10.0.0.1/32".parse().expect("net"),
            "fd00::2/128".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
        ];
        let local = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        let exposed = stack(
            &cell,
            &Inputs {
                cross_cluster: Some(&nodes),
                ..inputs(&cell, &images, 2, None)
            },
        )
        .expect("builds");
        for i in 0..2 {
            let spec = find(&exposed.services, &lane_name(i))
                .spec
                .clone()
                .expect("spec");
            assert_eq!(spec.type_.as_deref(), Some("NodePort"));
            assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
            // The API server allocates the node ports: the operator never owns them.
            assert!(spec.ports.iter().flatten().all(|p| p.node_port.is_none()));
            let plain = find(&local.services, &lane_name(i))
                .spec
                .clone()
                .expect("spec");
            assert_eq!(plain.type_, None);
        }
        for other in exposed.services.iter().filter(|s| {
            !s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("lane-"))
        }) {
            assert_eq!(other.spec.as_ref().and_then(|s| s.type_.clone()), None);
        }
        let rules = |stack: &Stack| {
            serde_json::to_value(
                &stack.network_policies[0]
                    .spec
                    .as_ref()
                    .expect("spec")
                    .ingress,
            )
            .expect("json")
        };
        let (before, after) = (rules(&local), rules(&exposed));
        let before = before.as_array().expect("rules");
        let after = after.as_array().expect("rules");
        // One rule more, the rest unchanged.
        assert_eq!(after.len(), before.len() + 1);
        let added: Vec<&serde_json::Value> = after.iter().filter(|r| !before.contains(r)).collect();
        assert_eq!(
            added,
            [&serde_json::json!({
                "from": [
                    {"ipBlock": {"cidr": "10.0.0.1/32"}},
                    {"ipBlock": {"cidr": "fd00::2/128"}},
                    {"ipBlock": {"cidr": "192.168.0.0/16"}},
                ],
                "ports": [{"port": HTTP_PORT, "protocol": "TCP"}, {"port": ADMIN_PORT, "protocol": "TCP"}],
            })]
        );
        // No node known: no rule at all (an empty `from` would admit everyone).
        let none = stack(
            &cell,
            &Inputs {
                cross_cluster: Some(&[]),
                ..inputs(&cell, &images, 2, None)
            },
        )
        .expect("builds");
        assert_eq!(rules(&none), rules(&local));
    }

    #[test]
    fn lanes_of_a_tls_cell_mount_its_certificate_and_probe_over_https() {
        let images = images();
        let cell = Cell::test("alpha").ephemeral().with_lanes(1);
        let plain = stack(&cell, &inputs(&cell, &images, 1, None)).expect("builds");
        assert!(plain.issued_secrets.is_empty());
        let tls = stack(
            &cell,
            &Inputs {
                tls: true,
                ..inputs(&cell, &images, 1, None)
            },
        )
        .expect("builds");
        assert_eq!(tls.issued_secrets, vec![LANE_TLS_SECRET.to_owned()]);
        let template = &find(&tls.stateful_sets, LANES)
            .spec
            .as_ref()
            .expect("spec")
            .template;
        assert_eq!(
            template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(ADMIN_SCHEME_ANNOTATION))
                .map(String::as_str),
            Some("https")
        );
        let tls_pod = pod(find(&tls.stateful_sets, LANES));
        let volume = tls_pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .expect("a tls volume");
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some(LANE_TLS_SECRET)
        );
        let container = &tls_pod.containers[0];
        let env = env_of(container);
        assert_eq!(env["CELLSTACK_TLS_CERT_FILE"], "/etc/cellstack/tls/tls.crt");
        assert_eq!(env["CELLSTACK_TLS_KEY_FILE"], "/etc/cellstack/tls/tls.key");
        for probe in [&container.readiness_probe, &container.liveness_probe] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("http probe");
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        let plain_pod = pod(find(&plain.stateful_sets, LANES));
        assert!(!env_of(&plain_pod.containers[0]).contains_key("CELLSTACK_TLS_CERT_FILE"));
        // Only lanes reached through node ports ask for client certificates.
        assert!(!env.contains_key("CELLSTACK_CLIENT_CA_FILE"));
        let exposed = stack(
            &cell,
            &Inputs {
                tls: true,
                cross_cluster: Some(&[]),
                ..inputs(&cell, &images, 1, None)
            },
        )
        .expect("builds");
        let exposed_pod = pod(find(&exposed.stateful_sets, LANES));
        assert_eq!(
            env_of(&exposed_pod.containers[0])["CELLSTACK_CLIENT_CA_FILE"],
            "/etc/cellstack/tls/ca.crt"
        );
    }

    fn yaml(stack: &Stack) -> String {
        serde_yaml::to_string(stack).expect("stack serializes")
    }

    #[test]
    fn ephemeral_cell_runs_the_runtime_and_a_redis_with_an_empty_dir() {
        let images = images();
        let cell = Cell::test("alpha").ephemeral().with_lanes(2);
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        insta::assert_snapshot!(yaml(&stack));
    }

    fn persistent(replicas: Option<u32>, size: Option<&str>) -> Datastore {
        Datastore {
            managed: Some(ManagedRedis {
                storage: StorageKind::Persistent,
                size: size.map(|s| Quantity(s.into())),
                replicas,
            }),
            external: None,
        }
    }

    fn find<'a, T: Resource<DynamicType = ()>>(objects: &'a [T], name: &str) -> &'a T {
        objects
            .iter()
            .find(|o| o.meta().name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {} {name}", T::kind(&())))
    }

    fn pod(sts: &StatefulSet) -> &PodSpec {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("a pod template")
    }

    fn env_of(container: &Container) -> BTreeMap<String, String> {
        container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn lanes_export_spans_only_when_an_otlp_endpoint_is_configured() {
        let images = images();
        let cell = Cell::test("alpha");
        let off = stack(&cell, &inputs(&cell, &images, 1, None)).expect("builds");
        let env = env_of(&pod(find(&off.stateful_sets, LANES)).containers[0]);
        assert!(!env.keys().any(|k| k.starts_with("OTEL_")), "{env:?}");

        let endpoint = "http://otel-collector.monitoring:4318";
        let on = Inputs {
            otlp_endpoint: Some(endpoint),
            ..inputs(&cell, &images, 1, None)
        };
        let on = stack(&cell, &on).expect("builds");
        let env = env_of(&pod(find(&on.stateful_sets, LANES)).containers[0]);
        assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], endpoint);
        assert_eq!(env["OTEL_RESOURCE_ATTRIBUTES"], "cellstack.cell=alpha");
    }

    #[test]
    fn persistent_cell_runs_three_redis_pods_with_sentinels_on_volumes_of_the_requested_size() {
        let images = images();
        let mut cell = Cell::test("bravo");
        cell.spec.datastore = persistent(None, Some("5Gi"));
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        insta::assert_snapshot!(yaml(&stack));

        let redis = find(&stack.stateful_sets, REDIS);
        let spec = redis.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let claims = spec
            .volume_claim_templates
            .as_ref()
            .expect("a claim template");
        let size = claims[0]
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .expect("a storage request");
        assert_eq!(size, &Quantity("5Gi".into()));
        let pod = pod(redis);
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["redis", "sentinel"]);
        let init = &pod.init_containers.as_ref().expect("an init container")[0];
        assert_eq!(init.image.as_deref(), Some(images.cell.as_str()));
        let args = init.args.clone().expect("datastore-init args");
        assert_eq!(args[0], "datastore-init");
        for pair in [
            ["--replicas", "3"],
            [
                "--nodes",
                "redis-0.cell-bravo.svc.cluster.local:6379:26379,\
                 redis-1.cell-bravo.svc.cluster.local:6379:26379,\
                 redis-2.cell-bravo.svc.cluster.local:6379:26379",
            ],
            ["--min-replicas-to-write", "1"],
            ["--master-name", "cellstack"],
            ["--password-file", "/etc/cellstack/redis/password"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        assert_eq!(
            pod.containers[1].args.clone().expect("sentinel args"),
            ["/data/conf/sentinel.conf", "--sentinel"]
        );
        // The governing Service is headless; each pod has a ClusterIP Service of its own, its
        // pod selected by name and reachable before it is ready: replicas and sentinels find
        // each other while starting.
        let svc = find(&stack.services, REDIS).spec.as_ref().expect("spec");
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        for i in 0..3 {
            let name = format!("redis-{i}");
            let svc = find(&stack.services, &name).spec.as_ref().expect("spec");
            assert_eq!(svc.cluster_ip, None, "{name}: a ClusterIP is allocated");
            assert_eq!(svc.publish_not_ready_addresses, Some(true), "{name}");
            let selector = svc.selector.clone().expect("a selector");
            assert_eq!(
                selector.get(POD_NAME_LABEL).map(String::as_str),
                Some(name.as_str())
            );
            assert_eq!(
                selector.get(COMPONENT_LABEL).map(String::as_str),
                Some("redis"),
                "{selector:?}"
            );
        }
        let budget = find(&stack.disruption_budgets, REDIS);
        assert_eq!(
            budget.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
            Some(IntOrString::Int(1))
        );
    }

    #[test]
    fn lanes_of_a_replicated_cell_reach_every_sentinel_with_the_password_and_wait_for_a_replica() {
        let images = images();
        let mut cell = Cell::test("kilo");
        cell.spec.datastore = persistent(Some(5), None);
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        let lanes = pod(find(&stack.stateful_sets, LANES));
        let env = env_of(&lanes.containers[0]);
        let sentinels: Vec<String> = (0..5)
            .map(|i| format!("redis-{i}.cell-kilo.svc.cluster.local:26379"))
            .collect();
        assert_eq!(
            env.get("CELLSTACK_REDIS_SENTINELS"),
            Some(&sentinels.join(","))
        );
        assert_eq!(
            env.get("CELLSTACK_REDIS_PASSWORD_FILE").map(String::as_str),
            Some("/etc/cellstack/redis/password")
        );
        assert_eq!(
            env.get("CELLSTACK_REDIS_WRITE_ACKS").map(String::as_str),
            Some("1")
        );
        assert!(!env.contains_key("CELLSTACK_REDIS_URL"), "{env:?}");
        let mount = lanes.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/etc/cellstack/redis")
            .expect("the password is mounted");
        assert_eq!(mount.read_only, Some(true));
        let volume = lanes
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref())
            .expect("a Secret volume");
        assert_eq!(volume.secret_name.as_deref(), Some(REDIS_AUTH));
    }

    #[test]
    fn a_single_redis_pod_takes_writes_without_waiting_for_a_replica() {
        let images = images();
        let mut cell = Cell::test("lima");
        cell.spec.datastore = persistent(Some(1), None);
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        let redis = find(&stack.stateful_sets, REDIS);
        assert_eq!(redis.spec.as_ref().and_then(|s| s.replicas), Some(1));
        let init = &pod(redis).init_containers.as_ref().expect("init")[0];
        let args = init.args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w == ["--min-replicas-to-write", "0"]),
            "{args:?}"
        );
        let env = env_of(&pod(find(&stack.stateful_sets, LANES)).containers[0]);
        assert_eq!(
            env.get("CELLSTACK_REDIS_WRITE_ACKS").map(String::as_str),
            Some("0")
        );
        assert_eq!(
            env.get("CELLSTACK_REDIS_SENTINELS").map(String::as_str),
            Some("redis-0.cell-lima.svc.cluster.local:26379")
        );
    }

    #[test]
    fn lanes_and_datastore_spread_over_nodes_stay_in_a_zoned_cells_zone_and_spread_over_zones_without_one()
     {
        let images = images();
        // (topology key, when unsatisfiable) of each spread constraint, and the zones the
        // required node affinity allows (None: any node), of the lanes' and the datastore's pods.
        type Placement = (Vec<(String, String)>, Option<Vec<String>>);
        let placement = |cell: &Cell| -> [Placement; 2] {
            let stack = stack(cell, &inputs(cell, &images, 2, None)).expect("builds");
            [LANES, REDIS].map(|component| {
                let pod = pod(find(&stack.stateful_sets, component));
                let spread = pod
                    .topology_spread_constraints
                    .iter()
                    .flatten()
                    .map(|c| {
                        let selected = c
                            .label_selector
                            .as_ref()
                            .and_then(|s| s.match_labels.as_ref())
                            .and_then(|l| l.get(COMPONENT_LABEL))
                            .cloned();
                        assert_eq!(selected.as_deref(), Some(component), "spreads its own pods");
                        (c.topology_key.clone(), c.when_unsatisfiable.clone())
                    })
                    .collect();
                let zones = pod
                    .affinity
                    .as_ref()
                    .and_then(|a| a.node_affinity.as_ref())
                    .and_then(|n| {
                        n.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .map(|s| {
                        s.node_selector_terms
                            .iter()
                            .flat_map(|t| t.match_expressions.iter().flatten())
                            .filter(|e| e.key == ZONE_LABEL && e.operator == "In")
                            .flat_map(|e| e.values.iter().flatten().cloned())
                            .collect()
                    });
                (spread, zones)
            })
        };
        let hostname = (HOSTNAME_LABEL.to_owned(), "DoNotSchedule".to_owned());
        let unzoned = Cell::test("mike");
        let expected: Placement = (
            vec![
                hostname.clone(),
                (ZONE_LABEL.to_owned(), "ScheduleAnyway".to_owned()),
            ],
            None,
        );
        assert_eq!(placement(&unzoned), [expected.clone(), expected]);
        let mut zoned = Cell::test("november");
        zoned.spec.zone = Some("zone-a".into());
        let expected: Placement = (vec![hostname], Some(vec!["zone-a".to_owned()]));
        assert_eq!(placement(&zoned), [expected.clone(), expected]);
    }

    #[test]
    fn the_password_secret_is_left_for_the_controller_to_generate() {
        let images = images();
        let cell = Cell::test("oscar");
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        // Never server-side applied (that would overwrite the password): created once.
        assert!(
            stack
                .secrets
                .iter()
                .all(|s| s.metadata.name.as_deref() != Some(REDIS_AUTH))
        );
        let auth = find(&stack.generated_secrets, REDIS_AUTH);
        assert_eq!(auth.immutable, Some(true));
        let data = auth.data.as_ref().expect("its key");
        assert_eq!(
            data.get(REDIS_AUTH_KEY).map(|v| v.0.is_empty()),
            Some(true),
            "the stack must not carry a password: {data:?}"
        );
    }

    #[test]
    fn an_ephemeral_cell_with_replicas_is_an_invalid_spec() {
        let images = images();
        let mut cell = Cell::test("papa").ephemeral();
        if let Some(m) = cell.spec.datastore.managed.as_mut() {
            m.replicas = Some(3);
        }
        let err = stack(&cell, &inputs(&cell, &images, 2, None)).expect_err("must refuse");
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("storage: Persistent"), "{err}");
    }

    #[test]
    fn external_cell_has_no_redis_and_reads_the_url_from_a_copied_secret() {
        let images = images();
        let mut cell = Cell::test("charlie");
        cell.spec.datastore = Datastore {
            managed: None,
            external: Some(ExternalRedis {
                url_secret_ref: SecretKeyRef {
                    namespace: "cellstack-system".into(),
                    name: "charlie-redis".into(),
                    key: "url".into(),
                },
            }),
        };
        let stack = stack(
            &cell,
            &inputs(&cell, &images, 2, Some("redis://redis.example:6379")),
        )
        .expect("builds");
        assert!(
            stack
                .stateful_sets
                .iter()
                .all(|s| s.metadata.name.as_deref() == Some(LANES))
        );
        assert!(
            stack
                .secrets
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(REDIS_URL))
        );
        // Its password comes with its URL: no generated Secret, no datastore to protect.
        assert!(stack.generated_secrets.is_empty());
        assert!(
            stack
                .disruption_budgets
                .iter()
                .all(|b| b.metadata.name.as_deref() != Some(REDIS))
        );
        insta::assert_snapshot!(yaml(&stack));
    }

    #[test]
    fn external_cell_without_a_url_is_an_invalid_spec() {
        let images = images();
        let mut cell = Cell::test("delta");
        cell.spec.datastore = Datastore {
            managed: None,
            external: Some(ExternalRedis {
                url_secret_ref: SecretKeyRef {
                    namespace: "cellstack-system".into(),
                    name: "missing".into(),
                    key: "url".into(),
                },
            }),
        };
        let err = stack(&cell, &inputs(&cell, &images, 2, None)).expect_err("must refuse");
        assert!(err.is_permanent(), "{err}");
    }

    #[test]
    fn listed_services_run_behind_the_runtime_on_loopback_without_the_datastores_secrets() {
        let images = images();
        let mut cell = Cell::test("echo").with_lanes(3);
        cell.spec.version = Some("v2".into());
        cell.spec.services = vec![
            CellService {
                name: "api".into(),
                image: "registry.example/api:2.0.0".into(),
                port: 8000,
                routes: vec![],
                health_path: Some("/healthz".into()),
                timeout_seconds: 10,
                resources: None,
                args: vec!["--fail-ratio".into(), "0.1".into()],
                env: vec![SpecEnvVar {
                    name: "MODE".into(),
                    value: "strict".into(),
                }],
            },
            CellService {
                name: "reports".into(),
                image: "registry.example/reports:2.0.0".into(),
                port: 8001,
                routes: vec!["/reports".into(), "/exports".into()],
                health_path: None,
                timeout_seconds: 30,
                resources: Some(requests("10m", "16Mi")),
                args: vec![],
                env: vec![SpecEnvVar {
                    name: "PORT".into(),
                    value: "8001".into(),
                }],
            },
        ];
        let stack = stack(&cell, &inputs(&cell, &images, 3, None)).expect("builds");
        let lanes = stack
            .stateful_sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(LANES))
            .expect("lanes");
        let pod = lanes
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [RUNTIME_CONTAINER, "api", "reports"]);
        let env = |c: &Container, name: &str| {
            c.env
                .iter()
                .flatten()
                .filter(|e| e.name == name)
                .map(|e| e.value.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        // The runtime serves the lane ports and is told about the services.
        let runtime = &pod.containers[0];
        let ports: Vec<_> = runtime
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [HTTP_PORT, ADMIN_PORT, METRICS_PORT]);
        assert_eq!(
            env(runtime, "CELLSTACK_SERVICES"),
            [
                "name=api,port=8000,health=/healthz,timeout=10;name=reports,port=8001,routes=/reports|/exports,timeout=30"
            ]
        );
        assert_eq!(env(runtime, "CELLSTACK_STATE_LISTEN"), [STATE_LISTEN]);
        // The services: no ports, probes or mounts; the state API's URL, their port (unless
        // they set PORT themselves) and their own variables; nothing of the datastore.
        for service in &pod.containers[1..] {
            assert!(
                service.ports.is_none() && service.readiness_probe.is_none(),
                "{service:?}"
            );
            assert!(service.volume_mounts.is_none(), "{service:?}");
            assert_eq!(env(service, STATE_URL_ENV), ["http://127.0.0.1:7070"]);
            assert!(
                service
                    .env
                    .iter()
                    .flatten()
                    .all(|e| !e.name.contains("REDIS") && !e.name.contains("ADMIN_TOKEN")),
                "{service:?}"
            );
        }
        assert_eq!(env(&pod.containers[1], "PORT"), ["8000"]);
        assert_eq!(env(&pod.containers[1], "MODE"), ["strict"]);
        assert_eq!(
            env(&pod.containers[2], "PORT"),
            ["8001"],
            "set once, by the service"
        );
        let labels = lanes
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(labels.get(VERSION_LABEL).map(String::as_str), Some("v2"));
        // The isolation policy admits the router to the runtime's tenant port only, the operator
        // to the admin port only, the monitoring namespace to the metrics port only.
        let isolation = serde_json::to_value(&stack.network_policies[0]).expect("json");
        let rules = isolation["spec"]["ingress"].as_array().expect("rules");
        let ports: Vec<_> = rules
            .iter()
            .map(|r| {
                r["ports"]
                    .as_array()
                    .map(|p| p.iter().map(|p| p["port"].clone()).collect::<Vec<_>>())
            })
            .collect();
        assert_eq!(
            ports,
            [
                Some(vec![
                    serde_json::json!(REDIS_PORT),
                    serde_json::json!(SENTINEL_PORT)
                ]),
                Some(vec![serde_json::json!(HTTP_PORT)]),
                Some(vec![serde_json::json!(ADMIN_PORT)]),
                Some(vec![serde_json::json!(METRICS_PORT)]),
            ]
        );
        // The monitoring namespace, and nothing else, reaches the metrics port; none other when
        // there is none.
        assert_eq!(
            rules[3]["from"],
            serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
        );
        let mut without = inputs(&cell, &images, 3, None);
        without.monitoring_namespace = None;
        let unmonitored = super::stack(&cell, &without).expect("builds");
        let rules = unmonitored.network_policies[0]
            .spec
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .map_or(0, Vec::len);
        assert_eq!(rules, 3);
    }

    #[test]
    fn every_child_is_owned_by_the_cell_as_controller() {
        let images = images();
        let cell = Cell::test("foxtrot").ephemeral();
        let stack = stack(&cell, &inputs(&cell, &images, 2, None)).expect("builds");
        let value = serde_json::to_value(&stack).expect("json");
        let mut metas = vec![&value["namespace"]["metadata"]];
        for kind in [
            "secrets",
            "generated_secrets",
            "config_maps",
            "services",
            "stateful_sets",
            "disruption_budgets",
            "network_policies",
        ] {
            for obj in value[kind].as_array().expect("list") {
                metas.push(&obj["metadata"]);
            }
        }
        for meta in metas {
            let owner = &meta["ownerReferences"][0];
            assert_eq!(owner["kind"], "Cell", "{meta}");
            assert_eq!(owner["controller"], true, "{meta}");
            assert_eq!(meta["labels"][MANAGED_BY_LABEL], MANAGED_BY, "{meta}");
        }
    }

    /// Every object of `stack` as JSON: each field of [`Stack`] holding an object or a list of
    /// objects is walked, so an object kind added later is covered without naming it here.
    fn every_object(stack: &Stack) -> Vec<serde_json::Value> {
        let value = serde_json::to_value(stack).expect("json");
        let fields = value.as_object().expect("a stack is an object");
        fields
            .values()
            .flat_map(|field| match field {
                serde_json::Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            })
            .filter(|object| object.get("metadata").is_some())
            .collect()
    }

    /// The `metadata` of every object of `stack` ([`every_object`]).
    fn metadata_of_every_object(stack: &Stack) -> Vec<serde_json::Value> {
        every_object(stack)
            .into_iter()
            .map(|object| object["metadata"].clone())
            .collect()
    }

    /// Cells of every datastore kind, with the inputs of their stacks in member cluster `east`
    /// and in the Cell's own cluster.
    fn cells_here_and_in_a_member() -> Vec<(Cell, Option<&'static str>)> {
        let mut external = Cell::test("charlie").with_lanes(2);
        external.spec.datastore = Datastore {
            managed: None,
            external: Some(ExternalRedis {
                url_secret_ref: SecretKeyRef {
                    namespace: "cellstack-system".into(),
                    name: "charlie-redis".into(),
                    key: "url".into(),
                },
            }),
        };
        let mut replicated = Cell::test("delta").with_lanes(3);
        replicated.spec.datastore = persistent(Some(3), Some("1Gi"));
        vec![
            (Cell::test("alpha").ephemeral().with_lanes(2), None),
            (replicated, None),
            (external, Some("redis://redis.example:6379")),
        ]
    }

    fn stacks_of(cell: &Cell, external: Option<&str>, images: &Images) -> (Stack, Stack) {
        let local = Inputs {
            tls: true,
            ..inputs(cell, images, cell.spec.lanes, external)
        };
        let member = Inputs {
            owner: Owner::of(cell, Some("east")).expect("the fixture has a uid"),
            ..local.clone()
        };
        (
            stack(cell, &local).expect("builds"),
            stack(cell, &member).expect("builds"),
        )
    }

    #[test]
    fn in_a_member_every_object_carries_the_cells_uid_and_cluster_labels_and_no_owner_reference() {
        let images = images();
        for (cell, external) in cells_here_and_in_a_member() {
            let name = cell.name_any();
            let uid = cell.uid().expect("uid");
            let owner = Owner::of(&cell, Some("east")).expect("owner");
            let (_, member) = stacks_of(&cell, external, &images);
            let metas = metadata_of_every_object(&member);
            // The namespace, the admin token, the policies and the lanes at least.
            assert!(metas.len() >= 6, "{name}: only {} objects", metas.len());
            for meta in metas {
                assert_eq!(meta.get("ownerReferences"), None, "{name}: {meta}");
                assert_eq!(meta["labels"][CELL_UID_LABEL], uid.as_str(), "{meta}");
                assert_eq!(meta["labels"][MEMBER_CLUSTER_LABEL], "east", "{meta}");
                assert_eq!(meta["labels"][CELL_LABEL], name.as_str(), "{meta}");
                assert_eq!(meta["labels"][MANAGED_BY_LABEL], MANAGED_BY, "{meta}");
                // What the apply and the watches read back recognises it as the cell's.
                let typed: ObjectMeta = serde_json::from_value(meta.clone()).expect("metadata");
                assert!(controls(&owner, &typed), "{meta}");
                assert_eq!(cell_of(&typed), Some(name.as_str()));
            }
        }
    }

    #[test]
    fn a_member_stack_differs_from_the_local_one_only_in_how_objects_name_their_cell() {
        let images = images();
        for (cell, external) in cells_here_and_in_a_member() {
            let (local, member) = stacks_of(&cell, external, &images);
            let mut local = serde_json::to_value(&local).expect("json");
            let mut member = serde_json::to_value(&member).expect("json");
            strip(&mut local, &|meta| {
                meta.remove("ownerReferences");
            });
            strip(&mut member, &|meta| {
                if let Some(labels) = meta.get_mut("labels").and_then(|l| l.as_object_mut()) {
                    labels.remove(CELL_UID_LABEL);
                    labels.remove(MEMBER_CLUSTER_LABEL);
                }
            });
            assert_eq!(local, member, "{}", cell.name_any());
        }
    }

    /// Applies `edit` to the `metadata` of every object in `value`, however deep (pod and
    /// claim templates included, which must come out unchanged).
    fn strip(
        value: &mut serde_json::Value,
        edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>),
    ) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    edit(meta);
                }
                map.values_mut().for_each(|v| strip(v, edit));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip(v, edit)),
            _ => {}
        }
    }

    /// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
    fn object_name(object: &serde_json::Value) -> String {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let meta = &object["metadata"];
        let name = match meta["namespace"].as_str() {
            Some(namespace) => format!("{namespace}/{}", text(&meta["name"])),
            None => text(&meta["name"]),
        };
        format!("{} {name}", text(&object["kind"]))
    }

    #[test]
    fn a_member_cells_objects_are_marked_by_labels() {
        let images = images();
        let cell = Cell::test("alpha").ephemeral().with_lanes(1);
        let (_, member) = stacks_of(&cell, None, &images);
        let marks: Vec<serde_json::Value> = every_object(&member)
            .into_iter()
            .map(|object| {
                let meta = &object["metadata"];
                serde_json::json!({
                    "object": object_name(&object),
                    "labels": meta["labels"],
                    "ownerReferences": meta.get("ownerReferences"),
                })
            })
            .collect();
        insta::assert_snapshot!(serde_yaml::to_string(&marks).expect("yaml"));
    }

    #[test]
    fn building_twice_gives_the_same_stack() {
        let images = images();
        let cell = Cell::test("golf").ephemeral().with_lanes(4);
        let a = yaml(&stack(&cell, &inputs(&cell, &images, 4, None)).expect("builds"));
        let b = yaml(&stack(&cell, &inputs(&cell, &images, 4, None)).expect("builds"));
        assert_eq!(a, b);
    }
}
