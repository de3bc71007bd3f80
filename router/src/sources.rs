//! Where routing tables come from, off the request path. A source only offers tables to the
//! [`TableStore`], which decides what to serve.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    metrics::{Metrics, SourceLabels},
    snapshot::Origin,
    table_store::{Offer, TableStore},
};

/// Offers `path` to the store whenever its content changes; stops on shutdown.
pub async fn watch_file(
    path: PathBuf,
    every: Duration,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<Vec<u8>> = None;
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                let store2 = store.clone();
                let copy = bytes.clone();
                // Decoding and persisting a large table is blocking work: keep it off the runtime.
                let offered =
                    tokio::task::spawn_blocking(move || store2.offer(&copy, Origin::File)).await;
                match offered {
                    Ok(Ok(Offer::Swapped { from, to })) => {
                        metrics.table_version.set(to as i64);
                        tracing::info!(path = %path.display(), ?from, to, "routing table swapped in");
                    }
                    Ok(Ok(Offer::Unchanged)) => {}
                    Ok(Err(error)) => {
                        metrics
                            .table_refused
                            .get_or_create(&SourceLabels { source: "file" })
                            .inc();
                        tracing::error!(path = %path.display(), %error, "routing table file refused; still serving the previous table");
                    }
                    Err(error) => tracing::error!(%error, "routing table decode task failed"),
                }
                last = Some(bytes);
            }
            Ok(_) => {}
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
/// and only then offered. Nothing here is on the request path; when the API server is away the
/// watch retries with backoff while the router keeps serving what it has.
pub async fn watch_kubernetes(
    client: kube::Client,
    namespace: String,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
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
                Ok(Some(bytes)) => {
                    let store2 = store.clone();
                    match tokio::task::spawn_blocking(move || {
                        store2.offer(&bytes, Origin::Kubernetes)
                    })
                    .await
                    {
                        Ok(Ok(Offer::Swapped { from, to })) => {
                            metrics.table_version.set(to as i64);
                            tracing::info!(?from, to, "routing table swapped in from Kubernetes");
                        }
                        Ok(Ok(Offer::Unchanged)) => {}
                        Ok(Err(error)) => {
                            metrics
                                .table_refused
                                .get_or_create(&SourceLabels {
                                    source: "kubernetes",
                                })
                                .inc();
                            tracing::error!(%error, "published routing table refused; still serving the previous table");
                        }
                        Err(error) => tracing::error!(%error, "routing table decode task failed"),
                    }
                }
                Err(error) => {
                    metrics
                        .table_refused
                        .get_or_create(&SourceLabels {
                            source: "kubernetes",
                        })
                        .inc();
                    tracing::error!(%error, "cannot assemble the published routing table; still serving the previous table");
                }
            },
        }
    }
}

/// Timeout of each API call that fetches a chunk.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The encoded table a pointer names, or `None` when it is not newer than `current`.
async fn fetch(
    api: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    pointer: &k8s_openapi::api::core::v1::ConfigMap,
    current: Option<u64>,
) -> Result<Option<Vec<u8>>, String> {
    use cellstack_api::routing::{
        Chunk, Manifest, chunk,
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
    chunk::reassemble(&manifest, &chunks)
        .map(Some)
        .map_err(|e| e.to_string())
}
