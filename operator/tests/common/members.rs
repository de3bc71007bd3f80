//! MemberClusters for tests: their kubeconfig Secrets, creating one, waiting for a condition.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use cellstack_api::v1alpha1::{MemberCluster, member_condition};
use cellstack_operator::names::CELL_UID_LABEL;
use cellstack_testkit::{
    cluster::{poll, signal},
    control_plane::ControlPlane,
};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
        events::v1::Event,
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::{TEST_LABEL, World};

/// Creates or replaces Secret `name` with `kubeconfig` under key `value`.
pub async fn put_secret(secrets: &Api<Secret>, name: &str, kubeconfig: &str) -> anyhow::Result<()> {
    let value = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
    secrets
        .patch(
            name,
            &PatchParams::apply(cellstack_testkit::FIELD_MANAGER).force(),
            &Patch::Apply(&json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": name },
                "data": { "value": value },
            })),
        )
        .await
        .with_context(|| format!("writing Secret {name}"))?;
    Ok(())
}

/// Creates MemberCluster `name` naming Secret `name`, labelled for the world's operator;
/// `spec` is merged over `kubeconfigSecretRef`.
pub async fn create_member(
    members: &Api<MemberCluster>,
    world: &World,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let mut full = json!({ "kubeconfigSecretRef": { "name": name } });
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    let member: MemberCluster = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1",
        "kind": "MemberCluster",
        "metadata": { "name": name, "labels": { TEST_LABEL: world.id } },
        "spec": full,
    }))?;
    members
        .create(&PostParams::default(), &member)
        .await
        .with_context(|| format!("creating MemberCluster {name}"))?;
    Ok(())
}

/// Waits up to `within` until `check` accepts member `name`, showing its status on timeout.
pub async fn wait_member(
    members: &Api<MemberCluster>,
    name: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&MemberCluster) -> bool,
) -> anyhow::Result<MemberCluster> {
    poll(&format!("member cluster {name}: {what}"), within, || {
        let check = &check;
        async move {
            let member = members.get(name).await?;
            if check(&member) {
                Ok(Some(member))
            } else {
                anyhow::bail!(
                    "status is {}",
                    serde_json::to_string(&member.status).unwrap_or_default()
                )
            }
        }
    })
    .await
}

/// Condition `type_` of `member` as (status, reason).
pub fn condition<'a>(member: &'a MemberCluster, type_: &str) -> Option<(&'a str, &'a str)> {
    member
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Waits until an Event of `reason` (and type `Warning`) regards cluster-scoped object `name`
/// (such Events go to the `default` namespace), its note containing `note` when given.
pub async fn wait_warning(
    client: &kube::Client,
    name: &str,
    reason: &str,
    note: Option<&str>,
) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    poll(
        &format!("a Warning Event {reason} on {name}"),
        super::WAIT,
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && note.is_none_or(|n| e.note.as_deref().is_some_and(|t| t.contains(n)))
                })
                .then_some(()))
        },
    )
    .await
}

/// Installs in the member reached by `client` the RBAC the chart's member mode renders for
/// release namespace `namespace` (its ServiceAccount, ClusterRole, Role and their bindings; the
/// routers are left out), with `multicluster.enabled` as the operator's `--multicluster`, and
/// returns a token of the remote operator's ServiceAccount from the TokenRequest API: the
/// management operator then acts in the member with exactly what the chart grants.
pub async fn install_member_rbac(
    client: &kube::Client,
    namespace: &str,
    multicluster: bool,
) -> anyhow::Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": namespace } }))?,
            )
            .await
            .with_context(|| format!("creating namespace {namespace} in the member"))?;
    }
    let chart = cellstack_testkit::repo_root().join("charts/cellstack");
    let out = std::process::Command::new(cellstack_testkit::helm()?)
        .args(["template", "cellstack"])
        .arg(&chart)
        .args([
            "--namespace",
            namespace,
            "--skip-crds",
            "--set",
            "mode=member",
        ])
        .args(["--set", &format!("multicluster.enabled={multicluster}")])
        .output()
        .context("running helm template")?;
    anyhow::ensure!(
        out.status.success(),
        "helm template --set mode=member failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let params = PatchParams::apply(cellstack_testkit::FIELD_MANAGER).force();
    let mut account = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc)?;
        let (Some(kind), Some(name)) = (doc["kind"].as_str(), doc["metadata"]["name"].as_str())
        else {
            continue;
        };
        macro_rules! apply {
            ($api:expr) => {
                $api.patch(name, &params, &Patch::Apply(&doc))
                    .await
                    .map(|_| ())
                    .with_context(|| format!("applying {kind} {name} in the member"))?
            };
        }
        match kind {
            "ServiceAccount" => {
                apply!(Api::<ServiceAccount>::namespaced(client.clone(), namespace));
                if name.ends_with("-operator-remote") {
                    account = Some(name.to_owned());
                }
            }
            "Role" => apply!(Api::<Role>::namespaced(client.clone(), namespace)),
            "RoleBinding" => apply!(Api::<RoleBinding>::namespaced(client.clone(), namespace)),
            "ClusterRole" => apply!(Api::<ClusterRole>::all(client.clone())),
            "ClusterRoleBinding" => apply!(Api::<ClusterRoleBinding>::all(client.clone())),
            _ => {}
        }
    }
    let account = account.context("the member render has no *-operator-remote ServiceAccount")?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("minting a token for {account} in the member"))?;
    Ok(minted.status.context("TokenRequest without status")?.token)
}

/// Registers the cluster reached by `client`, whose admin kubeconfig is at `admin_kubeconfig`, as a
/// MemberCluster of the world's operator with `systemNamespace` `system_namespace`: the chart's
/// member-mode RBAC installed there ([`install_member_rbac`]), a kubeconfig with its
/// ServiceAccount's token in the operator's Secret, and waits until the member is Reachable.
/// Returns the MemberCluster's name.
pub async fn register_member(
    world: &World,
    client: &Client,
    admin_kubeconfig: &std::path::Path,
    system_namespace: &str,
    multicluster: bool,
) -> anyhow::Result<String> {
    let members: Api<MemberCluster> = Api::all(world.client.clone());
    let member = cellstack_testkit::unique_name("member");
    // The operator acts in the member as the chart's member mode lets it, nothing more.
    let token = install_member_rbac(client, system_namespace, multicluster).await?;
    let kubeconfig = cellstack_testkit::control_plane::token_kubeconfig(admin_kubeconfig, &token)?;
    put_secret(&world.system.api(), &member, &kubeconfig).await?;
    create_member(
        &members,
        world,
        &member,
        json!({ "systemNamespace": system_namespace }),
    )
    .await?;
    wait_member(
        &members,
        &member,
        "Reachable=True",
        Duration::from_secs(30),
        |m| condition(m, member_condition::REACHABLE) == Some(("True", "Contacted")),
    )
    .await?;
    Ok(member)
}

/// Runs `scenario` with a second control plane of the test's own (`e2e/control-plane`: etcd,
/// API server, controller-manager, no nodes), then finishes the world (its cells go first,
/// their namespaces in the member with them) and stops the control plane.
pub async fn with_member_control_plane(
    mut world: World,
    scenario: impl AsyncFnOnce(&mut World, &ControlPlane) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cellstack-member-{}", world.id));
    let result = match ControlPlane::up(&dir) {
        Ok(member) => {
            let result = scenario(&mut world, &member).await;
            let result = world.finish(result).await;
            drop(member);
            result
        }
        Err(e) => {
            world
                .finish(Err(e.context("starting the member control plane")))
                .await
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A stopped process, continued when dropped so a failing test never leaves it stopped.
pub struct Stopped(Option<i32>);

impl Stopped {
    pub fn stop(pid: i32) -> anyhow::Result<Self> {
        signal(&[pid], "STOP")?;
        Ok(Self(Some(pid)))
    }

    pub fn resume(mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(pid) => signal(&[pid], "CONT"),
            None => Ok(()),
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = signal(&[pid], "CONT");
        }
    }
}

/// `kind/name → uid` of every object in `client`'s cluster labelled with cell `uid`, each checked
/// to carry no owner reference.
pub async fn stack_in(
    client: &Client,
    uid: &str,
) -> anyhow::Result<BTreeMap<(&'static str, String), String>> {
    let selector = ListParams::default().labels(&format!("{CELL_UID_LABEL}={uid}"));
    let mut out = BTreeMap::new();
    let mut add = |kind: &'static str, meta: &ObjectMeta| -> anyhow::Result<()> {
        ensure!(
            meta.owner_references.as_ref().is_none_or(Vec::is_empty),
            "{kind} {:?} in the member has owner references: {:?}",
            meta.name,
            meta.owner_references
        );
        out.insert(
            (kind, meta.name.clone().unwrap_or_default()),
            meta.uid.clone().unwrap_or_default(),
        );
        Ok(())
    };
    macro_rules! collect {
        ($kind:ty) => {
            for o in Api::<$kind>::all(client.clone())
                .list(&selector)
                .await?
                .items
            {
                add(<$kind as k8s_openapi::Resource>::KIND, o.meta())?;
            }
        };
    }
    collect!(Namespace);
    collect!(StatefulSet);
    collect!(Service);
    collect!(ConfigMap);
    collect!(Secret);
    collect!(PodDisruptionBudget);
    collect!(NetworkPolicy);
    Ok(out)
}
