//! `MemberCluster`: another Kubernetes cluster the operator reaches through a kubeconfig held in
//! a Secret of its own namespace (docs/member-clusters.md; the design is docs/multicluster.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DNS_LABEL_CEL, LABEL_VALUE_CEL, conditions_schema, rule};

/// Longest member-cluster name: it goes into labels and log lines, and a Cell names it.
pub const MEMBER_CLUSTER_NAME_MAX_LEN: usize = 40;

/// The key of the kubeconfig in its Secret when `kubeconfigSecretRef.key` is not set (the key
/// Cluster API and Flux use).
pub const DEFAULT_KUBECONFIG_KEY: &str = "value";

/// Condition types of a MemberCluster.
pub mod member_condition {
    /// The kubeconfig Secret exists, holds the key, and is a kubeconfig the operator accepts
    /// (inline credentials only: no files, commands, auth providers, proxies or skipped TLS
    /// verification).
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// The member's API server answered `GET /version` at the last probe.
    pub const REACHABLE: &str = "Reachable";
}

/// A member cluster: another Kubernetes cluster the operator reaches with the kubeconfig in a
/// Secret of the operator's own namespace. Its status says whether the credentials are usable
/// and whether the cluster's API server answers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cellstack.dev",
    version = "v1alpha1",
    kind = "MemberCluster",
    doc = "A member cluster: another Kubernetes cluster the operator reaches with the kubeconfig in a Secret of the operator's own namespace; its status says whether the credentials are usable and the cluster answers.",
    plural = "memberclusters",
    shortname = "mc",
    category = "cellstack",
    status = "MemberClusterStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Reachable", type_ = "string", json_path = ".status.conditions[?(@.type==\"Reachable\")].status", description = "Whether the member's API server answered the last probe"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.kubernetesVersion", description = "Kubernetes version of the member's API server"),
    printcolumn(name = "Last Contact", type_ = "date", json_path = ".status.lastContact", description = "When the member's API server last answered"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // A root rule cannot carry a fieldPath into metadata, so the message names the field.
    validation = rule(
        format!("{} && size(self.metadata.name) <= {MEMBER_CLUSTER_NAME_MAX_LEN}", DNS_LABEL_CEL.replace("self", "self.metadata.name")),
        "metadata.name: a member cluster name must be at most 40 lowercase letters, digits and '-', starting and ending with a letter or digit: it goes into labels and log lines",
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// The Secret holding the member's kubeconfig. It is always read from the operator's own
    /// namespace (there is no namespace field), so whoever may create a MemberCluster cannot make
    /// the operator read a Secret elsewhere. The kubeconfig must carry its credentials inline
    /// (`token`, or `client-certificate-data` and `client-key-data`, with
    /// `certificate-authority-data`): files, `exec`, auth providers, `proxy-url` and
    /// `insecure-skip-tls-verify` are refused.
    pub kubeconfig_secret_ref: KubeconfigSecretRef,
    /// Region the member cluster runs in, such as 'eu-west-1'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(LABEL_VALUE_CEL, "region must be a Kubernetes label value, such as 'eu-west-1'"))]
    pub region: Option<String>,
    /// Namespace of cellstack's routers in the member (where they read the routing table); its
    /// cells' lanes admit it. Default: the operator's own namespace name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rule(DNS_LABEL_CEL, "systemNamespace must be a namespace name: lowercase letters, digits and '-', such as 'cellstack-system'"))]
    pub system_namespace: Option<String>,
    /// Where the lanes of cells in the member export their spans (OTLP over gRPC), as seen from
    /// the member: the management cluster's collector is usually not reachable from there.
    /// Without one, those lanes' traces are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rule(
        "self.matches(r'^https?://[^\\s/?#]+(/[^\\s]*)?$')",
        "laneOtlpEndpoint must be an http:// or https:// URL, such as 'http://otel-collector.monitoring:4317'",
    ))]
    pub lane_otlp_endpoint: Option<String>,
    /// How routers and the operator in other clusters reach the lanes of cells in this member
    /// (with the operator's `--multicluster`; docs/member-clusters.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<MemberNetwork>,
}

/// How the lanes of a member's cells are reached from other clusters: each lane Service is a
/// `NodePort`, and the routing table carries one node address and the node port per lane.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberNetwork {
    /// Which address of a node the routing table carries for a lane (`InternalIP` by default):
    /// the one other clusters' routers can reach.
    #[serde(default)]
    pub node_address_type: NodeAddressType,
}

/// Which of a Node's `status.addresses` other clusters reach it by.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NodeAddressType {
    /// The node's address inside its network (`InternalIP`): clusters share a routed network.
    #[default]
    InternalIP,
    /// The node's public address (`ExternalIP`): clusters reach each other over the internet.
    ExternalIP,
}

impl NodeAddressType {
    /// The `type` of a Node's `status.addresses` entry this names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InternalIP => "InternalIP",
            Self::ExternalIP => "ExternalIP",
        }
    }
}

impl std::str::FromStr for NodeAddressType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "InternalIP" => Ok(Self::InternalIP),
            "ExternalIP" => Ok(Self::ExternalIP),
            other => Err(format!(
                "node address type '{other}' is not one of InternalIP, ExternalIP"
            )),
        }
    }
}

/// A key of a Secret in the operator's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Name of the Secret, in the operator's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rule(
        "self.matches('^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$')",
        "name must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, such as 'member-east'",
    ))]
    pub name: String,
    /// Key of the kubeconfig within the Secret (default `value`).
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rule(
        "self.matches('^[-._a-zA-Z0-9]+$')",
        "key must be a valid Secret key: letters, digits, '-', '_' and '.', such as 'value'",
    ))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    DEFAULT_KUBECONFIG_KEY.to_owned()
}

/// What the operator last observed of a member cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `CredentialsValid` (the Secret and its kubeconfig are usable) and `Reachable` (the API
    /// server answered the last probe), each with its `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The member API server's version (`GET /version`, `gitVersion`), from the last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub kubernetes_version: Option<String>,
    /// When the member's API server last answered; refreshed at most every 30 s while it keeps
    /// answering (the `Reachable` condition's `lastTransitionTime` carries the flips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
}
