//! Changes of a cluster's Nodes that move its cells' cross-cluster lane addresses or their
//! NetworkPolicy's node sources (docs/multicluster.md, D7 and D8): a node added or gone, its
//! addresses, whether lanes may be published on it ([`exposure::eligible`]: readiness, cordon,
//! deletion). Kubelets rewrite their Node's status (heartbeats,
//! images, pressure conditions) far more often than any of these change, so each Node's
//! fingerprint of what matters is kept and only a change of one is announced.

use std::collections::HashMap;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tracing::{debug, warn};

use crate::logic::cell::exposure;

/// What of a Node the lanes' addresses and the node sources depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    addresses: Vec<(String, String)>,
    eligible: bool,
}

impl Fingerprint {
    fn of(node: &Node) -> Self {
        Self {
            addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .map(|a| (a.type_.clone(), a.address.clone()))
                .collect(),
            eligible: exposure::eligible(node),
        }
    }
}

/// Yields once whenever a Node of `api`'s cluster is added or deleted or changes in what
/// [`Fingerprint`] keeps, and once after a complete (re)list that differs from what was known
/// (the first list included); `cluster` names the cluster in logs. A failing watch backs off
/// and lists again, warning once per run of failures (a member without `nodes` `list`/`watch`
/// says so here).
pub fn changes(api: Api<Node>, cluster: String) -> impl Stream<Item = ()> + Send + 'static {
    let mut known: HashMap<String, Fingerprint> = HashMap::new();
    let mut relisted: HashMap<String, Fingerprint> = HashMap::new();
    let mut failing = false;
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            // `Init` starts every relist, the failing ones too: only an event of a list or
            // watch that worked ends a run of failures.
            if matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init)) {
                failing = false;
            }
            let changed = match event {
                Ok(watcher::Event::Apply(node)) => {
                    let print = Fingerprint::of(&node);
                    known.insert(node.name_any(), print.clone()) != Some(print)
                }
                Ok(watcher::Event::Delete(node)) => known.remove(&node.name_any()).is_some(),
                Ok(watcher::Event::Init) => {
                    relisted.clear();
                    false
                }
                Ok(watcher::Event::InitApply(node)) => {
                    relisted.insert(node.name_any(), Fingerprint::of(&node));
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let changed = relisted != known;
                    known = std::mem::take(&mut relisted);
                    changed
                }
                Err(e) => {
                    if failing {
                        debug!(%cluster, error = %e, "watch of the nodes failed; backing off");
                    } else {
                        warn!(%cluster, error = %e, "watch of the nodes failed (cross-cluster lane addresses follow the nodes: the operator needs nodes list and watch there); backing off");
                    }
                    failing = true;
                    false
                }
            };
            futures::future::ready(changed.then_some(()))
        })
}
