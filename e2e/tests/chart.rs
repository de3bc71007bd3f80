//! The Helm chart (`charts/cellstack`) installs what the operator and the router need, and no
//! more.
//!
//! Rendered with `helm template` under several value sets, every object parses as its Kubernetes
//! type with no unknown field, and is checked against what it serves: the binaries' own command
//! lines, the API calls the code makes (least-privilege RBAC), the restricted Pod Security
//! Standard, and the generated CRDs. The Grafana dashboards' ConfigMap carries the chart's
//! `dashboards/` files byte for byte, and every metric and recording rule they read exists
//! (docs/dashboards.md). Then a real API server validates every object
//! (`kubectl apply --dry-run=server`), lets each component's service account make exactly its
//! calls, and refuses, through the chart's admission policy, to delete a cell that holds tenants.
//!
//! Needs Helm, built by `e2e/scripts/build-helm.sh` (or named by `CELLSTACK_HELM`); the
//! `--help` of `cellstack-operator` and `cellstack-router` from the workspace build; and for the
//! last tests an API server in `KUBECONFIG` (the test command's cluster, or
//! `e2e/control-plane up && eval "$(e2e/control-plane env)"`). When one is missing, the test fails
//! with the command that provides it; it never skips.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::{
    routing::publication::{COMPONENT_LABEL, HEARTBEAT_NAME, POINTER_NAME},
    v1alpha1::{INTERNAL_CA_BUNDLE, INTERNAL_CA_SECRET},
};
use cellstack_testkit::{
    FIELD_MANAGER, WAIT, client, cluster::TestNamespace, dynamic_api, ensure_crds, helm, kubectl,
    repo_root, unique_name,
};
use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{
            ConfigMap, Container, Namespace, Node, Pod, PodSpec, Secret, Service, ServiceAccount,
        },
        events::v1::Event,
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// Where the chart lives, relative to the repository root.
const CHART: &str = "charts/cellstack";
/// Release and namespace of the renders that do not care about them.
const RELEASE: &str = "cellstack";
const NAMESPACE: &str = "cellstack-system";

/// The uid and gid every image runs as (`e2e/scripts/images.sh`).
const IMAGE_USER: i64 = 65532;

// --- rendering -----------------------------------------------------------------------------------

/// One `helm template` of the chart.
struct Render {
    release: String,
    namespace: String,
    /// Values files, relative to the repository root, applied in order.
    files: Vec<String>,
    /// Values applied last (through stdin).
    values: Value,
    include_crds: bool,
}

impl Render {
    fn new(values: Value) -> Self {
        Self {
            release: RELEASE.into(),
            namespace: NAMESPACE.into(),
            files: vec![],
            values,
            include_crds: false,
        }
    }

    fn defaults() -> Self {
        Self::new(json!({}))
    }

    fn release(mut self, release: &str, namespace: &str) -> Self {
        self.release = release.into();
        self.namespace = namespace.into();
        self
    }

    fn file(mut self, path: &str) -> Self {
        self.files.push(path.into());
        self
    }

    fn with_crds(mut self) -> Self {
        self.include_crds = true;
        self
    }

    fn run(&self) -> anyhow::Result<Rendered> {
        let root = repo_root();
        let mut cmd = Command::new(helm()?);
        cmd.current_dir(&root)
            .args([
                "template",
                &self.release,
                CHART,
                "--namespace",
                &self.namespace,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.include_crds {
            cmd.arg("--include-crds");
        }
        for file in &self.files {
            cmd.args(["--values", file]);
        }
        cmd.args(["--values", "-"]);
        let what = format!(
            "helm template {} {CHART} --namespace {} {:?} with {}",
            self.release, self.namespace, self.files, self.values
        );
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        child
            .stdin
            .take()
            .context("helm's stdin")?
            .write_all(serde_json::to_string(&self.values)?.as_bytes())
            .with_context(|| format!("writing values to {what}"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("running {what}"))?;
        ensure!(
            out.status.success(),
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).context("helm template printed non-UTF-8")?;
        Rendered::parse(text).with_context(|| format!("parsing the output of {what}"))
    }
}

/// What `helm template` printed: the text and every document in it.
struct Rendered {
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn parse(text: String) -> anyhow::Result<Self> {
        let mut docs = vec![];
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).context("a rendered document is not YAML")?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        Ok(Self { text, docs })
    }

    /// Every rendered object of type `K`.
    fn all<K>(&self) -> anyhow::Result<Vec<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.docs
            .iter()
            .filter(|d| {
                d["apiVersion"] == K::api_version(&()).as_ref()
                    && d["kind"] == K::kind(&()).as_ref()
            })
            .map(|d| {
                serde_json::from_value(d.clone())
                    .with_context(|| format!("a rendered {} does not parse", K::kind(&())))
            })
            .collect()
    }

    /// The one rendered object of type `K` whose name ends with `suffix`.
    fn one<K>(&self, suffix: &str) -> anyhow::Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let mut found: Vec<K> = self
            .all::<K>()?
            .into_iter()
            .filter(|o| {
                o.meta()
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .collect();
        ensure!(
            found.len() == 1,
            "expected one {} named *{suffix}, found {}",
            K::kind(&()),
            found.len()
        );
        Ok(found.remove(0))
    }

    /// The Deployment of `component` (`operator` or `router`).
    fn deployment(&self, component: &str) -> anyhow::Result<Deployment> {
        self.one::<Deployment>(&format!("-{component}"))
    }
}

fn pod_spec(deployment: &Deployment) -> anyhow::Result<&PodSpec> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .with_context(|| format!("Deployment {} has no pod spec", deployment.name_any()))
}

fn container<'a>(deployment: &'a Deployment, name: &str) -> anyhow::Result<&'a Container> {
    pod_spec(deployment)?
        .containers
        .iter()
        .find(|c| c.name == name)
        .with_context(|| {
            format!(
                "Deployment {} has no container {name}",
                deployment.name_any()
            )
        })
}

fn container_args(deployment: &Deployment, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(container(deployment, name)?
        .args
        .clone()
        .unwrap_or_default())
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
}

fn replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// The value sets every structural test runs over: the defaults, the CI values `helm lint`
/// checks, and one with a single replica of each, JSON logs, a selector, a LoadBalancer Service
/// and no admission policy.
fn value_sets() -> Vec<(&'static str, Render)> {
    vec![
        ("default values", Render::defaults()),
        (
            "ci/test-values.yaml",
            Render::defaults().file("charts/cellstack/ci/test-values.yaml"),
        ),
        (
            "single replicas, no admission policy",
            Render::new(json!({
                "operator": {"replicas": 1, "logJson": true, "selector": {"team": "a"}},
                "router": {"replicas": 1, "service": {"type": "LoadBalancer"}},
                "admissionPolicy": {"enabled": false},
            })),
        ),
        ("tenant from verified tokens, over TLS", jwt_render()),
        ("multicluster", multicluster_render()),
        (MEMBER, member_render()),
    ]
}

/// The name of the member cluster's value set.
const MEMBER: &str = "member cluster";

/// The Deployments value set `name` renders: a member cluster's release runs no operator.
fn components(name: &str) -> &'static [&'static str] {
    if name == MEMBER {
        &["router"]
    } else {
        &["operator", "router"]
    }
}

/// A member cluster's release: its routers and the RBAC the management operator acts with there,
/// with a long-lived token for it.
fn member_render() -> Render {
    Render::new(json!({
        "mode": "member",
        "member": {"tokenSecret": true},
        "multicluster": {"enabled": true},
    }))
}

/// Cells reachable from other clusters, through the nodes' external addresses.
fn multicluster_render() -> Render {
    Render::new(json!({"multicluster": {
        "enabled": true,
        "nodeAddressType": "ExternalIP",
        "sources": ["203.0.113.0/24", "198.51.100.7/32"],
    }}))
}

/// A router that takes the tenant from verified tokens, with every `router.jwt` value set.
fn jwt_render() -> Render {
    Render::new(
        json!({"router": {"tls": {"secretName": "edge-tls", "pollMs": 1000}, "tenantFrom": "jwt", "jwt": {
            "jwksSecret": "edge-jwks",
            "jwksKey": "keys.json",
            "audiences": ["api.example.com", "api2.example.com"],
            "issuers": ["https://id.example.com/"],
            "tenantClaim": "org",
            "leewaySecs": 10,
            "pollMs": 2000,
        }}}),
    )
}

// --- the chart's own structure ------------------------------------------------------------------

/// Parses `doc` as `K` and serializes it back: a field the type does not know (a misspelt key in
/// a template) is lost on the way and shows up as a difference.
fn round_trip<K: Serialize + DeserializeOwned>(doc: &Value) -> anyhow::Result<()> {
    let typed: K = serde_json::from_value(doc.clone())?;
    let back = serde_json::to_value(&typed)?;
    ensure!(
        back == *doc,
        "fields unknown to the type (or not as it writes them):\nrendered: {doc:#}\ntyped:    {back:#}"
    );
    Ok(())
}

#[test]
fn every_rendered_object_is_a_known_kind_with_no_unknown_field() -> anyhow::Result<()> {
    for (name, render) in value_sets() {
        let rendered = render.with_crds().run()?;
        for doc in &rendered.docs {
            let id = format!(
                "{} {} {} ({name})",
                doc["apiVersion"], doc["kind"], doc["metadata"]["name"]
            );
            let checked = match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("v1"), Some("ServiceAccount")) => round_trip::<ServiceAccount>(doc),
                (Some("v1"), Some("Service")) => round_trip::<Service>(doc),
                (Some("v1"), Some("ConfigMap")) => round_trip::<ConfigMap>(doc),
                (Some("v1"), Some("Secret")) => round_trip::<Secret>(doc),
                (Some("apps/v1"), Some("Deployment")) => round_trip::<Deployment>(doc),
                (Some("policy/v1"), Some("PodDisruptionBudget")) => {
                    round_trip::<PodDisruptionBudget>(doc)
                }
                (Some("networking.k8s.io/v1"), Some("NetworkPolicy")) => {
                    round_trip::<NetworkPolicy>(doc)
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                    round_trip::<ClusterRole>(doc)
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                    round_trip::<ClusterRoleBinding>(doc)
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("Role")) => round_trip::<Role>(doc),
                (Some("rbac.authorization.k8s.io/v1"), Some("RoleBinding")) => {
                    round_trip::<RoleBinding>(doc)
                }
                (Some("admissionregistration.k8s.io/v1"), Some("ValidatingAdmissionPolicy")) => {
                    round_trip::<ValidatingAdmissionPolicy>(doc)
                }
                (
                    Some("admissionregistration.k8s.io/v1"),
                    Some("ValidatingAdmissionPolicyBinding"),
                ) => round_trip::<ValidatingAdmissionPolicyBinding>(doc),
                (Some("apiextensions.k8s.io/v1"), Some("CustomResourceDefinition")) => {
                    round_trip::<CustomResourceDefinition>(doc)
                }
                _ => Err(anyhow::anyhow!("a kind this test does not know")),
            };
            checked.with_context(|| id.clone())?;
        }
    }
    Ok(())
}

#[test]
fn everything_namespaced_goes_into_the_release_namespace() -> anyhow::Result<()> {
    let cluster_scoped = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "CustomResourceDefinition",
    ];
    for (name, render) in value_sets() {
        let rendered = render.release("shop", "shop-system").with_crds().run()?;
        for doc in &rendered.docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let object = doc["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = doc["metadata"]["namespace"].as_str();
            if cluster_scoped.contains(&kind) {
                ensure!(
                    namespace.is_none(),
                    "{kind} {object} is cluster-scoped but names a namespace ({name})"
                );
            } else {
                ensure!(
                    namespace == Some("shop-system"),
                    "{kind} {object} is in {namespace:?}, not the release namespace ({name})"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn two_releases_never_share_a_cluster_scoped_object() -> anyhow::Result<()> {
    let names = |release: &str, namespace: &str| -> anyhow::Result<BTreeSet<String>> {
        let rendered = Render::defaults().release(release, namespace).run()?;
        let mut names = BTreeSet::new();
        for doc in &rendered.docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if kind.starts_with("Cluster") || kind.starts_with("ValidatingAdmissionPolicy") {
                let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                ensure!(
                    name.contains(release) && name.contains(namespace),
                    "{kind} {name} does not name release {release} and namespace {namespace}"
                );
                names.insert(format!("{kind}/{name}"));
            }
        }
        ensure!(!names.is_empty(), "no cluster-scoped object rendered");
        Ok(names)
    };
    let releases = [
        ("cellstack", "team-a"),
        // The same release name elsewhere.
        ("cellstack", "team-b"),
        // Another release beside it.
        ("payments", "team-a"),
        // Names that a plain "<release>-<namespace>" would run together with the first.
        ("cellstack-team", "a"),
    ];
    let rendered: Vec<_> = releases
        .iter()
        .map(|(release, namespace)| names(release, namespace))
        .collect::<anyhow::Result<_>>()?;
    for (i, a) in rendered.iter().enumerate() {
        for (j, b) in rendered.iter().enumerate().skip(i + 1) {
            ensure!(
                a.is_disjoint(b),
                "releases {:?} and {:?} share {:?}",
                releases[i],
                releases[j],
                a.intersection(b).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

#[test]
fn crds_in_chart_equal_generated_crds() -> anyhow::Result<()> {
    let dir = repo_root().join(CHART).join("crds");
    let generated = cellstack_api::crd::files()?;
    let mut on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    for (name, yaml) in &generated {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is missing: run `cargo run -p cellstack-api --bin crdgen`",
                path.display()
            )
        })?;
        ensure!(
            text == *yaml,
            "{} is stale: run `cargo run -p cellstack-api --bin crdgen`",
            path.display()
        );
        on_disk.remove(name);
    }
    ensure!(
        on_disk.is_empty(),
        "{} holds files the generator does not write: {on_disk:?}",
        dir.display()
    );
    // And Helm installs exactly those.
    let rendered = Render::defaults().with_crds().run()?;
    let crds: BTreeSet<String> = rendered
        .all::<CustomResourceDefinition>()?
        .iter()
        .map(|c| c.name_any())
        .collect();
    let expected: BTreeSet<String> = cellstack_api::crd::all()
        .iter()
        .map(|c| c.name_any())
        .collect();
    ensure!(
        crds == expected,
        "helm installs CRDs {crds:?}, not {expected:?}"
    );
    Ok(())
}

// --- pods ---------------------------------------------------------------------------------------

#[test]
fn every_pod_runs_restricted_as_non_root() -> anyhow::Result<()> {
    for (name, render) in value_sets() {
        let rendered = render.run()?;
        let deployments = rendered.all::<Deployment>()?;
        ensure!(
            deployments.len() == components(name).len(),
            "expected {:?} ({name})",
            components(name)
        );
        for deployment in &deployments {
            let id = format!("Deployment {} ({name})", deployment.name_any());
            let pod = pod_spec(deployment)?;
            ensure!(
                !pod.host_network.unwrap_or(false)
                    && !pod.host_pid.unwrap_or(false)
                    && !pod.host_ipc.unwrap_or(false),
                "{id} shares a host namespace"
            );
            ensure!(
                pod.volumes.iter().flatten().all(|v| v.host_path.is_none()),
                "{id} mounts a host path"
            );
            let psc = pod
                .security_context
                .as_ref()
                .with_context(|| format!("{id} has no pod securityContext"))?;
            ensure!(psc.run_as_non_root == Some(true), "{id}: runAsNonRoot");
            ensure!(psc.run_as_user == Some(IMAGE_USER), "{id}: runAsUser");
            ensure!(psc.run_as_group == Some(IMAGE_USER), "{id}: runAsGroup");
            ensure!(
                psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"),
                "{id}: seccomp RuntimeDefault"
            );
            let containers = pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten());
            for c in containers {
                let id = format!("{id} container {}", c.name);
                let sc = c
                    .security_context
                    .as_ref()
                    .with_context(|| format!("{id} has no securityContext"))?;
                ensure!(
                    sc.allow_privilege_escalation == Some(false),
                    "{id}: allowPrivilegeEscalation must be false"
                );
                ensure!(!sc.privileged.unwrap_or(false), "{id} is privileged");
                ensure!(
                    sc.read_only_root_filesystem == Some(true),
                    "{id}: readOnlyRootFilesystem"
                );
                ensure!(sc.run_as_non_root != Some(false), "{id}: runAsNonRoot");
                let caps = sc
                    .capabilities
                    .as_ref()
                    .with_context(|| format!("{id} drops no capabilities"))?;
                ensure!(
                    caps.drop.as_deref() == Some(&["ALL".to_owned()][..]),
                    "{id}: drop ALL capabilities"
                );
                ensure!(
                    caps.add.as_ref().is_none_or(Vec::is_empty),
                    "{id} adds capabilities"
                );
                let resources = c
                    .resources
                    .as_ref()
                    .with_context(|| format!("{id} has no resources"))?;
                for (what, list) in [
                    ("requests", &resources.requests),
                    ("limits", &resources.limits),
                ] {
                    let list = list
                        .as_ref()
                        .with_context(|| format!("{id} has no resource {what}"))?;
                    for resource in ["cpu", "memory"] {
                        ensure!(list.contains_key(resource), "{id}: no {resource} in {what}");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn pods_carry_the_labels_the_cells_network_policy_admits() -> anyhow::Result<()> {
    for (name, render) in value_sets() {
        let rendered = render.release("edge", "edge-system").run()?;
        for &component in components(name) {
            let deployment = rendered.deployment(component)?;
            let labels = deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            for (key, value) in [
                ("app.kubernetes.io/component", component),
                ("app.kubernetes.io/name", "cellstack"),
                ("app.kubernetes.io/instance", "edge"),
            ] {
                ensure!(
                    labels.get(key).map(String::as_str) == Some(value),
                    "{component} pods ({name}) carry {key}={:?}, not {value}",
                    labels.get(key)
                );
            }
            // The selector picks exactly these pods, never the other component's.
            let selector = deployment
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default();
            ensure!(
                selector
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some(component),
                "{component} Deployment selects {selector:?}"
            );
            ensure!(
                selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{component} Deployment's selector {selector:?} does not match its pods {labels:?}"
            );
        }
    }
    Ok(())
}

/// The ports a NetworkPolicy ingress rule names, as numbers.
fn rule_ports(rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule) -> Vec<i32> {
    rule.ports
        .iter()
        .flatten()
        .filter_map(|p| match &p.port {
            Some(IntOrString::Int(n)) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Every value set: each component's pods are selected by one NetworkPolicy of the chart; no
/// rule names an address block (the host's, a node's or 0.0.0.0/0); the one rule that admits
/// every source is the routers' tenant port (the edge), and not even that one once
/// `networkPolicy.routerClients` names who may reach it; the monitoring namespace reaches only
/// the metrics listeners, the same namespace the operator is told to admit to the lanes.
#[test]
fn network_policies_admit_no_address_block_and_every_source_only_at_the_routers_tenant_port()
-> anyhow::Result<()> {
    let restricted = Render::new(json!({
        "networkPolicy": {"routerClients": [{"namespaceSelector": {"matchLabels": {"ingress": "yes"}}}]},
    }));
    let mut sets = value_sets();
    sets.push(("routerClients set", restricted));
    for (name, render) in sets {
        let clients_named = name == "routerClients set";
        let rendered = render.run()?;
        let policies: Vec<NetworkPolicy> = rendered.all()?;
        ensure!(
            policies.len() == components(name).len(),
            "{name}: {} NetworkPolicies, not one per component {:?}",
            policies.len(),
            components(name)
        );
        // The namespace the operator admits to the lanes; a member's release has no operator,
        // and its routers admit the chart's default.
        let monitoring = if name == MEMBER {
            "monitoring".to_owned()
        } else {
            let operator = rendered.deployment("operator")?;
            flag(
                &container_args(&operator, "operator")?,
                "--monitoring-namespace",
            )
            .map(str::to_owned)
            .context("the operator has no --monitoring-namespace")?
        };
        for &component in components(name) {
            let deployment = rendered.deployment(component)?;
            let pod_labels = deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let port = |n: &str| -> anyhow::Result<i32> {
                Ok(container(&deployment, component)?
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(n))
                    .with_context(|| format!("{component} has no port {n}"))?
                    .container_port)
            };
            let selecting: Vec<&NetworkPolicy> = policies
                .iter()
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.pod_selector.as_ref().is_some_and(|sel| {
                            sel.match_expressions.is_none()
                                && sel
                                    .match_labels
                                    .iter()
                                    .flatten()
                                    .all(|(k, v)| pod_labels.get(k) == Some(v))
                        })
                    })
                })
                .collect();
            ensure!(
                selecting.len() == 1,
                "{name}: {} NetworkPolicies select the {component} pods, not 1",
                selecting.len()
            );
            let spec = selecting[0]
                .spec
                .as_ref()
                .context("a policy without spec")?;
            ensure!(
                spec.policy_types.as_deref() == Some(&["Ingress".to_owned()][..]),
                "{name}: {component}'s policy types {:?}",
                spec.policy_types
            );
            for rule in spec.ingress.iter().flatten() {
                let ports = rule_ports(rule);
                let peers = rule.from.clone().unwrap_or_default();
                ensure!(
                    peers.iter().all(|p| p.ip_block.is_none()),
                    "{name}: {component}'s policy admits an address block: {peers:?}"
                );
                if peers.is_empty() {
                    ensure!(
                        component == "router" && ports == [port("http")?] && !clients_named,
                        "{name}: {component}'s rule for ports {ports:?} admits every source"
                    );
                    continue;
                }
                let metrics_port = if component == "router" {
                    "admin"
                } else {
                    "metrics"
                };
                let from_monitoring = peers.iter().all(|p| {
                    p.pod_selector.is_none()
                        && p.namespace_selector
                            .as_ref()
                            .and_then(|s| s.match_labels.as_ref())
                            .and_then(|l| l.get("kubernetes.io/metadata.name"))
                            == Some(&monitoring)
                });
                let expected = if from_monitoring {
                    vec![port(metrics_port)?]
                } else {
                    ensure!(
                        clients_named && component == "router",
                        "{name}: {component} admits {peers:?}"
                    );
                    vec![port("http")?]
                };
                ensure!(
                    ports == expected,
                    "{name}: {component} admits {peers:?} to ports {ports:?}, not {expected:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn pods_run_under_their_own_service_accounts_in_the_release_namespace() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    for component in ["operator", "router"] {
        let deployment = rendered.deployment(component)?;
        let account = pod_spec(&deployment)?
            .service_account_name
            .clone()
            .with_context(|| format!("the {component} pods name no service account"))?;
        let sa = rendered.one::<ServiceAccount>(&format!("-{component}"))?;
        ensure!(
            sa.name_any() == account,
            "{component} pods run as {account}, the chart creates {}",
            sa.name_any()
        );
    }
    Ok(())
}

#[test]
fn pdb_only_when_more_than_one_replica() -> anyhow::Result<()> {
    for (operator, router) in [(1, 1), (2, 1), (1, 3), (2, 2)] {
        let rendered = Render::new(json!({
            "operator": {"replicas": operator},
            "router": {"replicas": router},
        }))
        .run()?;
        let pdbs = rendered.all::<PodDisruptionBudget>()?;
        for (component, wanted) in [("operator", operator), ("router", router)] {
            let deployment = rendered.deployment(component)?;
            ensure!(replicas(&deployment) == wanted, "{component} replicas");
            let pdb = pdbs
                .iter()
                .find(|p| p.name_any().ends_with(&format!("-{component}")));
            match (wanted > 1, pdb) {
                (false, None) => {}
                (false, Some(_)) => {
                    bail!("a PodDisruptionBudget for a single {component} replica blocks drains")
                }
                (true, None) => bail!("{wanted} {component} replicas and no PodDisruptionBudget"),
                (true, Some(pdb)) => {
                    let spec = pdb.spec.as_ref().context("PDB without spec")?;
                    ensure!(
                        spec.max_unavailable == Some(IntOrString::Int(1)),
                        "{component} PDB maxUnavailable {:?}",
                        spec.max_unavailable
                    );
                    ensure!(
                        spec.selector.as_ref().and_then(|s| s.match_labels.as_ref())
                            == deployment
                                .spec
                                .as_ref()
                                .and_then(|s| s.selector.match_labels.as_ref()),
                        "the {component} PDB does not select the {component} Deployment's pods"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn grace_periods_outlast_each_binarys_own_drain() -> anyhow::Result<()> {
    for (name, render) in value_sets() {
        let rendered = render.run()?;
        let router = rendered.deployment("router")?;
        let args = container_args(&router, "router")?;
        let secs = |f: &str| -> anyhow::Result<i64> {
            flag(&args, f)
                .with_context(|| format!("router has no {f} ({name})"))?
                .parse()
                .with_context(|| format!("router {f} is not a number"))
        };
        let drain = secs("--drain-delay-secs")? + secs("--shutdown-timeout-secs")?;
        let grace = pod_spec(&router)?
            .termination_grace_period_seconds
            .context("router has no terminationGracePeriodSeconds")?;
        ensure!(
            grace > drain,
            "router grace period {grace}s does not outlast its drain of {drain}s ({name})"
        );
        // The operator's stop: 30 s for reconciles in flight, then 5 s to release the Lease.
        if !components(name).contains(&"operator") {
            continue;
        }
        let operator = rendered.deployment("operator")?;
        let grace = pod_spec(&operator)?
            .termination_grace_period_seconds
            .context("operator has no terminationGracePeriodSeconds")?;
        ensure!(
            grace > 35,
            "operator grace period {grace}s does not outlast its 35 s stop ({name})"
        );
    }
    Ok(())
}

#[test]
fn probes_and_services_reach_the_ports_the_binaries_listen_on() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    // (component, container, --flag of the listener, port name, probed?)
    let listeners = [
        ("operator", "--metrics-listen", "metrics", 8080, true),
        ("router", "--listen", "http", 8000, false),
        ("router", "--admin-listen", "admin", 9000, true),
    ];
    for (component, listen, port_name, port, probed) in listeners {
        let deployment = rendered.deployment(component)?;
        let c = container(&deployment, component)?;
        let args = c.args.clone().unwrap_or_default();
        ensure!(
            flag(&args, listen) == Some(format!("0.0.0.0:{port}").as_str()),
            "{component} {listen} is {:?}",
            flag(&args, listen)
        );
        let declared = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port_name))
            .with_context(|| format!("{component} declares no port {port_name}"))?;
        ensure!(
            declared.container_port == port,
            "{component} port {port_name}"
        );
        if probed {
            for (probe, path) in [
                (&c.liveness_probe, "/livez"),
                (&c.readiness_probe, "/readyz"),
            ] {
                let get = probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .with_context(|| format!("{component} lacks an HTTP probe on {path}"))?;
                ensure!(
                    get.path.as_deref() == Some(path)
                        && get.port == IntOrString::String(port_name.into()),
                    "{component} probes {:?} on {:?}, not {path} on {port_name}",
                    get.path,
                    get.port
                );
            }
        }
    }
    let service = rendered.one::<Service>("-router")?;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let http = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .context("router Service has no http port")?;
    ensure!(
        http.port == 80 && http.target_port == Some(IntOrString::String("http".into())),
        "router Service http port {http:?}"
    );
    ensure!(
        ports.iter().any(|p| p.name.as_deref() == Some("admin")
            && p.target_port == Some(IntOrString::String("admin".into()))),
        "router Service has no admin port"
    );
    let metrics = rendered.one::<Service>("-operator-metrics")?;
    ensure!(
        metrics
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|p| p
                .iter()
                .any(|p| p.target_port == Some(IntOrString::String("metrics".into())))),
        "the operator's metrics Service does not reach its metrics port"
    );
    // The last-known-good table sits on a writable volume: the root filesystem is read-only.
    let router = rendered.deployment("router")?;
    let lkg = flag(&container_args(&router, "router")?, "--last-known-good")
        .context("router has no --last-known-good")?
        .to_owned();
    let mounts = container(&router, "router")?
        .volume_mounts
        .clone()
        .unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| Path::new(&lkg).starts_with(&m.mount_path))
        .with_context(|| format!("{lkg} is on the read-only root filesystem"))?;
    let volume = pod_spec(&router)?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .context("the last-known-good mount has no volume")?;
    ensure!(
        volume.empty_dir.is_some(),
        "the last-known-good volume is not an emptyDir"
    );
    Ok(())
}

// --- command lines ------------------------------------------------------------------------------

/// A binary of the workspace build, beside this test's own (`target/<profile>/`).
fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .context("locating the target directory")?;
    ensure!(
        exe.is_file(),
        "{} is missing: build it first (`cargo build -p cellstack-operator -p cellstack-router`, \
         or the test command's `cargo build --workspace`)",
        exe.display()
    );
    Ok(exe)
}

/// The long flags `binary --help` lists.
fn cli_flags(binary: &Path) -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new(binary)
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("running {} --help", binary.display()))?;
    ensure!(out.status.success(), "{} --help failed", binary.display());
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect())
}

/// Every `--flag` the chart passes to `component` is one `binary` has, none twice, and the
/// binary's own parser accepts the whole argument list.
fn check_flags(component: &str, binary: &str) -> anyhow::Result<()> {
    let binary = workspace_binary(binary)?;
    let known = cli_flags(&binary)?;
    let renders = value_sets().into_iter().chain([(
        "every optional flag",
        Render::new(json!({
            "operator": {"logJson": true, "selector": {"a": "1", "b": "2"}},
            "router": {"logJson": true, "tenantFrom": "host-suffix:.example.org",
                       "upstreamProtocol": "h2"},
        })),
    )]);
    for (name, render) in renders {
        if !components(name).contains(&component) {
            continue;
        }
        let rendered = render.run()?;
        let args = container_args(&rendered.deployment(component)?, component)?;
        let mut seen = BTreeSet::new();
        for arg in &args {
            let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
            ensure!(
                flag.starts_with("--"),
                "{component} gets a positional argument {arg:?} ({name})"
            );
            ensure!(
                known.contains(flag),
                "the chart passes {flag} ({name}), which `{} --help` does not list: {known:?}",
                binary.display()
            );
            ensure!(
                seen.insert(flag.to_owned()),
                "{component} gets {flag} twice ({name})"
            );
        }
        // clap parses (and validates) every argument before it acts on a trailing --help: an
        // exit code of 0 means it accepted all of them.
        let out = Command::new(&binary)
            .args(&args)
            .arg("--help")
            .env_clear()
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        ensure!(
            out.status.success(),
            "{} refuses the chart's arguments ({name}) {args:?}:\n{}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn operator_flags_match_operator_cli() -> anyhow::Result<()> {
    check_flags("operator", "cellstack-operator")
}

#[test]
fn router_flags_match_router_cli() -> anyhow::Result<()> {
    check_flags("router", "cellstack-router")
}

#[test]
fn operator_runs_in_the_release_namespace_with_the_chosen_images() -> anyhow::Result<()> {
    let rendered = Render::new(json!({
        "images": {
            "operator": {"repository": "registry.example.org/op", "tag": "1.2.3"},
            "cell": {"repository": "registry.example.org/cell", "tag": ""},
            "redis": {"repository": "registry.example.org/redis", "tag": "7.2"},
        },
        "imagePullPolicy": "Always",
    }))
    .release("edge", "edge-system")
    .run()?;
    let operator = rendered.deployment("operator")?;
    let c = container(&operator, "operator")?;
    let args = c.args.clone().unwrap_or_default();
    let expect = [
        ("--namespace", "edge-system"),
        ("--identity", "$(POD_NAME)"),
        ("--cell-image", "registry.example.org/cell:0.1.0"),
        ("--redis-image", "registry.example.org/redis:7.2"),
        ("--image-pull-policy", "Always"),
        ("--lease-name", "edge-cellstack-operator"),
    ];
    for (f, value) in expect {
        ensure!(
            flag(&args, f) == Some(value),
            "operator {f} is {:?}, not {value}",
            flag(&args, f)
        );
    }
    ensure!(
        c.image.as_deref() == Some("registry.example.org/op:1.2.3"),
        "operator image {:?}",
        c.image
    );
    ensure!(
        c.image_pull_policy.as_deref() == Some("Always"),
        "pull policy"
    );
    // $(POD_NAME) is the downward API's pod name.
    let pod_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    ensure!(
        pod_name == Some("metadata.name"),
        "POD_NAME is {pod_name:?}"
    );
    // The router reads the table from the namespace the operator publishes it in.
    let router = rendered.deployment("router")?;
    let router_args = container_args(&router, "router")?;
    ensure!(
        router_args.iter().any(|a| a == "--kubernetes")
            && flag(&router_args, "--namespace") == Some("edge-system"),
        "router args {router_args:?}"
    );
    Ok(())
}

#[test]
fn selector_reaches_operator_flag_and_admission_binding() -> anyhow::Result<()> {
    let selector = json!({"tier": "gold", "cellstack.dev/env": "staging", "b": "2"});
    let rendered = Render::new(json!({"operator": {"selector": selector}})).run()?;
    let args = container_args(&rendered.deployment("operator")?, "operator")?;
    // Sorted by key, so the same map always renders the same flag (and pod template).
    ensure!(
        flag(&args, "--selector") == Some("b=2,cellstack.dev/env=staging,tier=gold"),
        "operator --selector is {:?}",
        flag(&args, "--selector")
    );
    let binding = rendered.one::<ValidatingAdmissionPolicyBinding>("-cell-deletion-guard")?;
    let match_labels = binding
        .spec
        .as_ref()
        .and_then(|s| s.match_resources.as_ref())
        .and_then(|m| m.object_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    let expected: BTreeMap<String, String> = serde_json::from_value(selector)?;
    ensure!(
        match_labels == expected,
        "the binding selects {match_labels:?}, not {expected:?}"
    );

    // No selector: the operator handles everything, and so does the guard.
    let rendered = Render::defaults().run()?;
    let args = container_args(&rendered.deployment("operator")?, "operator")?;
    ensure!(
        flag(&args, "--selector").is_none(),
        "an empty selector still renders --selector"
    );
    let binding = rendered.one::<ValidatingAdmissionPolicyBinding>("-cell-deletion-guard")?;
    let object_selector = binding
        .spec
        .as_ref()
        .and_then(|s| s.match_resources.as_ref())
        .and_then(|m| m.object_selector.clone())
        .unwrap_or_default();
    ensure!(
        object_selector.match_labels.is_none() && object_selector.match_expressions.is_none(),
        "an empty selector renders {object_selector:?}"
    );
    Ok(())
}

#[test]
fn cell_deletion_guard_judges_only_deletes_of_cells_by_tenant_count() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    let policy = rendered.one::<ValidatingAdmissionPolicy>("-cell-deletion-guard")?;
    let spec = policy.spec.as_ref().context("policy without spec")?;
    ensure!(
        spec.failure_policy.as_deref() == Some("Fail"),
        "failurePolicy"
    );
    let rules = spec
        .match_constraints
        .as_ref()
        .and_then(|m| m.resource_rules.clone())
        .unwrap_or_default();
    ensure!(rules.len() == 1, "{rules:?}");
    ensure!(
        rules[0].api_groups.as_deref() == Some(&["cellstack.dev".to_owned()][..])
            && rules[0].resources.as_deref() == Some(&["cells".to_owned()][..])
            && rules[0].operations.as_deref() == Some(&["DELETE".to_owned()][..]),
        "the policy matches {:?}",
        rules[0]
    );
    let validations = spec.validations.clone().unwrap_or_default();
    ensure!(validations.len() == 1, "{validations:?}");
    ensure!(
        validations[0]
            .expression
            .contains("oldObject.status.tenantCount"),
        "the policy does not read status.tenantCount"
    );
    // The field the policy reads is the one the Cell type has.
    let cell = cellstack_api::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "Cell")
        .context("no Cell CRD")?;
    let status = cell.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref()?.get("status")?.properties.clone())
        .context("the Cell CRD has no status schema")?;
    ensure!(
        status
            .get("tenantCount")
            .is_some_and(|t| t.type_.as_deref() == Some("integer")),
        "the Cell status has no integer tenantCount"
    );
    let binding = rendered.one::<ValidatingAdmissionPolicyBinding>("-cell-deletion-guard")?;
    let bspec = binding.spec.as_ref().context("binding without spec")?;
    ensure!(
        bspec.policy_name.as_deref() == Some(policy.name_any().as_str()),
        "the binding names policy {:?}",
        bspec.policy_name
    );
    ensure!(
        bspec.validation_actions.as_deref() == Some(&["Deny".to_owned()][..]),
        "the binding does not deny"
    );

    let disabled = Render::new(json!({"admissionPolicy": {"enabled": false}})).run()?;
    ensure!(
        disabled.all::<ValidatingAdmissionPolicy>()?.is_empty()
            && disabled
                .all::<ValidatingAdmissionPolicyBinding>()?
                .is_empty(),
        "admissionPolicy.enabled=false still renders the policy"
    );
    Ok(())
}

// --- RBAC ---------------------------------------------------------------------------------------

/// One permission: `group/resource verb`, with the names it is limited to, and where it holds.
type Grant = (String, String, String, Vec<String>, &'static str);

fn grants(rules: &[PolicyRule], scope: &'static str) -> anyhow::Result<BTreeSet<Grant>> {
    let mut out = BTreeSet::new();
    for rule in rules {
        ensure!(
            rule.non_resource_urls.is_none(),
            "a rule grants non-resource URLs: {rule:?}"
        );
        let names = rule.resource_names.clone().unwrap_or_default();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((
                        group.clone(),
                        resource.clone(),
                        verb.clone(),
                        names.clone(),
                        scope,
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// What `subject` (a ServiceAccount name) is granted, cluster-wide and in the release namespace.
fn granted_to(rendered: &Rendered, subject: &str) -> anyhow::Result<BTreeSet<Grant>> {
    let binds = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == subject
                && s.namespace.as_deref() == Some(NAMESPACE)
        })
    };
    let mut out = BTreeSet::new();
    for binding in rendered.all::<ClusterRoleBinding>()? {
        if binds(&binding.subjects) {
            ensure!(binding.role_ref.kind == "ClusterRole", "{binding:?}");
            let role = rendered
                .all::<ClusterRole>()?
                .into_iter()
                .find(|r| r.name_any() == binding.role_ref.name)
                .with_context(|| {
                    format!("ClusterRole {} is not in the chart", binding.role_ref.name)
                })?;
            out.extend(grants(
                role.rules.as_deref().unwrap_or_default(),
                "cluster",
            )?);
        }
    }
    for binding in rendered.all::<RoleBinding>()? {
        if binds(&binding.subjects) {
            ensure!(
                binding.role_ref.kind == "Role",
                "RoleBinding {} binds a ClusterRole",
                binding.name_any()
            );
            let role = rendered
                .all::<Role>()?
                .into_iter()
                .find(|r| r.name_any() == binding.role_ref.name)
                .with_context(|| format!("Role {} is not in the chart", binding.role_ref.name))?;
            out.extend(grants(
                role.rules.as_deref().unwrap_or_default(),
                "release namespace",
            )?);
        }
    }
    Ok(out)
}

/// The grants a service account's calls need, added call site by call site.
#[derive(Default)]
struct Calls(BTreeSet<Grant>);

impl Calls {
    /// `verbs` on each of `resources` of `group`, limited to `names` (none: any), in `scope`.
    fn allow(
        &mut self,
        group: &str,
        resources: &[&str],
        verbs: &[&str],
        names: &[&str],
        scope: &'static str,
    ) {
        for resource in resources {
            for verb in verbs {
                self.0.insert((
                    group.to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                    names.iter().map(|n| (*n).to_owned()).collect(),
                    scope,
                ));
            }
        }
    }

    /// A cell's stack in `cell-<name>`, in whichever cluster it runs: watched (cell/mod.rs),
    /// server-side applied — a PATCH, and `create` when it creates the object — and its orphans
    /// listed and deleted (cell/apply.rs); the admin token and an external Redis URL's Secret
    /// read back (cell/apply.rs, cell_admin.rs); the managed Redis pods watched to notice a
    /// replaced one (run.rs, tenant.rs) and the lane pods listed to replace outdated ones one at
    /// a time through the Eviction API, which honours their PodDisruptionBudget (cell/lanes.rs).
    fn cell_stacks(&mut self) {
        let (stack, cluster) = (&["list", "watch", "create", "patch", "delete"], "cluster");
        self.allow(
            "",
            &["namespaces", "services", "configmaps", "secrets"],
            stack,
            &[],
            cluster,
        );
        self.allow("apps", &["statefulsets"], stack, &[], cluster);
        self.allow("policy", &["poddisruptionbudgets"], stack, &[], cluster);
        self.allow(
            "networking.k8s.io",
            &["networkpolicies"],
            stack,
            &[],
            cluster,
        );
        self.allow("", &["secrets"], &["get"], &[], cluster);
        self.allow("", &["pods"], &["list", "watch"], &[], cluster);
        self.allow("", &["pods/eviction"], &["create"], &[], cluster);
    }

    /// Fails unless `granted` (to `who`) is exactly these calls' grants.
    fn ensure_granted_exactly(&self, granted: &BTreeSet<Grant>, who: &str) -> anyhow::Result<()> {
        let extra: Vec<_> = granted.difference(&self.0).collect();
        let missing: Vec<_> = self.0.difference(granted).collect();
        ensure!(
            extra.is_empty() && missing.is_empty(),
            "{who}'s RBAC differs from its calls:\n  granted, never called: {extra:?}\n  \
             called, not granted: {missing:?}"
        );
        Ok(())
    }
}

#[test]
fn operator_rbac_has_no_wildcards() -> anyhow::Result<()> {
    for (name, render) in value_sets() {
        let rendered = render.run()?;
        let rules = rendered
            .all::<ClusterRole>()?
            .into_iter()
            .flat_map(|r| r.rules.unwrap_or_default())
            .chain(
                rendered
                    .all::<Role>()?
                    .into_iter()
                    .flat_map(|r| r.rules.unwrap_or_default()),
            );
        for rule in rules {
            let words = rule
                .api_groups
                .iter()
                .flatten()
                .chain(rule.resources.iter().flatten())
                .chain(rule.resource_names.iter().flatten())
                .chain(&rule.verbs);
            for word in words {
                ensure!(!word.contains('*'), "a wildcard in {rule:?} ({name})");
                ensure!(
                    !["escalate", "bind", "impersonate", "deletecollection"]
                        .contains(&word.as_str()),
                    "{word} granted in {rule:?} ({name})"
                );
            }
        }
        for role in rendered.all::<ClusterRole>()? {
            ensure!(
                role.aggregation_rule.is_none(),
                "ClusterRole {} aggregates others",
                role.name_any()
            );
        }
    }
    Ok(())
}

#[test]
fn operator_rbac_grants_exactly_what_the_operator_calls() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    let mut calls = Calls::default();
    let cluster = "cluster";
    // Watches and reflectors of the six kinds (run.rs, cell/mod.rs, policy_status.rs,
    // pool_status.rs, rollout/, member_cluster.rs); the startup check lists each (crd_check.rs).
    calls.allow(
        "cellstack.dev",
        &[
            "cells",
            "tenantassignments",
            "ratelimitpolicies",
            "shuffleshardpools",
            "cellrollouts",
            "memberclusters",
        ],
        &["list", "watch"],
        &[],
        cluster,
    );
    // The cell-protection finalizer (kube-runtime's finalizer(), JSON patches) and a
    // rollout's writes of `version` and `services` (rollout/mod.rs, server-side apply).
    calls.allow("cellstack.dev", &["cells"], &["patch"], &[], cluster);
    // The member-cluster-protection finalizer (member_cluster.rs, kube-runtime's finalizer()).
    calls.allow(
        "cellstack.dev",
        &["memberclusters"],
        &["patch"],
        &[],
        cluster,
    );
    // A moving tenant re-read before each step (moves/steps.rs).
    calls.allow(
        "cellstack.dev",
        &["tenantassignments"],
        &["get"],
        &[],
        cluster,
    );
    // Status writes (controllers::apply_status, tenant.rs, moves/steps.rs).
    calls.allow(
        "cellstack.dev",
        &[
            "cells/status",
            "tenantassignments/status",
            "ratelimitpolicies/status",
            "shuffleshardpools/status",
            "cellrollouts/status",
            "memberclusters/status",
        ],
        &["patch"],
        &[],
        cluster,
    );
    // Children own a blockOwnerDeletion reference to their Cell.
    calls.allow(
        "cellstack.dev",
        &["cells/finalizers"],
        &["update"],
        &[],
        cluster,
    );
    // The cells' stacks; a MemberCluster's kubeconfig Secret is read and watched in the
    // operator's namespace through the same Secret grants (member_cluster.rs).
    calls.cell_stacks();
    // The zones of the nodes a cell's pods run on, for its `status.runsIn` (cell/mod.rs).
    calls.allow("", &["nodes"], &["get"], &[], cluster);
    // The operator's Event recorder (recorder.rs): create, and patch a series.
    calls.allow(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        &[],
        cluster,
    );
    // Leader election (kube-lease-manager: get, create when missing, patch).
    let own = "release namespace";
    calls.allow("coordination.k8s.io", &["leases"], &["create"], &[], own);
    calls.allow(
        "coordination.k8s.io",
        &["leases"],
        &["get", "patch"],
        &["cellstack-operator"],
        own,
    );
    // The routing heartbeat (heartbeat.rs): server-side apply, created by the first one.
    calls.allow(
        "coordination.k8s.io",
        &["leases"],
        &["patch"],
        &[HEARTBEAT_NAME],
        own,
    );
    // Routing-table publication (publish.rs): the pointer, then versioned chunks.
    calls.allow("", &["configmaps"], &["get", "patch"], &[POINTER_NAME], own);
    calls.allow("", &["configmaps"], &["list", "create", "delete"], &[], own);
    // The internal CA (internal_ca.rs): its Secret and trust bundle read and replaced; created
    // through the `create` grants above.
    calls.allow(
        "",
        &["secrets"],
        &["get", "update"],
        &[INTERNAL_CA_SECRET],
        own,
    );
    calls.allow(
        "",
        &["configmaps"],
        &["get", "update"],
        &[INTERNAL_CA_BUNDLE],
        own,
    );

    calls.ensure_granted_exactly(
        &granted_to(&rendered, "cellstack-operator")?,
        "the operator",
    )?;
    Ok(())
}

#[test]
fn multicluster_passes_its_flags_needs_internal_tls_and_adds_only_the_node_watch_to_the_operators_rbac()
-> anyhow::Result<()> {
    let plain = Render::defaults().run()?;
    let multi = multicluster_render().run()?;
    let args = container_args(&multi.deployment("operator")?, "operator")?;
    ensure!(args.iter().any(|a| a == "--multicluster"), "{args:?}");
    ensure!(
        flag(&args, "--node-address-type") == Some("ExternalIP"),
        "{args:?}"
    );
    ensure!(
        flag(&args, "--cross-cluster-sources") == Some("203.0.113.0/24,198.51.100.7/32"),
        "{args:?}"
    );
    let plain_args = container_args(&plain.deployment("operator")?, "operator")?;
    ensure!(
        !plain_args.iter().any(|a| a.starts_with("--multicluster")),
        "{plain_args:?}"
    );
    let error =
        Render::new(json!({"multicluster": {"enabled": true}, "internalTls": {"enabled": false}}))
            .run()
            .err()
            .context("multicluster rendered without internal TLS")?;
    ensure!(
        format!("{error:#}").contains("multicluster.enabled needs internalTls.enabled"),
        "{error:#}"
    );
    let before = granted_to(&plain, "cellstack-operator")?;
    let after = granted_to(&multi, "cellstack-operator")?;
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    let node = |verb: &str| {
        (
            String::new(),
            "nodes".to_owned(),
            verb.to_owned(),
            Vec::<String>::new(),
            "cluster",
        )
    };
    ensure!(
        removed.is_empty(),
        "multicluster removed grants: {removed:?}"
    );
    ensure!(
        added == [&node("list"), &node("watch")],
        "multicluster should add exactly list and watch on nodes (controllers/nodes.rs), added {added:?}"
    );
    Ok(())
}

/// The alert names in the rules file a render carries.
fn alerts_in(rendered: &Rendered) -> anyhow::Result<BTreeSet<String>> {
    let rules = rendered
        .all::<ConfigMap>()?
        .into_iter()
        .find(|c| c.name_any() == format!("{RELEASE}-prometheus-rules"))
        .and_then(|c| c.data?.get("cellstack.rules.yaml").cloned())
        .context("no rules ConfigMap rendered")?;
    let groups: Value = serde_yaml::from_str(&rules)?;
    Ok(groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect())
}

/// `mode: member` (docs/member-clusters.md): the routers, and for the management operator's
/// remote ServiceAccount exactly what the operator calls in a member (the cells' stacks; the
/// mirrored routing table, heartbeat and trust bundle in the release namespace) — no operator,
/// no admission policy, no CRD-backed object, and no alert on the operator's absence.
#[test]
fn member_mode_renders_the_routers_and_grants_the_remote_operator_exactly_its_calls_in_a_member()
-> anyhow::Result<()> {
    let rendered = member_render().run()?;
    let deployments: Vec<String> = rendered
        .all::<Deployment>()?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(
        deployments == [format!("{RELEASE}-router")],
        "a member runs the routers only: {deployments:?}"
    );
    let accounts: BTreeSet<String> = rendered
        .all::<ServiceAccount>()?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(
        accounts
            == BTreeSet::from([
                format!("{RELEASE}-router"),
                format!("{RELEASE}-operator-remote")
            ]),
        "{accounts:?}"
    );
    let kinds: BTreeSet<String> = rendered
        .docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !kinds
            .iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "no admission policy in a member: {kinds:?}"
    );
    let token: Secret = rendered.one("-operator-remote-token")?;
    ensure!(
        token.type_.as_deref() == Some("kubernetes.io/service-account-token")
            && token
                .annotations()
                .get("kubernetes.io/service-account.name")
                .map(String::as_str)
                == Some("cellstack-operator-remote"),
        "{token:?}"
    );
    let alerts = alerts_in(&rendered)?;
    ensure!(
        !alerts.contains("CellstackOperatorDown") && alerts.contains("CellstackRouterTableStale"),
        "a member alerts on its routers, not on the operator it does not run: {alerts:?}"
    );
    ensure!(
        alerts_in(&Render::defaults().run()?)?.contains("CellstackOperatorDown"),
        "the management release alerts when no operator is scraped"
    );

    let mut calls = Calls::default();
    let cluster = "cluster";
    // The stacks of the cells placed in the member, as in the management cluster.
    calls.cell_stacks();
    // A cell's namespace read before applying in it or deleting it: the adoption guard
    // (logic/cell/ownership.rs), which runs for member targets only.
    calls.allow("", &["namespaces"], &["get"], &[], cluster);
    // Zones for `runsIn`; with multicluster (this value set) the node watch and list.
    calls.allow("", &["nodes"], &["get", "list", "watch"], &[], cluster);
    // The mirrored routing table (tables.rs, publish.rs): the pointer read by name; chunks,
    // the pointer's switch, the trust bundle's and the lanes' client certificate's applies are
    // the ClusterRole's configmaps and secrets verbs.
    let own = "release namespace";
    calls.allow("", &["configmaps"], &["get"], &[POINTER_NAME], own);
    // Its heartbeat (heartbeat.rs): server-side apply, created by the first one.
    calls.allow("coordination.k8s.io", &["leases"], &["create"], &[], own);
    calls.allow(
        "coordination.k8s.io",
        &["leases"],
        &["patch"],
        &[HEARTBEAT_NAME],
        own,
    );
    calls.ensure_granted_exactly(
        &granted_to(&rendered, "cellstack-operator-remote")?,
        "the remote operator (in a member)",
    )?;
    // The management release has no remote account at all.
    ensure!(
        granted_to(&Render::defaults().run()?, "cellstack-operator-remote")?.is_empty(),
        "the management release grants the remote account something"
    );
    Ok(())
}

#[test]
fn router_rbac_is_read_only_on_routing_table_configmaps() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    for binding in rendered.all::<ClusterRoleBinding>()? {
        ensure!(
            !binding
                .subjects
                .iter()
                .flatten()
                .any(|s| s.name == "cellstack-router"),
            "the router is bound cluster-wide by {}",
            binding.name_any()
        );
    }
    let granted = granted_to(&rendered, "cellstack-router")?;
    ensure!(!granted.is_empty(), "the router is granted nothing");
    for (group, resource, verb, names, scope) in &granted {
        // The operator's heartbeat Lease (sources.rs `watch_heartbeat`): listed and watched
        // through the field selector metadata.name=<heartbeat>, like the pointer.
        if group == "coordination.k8s.io" && resource == "leases" {
            ensure!(
                scope == &"release namespace"
                    && matches!(verb.as_str(), "list" | "watch")
                    && names == &[HEARTBEAT_NAME.to_owned()],
                "the router may {verb} Leases {names:?} ({scope}): only list and watch the heartbeat"
            );
            continue;
        }
        ensure!(
            group.is_empty() && resource == "configmaps" && scope == &"release namespace",
            "the router may {verb} {group}/{resource} ({scope})"
        );
        match verb.as_str() {
            // The router lists and watches the pointer through the field selector
            // metadata.name=<pointer> (router/src/sources.rs), which RBAC matches against names.
            "list" | "watch" => ensure!(
                names == &[POINTER_NAME.to_owned()],
                "the router may {verb} ConfigMaps {names:?}, not just the pointer"
            ),
            // Chunk names carry the table version: not known in advance.
            "get" => {}
            other => bail!("the router may {other} ConfigMaps: it only reads"),
        }
    }
    Ok(())
}

// --- Grafana dashboards -------------------------------------------------------------------------

// The ConfigMap carries each file of the dashboards directory under its name.
use cellstack_testkit::dashboards::DIR as DASHBOARDS;
/// A ConfigMap's data may not exceed 1 MiB (the API server refuses it).
const CONFIG_MAP_LIMIT: usize = 1 << 20;

/// The rendered dashboards ConfigMap, if any.
fn dashboards_config_map(rendered: &Rendered) -> anyhow::Result<Option<ConfigMap>> {
    Ok(rendered
        .all::<ConfigMap>()?
        .into_iter()
        .find(|c| c.name_any() == format!("{RELEASE}-grafana-dashboards")))
}

/// The words of `text` starting with `prefix` (metric and recording-rule names).
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with(prefix) && w.len() > prefix.len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboards_configmap_carries_every_dashboard_file_byte_for_byte() -> anyhow::Result<()> {
    let files = cellstack_testkit::dashboards::files()?;
    let rendered = Render::defaults().run()?;
    let map = dashboards_config_map(&rendered)?
        .context("no ConfigMap cellstack-grafana-dashboards rendered with the default values")?;
    let data = map.data.unwrap_or_default();
    ensure!(
        data.keys().eq(files.keys()),
        "the ConfigMap's keys {:?} are not the files of {DASHBOARDS} {:?}",
        data.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    let mut uids = BTreeSet::new();
    for (name, text) in &files {
        ensure!(
            data[name] == *text,
            "key {name} is not {DASHBOARDS}/{name} byte for byte"
        );
        let dashboard: Value =
            serde_json::from_str(&data[name]).with_context(|| format!("key {name} is not JSON"))?;
        let uid = dashboard["uid"]
            .as_str()
            .with_context(|| format!("{name} has no uid"))?;
        ensure!(uids.insert(uid.to_owned()), "{name}: uid {uid} twice");
        ensure!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty())
                && dashboard["panels"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty()),
            "{name} has no title or no panel"
        );
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    ensure!(
        size < CONFIG_MAP_LIMIT,
        "the dashboards ConfigMap holds {size} bytes, over the 1 MiB a ConfigMap may hold"
    );
    Ok(())
}

#[test]
fn dashboards_configmap_is_labelled_for_grafanas_sidecar() -> anyhow::Result<()> {
    let labels = |map: &ConfigMap| map.labels().clone();
    let default = dashboards_config_map(&Render::defaults().run()?)?
        .context("no dashboards ConfigMap with the default values")?;
    ensure!(
        labels(&default)
            .get("grafana_dashboard")
            .map(String::as_str)
            == Some("1"),
        "the default labels miss grafana_dashboard: \"1\": {:?}",
        labels(&default)
    );
    ensure!(
        labels(&default)
            .get("app.kubernetes.io/part-of")
            .map(String::as_str)
            == Some("cellstack"),
        "the dashboards ConfigMap misses the chart's own labels"
    );
    ensure!(
        default.annotations().is_empty(),
        "annotations by default: {:?}",
        default.annotations()
    );

    let custom = dashboards_config_map(
        &Render::new(json!({"monitoring": {"dashboards": {
            "labels": {"grafana_dashboard": null, "example.org/dashboards": "platform"},
            "annotations": {"grafana_folder": "cellstack"},
        }}}))
        .run()?,
    )?
    .context("no dashboards ConfigMap with custom labels")?;
    ensure!(
        labels(&custom)
            .get("example.org/dashboards")
            .map(String::as_str)
            == Some("platform")
            && !labels(&custom).contains_key("grafana_dashboard"),
        "monitoring.dashboards.labels not applied (null drops the default): {:?}",
        labels(&custom)
    );
    ensure!(
        custom
            .annotations()
            .get("grafana_folder")
            .map(String::as_str)
            == Some("cellstack"),
        "monitoring.dashboards.annotations not applied: {:?}",
        custom.annotations()
    );
    Ok(())
}

#[test]
fn dashboards_configmap_is_not_rendered_when_disabled() -> anyhow::Result<()> {
    let rendered = Render::new(json!({"monitoring": {"dashboards": {"enabled": false}}})).run()?;
    ensure!(
        dashboards_config_map(&rendered)?.is_none(),
        "monitoring.dashboards.enabled=false still renders the dashboards ConfigMap"
    );
    Ok(())
}

/// The recording rules a dashboard reads (`cellstack:...`) are ones the chart's rules record.
#[test]
fn every_recording_rule_a_dashboard_reads_is_recorded_by_the_chart() -> anyhow::Result<()> {
    let rendered = Render::defaults().run()?;
    let rules = rendered
        .all::<ConfigMap>()?
        .into_iter()
        .find(|c| c.name_any() == format!("{RELEASE}-prometheus-rules"))
        .and_then(|c| c.data?.get("cellstack.rules.yaml").cloned())
        .context("no rules ConfigMap rendered")?;
    let groups: Value = serde_yaml::from_str(&rules)?;
    let recorded: BTreeSet<&str> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["record"].as_str())
        .collect();
    let mut read = 0;
    for (name, text) in cellstack_testkit::dashboards::files()? {
        let dashboard: Value = serde_json::from_str(&text)?;
        for expr in cellstack_testkit::dashboards::exprs(&dashboard) {
            for rule in words_with_prefix(&expr, "cellstack:") {
                read += 1;
                ensure!(
                    recorded.contains(rule.as_str()),
                    "{name} reads {rule}, which the chart's rules do not record ({recorded:?})"
                );
            }
        }
    }
    ensure!(read > 0, "no dashboard reads a recording rule");
    Ok(())
}

/// Every metric a dashboard names is one the docs name: the components' own tests
/// (`*/tests/documented_metrics.rs`) hold the docs to exactly the metrics each `/metrics` page
/// serves, so a dashboard cannot name a metric that does not exist. (The e2e scenario
/// `every_metric_the_rules_dashboards_and_docs_name_is_scraped` checks the same against a live
/// Prometheus.)
#[test]
fn every_metric_a_dashboard_names_is_a_documented_metric() -> anyhow::Result<()> {
    let mut docs = String::new();
    for entry in std::fs::read_dir(repo_root().join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push_str(&std::fs::read_to_string(&path)?);
            docs.push('\n');
        }
    }
    let documented = words_with_prefix(&docs, "cellstack_");
    let mut missing = BTreeSet::new();
    let mut named = 0;
    for (name, text) in cellstack_testkit::dashboards::files()? {
        let dashboard: Value = serde_json::from_str(&text)?;
        for expr in cellstack_testkit::dashboards::exprs(&dashboard) {
            for metric in words_with_prefix(&expr, "cellstack_") {
                named += 1;
                // A histogram's samples carry a suffix the docs do not write.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s))
                    .filter(|base| documented.contains(*base))
                    .unwrap_or(&metric);
                if !documented.contains(family) {
                    missing.insert(format!("{metric} ({name})"));
                }
            }
        }
    }
    ensure!(named > 0, "the dashboards name no cellstack metric");
    ensure!(
        missing.is_empty(),
        "dashboards name metrics no doc names: {missing:?}"
    );
    Ok(())
}

// --- snapshot -----------------------------------------------------------------------------------

#[test]
fn default_values_but_the_dashboards_render_as_reviewed() -> anyhow::Result<()> {
    // The dashboards ConfigMap holds the dashboard files whole (their own tests check it carries
    // them byte for byte); with them the snapshot would be mostly dashboard JSON.
    let rendered = Render::new(json!({"monitoring": {"dashboards": {"enabled": false}}})).run()?;
    insta::assert_snapshot!("default_values", rendered.text);
    Ok(())
}

// --- against the API server ---------------------------------------------------------------------

/// `kubectl apply --server-side --dry-run=server` of `rendered`: the API server validates every
/// object (schemas, unknown fields, the admission policy's CEL) and stores nothing.
fn dry_run_apply(rendered: &Rendered) -> anyhow::Result<()> {
    let mut child = kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cellstack-chart-test",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl (set KUBECTL to the pinned build, e2e/scripts/build-kubernetes.sh kubectl)")?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(rendered.text.as_bytes())
        .context("writing manifests to kubectl")?;
    let out = child.wait_with_output().context("running kubectl")?;
    ensure!(
        out.status.success(),
        "the API server refused the chart:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = String::from_utf8_lossy(&out.stdout);
    let count = applied
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    ensure!(
        count == rendered.docs.len(),
        "kubectl dry-ran {count} of {} objects:\n{applied}",
        rendered.docs.len()
    );
    Ok(())
}

#[tokio::test]
async fn api_server_accepts_every_rendered_object() -> anyhow::Result<()> {
    helm()?;
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart").await?;
    let result = dry_run_every_value_set(&client, &ns).await;
    ns.finish(result).await
}

/// Dry-runs every value set's objects as a release named after `ns`, in it, and a pod of each
/// Deployment under the restricted Pod Security profile.
async fn dry_run_every_value_set(client: &Client, ns: &TestNamespace) -> anyhow::Result<()> {
    // Pod Security admission enforces the restricted profile on the namespace's pods.
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .context("labelling the namespace restricted")?;
    for (name, render) in value_sets() {
        // A node port could clash with a Service already in the cluster.
        let render = Render {
            values: merged(
                render.values,
                json!({"router": {"service": {"nodePort": null}}}),
            ),
            ..render
        };
        let rendered = render.release(&ns.name, &ns.name).with_crds().run()?;
        dry_run_apply(&rendered).with_context(|| format!("with {name}"))?;
        // A Deployment only draws Pod Security warnings; its pods are admitted or refused. Pod
        // admission also wants their service accounts to exist.
        for sa in rendered.all::<ServiceAccount>()? {
            apply(&ns.api::<ServiceAccount>(), &sa).await?;
        }
        for deployment in rendered.all::<Deployment>()? {
            let template = deployment
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .context("Deployment without spec")?;
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{}-pod-security", deployment.name_any())),
                    ..template.metadata.unwrap_or_default()
                },
                spec: template.spec,
                ..Pod::default()
            };
            let dry_run = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            ns.api::<Pod>()
                .create(&dry_run, &pod)
                .await
                .with_context(|| {
                    format!(
                        "a pod of Deployment {} under the restricted profile ({name})",
                        deployment.name_any()
                    )
                })?;
        }
    }
    Ok(())
}

/// `base` with `patch` merged in: objects merge key by key; anything else (`null` included, which
/// Helm takes as "unset") replaces.
fn merged(mut base: Value, patch: Value) -> Value {
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }
    merge(&mut base, patch);
    base
}

/// Server-side applies `obj` (one the chart rendered) as the tests' field manager.
async fn apply<K>(api: &Api<K>, obj: &K) -> anyhow::Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .context("rendered object without name")?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("applying {name}"))
}

/// A client acting as ServiceAccount `name` of `namespace`.
async fn impersonating(namespace: &str, name: &str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await.context("reading KUBECONFIG")?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).context("building an impersonating client")
}

/// The HTTP status of a failed call, or 200.
fn status<T>(result: &Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn each_component_can_make_its_calls_and_no_others() -> anyhow::Result<()> {
    helm()?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "chart-rbac").await?;
    let release = ns.name.clone();
    let rendered = Render::defaults().release(&release, &ns.name).run()?;
    let cluster_roles = rendered.all::<ClusterRole>()?;
    let cluster_bindings = rendered.all::<ClusterRoleBinding>()?;
    let cell_ns = unique_name("cell-chart-rbac");
    let result = async {
        for sa in rendered.all::<ServiceAccount>()? {
            apply(&ns.api::<ServiceAccount>(), &sa).await?;
        }
        for role in rendered.all::<Role>()? {
            apply(&ns.api::<Role>(), &role).await?;
        }
        for binding in rendered.all::<RoleBinding>()? {
            apply(&ns.api::<RoleBinding>(), &binding).await?;
        }
        for role in &cluster_roles {
            apply(&Api::<ClusterRole>::all(client.clone()), role).await?;
        }
        for binding in &cluster_bindings {
            apply(&Api::<ClusterRoleBinding>::all(client.clone()), binding).await?;
        }
        let account = |component: &str| -> anyhow::Result<String> {
            pod_spec(&rendered.deployment(component)?)?
                .service_account_name
                .clone()
                .with_context(|| format!("the {component} pods name no service account"))
        };
        let operator_sa = account("operator")?;
        let router_sa = account("router")?;
        let router = impersonating(&ns.name, &router_sa).await?;
        let operator = impersonating(&ns.name, &operator_sa).await?;
        // RBAC changes reach the authorizer through an informer: wait until the first grant shows.
        let pointer_only = ListParams::default().fields(&format!("metadata.name={POINTER_NAME}"));
        let router_cms: Api<ConfigMap> = Api::namespaced(router.clone(), &ns.name);
        cellstack_testkit::cluster::poll("the router's Role to take effect", WAIT, || {
            let api = router_cms.clone();
            let lp = pointer_only.clone();
            async move {
                api.list(&lp)
                    .await
                    .map(|_| Some(()))
                    .context("the router lists the pointer")
            }
        })
        .await?;

        // The router, exactly as router/src/sources.rs reads: a list and watch of the pointer by
        // name (its creation arrives as an event) ...
        let mut pointers = watcher(
            router_cms.clone(),
            watcher::Config::default().fields(&format!("metadata.name={POINTER_NAME}")),
        )
        .boxed();
        loop {
            let next = tokio::time::timeout(WAIT, pointers.next())
                .await
                .context("the router's initial list of the pointer did not finish")?;
            match next {
                Some(Ok(watcher::Event::InitDone)) => break,
                Some(Ok(_)) => {}
                other => bail!("the router cannot list the pointer: {other:?}"),
            }
        }
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &config_map(POINTER_NAME, None))
            .await
            .context("creating the pointer")?;
        let next = tokio::time::timeout(WAIT, pointers.next()).await;
        ensure!(
            matches!(&next, Ok(Some(Ok(watcher::Event::Apply(cm)))) if cm.name_any() == POINTER_NAME),
            "the router's watch did not deliver the pointer: {next:?}"
        );
        drop(pointers);
        // ... and a get of each chunk it names (404: allowed, there is none).
        let chunk = router_cms.get(&format!("{POINTER_NAME}-v1-0")).await;
        ensure!(
            status(&chunk) == 404,
            "the router's get of a chunk: {chunk:?}"
        );
        // Nothing else.
        let refused = [
            (
                "list every ConfigMap",
                status(&router_cms.list(&ListParams::default()).await),
            ),
            (
                "create a ConfigMap",
                status(
                    &router_cms
                        .create(&PostParams::default(), &config_map("x", None))
                        .await,
                ),
            ),
            (
                "delete the pointer",
                status(
                    &router_cms
                        .delete(POINTER_NAME, &DeleteParams::default())
                        .await,
                ),
            ),
            (
                "read Secrets",
                status(
                    &Api::<Secret>::namespaced(router.clone(), &ns.name)
                        .list(&ListParams::default())
                        .await,
                ),
            ),
            (
                "read ConfigMaps elsewhere",
                status(
                    &Api::<ConfigMap>::namespaced(router.clone(), "default")
                        .get(POINTER_NAME)
                        .await,
                ),
            ),
        ];
        for (what, code) in refused {
            ensure!(code == 403, "the router may {what} (HTTP {code})");
        }

        // The operator: leader election in its namespace ...
        let leases: Api<Lease> = Api::namespaced(operator.clone(), &ns.name);
        let lease_name = flag(
            &container_args(&rendered.deployment("operator")?, "operator")?,
            "--lease-name",
        )
        .context("the operator has no --lease-name")?
        .to_owned();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(lease_name.clone()),
                ..ObjectMeta::default()
            },
            ..Lease::default()
        };
        cellstack_testkit::cluster::poll("the operator's Role to take effect", WAIT, || {
            let (api, name) = (leases.clone(), lease_name.clone());
            async move {
                match api.get(&name).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(Some(())),
                    other => Err(anyhow::anyhow!("the operator reads its Lease: {other:?}")),
                }
            }
        })
        .await?;
        leases
            .create(&PostParams::default(), &lease)
            .await
            .context("operator creates its Lease")?;
        leases
            .get(&lease_name)
            .await
            .context("operator reads its Lease")?;
        leases
            .patch(
                &lease_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "test"}})),
            )
            .await
            .context("operator renews its Lease")?;
        ensure!(
            status(&leases.get("someone-elses").await) == 403,
            "operator reads other Leases"
        );

        // ... the routing table: the pointer by server-side apply (which creates it), chunks.
        let cms: Api<ConfigMap> = Api::namespaced(operator.clone(), &ns.name);
        let params = PatchParams::apply("cellstack-operator").force();
        cms.patch(
            POINTER_NAME,
            &params,
            &Patch::Apply(config_map(POINTER_NAME, None)),
        )
        .await
        .context("operator switches the pointer (server-side apply creating it)")?;
        cms.get(POINTER_NAME)
            .await
            .context("operator reads the pointer")?;
        let chunk = format!("{POINTER_NAME}-v1-0");
        cms.create(
            &PostParams::default(),
            &config_map(&chunk, Some("routing-table-chunk")),
        )
        .await
        .context("operator creates a chunk")?;
        cms.list(&ListParams::default().labels(&format!("{COMPONENT_LABEL}=routing-table-chunk")))
            .await
            .context("operator lists chunks")?;
        cms.delete(&chunk, &DeleteParams::background())
            .await
            .context("operator deletes a chunk")?;
        // ... the internal CA: its trust bundle and Secret created, read and replaced.
        let bundle = cms
            .create(&PostParams::default(), &config_map(INTERNAL_CA_BUNDLE, None))
            .await
            .context("operator creates the CA bundle")?;
        cms.replace(INTERNAL_CA_BUNDLE, &PostParams::default(), &bundle)
            .await
            .context("operator replaces the CA bundle")?;
        let own_secrets: Api<Secret> = Api::namespaced(operator.clone(), &ns.name);
        let ca = own_secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some(INTERNAL_CA_SECRET.into()),
                        ..ObjectMeta::default()
                    },
                    ..Secret::default()
                },
            )
            .await
            .context("operator creates the CA Secret")?;
        own_secrets
            .get(INTERNAL_CA_SECRET)
            .await
            .context("operator reads the CA Secret")?;
        own_secrets
            .replace(INTERNAL_CA_SECRET, &PostParams::default(), &ca)
            .await
            .context("operator replaces the CA Secret")?;

        // ... a cell's stack: namespace and children created and updated by server-side apply,
        // then deleted.
        let namespaces: Api<Namespace> = Api::all(operator.clone());
        cellstack_testkit::cluster::poll("the operator's ClusterRole to take effect", WAIT, || {
            let api = namespaces.clone();
            async move {
                api.list(&ListParams::default().limit(1))
                    .await
                    .map(|_| Some(()))
                    .context("the operator lists namespaces")
            }
        })
        .await?;
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(cell_ns.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .patch(&cell_ns, &params, &Patch::Apply(&namespace))
            .await
            .context("operator applies a cell namespace")?;
        let children: Api<ConfigMap> = Api::namespaced(operator.clone(), &cell_ns);
        children
            .patch(
                "policies",
                &params,
                &Patch::Apply(config_map("policies", None)),
            )
            .await
            .context("operator applies a ConfigMap in a cell namespace")?;
        Api::<Secret>::namespaced(operator.clone(), &cell_ns)
            .get_opt("admin-token")
            .await
            .context("operator reads a cell's admin token")?;
        children
            .delete("policies", &DeleteParams::background())
            .await
            .context("operator deletes an orphan")?;
        // ... events about its (cluster-scoped) objects, which land in `default`.
        let events: Api<Event> = Api::namespaced(operator.clone(), "default");
        let event = Event {
            metadata: ObjectMeta {
                name: Some(unique_name("chart-rbac")),
                ..ObjectMeta::default()
            },
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            reporting_controller: Some("cellstack-operator".into()),
            reporting_instance: Some("chart-test".into()),
            action: Some("Reconcile".into()),
            reason: Some("ChartTest".into()),
            type_: Some("Normal".into()),
            ..Event::default()
        };
        let created = events
            .create(&PostParams::default(), &event)
            .await
            .context("operator publishes an event")?;
        let _ = Api::<Event>::namespaced(client.clone(), "default")
            .delete(&created.name_any(), &DeleteParams::default())
            .await;
        namespaces
            .delete(&cell_ns, &DeleteParams::background())
            .await
            .context("operator deletes a cell namespace")?;
        // A node, by name (the zones behind a Cell's status.runsIn), but not the list of them.
        let node = Api::<Node>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await?
            .items
            .into_iter()
            .next()
            .context("the cluster has no node")?
            .name_any();
        Api::<Node>::all(operator.clone())
            .get(&node)
            .await
            .context("operator reads a node")?;
        // Nothing beyond: no reading a Pod (it only lists and watches the Redis pods), no
        // other Leases, no RBAC, no writing CRDs.
        let refused = [
            (
                "list Nodes",
                status(&Api::<Node>::all(operator.clone()).list(&ListParams::default()).await),
            ),
            (
                "get a Pod",
                status(
                    &Api::<Pod>::namespaced(operator.clone(), "kube-system")
                        .get("coredns")
                        .await,
                ),
            ),
            (
                "delete a Pod",
                status(
                    &Api::<Pod>::namespaced(operator.clone(), "kube-system")
                        .delete("coredns", &DeleteParams::default())
                        .await,
                ),
            ),
            (
                "read Leases of others",
                status(
                    &Api::<Lease>::namespaced(operator.clone(), "kube-system")
                        .list(&ListParams::default())
                        .await,
                ),
            ),
            (
                "delete a CRD",
                status(
                    &Api::<CustomResourceDefinition>::all(operator.clone())
                        .delete("cells.cellstack.dev", &DeleteParams::default())
                        .await,
                ),
            ),
            (
                "read ClusterRoles",
                status(
                    &Api::<ClusterRole>::all(operator.clone())
                        .list(&ListParams::default())
                        .await,
                ),
            ),
        ];
        for (what, code) in refused {
            ensure!(code == 403, "the operator may {what} (HTTP {code})");
        }
        Ok(())
    }
    .await;
    // Cluster-scoped leftovers first; the namespace takes the rest.
    for binding in &cluster_bindings {
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&binding.name_any(), &DeleteParams::default())
            .await;
    }
    for role in &cluster_roles {
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(&role.name_any(), &DeleteParams::default())
            .await;
    }
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&cell_ns, &DeleteParams::background())
        .await;
    ns.finish(result).await
}

fn config_map(name: &str, component: Option<&str>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: component.map(|c| BTreeMap::from([(COMPONENT_LABEL.to_owned(), c.to_owned())])),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

/// A valid Cell named `name` carrying `labels`.
fn cell(name: &str, labels: Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1",
        "kind": "Cell",
        "metadata": {"name": name, "labels": labels},
        "spec": {"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}},
    }))?)
}

/// Deletes cell `name` (a dry run when `dry_run`), returning the refusal's message, if any.
async fn delete_cell(
    api: &Api<DynamicObject>,
    name: &str,
    dry_run: bool,
) -> anyhow::Result<Option<String>> {
    let params = DeleteParams {
        dry_run,
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Ok(Some(s.message)),
        Err(e) => Err(e).with_context(|| format!("deleting cell {name}")),
    }
}

#[tokio::test]
async fn cell_deletion_guard_refuses_to_delete_a_cell_that_holds_tenants() -> anyhow::Result<()> {
    helm()?;
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart-guard").await?;
    let release = ns.name.clone();
    let label = "cellstack.dev/chart-test";
    let rendered = Render::new(json!({"operator": {"selector": {label: release}}}))
        .release(&release, &ns.name)
        .run()?;
    let policy = rendered.one::<ValidatingAdmissionPolicy>("-cell-deletion-guard")?;
    let binding = rendered.one::<ValidatingAdmissionPolicyBinding>("-cell-deletion-guard")?;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let cells = dynamic_api(&client, "Cell")?;
    let guarded = unique_name("guarded");
    let other = unique_name("unguarded");
    let result = async {
        apply(&policies, &policy).await?;
        apply(&bindings, &binding).await?;
        // The API server type-checks the expressions against the Cell schema: no warning means
        // every field they read exists.
        let checked = cellstack_testkit::cluster::poll("the policy's type check", WAIT, || {
            let api = policies.clone();
            let name = policy.name_any();
            async move {
                let p = api.get(&name).await?;
                Ok(p.status.and_then(|s| s.type_checking))
            }
        })
        .await?;
        ensure!(
            checked
                .expression_warnings
                .as_ref()
                .is_none_or(Vec::is_empty),
            "the policy's expressions do not type-check against the Cell schema: {:?}",
            checked.expression_warnings
        );

        for (name, value) in [(&guarded, release.as_str()), (&other, "another-release")] {
            cells
                .create(&PostParams::default(), &cell(name, json!({label: value}))?)
                .await
                .with_context(|| format!("creating cell {name}"))?;
            cells
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"tenantCount": 3}})),
                )
                .await
                .with_context(|| format!("setting the tenant count of cell {name}"))?;
        }
        // Policies reach admission through an informer: wait until a dry run is refused.
        let ours = policy.name_any();
        let refusal = cellstack_testkit::cluster::poll("the policy to take effect", WAIT, || {
            let api = cells.clone();
            let (name, ours) = (guarded.clone(), ours.clone());
            async move {
                Ok(delete_cell(&api, &name, true)
                    .await?
                    .filter(|m| m.contains(&ours)))
            }
        })
        .await?;
        // For real now.
        let refusal_now = delete_cell(&cells, &guarded, false).await?;
        ensure!(
            refusal_now.as_ref().is_some_and(|m| m.contains(&ours)),
            "deleting cell {guarded} with 3 tenants went through: {refusal_now:?}"
        );
        let expected = format!(
            "cell {guarded} still holds 3 tenant(s): set spec.draining: true and wait for its \
             Drained condition (or move its tenants), then delete it"
        );
        ensure!(
            refusal.contains(&expected),
            "the refusal does not tell a person what to do:\n  got: {refusal}\n  want: {expected}"
        );
        // Another release's cell is not this release's business.
        let elsewhere = delete_cell(&cells, &other, true).await?;
        ensure!(
            elsewhere.as_ref().is_none_or(|m| !m.contains(&ours)),
            "this release judged another release's cell: {elsewhere:?}"
        );
        // Drained: the delete goes through.
        cells
            .patch_status(
                &guarded,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"tenantCount": 0}})),
            )
            .await
            .context("draining the cell")?;
        let after = delete_cell(&cells, &guarded, false).await?;
        ensure!(
            after.is_none(),
            "deleting a drained cell was refused: {after:?}"
        );
        Ok(())
    }
    .await;
    let _ = bindings
        .delete(&binding.name_any(), &DeleteParams::default())
        .await;
    let _ = policies
        .delete(&policy.name_any(), &DeleteParams::default())
        .await;
    for name in [&guarded, &other] {
        let _ = cells
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"tenantCount": 0}})),
            )
            .await;
        let _ = cells.delete(name, &DeleteParams::default()).await;
    }
    ns.finish(result).await
}

/// Traces are off unless `tracing.otlpEndpoint` is set; then the operator and the routers get
/// the OpenTelemetry SDK's variables and the operator passes the endpoint on to the lanes.
#[test]
fn tracing_env_is_rendered_only_with_an_otlp_endpoint() -> anyhow::Result<()> {
    let env_of =
        |rendered: &Rendered, component: &str| -> anyhow::Result<BTreeMap<String, String>> {
            let deployment = rendered.deployment(component)?;
            Ok(container(&deployment, component)?
                .env
                .iter()
                .flatten()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect())
        };
    let off = Render::defaults().run()?;
    for component in ["operator", "router"] {
        let env = env_of(&off, component)?;
        ensure!(
            !env.keys().any(|k| k.starts_with("OTEL_")),
            "{component} has OTEL_ variables by default: {env:?}"
        );
    }
    ensure!(
        flag(
            &container_args(&off.deployment("operator")?, "operator")?,
            "--lane-otlp-endpoint"
        )
        .is_none()
    );

    let endpoint = "http://otel-collector.monitoring:4318";
    let on = Render::new(json!({"tracing": {
        "otlpEndpoint": endpoint,
        "sampler": "parentbased_traceidratio",
        "samplerArg": "0.01",
    }}))
    .run()?;
    for component in ["operator", "router"] {
        let env = env_of(&on, component)?;
        ensure!(env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str) == Some(endpoint));
        ensure!(
            env.get("OTEL_TRACES_SAMPLER").map(String::as_str) == Some("parentbased_traceidratio")
        );
        ensure!(env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str) == Some("0.01"));
    }
    let args = container_args(&on.deployment("operator")?, "operator")?;
    ensure!(
        flag(&args, "--lane-otlp-endpoint") == Some(endpoint),
        "{args:?}"
    );
    Ok(())
}

/// With `tls.secretName` the router serves TLS with the Secret's pair, mounted whole.
#[test]
fn a_tls_router_mounts_its_certificate_secret_whole() -> anyhow::Result<()> {
    let rendered = jwt_render().run()?;
    let router = rendered.deployment("router")?;
    let args = container_args(&router, "router")?;
    for (name, value) in [
        ("--tls-cert-file", "/etc/cellstack/tls/tls.crt"),
        ("--tls-key-file", "/etc/cellstack/tls/tls.key"),
        ("--tls-poll-ms", "1000"),
    ] {
        ensure!(flag(&args, name) == Some(value), "{name} in {args:?}");
    }
    let volume = pod_spec(&router)?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .context("no tls volume")?;
    ensure!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("edge-tls"),
        "{volume:?}"
    );
    let mount = container(&router, "router")?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "tls")
        .context("no tls mount")?;
    ensure!(mount.mount_path == "/etc/cellstack/tls" && mount.sub_path.is_none());
    let plain = Render::defaults().run()?;
    let plain_args = container_args(&plain.deployment("router")?, "router")?;
    ensure!(
        !plain_args.iter().any(|a| a.starts_with("--tls-")),
        "{plain_args:?}"
    );
    Ok(())
}

/// With `tenantFrom: jwt` the router mounts the key set's Secret whole (so the kubelet's updates
/// reach it) and gets every token check as a flag; without the Secret or an audience the chart
/// refuses to render, naming the value to set.
#[test]
fn a_jwt_router_mounts_its_key_set_and_a_missing_one_is_refused() -> anyhow::Result<()> {
    let rendered = jwt_render().run()?;
    let router = rendered.deployment("router")?;
    let args = container_args(&router, "router")?;
    for (name, value) in [
        ("--tenant-from", "jwt"),
        ("--jwt-jwks-file", "/etc/cellstack/jwks/keys.json"),
        ("--jwt-audience", "api.example.com,api2.example.com"),
        ("--jwt-issuer", "https://id.example.com/"),
        ("--jwt-tenant-claim", "org"),
        ("--jwt-leeway-secs", "10"),
        ("--jwt-jwks-poll-ms", "2000"),
    ] {
        ensure!(flag(&args, name) == Some(value), "{name} in {args:?}");
    }
    let spec = pod_spec(&router)?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "jwks")
        .context("no jwks volume")?;
    ensure!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("edge-jwks"),
        "{volume:?}"
    );
    let mount = container(&router, "router")?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "jwks")
        .context("no jwks mount")?;
    ensure!(mount.mount_path == "/etc/cellstack/jwks" && mount.sub_path.is_none());
    ensure!(mount.read_only == Some(true));

    // The default trusts the header, and says so.
    let default = Render::defaults().run()?;
    let default_args = container_args(&default.deployment("router")?, "router")?;
    ensure!(flag(&default_args, "--tenant-from") == Some("header"));
    ensure!(!default_args.iter().any(|a| a.starts_with("--jwt-")));

    for (values, names) in [
        (
            json!({"router": {"tenantFrom": "jwt", "jwt": {"audiences": ["a"]}}}),
            "router.jwt.jwksSecret",
        ),
        (
            json!({"router": {"tenantFrom": "jwt", "jwt": {"jwksSecret": "s"}}}),
            "router.jwt.audiences",
        ),
    ] {
        let error = Render::new(values)
            .run()
            .err()
            .context("rendered without a required value")?;
        ensure!(format!("{error:#}").contains(names), "{error:#}");
    }
    Ok(())
}

#[test]
fn internal_tls_is_on_by_default_and_routers_trust_only_the_operators_bundle() -> anyhow::Result<()>
{
    let check = |rendered: &Rendered, on: bool| -> anyhow::Result<()> {
        let operator = container_args(&rendered.deployment("operator")?, "operator")?;
        ensure!(
            operator.iter().any(|a| a == "--internal-tls") == on,
            "operator args: {operator:?}"
        );
        let router_deployment = rendered.deployment("router")?;
        let router = container_args(&router_deployment, "router")?;
        let ca_file = flag(&router, "--upstream-ca-file");
        let bundle_volume = pod_spec(&router_deployment)?
            .volumes
            .iter()
            .flatten()
            .find(|v| v.config_map.as_ref().map(|c| c.name.as_str()) == Some(INTERNAL_CA_BUNDLE));
        if on {
            ensure!(
                ca_file == Some("/etc/cellstack/internal-ca/ca.crt"),
                "router args: {router:?}"
            );
            let volume = bundle_volume.context("the router mounts the trust bundle")?;
            let mount = container(&router_deployment, "router")?
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == volume.name)
                .context("the bundle volume is mounted")?;
            ensure!(mount.mount_path == "/etc/cellstack/internal-ca");
        } else {
            ensure!(
                ca_file.is_none() && bundle_volume.is_none(),
                "router args: {router:?}"
            );
        }
        Ok(())
    };
    check(&Render::defaults().run()?, true)?;
    check(
        &Render::new(json!({"internalTls": {"enabled": false}})).run()?,
        false,
    )?;
    // A PodMonitor scrapes lanes over HTTPS, verifying them against the same bundle.
    let monitored =
        Render::new(json!({"monitoring": {"serviceMonitor": {"enabled": true}}})).run()?;
    let pod_monitor = monitored
        .docs
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .context("a PodMonitor")?;
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    ensure!(endpoint["scheme"] == "https", "{endpoint}");
    ensure!(
        endpoint["tlsConfig"]["ca"]["configMap"]["name"] == INTERNAL_CA_BUNDLE
            && endpoint["tlsConfig"]["serverName"] == cellstack_api::v1alpha1::LANE_TLS_SERVER_NAME,
        "{endpoint}"
    );
    Ok(())
}
