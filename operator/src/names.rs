//! The names, labels, ports and field manager of everything the operator makes, in one place:
//! the objects of a cell's stack, the labels it selects them by, and what the controllers and
//! the chart agree on.

/// Prefix of a cell's namespace: `cell-<name>`.
pub const NAMESPACE_PREFIX: &str = "cell-";
/// The lanes' StatefulSet (pods `lane-0` … `lane-<N-1>`).
pub const LANES: &str = "lane";
/// Headless Service governing the lanes' StatefulSet (stable pod DNS names).
pub const LANES_GOVERNING: &str = "lanes";
/// The managed Redis' StatefulSet (pods `redis-0` … `redis-<R-1>`), its headless Service and
/// its PodDisruptionBudget.
pub const REDIS: &str = "redis";
/// Secret with the managed Redis' password, generated once by the operator and never
/// overwritten: the data on the datastore's volumes is only readable with it.
pub const REDIS_AUTH: &str = "redis-auth";
/// Key of the password in [`REDIS_AUTH`].
pub const REDIS_AUTH_KEY: &str = "password";
/// Where the password Secret is mounted in the datastore's pods and the lanes.
pub const REDIS_AUTH_MOUNT: &str = "/etc/cellstack/redis";
/// Sentinel's name for the primary it watches (`SENTINEL get-master-addr-by-name cellstack`).
pub const SENTINEL_MASTER_NAME: &str = "cellstack";
/// ConfigMap with the effective rate-limit policies the cell enforces.
pub const POLICIES: &str = "policies";
/// Secret with the admin API token.
pub const ADMIN_TOKEN: &str = "admin-token";
/// Key of the token in [`ADMIN_TOKEN`].
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Secret with the external Redis URL, copied into the cell's namespace.
pub const REDIS_URL: &str = "redis-url";
/// Key of the URL in [`REDIS_URL`].
pub const REDIS_URL_KEY: &str = "url";
/// The lanes' PodDisruptionBudget.
pub const DISRUPTION_BUDGET: &str = "lanes";
/// The NetworkPolicy isolating the cell.
pub const ISOLATION: &str = "cell-isolation";

/// Port of the tenant API on every lane (what the router reaches).
pub const HTTP_PORT: i32 = 8080;
/// Port of the cell runtime's admin API, health and metrics: the one the CRD schema keeps the
/// team's services off.
pub const ADMIN_PORT: i32 = cellstack_api::v1alpha1::LANE_ADMIN_PORT as i32;
/// Port of the cell runtime's `/metrics` only: what a monitoring namespace is admitted to.
pub const METRICS_PORT: i32 = cellstack_api::v1alpha1::LANE_METRICS_PORT as i32;
/// Port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;
/// Port of the Sentinel next to each managed Redis.
pub const SENTINEL_PORT: i32 = 26379;
/// User and group every container runs as.
pub const NONROOT: i64 = 65532;

/// Labels on everything the operator makes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "cellstack-operator";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const PART_OF: &str = "cellstack";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const CELL_LABEL: &str = "cellstack.dev/cell";
pub const VERSION_LABEL: &str = "cellstack.dev/version";
/// Label of every object of a cell's stack in a member cluster: the uid of the Cell that
/// controls it. A member has no Cell for an owner reference to name (docs/multicluster.md, D4),
/// so this label is what says "ours" there.
pub const CELL_UID_LABEL: &str = "cellstack.dev/cell-uid";
/// Label of every object of a cell's stack in a member cluster: the member's name, as its
/// MemberCluster is called in the management cluster.
pub const MEMBER_CLUSTER_LABEL: &str = "cellstack.dev/member-cluster";
/// Annotation of lane pods whose admin port serves HTTPS (internal TLS), for scrapers that
/// discover pods (e2e/prometheus/prometheus.yml relabels `__scheme__` from it).
pub const ADMIN_SCHEME_ANNOTATION: &str = "cellstack.dev/admin-scheme";
/// Label selecting the managed objects when listing orphans or watching children.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=cellstack-operator";

/// `app.kubernetes.io/component` of the router's and the operator's pods (the chart sets them):
/// the only pods outside the cell the NetworkPolicy admits.
pub const ROUTER_COMPONENT: &str = "router";
pub const OPERATOR_COMPONENT: &str = "operator";

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "cellstack-operator";

/// The namespace of cell `name`.
pub fn namespace_of(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}
