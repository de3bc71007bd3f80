//! Forgetting deleted rollouts: their metric series and in-memory readings.
//!
//! Rollouts carry no finalizer (nothing outside the cluster needs cleaning up when one goes), so
//! the controller never sees a deletion. A metadata watch does: a `Delete` event, or a name
//! missing from a relist after the watch lost its place, makes the operator forget the rollout.

use std::{collections::BTreeSet, sync::Arc};

use cellstack_api::v1alpha1::CellRollout;
use futures::{StreamExt, pin_mut};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tracing::debug;

use super::Rollouts;
use crate::controllers;

/// Watches rollouts' metadata until `stop`, forgetting each one deleted.
pub async fn run(
    client: kube::Client,
    selector: String,
    shared: Arc<Rollouts>,
    stop: impl std::future::Future<Output = ()>,
) {
    // Metadata only: names are all this needs.
    let events = watcher(
        Api::<PartialObjectMeta<CellRollout>>::all(client),
        controllers::selected(&selector),
    )
    .default_backoff();
    pin_mut!(events, stop);
    // Names present, and those a relist in progress has shown so far.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut relisted: BTreeSet<String> = BTreeSet::new();
    loop {
        let event = tokio::select! {
            () = &mut stop => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            Ok(watcher::Event::Apply(o)) => {
                known.insert(o.name_any());
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                known.remove(&name);
                shared.forget(&name).await;
            }
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                relisted.insert(o.name_any());
            }
            Ok(watcher::Event::InitDone) => {
                for gone in known.difference(&relisted) {
                    shared.forget(gone).await;
                }
                known = std::mem::take(&mut relisted);
            }
            // The backoff retries; the next relist settles what was missed.
            Err(error) => debug!(%error, "watching rollouts for deletions"),
        }
    }
}
