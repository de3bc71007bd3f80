//! Applying a cell's stack: server-side apply of every child with one field manager, then
//! deletion of the children the stack no longer lists. Secrets holding a generated value (the
//! datastore's password) are created once and never applied over nor deleted. Reads that feed
//! the builders (the admin token, the external Redis URL) live here too, so `desired` stays
//! pure.

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::{
    ByteString, NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        core::v1::{Namespace, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rand::RngCore;
use serde::{Serialize, de::DeserializeOwned};

use crate::logic::cell::{
    desired::Stack,
    ownership::{self, NamespaceClaim, Owner},
};
use crate::{
    context::Context,
    error::{Error, Result},
    names::{
        ADMIN_TOKEN, ADMIN_TOKEN_KEY, CELL_LABEL, FIELD_MANAGER, LANES, MANAGED_SELECTOR, REDIS,
        REDIS_AUTH,
    },
    target::Target,
};

const CONTROLLER: &str = "cell";
/// Children never deleted as orphans, whatever the stack lists: the datastore's password goes
/// only with the cell's namespace (the data on the volumes is only readable with it).
const NEVER_ORPHANED: [&str; 1] = [REDIS_AUTH];

/// What the API server answered for the children the status reads.
#[derive(Debug, Default)]
pub struct Applied {
    pub lanes: Option<StatefulSet>,
    pub redis: Option<StatefulSet>,
    /// Lane Services in lane order.
    pub lane_services: Vec<Service>,
}

/// Applies every object of `stack` in `target`, namespace first, and returns what the status
/// needs.
pub async fn apply_stack(ctx: &Context, target: &Target, stack: &Stack) -> Result<Applied> {
    let ns_name = stack
        .namespace
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("namespace name"))?;
    let namespaces: Api<Namespace> = Api::all(target.client().clone());
    ctx.call(
        format!("apply Namespace {ns_name}"),
        namespaces.patch(&ns_name, &params(), &Patch::Apply(&stack.namespace)),
    )
    .await?;
    count_applied(ctx, 1);

    create_generated(ctx, target, &stack.generated_secrets).await?;
    apply_all(ctx, target, &stack.secrets).await?;
    apply_all(ctx, target, &stack.config_maps).await?;
    let services = apply_all(ctx, target, &stack.services).await?;
    let stateful_sets = apply_all(ctx, target, &stack.stateful_sets).await?;
    apply_all(ctx, target, &stack.disruption_budgets).await?;
    apply_all(ctx, target, &stack.network_policies).await?;

    let find_sts = |name: &str| {
        stateful_sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .cloned()
    };
    let mut lane_services: Vec<(u32, Service)> = services
        .into_iter()
        .filter_map(|s| {
            let index = s
                .metadata
                .name
                .as_deref()?
                .strip_prefix("lane-")?
                .parse()
                .ok()?;
            Some((index, s))
        })
        .collect();
    lane_services.sort_by_key(|(i, _)| *i);
    Ok(Applied {
        lanes: find_sts(LANES),
        redis: find_sts(REDIS),
        lane_services: lane_services.into_iter().map(|(_, s)| s).collect(),
    })
}

/// Creates each Secret of `secrets` that does not exist yet in `target`, every key the stack
/// leaves empty holding a new random value (32 bytes, hex). One that exists is left exactly as
/// it is: never regenerated, never applied over (server-side apply would replace its data).
async fn create_generated(ctx: &Context, target: &Target, secrets: &[Secret]) -> Result<()> {
    for template in secrets {
        let name = template
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.name"))?;
        let ns = template
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
        let api: Api<Secret> = Api::namespaced(target.client().clone(), &ns);
        let keys: Vec<&String> = template
            .data
            .iter()
            .flat_map(|d| d.iter())
            .filter(|(_, v)| v.0.is_empty())
            .map(|(k, _)| k)
            .collect();
        if let Some(existing) = ctx
            .call(format!("read Secret {ns}/{name}"), api.get_opt(&name))
            .await?
        {
            let data = existing.data.unwrap_or_default();
            if let Some(missing) = keys
                .iter()
                .find(|k| data.get(k.as_str()).is_none_or(|v| v.0.is_empty()))
            {
                return Err(Error::InvalidSpec {
                    kind: "Cell",
                    name: template
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CELL_LABEL).cloned())
                        .unwrap_or_default(),
                    reason: format!(
                        "Secret {ns}/{name} exists but has no value under key '{missing}' (the operator never overwrites it); delete the Secret to have a new value generated, then restart the pods that read it"
                    ),
                });
            }
            continue;
        }
        let mut secret = template.clone();
        secret.data = Some(
            template
                .data
                .iter()
                .flat_map(|d| d.iter())
                .map(|(k, v)| {
                    let value = if v.0.is_empty() {
                        ByteString(random_hex().into_bytes())
                    } else {
                        v.clone()
                    };
                    (k.clone(), value)
                })
                .collect::<BTreeMap<_, _>>(),
        );
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match ctx
            .call(
                format!("create Secret {ns}/{name}"),
                api.create(&params, &secret),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %ns, name, "generated a Secret");
                count_applied(ctx, 1);
            }
            // Created since it was read (another reconcile): that one is kept.
            Err(Error::Kube { source, .. }) if is_already_exists(&source) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn params() -> PatchParams {
    // Force: the operator owns these objects; a person's `kubectl edit` is drift to undo.
    PatchParams::apply(FIELD_MANAGER).force()
}

fn count_applied(ctx: &Context, n: usize) {
    ctx.metrics
        .children_applied
        .get_or_create(&crate::metrics::ControllerLabels {
            controller: CONTROLLER,
        })
        .inc_by(n as u64);
}

/// Applies each of `objects` in `target` and returns what the API server answered.
async fn apply_all<K>(ctx: &Context, target: &Target, objects: &[K]) -> Result<Vec<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let mut applied = Vec::with_capacity(objects.len());
    for obj in objects {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.name"))?;
        let ns = obj
            .meta()
            .namespace
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
        let api: Api<K> = Api::namespaced(target.client().clone(), &ns);
        let out = ctx
            .call(
                format!("apply {} {ns}/{name}", K::kind(&())),
                api.patch(&name, &params(), &Patch::Apply(obj)),
            )
            .await?;
        applied.push(out);
    }
    count_applied(ctx, objects.len());
    Ok(applied)
}

/// Deletes the children of cell `cell` (owned as `owner` says) in `namespace` of `target` that
/// `stack` no longer lists. Only objects carrying the operator's labels and controlled by this
/// cell ([`ownership::controls`]) are candidates.
pub async fn delete_orphans(
    ctx: &Context,
    target: &Target,
    cell: &str,
    owner: &Owner,
    namespace: &str,
    stack: &Stack,
) -> Result<usize> {
    let mut deleted = 0;
    let mut secrets: Vec<Secret> = stack
        .secrets
        .iter()
        .chain(&stack.generated_secrets)
        .cloned()
        .collect();
    secrets.extend(stack.issued_secrets.iter().map(|name| Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }));
    deleted += delete_unlisted(ctx, target, cell, owner, namespace, &secrets).await?;
    deleted += delete_unlisted(ctx, target, cell, owner, namespace, &stack.config_maps).await?;
    deleted += delete_unlisted(ctx, target, cell, owner, namespace, &stack.services).await?;
    deleted += delete_unlisted(ctx, target, cell, owner, namespace, &stack.stateful_sets).await?;
    deleted += delete_unlisted(
        ctx,
        target,
        cell,
        owner,
        namespace,
        &stack.disruption_budgets,
    )
    .await?;
    deleted +=
        delete_unlisted(ctx, target, cell, owner, namespace, &stack.network_policies).await?;
    if deleted > 0 {
        ctx.metrics
            .orphans_deleted
            .get_or_create(&crate::metrics::ControllerLabels {
                controller: CONTROLLER,
            })
            .inc_by(deleted as u64);
    }
    Ok(deleted)
}

/// Deletes the objects of kind `K` in `namespace` of `target` that carry the labels of cell
/// `cell`, are controlled by it (as `owner` says) and are not in `keep`; returns how many went.
async fn delete_unlisted<K>(
    ctx: &Context,
    target: &Target,
    cell: &str,
    owner: &Owner,
    namespace: &str,
    keep: &[K],
) -> Result<usize>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(target.client().clone(), namespace);
    let selector = format!("{MANAGED_SELECTOR},{CELL_LABEL}={cell}");
    let kind = K::kind(&());
    let existing = ctx
        .call(
            format!("list {kind}s of cell {cell}"),
            api.list_metadata(&ListParams::default().labels(&selector)),
        )
        .await?;
    let mut deleted = 0;
    for obj in existing.items {
        let name = obj.name_any();
        let listed = keep
            .iter()
            .any(|k| k.meta().name.as_deref() == Some(name.as_str()))
            || NEVER_ORPHANED.contains(&name.as_str());
        let controlled = ownership::controls(owner, &obj.metadata);
        if listed || !controlled || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        tracing::info!(cell, kind = %kind, name, "deleting a child the cell no longer needs");
        match ctx
            .call(
                format!("delete {kind} {namespace}/{name}"),
                api.delete(&name, &DeleteParams::background()),
            )
            .await
        {
            Ok(_) => deleted += 1,
            Err(Error::Kube { source, .. }) if is_not_found(&source) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// 32 random bytes, hex: a token or password.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The cell's admin token: the one already in its Secret (in `namespace` of `target`), or a
/// new random one (32 bytes, hex) for a new cell. Kept across reconciles so lanes and the
/// operator agree on it.
pub async fn admin_token(ctx: &Context, target: &Target, namespace: &str) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(target.client().clone(), namespace);
    let existing = ctx
        .call(
            format!("read Secret {namespace}/{ADMIN_TOKEN}"),
            api.get_opt(ADMIN_TOKEN),
        )
        .await?;
    let current = existing
        .and_then(|s| s.data)
        .and_then(|d| d.get(ADMIN_TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|t| t.len() >= 32);
    Ok(current.unwrap_or_else(random_hex))
}

/// The external Redis URL of cell `cell` from the Secret its spec names, read in the cluster the
/// operator runs in (where the Cell is), whichever cluster the cell's stack lives in.
pub async fn external_redis_url(
    ctx: &Context,
    cell: &str,
    secret: &cellstack_api::v1alpha1::SecretKeyRef,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &secret.namespace);
    let problem = |reason: String| Error::ExternalSecret {
        cell: cell.to_owned(),
        reason,
    };
    let found = ctx
        .call(
            format!("read Secret {}/{}", secret.namespace, secret.name),
            api.get_opt(&secret.name),
        )
        .await?
        .ok_or_else(|| {
            problem(format!(
                "Secret {}/{} does not exist; create it with the Redis URL under key '{}'",
                secret.namespace, secret.name, secret.key
            ))
        })?;
    let data = found.data.unwrap_or_default();
    let value = data.get(&secret.key).ok_or_else(|| {
        let keys: Vec<_> = data.keys().cloned().collect();
        problem(format!(
            "Secret {}/{} has no key '{}' (it has: {})",
            secret.namespace,
            secret.name,
            secret.key,
            keys.join(", ")
        ))
    })?;
    let url = String::from_utf8(value.0.clone()).map_err(|_| {
        problem(format!(
            "key '{}' of Secret {}/{} is not UTF-8",
            secret.key, secret.namespace, secret.name
        ))
    })?;
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(problem(format!(
            "key '{}' of Secret {}/{} must hold a redis:// or rediss:// URL",
            secret.key, secret.namespace, secret.name
        )));
    }
    Ok(url)
}

/// Lane addresses (`ClusterIP:port`, an IPv6 address in brackets) in lane order; a lane whose
/// Service has no address yet is left out.
pub fn endpoints(services: &[Service]) -> Vec<String> {
    services
        .iter()
        .filter_map(|s| {
            let ip = s.spec.as_ref()?.cluster_ip.as_deref()?;
            let ip: std::net::IpAddr = ip.parse().ok()?;
            let port = u16::try_from(crate::names::HTTP_PORT).ok()?;
            Some(std::net::SocketAddr::new(ip, port).to_string())
        })
        .collect()
}

/// Refuses to apply cell `cell`'s stack into its `namespace` in a member cluster when that
/// namespace exists and is not the cell's ([`ownership::namespace_claim`]): another Cell's (one
/// re-created under the same name, or one of another management cluster), another
/// controller's, or one made by hand. Such a namespace is never adopted nor deleted. In the
/// cluster the Cell is in, reads nothing: the owner reference decides there, as it always has.
pub async fn guard_member_namespace(
    ctx: &Context,
    target: &Target,
    cell: &str,
    owner: &Owner,
    namespace: &str,
) -> Result<()> {
    let Some(cluster) = target.cluster() else {
        return Ok(());
    };
    match member_namespace_claim(ctx, target, cluster, owner, namespace)
        .await?
        .0
    {
        NamespaceClaim::Absent | NamespaceClaim::Ours => Ok(()),
        NamespaceClaim::Elsewhere(holder) => Err(Error::NamespaceOwnedElsewhere {
            cell: cell.to_owned(),
            uid: owner.cell_uid().to_owned(),
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            holder: holder.describe(),
        }),
    }
}

/// Reads `namespace` in member `cluster` (of `target`) and judges whose it is, with its uid.
async fn member_namespace_claim(
    ctx: &Context,
    target: &Target,
    cluster: &str,
    owner: &Owner,
    namespace: &str,
) -> Result<(NamespaceClaim, Option<String>)> {
    let api: Api<Namespace> = Api::all(target.client().clone());
    let existing = ctx
        .call(
            format!("read Namespace {namespace} in member cluster {cluster}"),
            api.get_metadata_opt(namespace),
        )
        .await?;
    let claim = ownership::namespace_claim(existing.as_ref().map(|n| &n.metadata), owner);
    Ok((claim, existing.and_then(|n| n.metadata.uid)))
}

/// Deletes cell namespace `namespace` of `target` (everything in it goes with it). In a member
/// cluster only a namespace marked as `owner`'s is deleted (with its uid as a precondition, so a
/// namespace re-created meanwhile is not): `Ok(Some(holder))` says who holds one left in place.
pub async fn delete_namespace(
    ctx: &Context,
    target: &Target,
    owner: &Owner,
    namespace: &str,
) -> Result<Option<String>> {
    let api: Api<Namespace> = Api::all(target.client().clone());
    let mut params = DeleteParams::background();
    if let Some(cluster) = target.cluster() {
        match member_namespace_claim(ctx, target, cluster, owner, namespace).await? {
            (NamespaceClaim::Absent, _) => return Ok(None),
            (NamespaceClaim::Elsewhere(holder), _) => return Ok(Some(holder.describe())),
            (NamespaceClaim::Ours, uid) => {
                params = params.preconditions(kube::api::Preconditions {
                    uid,
                    resource_version: None,
                });
            }
        }
    }
    match ctx
        .call(
            format!("delete Namespace {namespace}"),
            api.delete(namespace, &params),
        )
        .await
    {
        Ok(_) => Ok(None),
        Err(Error::Kube { source, .. }) if is_not_found(&source) => Ok(None),
        Err(e) => Err(e),
    }
}
