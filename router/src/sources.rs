//! Where routing tables come from, off the request path. A source only offers tables to the
//! [`TableStore`], which decides what to serve, and confirms to [`Freshness`] that the table
//! served is current (see [`crate::freshness`] for what counts).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    freshness::{self, Freshness},
    metrics::{Metrics, SourceLabels},
    snapshot::Origin,
    table_store::{Offer, StoreError, TableStore},
};

/// What identifies one version of a table file without reading it: a writer that renames a new
/// file over the old one (as it should, so no reader sees half a table) changes the inode; one
/// that rewrites it in place changes the size or the modification time. File systems stamp
/// times from a clock that ticks every few milliseconds, so two same-sized writes within one
/// tick look alike: as git does with "racily clean" files, a file modified less than
/// [`RACY_WINDOW`] ago is read again whatever its metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileVersion {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// How long after its last modification a table file is read at every check.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl FileVersion {
    /// Whether the file may have changed since it was read without its metadata showing it.
    fn racy(&self, now: std::time::SystemTime) -> bool {
        self.modified
            .is_none_or(|m| now.duration_since(m).map_or(true, |age| age < RACY_WINDOW))
    }

    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// Offers `path` to the store whenever it changes; stops on shutdown. Each check of the file,
/// changed or not, confirms the table served (unless the changed content is refused): the file
/// is all a file-fed router has to be current with. A check reads the file's metadata only; the
/// file (20-40 MB for a million tenants) is read when that changed, and offered when its content
/// did. Reading, comparing and offering are done on a blocking thread ([`check_file`]), which
/// runs at the background priority: this loop runs on the control runtime's thread, at the
/// workers' priority, where comparing and copying tens of MB held a core the requests share
/// for milliseconds at a time.
pub async fn watch_file(
    path: PathBuf,
    every: Duration,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    freshness: Arc<Freshness>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<Vec<u8>> = None;
    let mut last_version: Option<FileVersion> = None;
    // Whether the store refused `last`: reading it again then confirms nothing.
    let mut refused = false;
    loop {
        let version = match tokio::fs::metadata(&path).await {
            Ok(metadata) => Some(FileVersion::of(&metadata)),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "routing table file not readable");
                None
            }
        };
        let checked = match &version {
            None => None,
            Some(v)
                if last_version.as_ref() == Some(v) && !v.racy(std::time::SystemTime::now()) =>
            {
                Some(FileCheck::Same)
            }
            Some(_) => {
                let (file, store) = (path.clone(), store.clone());
                let mut read = last.take();
                let checked = tokio::task::spawn_blocking(move || {
                    let checked = check_file(&file, &mut read, &store);
                    (checked, read)
                })
                .await;
                match checked {
                    Ok((checked, read)) => {
                        last = read;
                        Some(checked)
                    }
                    // `last` is lost with the task: the next check reads and offers the file
                    // again, which the store answers with `Unchanged` if it is the same.
                    Err(error) => {
                        tracing::error!(%error, "routing table file check failed");
                        None
                    }
                }
            }
        };
        match checked {
            None => {}
            Some(FileCheck::Offered(offered)) => {
                refused = offered.is_err();
                match offered {
                    Ok(Offer::Swapped { from, to }) => {
                        freshness.confirm(std::time::Instant::now());
                        metrics.table_version.set(to as i64);
                        tracing::info!(path = %path.display(), ?from, to, "routing table swapped in");
                    }
                    Ok(Offer::Unchanged) => freshness.confirm(std::time::Instant::now()),
                    Err(error) => {
                        metrics
                            .table_refused
                            .get_or_create(&SourceLabels { source: "file" })
                            .inc();
                        tracing::error!(path = %path.display(), %error, "routing table file refused; still serving the previous table");
                    }
                }
                last_version = version;
            }
            // Unchanged, or read again with the same content: still the table served (if it
            // was accepted).
            Some(FileCheck::Same) => {
                last_version = version;
                if store.current().is_some() && !refused {
                    freshness.confirm(std::time::Instant::now());
                }
            }
            Some(FileCheck::Unreadable(error)) => {
                tracing::debug!(path = %path.display(), %error, "routing table file not readable")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What one check of a table file found.
enum FileCheck {
    /// The same content as the last read (or, unread, the same metadata).
    Same,
    /// New content, offered to the store: what it answered.
    Offered(Result<Offer, StoreError>),
    Unreadable(std::io::Error),
}

/// Reads `path` and offers it to `store` if it differs from `last`, which then holds it.
/// Blocking: tens of MB to read and compare, and the store decodes, indexes and persists.
fn check_file(path: &Path, last: &mut Option<Vec<u8>>, store: &TableStore) -> FileCheck {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => return FileCheck::Unreadable(error),
    };
    if last.as_ref() == Some(&bytes) {
        return FileCheck::Same;
    }
    let offered = store.offer(&bytes, Origin::File);
    *last = Some(bytes);
    FileCheck::Offered(offered)
}

/// Starts the Kubernetes sources ([`watch_kubernetes`] and [`watch_heartbeat`] on `namespace`)
/// on a thread of their own at the background priority ([`crate::background`]), with a runtime
/// and a client of their own. Receiving a table is tens of MiB of JSON to parse and decode (a
/// 1M-tenant table is 27 MB of ConfigMaps); on the control runtime's thread, which also accepts
/// connections, that would compete at full priority with the traffic workers. Returns once the
/// client is built, or with the reason it cannot be.
pub async fn start_kubernetes(
    namespace: String,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    freshness: Arc<Freshness>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::background::lower_priority)
        .build()
        .context("cannot start the table sources' runtime")?;
    let (ready, started) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("table-source".into())
        .spawn(move || {
            crate::background::lower_priority();
            runtime.block_on(async move {
                let client = match kube::Client::try_default().await {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        client
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                tokio::join!(
                    watch_kubernetes(
                        client.clone(),
                        namespace.clone(),
                        store.clone(),
                        metrics,
                        freshness.clone(),
                        shutdown.clone(),
                    ),
                    watch_heartbeat(client, namespace, store, freshness, shutdown),
                );
            })
        })
        .context("cannot start the table sources' thread")?;
    started
        .await
        .context("the table sources' thread ended before building its client")?
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")
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
                    // Digests, decode and the disk copy: blocking work, done here, on the
                    // sources' own thread at the background priority (`start_kubernetes`);
                    // only the heartbeat watch shares it, and it can wait that long.
                    let offered = cellstack_api::routing::chunk::reassemble(&manifest, &chunks)
                        .map_err(|e| e.to_string())
                        .map(|bytes| store.offer(&bytes, Origin::Kubernetes));
                    drop(chunks);
                    match offered {
                        Err(error) => {
                            refused();
                            tracing::error!(%error, "cannot assemble the published routing table; still serving the previous table");
                        }
                        Ok(Ok(Offer::Swapped { from, to })) => {
                            freshness.confirm(std::time::Instant::now());
                            metrics.table_version.set(to as i64);
                            tracing::info!(?from, to, "routing table swapped in from Kubernetes");
                        }
                        Ok(Ok(Offer::Unchanged)) => {}
                        Ok(Err(error)) => {
                            refused();
                            tracing::error!(%error, "published routing table refused; still serving the previous table");
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn version(modified: Option<SystemTime>) -> FileVersion {
        FileVersion {
            device: 1,
            inode: 2,
            len: 3,
            modified,
        }
    }

    #[test]
    fn a_file_modified_within_the_racy_window_is_read_again() {
        let now = SystemTime::now();
        assert!(version(Some(now - Duration::from_millis(500))).racy(now));
        // A modification time ahead of this clock is not trusted either.
        assert!(version(Some(now + Duration::from_secs(60))).racy(now));
        assert!(version(None).racy(now));
    }

    #[test]
    fn a_file_older_than_the_racy_window_is_judged_by_its_metadata() {
        let now = SystemTime::now();
        assert!(!version(Some(now - RACY_WINDOW)).racy(now));
        assert!(!version(Some(now - Duration::from_secs(3600))).racy(now));
    }
}
