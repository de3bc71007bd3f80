//! `Cell`: one independent cell stack — a full copy of the service set with its own datastore.

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL_CEL, IMAGE_REFERENCE_PATTERN, LABEL_VALUE_CEL, QUANTITY_PATTERN, conditions_schema,
    immutable, rule, rule_at, rule_showing,
};

/// Longest cell name: the cell's namespace is `cell-<name>` and its objects add suffixes.
pub const CELL_NAME_MAX_LEN: usize = 40;

/// The lane's admin port (health, metrics, tenant moves, the admin API), served by the cell
/// runtime; no service may listen on it. The operator's `ADMIN_PORT`. Only the operator's pods
/// are admitted to it (the cell's NetworkPolicy).
pub const LANE_ADMIN_PORT: u32 = 9090;
/// The lane's metrics port: `/metrics` (and `/livez`) only, what a monitoring namespace is
/// admitted to instead of the admin port.
pub const LANE_METRICS_PORT: u32 = 9091;
/// The lane's tenant port, where the cell runtime takes the router's requests.
pub const LANE_TENANT_PORT: u32 = 8080;
/// The cell runtime's tenant state API, on the lane's loopback only (docs/services.md).
pub const LANE_STATE_PORT: u32 = 7070;
/// The ports the cell runtime listens on in every lane: no service may take one.
pub const RUNTIME_PORTS: [u32; 4] = [
    LANE_TENANT_PORT,
    LANE_ADMIN_PORT,
    LANE_METRICS_PORT,
    LANE_STATE_PORT,
];
/// The variable the operator sets in every service container to the state API's URL.
pub const STATE_URL_ENV: &str = "CELLSTACK_STATE_URL";
/// The variable the operator sets in every service container to its `port` (unless the
/// service sets it itself).
pub const PORT_ENV: &str = "PORT";

/// Internal TLS (docs/security.md): the Secret in the operator's namespace holding the
/// release's CA (certificate and key; never leaves that namespace).
pub const INTERNAL_CA_SECRET: &str = "cellstack-internal-ca";
/// The ConfigMap in the operator's namespace with the CA certificates every client of a lane
/// trusts (the routers' `--upstream-ca-file`), under [`INTERNAL_CA_BUNDLE_KEY`]: one during
/// normal operation, the old and the new one while the CA rotates.
pub const INTERNAL_CA_BUNDLE: &str = "cellstack-internal-ca-bundle";
/// Key of the PEM bundle in [`INTERNAL_CA_BUNDLE`] (and of the CA copy in [`LANE_TLS_SECRET`]).
pub const INTERNAL_CA_BUNDLE_KEY: &str = "ca.crt";
/// The `kubernetes.io/tls` Secret in a cell's namespace with the certificate its lanes serve
/// both ports with (`tls.crt`, `tls.key`, and the bundle it was issued under as `ca.crt`).
pub const LANE_TLS_SECRET: &str = "lane-tls";
/// The `kubernetes.io/tls` Secret in the operator's namespace (and copied into each member
/// cluster's `systemNamespace`) with the client certificate the routers and the operator
/// present to lanes that ask for one (`tls.crt`, `tls.key`; docs/security.md "Client
/// certificates"). Its common name is [`LANE_CLIENT_NAME`].
pub const LANE_CLIENT_SECRET: &str = "cellstack-lane-client";
/// The common name (and DNS name) of the lanes' client certificate.
pub const LANE_CLIENT_NAME: &str = "cellstack-lane-client";
/// The annotation of [`LANE_CLIENT_SECRET`] naming the CA that issued it (the SHA-256
/// fingerprint of the CA certificate, hex): a client picks the Secret whose CA a cell's lanes
/// trust.
pub const LANE_CLIENT_ISSUER_ANNOTATION: &str = "cellstack.dev/issuer";
/// A DNS name every lane certificate carries besides its Services' names and addresses: the
/// server name a scraper that reaches lanes by pod address verifies (the chart's PodMonitor).
pub const LANE_TLS_SERVER_NAME: &str = "lanes.cellstack.internal";
/// The node label a Cell's `zone` is matched against (Kubernetes' well-known zone label).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The node label that tells nodes apart (Kubernetes' well-known hostname label).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Environment variables the operator sets in lane containers (the cell's name, how to reach
/// its Redis and the state API, its policy file and admin token). A service listing one would
/// override what the operator's moves, policies and durability guarantee rely on.
pub const OPERATOR_ENV: [&str; 8] = [
    "CELLSTACK_CELL",
    "CELLSTACK_REDIS_URL",
    "CELLSTACK_REDIS_SENTINELS",
    "CELLSTACK_REDIS_PASSWORD_FILE",
    "CELLSTACK_REDIS_WRITE_ACKS",
    "CELLSTACK_POLICY_FILE",
    "CELLSTACK_ADMIN_TOKEN_FILE",
    STATE_URL_ENV,
];

/// Redis pods of a `Persistent` managed datastore when `replicas` is not set: a primary and two
/// replicas, so losing one still leaves a replica to acknowledge writes and a majority of
/// sentinels to fail over.
pub const DEFAULT_PERSISTENT_REPLICAS: u32 = 3;
/// Redis pods of an `Ephemeral` managed datastore (the most it may have).
pub const EPHEMERAL_REPLICAS: u32 = 1;
/// Most Redis pods a managed datastore may run (each one also runs a sentinel).
pub const MAX_DATASTORE_REPLICAS: u32 = 7;

/// An independent cell stack: a complete copy of the service set with its own Redis, in a
/// namespace of its own. Tenants are placed on cells by TenantAssignments.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "Cell",
    doc = "An independent cell stack: a complete copy of the service set with its own Redis, in a namespace of its own. Tenants are placed on cells by TenantAssignments.",
    plural = "cells",
    shortname = "cl",
    category = "cellstack",
    status = "CellStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster", description = "MemberCluster the cell's stack runs in; empty: the operator's own cluster"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.zone", description = "Zone of the cell"),
    printcolumn(name = "Runs In", type_ = "string", json_path = ".status.runsIn", description = "Zones the cell's pods run in, with their number of pods"),
    printcolumn(name = "Lanes", type_ = "integer", json_path = ".status.lanes", description = "Lanes running (N)"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version", description = "Version of the service set"),
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.datastore.managed.storage", description = "Storage of the managed datastore: Persistent, or Ephemeral (data lost when its pod goes); empty for an external datastore"),
    printcolumn(name = "Redis", type_ = "integer", json_path = ".status.datastoreReplicas", description = "Redis pods of the managed datastore (1 = no failover)"),
    printcolumn(name = "Tenants", type_ = "integer", json_path = ".status.tenantCount", description = "Tenants placed on the cell"),
    printcolumn(name = "Util%", type_ = "integer", json_path = ".status.utilizationPercent", description = "Tenants as a share of capacity.maxTenants"),
    printcolumn(name = "Cordoned", type_ = "boolean", json_path = ".spec.cordoned", description = "Takes no new tenants"),
    printcolumn(name = "Draining", type_ = "boolean", json_path = ".spec.draining", description = "Moving its tenants away"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // A root rule cannot carry a fieldPath into metadata, so the message names the field.
    validation = rule(
        format!("{} && size(self.metadata.name) <= {CELL_NAME_MAX_LEN}", DNS_LABEL_CEL.replace("self", "self.metadata.name")),
        "metadata.name: a cell name must be at most 40 lowercase letters, digits and '-', starting and ending with a letter or digit: the cell's namespace is named cell-<name>",
    ),
    // `immutable()` compares a field present on both sides only; adding or removing the
    // cluster is a change too.
    validation = rule(
        "has(self.spec.cluster) == has(oldSelf.spec.cluster) && (!has(self.spec.cluster) || self.spec.cluster == oldSelf.spec.cluster)",
        "spec.cluster cannot change: a cell does not move between clusters; create a Cell in the other cluster and drain this one (its tenants move with zero loss)",
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct CellSpec {
    /// The team's containers every lane runs behind the cell runtime (docs/services.md): the
    /// runtime admits each request (tenant, epoch, fence, rate limits, load shedding) and
    /// forwards it over the pod's loopback to the service whose `routes` match its path. Empty
    /// (the default): the runtime serves cellstack's reference tenant service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(
        validation = rule(
            "self.filter(s, !has(s.routes) || size(s.routes) == 0).size() <= 1",
            "at most one service may leave routes empty (it takes every path no other service claims); list the path prefixes of the others, such as routes: ['/reports']",
        ),
        validation = rule(
            "self.all(s, !has(s.routes) || s.routes.all(p, self.filter(t, has(t.routes) && p in t.routes).size() == 1))",
            "a route prefix may belong to one service only: the runtime could not tell which one a request is for; remove the duplicate",
        ),
        validation = rule(
            "self.all(s, self.filter(t, t.name == s.name).size() == 1)",
            "service names must be unique within a cell; rename one of the services",
        ),
        validation = rule(
            "self.all(s, self.filter(t, t.port == s.port).size() == 1)",
            "service ports must be unique within a cell: a lane's containers share one network namespace, so two cannot listen on one port; give each service its own port",
        ),
    )]
    pub services: Vec<CellService>,

    /// Lanes (replicas with stable identities) the cell runs when no ShuffleShardPool selects
    /// it; a pool that selects the cell sets its lane count instead.
    #[serde(default = "default_lanes")]
    #[schemars(range(min = 1, max = 64))]
    pub lanes: u32,

    /// Where the cell keeps its tenants' data.
    #[serde(default)]
    pub datastore: Datastore,

    /// How many tenants the cell may hold and how much it weighs in automatic placement.
    #[serde(default)]
    pub capacity: Capacity,

    /// Zone the cell runs in: its lanes and datastore run only on nodes labelled
    /// `topology.kubernetes.io/zone` with this value (none there: they wait, Pending). Without
    /// one, its lanes and datastore spread over nodes and zones. Automatic placement can require
    /// a zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(LABEL_VALUE_CEL, "zone must be a Kubernetes label value, such as 'eu-west-1a'"))]
    pub zone: Option<String>,

    /// MemberCluster whose cluster runs the cell's stack (docs/multicluster.md); without one it
    /// runs in the operator's own cluster. Cannot change once set (nor be added or removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "cluster must be the name of a MemberCluster: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub cluster: Option<String>,

    /// Region the cell runs in; automatic placement can require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(LABEL_VALUE_CEL, "region must be a Kubernetes label value, such as 'eu-west-1'"))]
    pub region: Option<String>,

    /// A cordoned cell keeps serving its tenants but is given no new ones.
    #[serde(default)]
    pub cordoned: bool,

    /// A draining cell moves its tenants to other cells, one at a time; once empty it can be
    /// deleted.
    #[serde(default)]
    pub draining: bool,

    /// Version label of the service set, used by cell-by-cell rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(LABEL_VALUE_CEL, "version must be a Kubernetes label value, such as 'v1.4.2'"))]
    pub version: Option<String>,
}

fn default_lanes() -> u32 {
    2
}

/// One container of the cell's service set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CellService {
    /// Name of the service, unique within the cell (a DNS label).
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(
        validation = rule(DNS_LABEL_CEL, "service name must be lowercase letters, digits and '-', starting and ending with a letter or digit"),
        validation = rule(
            format!("self != '{}'", crate::services::RUNTIME_CONTAINER),
            "'cell' is the name of the lane's cell runtime container; choose another name",
        ),
    )]
    pub name: String,

    /// Container image, with an explicit tag or digest: `[registry[:port]/]repository:tag`,
    /// `...@sha256:<hex>` or both; the repository is lowercase.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(
        validation = rule_showing(
            format!("self.matches(r'{IMAGE_REFERENCE_PATTERN}')"),
            "image must be a container image reference: [registry[:port]/]repository[:tag][@digest], the repository in lowercase letters, digits and '.', '_', '-', '/', a tag of letters, digits, '_', '.' and '-' after ':', a digest such as 'sha256:<64 hex digits>' after '@', no empty tag or digest, spaces or control characters; for example 'registry.example/svc:1.2.3'",
            "self",
        ),
        validation = rule_showing(
            "self.contains('@') || self.substring(self.lastIndexOf('/') + 1).contains(':')",
            "image must name an explicit tag or digest, such as 'registry.example/svc:1.2.3' or 'registry.example/svc@sha256:<hex>': without one every lane pulls whatever 'latest' is when it starts",
            "self",
        ),
    )]
    pub image: String,

    /// Port the service listens on, on the pod's loopback (127.0.0.1): the cell runtime
    /// forwards to it, and nothing outside the pod should reach it. Not one of the runtime's
    /// own: 8080 (tenant), 9090 (admin), 7070 (state API).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = rule(
        format!("!(self in [{LANE_TENANT_PORT}, {LANE_ADMIN_PORT}, {LANE_METRICS_PORT}, {LANE_STATE_PORT}])"),
        "ports 8080, 9090, 9091 and 7070 are the cell runtime's (tenant requests, admin API, metrics, tenant state API) in every lane; choose another port, such as 8081",
    ))]
    pub port: u32,

    /// Path prefixes of the requests this service takes, such as `/orders`: a request goes to
    /// the service with the longest prefix of its path (a prefix matches whole segments:
    /// `/orders` takes `/orders` and `/orders/7`, not `/ordersx`). Empty: every path no other
    /// service claims (at most one service may leave it empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = rule(
        "self.all(p, p.startsWith('/') && !p.contains(' ') && !p.contains('?') && !p.contains('#'))",
        "a route is a path prefix starting with '/' without spaces, '?' or '#', such as '/orders'",
    ))]
    pub routes: Vec<String>,

    /// Path the runtime asks (GET, every 2 s, 1 s timeout) to know the service is healthy:
    /// any 2xx. Without one, a connection the port accepts is enough. While a service is
    /// unhealthy its lane is not ready (the router stops sending it tenants' requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = rule(
        "self.startsWith('/') && !self.contains(' ')",
        "healthPath must be a path starting with '/' without spaces, such as '/healthz'",
    ))]
    pub health_path: Option<String>,

    /// How long the runtime waits for the service's answer to one request, in seconds: past
    /// it the client gets 504 `timeout` (and the lane's latency, which load shedding watches,
    /// shows it).
    #[serde(default = "default_service_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: u32,

    /// Arguments passed to the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 1024)))]
    pub args: Vec<String>,

    /// Environment variables set in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rule(
        "self.all(e, self.filter(f, f.name == e.name).size() == 1)",
        "environment variable names must be unique; remove the duplicate",
    ))]
    pub env: Vec<EnvVar>,

    /// CPU and memory of the container, as Kubernetes takes them. Without: requests of 50m CPU
    /// and 32Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// An environment variable of a service container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Name of the variable; not one of those the operator sets itself (`CELLSTACK_CELL`,
    /// `CELLSTACK_REDIS_URL`, `CELLSTACK_REDIS_SENTINELS`, `CELLSTACK_REDIS_PASSWORD_FILE`,
    /// `CELLSTACK_REDIS_WRITE_ACKS`, `CELLSTACK_POLICY_FILE`, `CELLSTACK_ADMIN_TOKEN_FILE`, `CELLSTACK_STATE_URL`).
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(
        validation = rule(
            "self.matches('^[A-Za-z_][A-Za-z0-9_]*$')",
            "environment variable names must be letters, digits and '_', not starting with a digit",
        ),
        validation = rule_showing(
            format!("!(self in {})", cel_list(&OPERATOR_ENV)),
            "CELLSTACK_CELL, CELLSTACK_REDIS_URL, CELLSTACK_REDIS_SENTINELS, CELLSTACK_REDIS_PASSWORD_FILE, CELLSTACK_REDIS_WRITE_ACKS, CELLSTACK_POLICY_FILE, CELLSTACK_ADMIN_TOKEN_FILE and CELLSTACK_STATE_URL are set by the operator in lane containers (the lane's cell, Redis, its password and write acknowledgements, policies, admin token and the state API's address); remove this variable",
            "self",
        ),
    )]
    pub name: String,
    /// Value of the variable.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A CEL list literal of `items`.
fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn default_port() -> u32 {
    8081
}

fn default_service_timeout() -> u32 {
    10
}

/// Where a cell keeps its data: exactly one of a Redis the operator runs, or an external one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.managed) != has(self.external)",
        "set exactly one of datastore.managed (the operator runs a Redis for this cell) or datastore.external (a Redis URL from a Secret)",
    ),
    validation = rule(
        "has(self.managed) == has(oldSelf.managed)",
        "a cell's datastore cannot switch between managed and external in place: its data lives there; drain the cell and create a new one",
    ),
)]
pub struct Datastore {
    /// A Redis the operator runs inside the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// A Redis run elsewhere, reached through a URL kept in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

impl Default for Datastore {
    fn default() -> Self {
        Self {
            managed: Some(ManagedRedis::default()),
            external: None,
        }
    }
}

/// A Redis run by the operator inside the cell.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_at(
        "!has(self.size) || self.storage == 'Persistent'",
        ".size",
        "size applies only to Persistent storage; remove it or set storage: Persistent",
    ),
    validation = rule_at(
        "!has(self.replicas) || self.storage == 'Persistent' || self.replicas == 1",
        ".replicas",
        "an Ephemeral datastore runs exactly 1 Redis pod: its replicas would restart empty and could not be trusted to take over; remove replicas, or create the cell with storage: Persistent for a replicated datastore",
    ),
    validation = replicas_unchanged(),
)]
pub struct ManagedRedis {
    /// `Persistent` keeps data on a PersistentVolumeClaim across restarts; `Ephemeral` uses an
    /// emptyDir and loses data when the pod goes (for demos and tests).
    #[serde(default)]
    #[x_kube(validation = immutable("storage cannot change in place; drain the cell and create a new one"))]
    pub storage: StorageKind,
    /// Size of the volume for `Persistent` storage (default 1Gi): a quantity of at least 1Mi,
    /// such as `10Gi`; a plain number counts bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = QUANTITY_PATTERN))]
    #[x_kube(validation = rule_showing(
        // `string(self)`: the field holds a quantity string or a number of bytes.
        "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('1Mi')) >= 0",
        "size must be a storage quantity of at least 1Mi, such as '1Gi' or '512Mi' (a plain number counts bytes; no sign, no space)",
        "string(self)",
    ))]
    pub size: Option<Quantity>,
    /// Redis pods: one primary, the rest replicas on volumes of their own, each pod with a
    /// Sentinel that fails over without the operator. Default 3 for `Persistent` (a write is
    /// acknowledged once a replica has it; losing one pod stops neither writes nor failover),
    /// 1 for `Ephemeral`, the most it may have. 1 means no replica: no failover, and a write
    /// is only as durable as the pod's volume. Cannot change once the cell exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_DATASTORE_REPLICAS))]
    pub replicas: Option<u32>,
}

impl ManagedRedis {
    /// The Redis pods this datastore runs: `replicas`, or the default of its storage kind.
    pub fn effective_replicas(&self) -> u32 {
        self.replicas.unwrap_or(match self.storage {
            StorageKind::Persistent => DEFAULT_PERSISTENT_REPLICAS,
            StorageKind::Ephemeral => EPHEMERAL_REPLICAS,
        })
    }
}

/// CEL: the Redis pods a `managed` object (`var`) runs, with the defaults
/// [`ManagedRedis::effective_replicas`] applies.
fn effective_replicas_cel(var: &str) -> String {
    format!(
        "(has({var}.replicas) ? {var}.replicas : ({var}.storage == 'Persistent' ? {DEFAULT_PERSISTENT_REPLICAS} : {EPHEMERAL_REPLICAS}))"
    )
}

/// The number of Redis pods never changes in place, whether it was set or defaulted: each
/// sentinel keeps the quorum and the peers it was started with in its own configuration (see
/// docs/durability.md). Setting `replicas` to the default it already runs is allowed.
fn replicas_unchanged() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "{} == {}",
        effective_replicas_cel("self"),
        effective_replicas_cel("oldSelf")
    ))
    .message("replicas cannot change in place: each Sentinel keeps the quorum and peers it started with; drain the cell and create a new one with the replicas you need")
    .reason(kube::core::Reason::FieldValueForbidden)
    .field_path(".replicas")
}

/// How a managed Redis stores its data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StorageKind {
    #[default]
    Persistent,
    Ephemeral,
}

/// A Redis outside the cell.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// The Secret key holding the `redis://` or `rediss://` URL.
    pub url_secret_ref: SecretKeyRef,
}

/// A key of a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret (default: the operator's namespace, `cellstack-system`).
    #[serde(default = "default_secret_namespace")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "namespace must be a valid namespace name"))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rule(
        "self.matches('^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$')",
        "name must be a valid Secret name: lowercase letters, digits, '-' and '.'",
    ))]
    pub name: String,
    /// Key within the Secret (default `url`).
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rule(
        "self.matches('^[-._a-zA-Z0-9]+$')",
        "key must be a valid Secret key: letters, digits, '-', '_' and '.'",
    ))]
    pub key: String,
}

fn default_secret_namespace() -> String {
    crate::routing::publication::DEFAULT_NAMESPACE.to_owned()
}

fn default_secret_key() -> String {
    "url".to_owned()
}

/// How much a cell holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Most tenants placed on the cell; automatic placement never exceeds it.
    #[serde(default = "default_max_tenants")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_tenants: u32,
    /// Relative size of the cell in automatic placement (a cell of weight 200 counts as twice
    /// as roomy as one of 100 when comparing utilization).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
}

fn default_max_tenants() -> u32 {
    1000
}

fn default_weight() -> u32 {
    100
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_tenants: default_max_tenants(),
            weight: default_weight(),
        }
    }
}

/// Lifecycle phase of a cell.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CellPhase {
    /// Accepted; the stack is not yet created.
    #[default]
    Pending,
    /// The stack is being created or updated.
    Provisioning,
    /// Every lane and the datastore are ready.
    Ready,
    /// Serving, but some lanes or the datastore are unhealthy.
    Degraded,
    /// Moving its tenants away.
    Draining,
    /// Being deleted.
    Terminating,
    /// Its member cluster does not answer: the stack is neither changed nor checked, and the
    /// last known status is kept (its lanes and that cluster's routers keep serving).
    Unknown,
}

/// Observed state of a cell.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CellStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: CellPhase,
    /// `Ready`, `Available`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespace holding the cell's stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Lanes the cell runs (N).
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub lanes: u32,
    /// Lanes whose pods are ready.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub ready_lanes: u32,
    /// Addresses of the cell's lanes, by lane number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub endpoints: Vec<String>,
    /// Addresses (`node:nodePort`) other clusters reach the cell's lanes' tenant port by, by
    /// lane number; set only when the operator runs with `--multicluster`, and only once every
    /// lane has one (docs/multicluster.md, D7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub cross_cluster_endpoints: Vec<String>,
    /// The same for the lanes' admin port, which the operator calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub cross_cluster_admin_endpoints: Vec<String>,
    /// Tenants placed on the cell.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub tenant_count: u32,
    /// Tenants as a percentage of `capacity.maxTenants`.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub utilization_percent: u32,
    /// Redis pods the managed datastore runs (`spec.datastore.managed.replicas` or its
    /// default); 0 for an external datastore.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub datastore_replicas: u32,
    /// Where the cell's pods (lanes and datastore) run: each zone with its number of pods, e.g.
    /// `zone-a:7`, or `zone-a:3 zone-b:2 zone-c:2` for a cell spread over zones; `pending:N` for
    /// pods not yet on a node. Empty until the operator has looked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runs_in: String,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    /// The messages the Cell's CEL rules give `managed` (updated from `old` when given), checked
    /// with kube's CEL interpreter; the API server's verdict is the e2e suite `crd_validation`.
    fn messages(managed: Value, old: Option<Value>) -> Vec<String> {
        let crd = Cell::crd();
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .expect("a schema")
                .open_api_v3_schema,
        )
        .expect("schema serializes");
        let cell = |managed: Value| {
            json!({"apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell", "metadata": {"name": "x"},
                   "spec": {"datastore": {"managed": managed}}})
        };
        let old = old.map(cell);
        match kube::core::cel::Validator::new().validate(&schema, &cell(managed), old.as_ref()) {
            Ok(()) => vec![],
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn replicas_default_to_3_when_persistent_and_1_when_ephemeral() {
        let managed = |storage, replicas| ManagedRedis {
            storage,
            size: None,
            replicas,
        };
        assert_eq!(
            managed(StorageKind::Persistent, None).effective_replicas(),
            3
        );
        assert_eq!(
            managed(StorageKind::Ephemeral, None).effective_replicas(),
            1
        );
        assert_eq!(
            managed(StorageKind::Persistent, Some(5)).effective_replicas(),
            5
        );
        // A cell with no datastore section gets a managed, persistent, replicated one.
        let spec: CellSpec = serde_json::from_value(json!({})).expect("defaults");
        let managed = spec.datastore.managed.expect("managed by default");
        assert_eq!(managed.effective_replicas(), DEFAULT_PERSISTENT_REPLICAS);
    }

    #[test]
    fn an_ephemeral_datastore_runs_exactly_one_redis() {
        for ok in [
            json!({"storage": "Ephemeral"}),
            json!({"storage": "Ephemeral", "replicas": 1}),
            json!({"storage": "Persistent", "replicas": 1}),
            json!({"storage": "Persistent", "replicas": 7}),
        ] {
            assert_eq!(messages(ok.clone(), None), Vec::<String>::new(), "{ok}");
        }
        let got = messages(json!({"storage": "Ephemeral", "replicas": 3}), None);
        assert!(
            got.iter().any(
                |m| m.starts_with("an Ephemeral datastore runs exactly 1 Redis pod")
                    && m.contains("storage: Persistent")
            ),
            "{got:#?}"
        );
    }

    #[test]
    fn replicas_never_change_in_place_but_may_name_the_default_they_run() {
        let p = |replicas: Option<u32>| match replicas {
            Some(r) => json!({"storage": "Persistent", "replicas": r}),
            None => json!({"storage": "Persistent"}),
        };
        for (old, new) in [
            (p(None), p(Some(3))),
            (p(Some(3)), p(None)),
            (p(Some(5)), p(Some(5))),
            (
                json!({"storage": "Ephemeral"}),
                json!({"storage": "Ephemeral", "replicas": 1}),
            ),
        ] {
            assert_eq!(
                messages(new.clone(), Some(old.clone())),
                Vec::<String>::new(),
                "{old} -> {new}"
            );
        }
        for (old, new) in [
            (p(None), p(Some(1))),
            (p(Some(1)), p(Some(3))),
            (p(Some(3)), p(Some(5))),
            (p(Some(5)), p(None)),
        ] {
            let got = messages(new.clone(), Some(old.clone()));
            assert!(
                got.iter()
                    .any(|m| m.starts_with("replicas cannot change in place")),
                "{old} -> {new}: {got:#?}"
            );
        }
    }
}
