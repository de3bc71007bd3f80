//! Where routing tables come from, off the request path. A source only offers tables to the
//! [`TableStore`], which decides what to serve, and confirms to [`Freshness`] that the table
//! served is current (see [`crate::freshness`] for what counts).

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    freshness::{self, Freshness},
    metrics::{Metrics, SourceLabels},
    snapshot::Origin,
    table_store::{Offer, TableStore},
};

/// Offers `path` to the store whenever its content changes; stops on shutdown. Each read of
/// the file, changed or not, confirms the table served (unless the changed content is refused):
/// the file is all a file-fed router has to be current with.
pub async fn watch_file(
    path: PathBuf,
    every: Duration,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    freshness: Arc<Freshness>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<Vec<u8>> = None;
    // Whether the store refused `last`: reading it again then confirms nothing.
    let mut refused = false;
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                refused = false;
                let store2 = store.clone();
                let copy = bytes.clone();
                // Decoding and persisting a large table is blocking work: keep it off the runtime.
                let offered =
                    tokio::task::spawn_blocking(move || store2.offer(&copy, Origin::File)).await;
                match offered {
                    Ok(Ok(Offer::Swapped { from, to })) => {
                        freshness.confirm(std::time::Instant::now());
                        metrics.table_version.set(to as i64);
                        tracing::info!(path = %path.display(), ?from, to, "routing table swapped in");
                    }
                    Ok(Ok(Offer::Unchanged)) => freshness.confirm(std::time::Instant::now()),
                    Ok(Err(error)) => {
                        refused = true;
                        metrics
                            .table_refused
                            .get_or_create(&SourceLabels { source: "file" })
                            .inc();
                        tracing::error!(path = %path.display(), %error, "routing table file refused; still serving the previous table");
                    }
                    Err(error) => {
                        refused = true;
                        tracing::error!(%error, "routing table decode task failed")
                    }
                }
                last = Some(bytes);
            }
            // Read again, unchanged: still the table served (if it was accepted).
            Ok(_) => {
                if store.current().is_some() && !refused {
                    freshness.confirm(std::time::Instant::now());
                }
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "routing table file not readable")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Watches the pointer ConfigMap the operator publishes in `namespace` and offers every new
/// version: the chunks the manifest names are fetched, reassembled with every digest checked,
/// and only then offered; a table swapped in confirms itself current. Nothing here is on the
/// request path; when the API server is away the watch retries with backoff while the router
/// keeps serving what it has.
pub async fn watch_kubernetes(
    client: kube::Client,
    namespace: String,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    freshness: Arc<Freshness>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use cellstack_api::routing::publication::POINTER_NAME;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt, watcher};

    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={POINTER_NAME}"));
    let mut pointers = std::pin::pin!(
        watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
    );
    let refused = || {
        metrics
            .table_refused
            .get_or_create(&SourceLabels {
                source: "kubernetes",
            })
            .inc();
    };
    loop {
        let next = tokio::select! {
            next = pointers.next() => next,
            _ = shutdown.changed() => return,
        };
        match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, namespace, "routing table watch interrupted; retrying with backoff")
            }
            Some(Ok(pointer)) => match fetch(&api, &pointer, store.current().map(|s| s.version()))
                .await
            {
                Ok(None) => {}
                Ok(Some((manifest, chunks))) => {
                    let store2 = store.clone();
                    // Digests, decode and the disk copy: blocking work, at a lower priority.
                    match tokio::task::spawn_blocking(move || {
                        cellstack_api::routing::chunk::reassemble(&manifest, &chunks)
                            .map_err(|e| e.to_string())
                            .map(|bytes| store2.offer(&bytes, Origin::Kubernetes))
                    })
                    .await
                    {
                        Ok(Err(error)) => {
                            refused();
                            tracing::error!(%error, "cannot assemble the published routing table; still serving the previous table");
                        }
                        Ok(Ok(Ok(Offer::Swapped { from, to }))) => {
                            freshness.confirm(std::time::Instant::now());
                            metrics.table_version.set(to as i64);
                            tracing::info!(?from, to, "routing table swapped in from Kubernetes");
                        }
                        Ok(Ok(Ok(Offer::Unchanged))) => {}
                        Ok(Ok(Err(error))) => {
                            refused();
                            tracing::error!(%error, "published routing table refused; still serving the previous table");
                        }
                        Err(error) => tracing::error!(%error, "routing table decode task failed"),
                    }
                }
                Err(error) => {
                    refused();
                    tracing::error!(%error, "cannot assemble the published routing table; still serving the previous table");
                }
            },
        }
    }
}

/// Watches the operator's heartbeat Lease in `namespace` and confirms the table served at
/// each renewal that names a version not above it ([`freshness::judge_heartbeat`]), timed by
/// this router's clock on receipt. Off the request path; when the API server is away the watch
/// retries with backoff, no renewal arrives, and the table turns stale past the bound.
pub async fn watch_heartbeat(
    client: kube::Client,
    namespace: String,
    store: Arc<TableStore>,
    freshness: Arc<Freshness>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use cellstack_api::routing::publication::{HEARTBEAT_NAME, HEARTBEAT_VERSION_ANNOTATION};
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt, watcher};

    let api: kube::Api<Lease> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={HEARTBEAT_NAME}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // The renewal time of the last sighting.
    let mut seen: Option<String> = None;
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = shutdown.changed() => return,
        };
        let (lease, live) = match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, namespace, "heartbeat watch interrupted; retrying with backoff");
                continue;
            }
            Some(Ok(watcher::Event::Apply(lease))) => (lease, true),
            Some(Ok(watcher::Event::InitApply(lease))) => (lease, false),
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(
                    namespace,
                    "the operator's heartbeat Lease was deleted; the table turns stale unless it is renewed"
                );
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
        };
        let renewal = lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string());
        let version = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HEARTBEAT_VERSION_ANNOTATION));
        let serving = store.current().map(|s| s.version());
        let verdict = freshness::judge_heartbeat(
            seen.as_deref(),
            renewal.as_deref(),
            version.map(String::as_str),
            live,
            serving,
        );
        match verdict {
            freshness::Heartbeat::Confirms => freshness.confirm(std::time::Instant::now()),
            freshness::Heartbeat::NotARenewal => {}
            freshness::Heartbeat::Ahead => tracing::debug!(
                heartbeat = ?version,
                ?serving,
                "the operator has published a newer table than the one served; not confirmed"
            ),
            freshness::Heartbeat::Unreadable => tracing::warn!(
                renewal = ?renewal,
                version = ?version,
                "the heartbeat Lease has no readable renewTime or {HEARTBEAT_VERSION_ANNOTATION}; ignored"
            ),
        }
        if renewal.is_some() {
            seen = renewal;
        }
    }
}

/// Timeout of each API call that fetches a chunk.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The manifest and chunks of the table a pointer names (reassembled and checked by the
/// caller), or `None` when it is not newer than `current`.
async fn fetch(
    api: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    pointer: &k8s_openapi::api::core::v1::ConfigMap,
    current: Option<u64>,
) -> Result<
    Option<(
        cellstack_api::routing::Manifest,
        Vec<cellstack_api::routing::Chunk>,
    )>,
    String,
> {
    use cellstack_api::routing::{
        Chunk, Manifest,
        publication::{CHUNK_KEY, POINTER_KEY, chunk_name},
    };
    let text = pointer
        .data
        .as_ref()
        .and_then(|d| d.get(POINTER_KEY))
        .ok_or_else(|| format!("the pointer ConfigMap has no {POINTER_KEY}"))?;
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| format!("the manifest does not parse: {e}"))?;
    if current.is_some_and(|c| manifest.table_version <= c) {
        return Ok(None);
    }
    let mut chunks = Vec::with_capacity(manifest.chunks.len());
    for index in 0..manifest.chunks.len() as u32 {
        let name = chunk_name(manifest.table_version, index);
        let object = tokio::time::timeout(FETCH_TIMEOUT, api.get(&name))
            .await
            .map_err(|_| format!("fetching {name} timed out"))?
            .map_err(|e| format!("fetching {name}: {e}"))?;
        let data = object
            .binary_data
            .and_then(|mut d| d.remove(CHUNK_KEY))
            .ok_or_else(|| format!("{name} has no {CHUNK_KEY}"))?;
        chunks.push(Chunk {
            table_version: manifest.table_version,
            index,
            data: data.0,
        });
    }
    Ok(Some((manifest, chunks)))
}
