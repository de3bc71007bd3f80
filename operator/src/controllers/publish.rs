//! Publishing the routing table as Kubernetes objects with an atomic version switch.
//!
//! Each version is written as immutable chunk ConfigMaps named after the version, and only then
//! the pointer ConfigMap is switched to its manifest, so a reader that follows the pointer sees
//! the whole new table or the whole old one. Versions only move forward: the next one is above
//! both the pointer's and every chunk's ever written (a crash between chunks and pointer leaves
//! chunks of a version nobody points at; it is never reused). Chunks of versions older than the
//! last few are deleted once they are older than a grace period, so a reader that read the old
//! pointer just before the switch can still fetch its chunks.
//!
//! Changes are debounced: the loop waits for a quiet moment (or a bounded delay under constant
//! churn), compiles from the caches, and skips publishing a table whose content did not change.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cellstack_api::routing::{
    Compression, Manifest, RoutingTable, chunk,
    publication::{
        CHUNK_BUDGET_BYTES, CHUNK_KEY, COMPONENT_LABEL, COMPONENT_VALUE, POINTER_KEY, POINTER_NAME,
        VERSION_LABEL, chunk_name,
    },
    table::FORMAT_VERSION,
};
use k8s_openapi::{
    ByteString, api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    names::FIELD_MANAGER,
};

/// Quiet time after the last change before a table is compiled.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest a change waits under constant churn.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Versions kept besides the current one, whatever their age.
const KEEP_VERSIONS: u64 = 2;
/// Older chunks are deleted once this old.
pub const GC_GRACE: Duration = Duration::from_secs(60);

/// Writes tables into one namespace.
pub struct Publisher {
    api: Api<ConfigMap>,
    timeout: Duration,
    /// The last version written (pointer or chunks), once known.
    last_version: Option<u64>,
    /// The table the pointer names, to skip republishing an unchanged one.
    last: Option<RoutingTable>,
    /// The version of that table.
    published: Option<u64>,
    /// How the chunks store the table.
    compression: Compression,
}

/// What one publication did.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub chunks: usize,
    /// Size of the encoded table.
    pub bytes: usize,
    /// What its chunks hold together (smaller than `bytes` when compressed).
    pub stored_bytes: usize,
}

impl Publisher {
    pub fn new(client: Client, namespace: &str, timeout: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            timeout,
            last_version: None,
            last: None,
            published: None,
            compression: Compression::Zstd,
        }
    }

    /// Stores tables as `compression` says ([`Compression::Zstd`] unless told otherwise).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    async fn call<T>(
        &self,
        action: impl Into<String>,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::kube(action, e)),
            Err(_) => Err(Error::Timeout {
                action: action.into(),
                timeout: self.timeout,
            }),
        }
    }

    /// The highest version the pointer or any chunk names.
    async fn highest_version(&self) -> Result<u64> {
        let pointer = self
            .call(
                "read the routing-table pointer",
                self.api.get_opt(POINTER_NAME),
            )
            .await?;
        let from_pointer = pointer
            .as_ref()
            .and_then(|cm| cm.data.as_ref()?.get(POINTER_KEY).cloned())
            .and_then(|json| serde_json::from_str::<Manifest>(&json).ok())
            .map_or(0, |m| m.table_version);
        let chunks = self.list_chunks().await?;
        let from_chunks = chunks.iter().filter_map(chunk_version).max().unwrap_or(0);
        Ok(from_pointer.max(from_chunks))
    }

    /// The chunks' metadata only: their data is the table itself (megabytes at 100k tenants,
    /// for every version kept), and neither caller reads it.
    async fn list_chunks(&self) -> Result<Vec<PartialObjectMeta<ConfigMap>>> {
        let selector = format!("{COMPONENT_LABEL}={COMPONENT_VALUE}");
        Ok(self
            .call(
                "list routing-table chunks",
                self.api
                    .list_metadata(&ListParams::default().labels(&selector)),
            )
            .await?
            .items)
    }

    /// The version the next table gets.
    pub async fn next_version(&mut self) -> Result<u64> {
        let last = match self.last_version {
            Some(v) => v,
            None => {
                let v = self.highest_version().await?;
                self.last_version = Some(v);
                v
            }
        };
        Ok(last + 1)
    }

    /// The version this publisher last published (the pointer names it), once it has.
    pub fn published(&self) -> Option<u64> {
        self.published
    }

    /// Whether `table` differs in content from the one last published.
    pub fn changed(&self, table: &RoutingTable) -> bool {
        !self
            .last
            .as_ref()
            .is_some_and(|last| crate::logic::routing::same_content(last, table))
    }

    /// The table the pointer names, once this publisher has published one.
    pub fn last(&self) -> Option<&RoutingTable> {
        self.last.as_ref()
    }

    /// Writes `table`: every chunk, then the pointer. Kept (not a copy) to compare the next
    /// one with.
    pub async fn publish(&mut self, table: RoutingTable) -> Result<Published> {
        let unencodable = |reason: String| Error::RoutingTable {
            version: table.version,
            reason,
        };
        let bytes = table.encode().map_err(|e| unencodable(e.to_string()))?;
        let (manifest, chunks) = chunk::split(
            table.version,
            FORMAT_VERSION,
            &bytes,
            self.compression,
            CHUNK_BUDGET_BYTES,
        )
        .map_err(|e| unencodable(e.to_string()))?;
        // From here on this version is spent, whatever happens.
        self.last_version = Some(self.last_version.unwrap_or(0).max(table.version));
        let count = chunks.len();
        for c in chunks {
            let name = chunk_name(table.version, c.index);
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        (COMPONENT_LABEL.to_owned(), COMPONENT_VALUE.to_owned()),
                        (VERSION_LABEL.to_owned(), table.version.to_string()),
                    ])),
                    ..ObjectMeta::default()
                },
                binary_data: Some(BTreeMap::from([(CHUNK_KEY.to_owned(), ByteString(c.data))])),
                immutable: Some(true),
                ..ConfigMap::default()
            };
            self.call(
                format!("create routing-table chunk {name}"),
                self.api.create(&PostParams::default(), &cm),
            )
            .await?;
        }
        let manifest_json = serde_json::to_string(&manifest).map_err(|source| Error::Encode {
            what: "routing-table manifest".into(),
            source,
        })?;
        let pointer = ConfigMap {
            metadata: ObjectMeta {
                name: Some(POINTER_NAME.into()),
                labels: Some(BTreeMap::from([(
                    COMPONENT_LABEL.to_owned(),
                    "routing-table-pointer".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(POINTER_KEY.to_owned(), manifest_json)])),
            ..ConfigMap::default()
        };
        self.call(
            "switch the routing-table pointer",
            self.api.patch(
                POINTER_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&pointer),
            ),
        )
        .await?;
        self.published = Some(table.version);
        let published = Published {
            version: table.version,
            chunks: count,
            bytes: bytes.len(),
            stored_bytes: manifest.stored_bytes() as usize,
        };
        self.last = Some(table);
        Ok(published)
    }

    /// Deletes chunks of versions older than the last [`KEEP_VERSIONS`] below `current` once they
    /// are older than `grace`. Returns how many were deleted.
    pub async fn collect_garbage(&self, current: u64, grace: Duration) -> Result<usize> {
        let now = Timestamp::now();
        let mut deleted = 0;
        for cm in self.list_chunks().await? {
            let Some(version) = chunk_version(&cm) else {
                continue;
            };
            if version + KEEP_VERSIONS >= current {
                continue;
            }
            let old_enough = cm
                .metadata
                .creation_timestamp
                .as_ref()
                .is_none_or(|t| now.duration_since(t.0).unsigned_abs() >= grace);
            if !old_enough {
                continue;
            }
            let name = cm.name_any();
            match self
                .call(
                    format!("delete routing-table chunk {name}"),
                    self.api.delete(&name, &DeleteParams::background()),
                )
                .await
            {
                Ok(_) => deleted += 1,
                Err(Error::Kube { source, .. })
                    if crate::controllers::cell::apply::is_not_found(&source) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

/// Why a published table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("failed to {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("no answer within {timeout:?} trying to {action}")]
    Timeout { action: String, timeout: Duration },
    #[error("{0}")]
    Invalid(String),
}

/// Reads the table published in `api`'s namespace the way a router does: the pointer, then
/// every chunk its manifest names, reassembled with every digest checked, then decoded and
/// validated. `None` when no pointer exists yet.
pub async fn read_published(
    api: &Api<ConfigMap>,
    timeout: Duration,
) -> Result<Option<RoutingTable>, ReadError> {
    let Some(pointer) = get_opt(api, POINTER_NAME, timeout).await? else {
        return Ok(None);
    };
    read_pointed(api, &pointer, timeout).await.map(Some)
}

/// Reads the table a pointer ConfigMap (as read or watched) names: every chunk of its
/// manifest, reassembled with every digest checked, then decoded and validated.
pub async fn read_pointed(
    api: &Api<ConfigMap>,
    pointer: &ConfigMap,
    timeout: Duration,
) -> Result<RoutingTable, ReadError> {
    let json = pointer
        .data
        .as_ref()
        .and_then(|d| d.get(POINTER_KEY))
        .ok_or_else(|| {
            ReadError::Invalid(format!("ConfigMap {POINTER_NAME} has no {POINTER_KEY} key"))
        })?;
    let manifest: Manifest = serde_json::from_str(json).map_err(|e| {
        ReadError::Invalid(format!(
            "the manifest in ConfigMap {POINTER_NAME} is not valid: {e}"
        ))
    })?;
    let version = manifest.table_version;
    let mut chunks = Vec::with_capacity(manifest.chunks.len());
    for index in 0..u32::try_from(manifest.chunks.len()).unwrap_or(u32::MAX) {
        let name = chunk_name(version, index);
        let cm = get_opt(api, &name, timeout).await?.ok_or_else(|| {
            ReadError::Invalid(format!(
                "chunk {name} named by the pointer (version {version}) does not exist"
            ))
        })?;
        let data = cm
            .binary_data
            .and_then(|mut d| d.remove(CHUNK_KEY))
            .ok_or_else(|| ReadError::Invalid(format!("chunk {name} has no {CHUNK_KEY} key")))?;
        chunks.push(chunk::Chunk {
            table_version: version,
            index,
            data: data.0,
        });
    }
    let bytes = chunk::reassemble(&manifest, &chunks).map_err(|e| {
        ReadError::Invalid(format!(
            "routing table version {version} does not verify: {e}"
        ))
    })?;
    RoutingTable::decode(&bytes).map_err(|e| {
        ReadError::Invalid(format!(
            "routing table version {version} does not decode: {e}"
        ))
    })
}

async fn get_opt(
    api: &Api<ConfigMap>,
    name: &str,
    timeout: Duration,
) -> Result<Option<ConfigMap>, ReadError> {
    let action = format!("read ConfigMap {name}");
    match tokio::time::timeout(timeout, api.get_opt(name)).await {
        Ok(Ok(cm)) => Ok(cm),
        Ok(Err(e)) => Err(ReadError::Kube {
            action,
            source: Box::new(e),
        }),
        Err(_) => Err(ReadError::Timeout { action, timeout }),
    }
}

fn chunk_version(cm: &PartialObjectMeta<ConfigMap>) -> Option<u64> {
    cm.labels().get(VERSION_LABEL)?.parse().ok()
}

/// Milliseconds since the epoch, for the table's creation time.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one round of [`run`] did.
enum Round {
    Published(Published, usize),
    /// The table compiled to the content already published.
    Unchanged,
    /// The table could not be compiled (logged by `compile`).
    NotCompiled,
}

/// Runs until `stop`: once `listed` resolves (every cache has had its first list), and then on
/// every change signalled through `changes`, waits for the debounce,
/// compiles a table with `compile(version)`, and publishes it if its content changed.
/// `member` names the member cluster `publisher` writes into (`None`: the operator's own), for
/// the metrics; a failing destination backs off on its own.
///
/// `current` is kept at the version the pointer names and this publisher believes current:
/// set by a round that published the table or found it unchanged, cleared (`None`) by a round
/// that failed or could not compile one. The routing heartbeat ([`super::heartbeat`]) renews
/// with it.
#[allow(clippy::too_many_arguments)]
pub async fn run<F>(
    mut publisher: Publisher,
    member: Option<String>,
    listed: impl Future<Output = ()>,
    mut changes: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    compile: F,
    current: watch::Sender<Option<u64>>,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn(u64) -> Option<RoutingTable>,
{
    // Nothing is published before the caches have listed what exists.
    tokio::select! {
        () = listed => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let backoff = crate::logic::backoff::Backoff::default();
    let mut failures = 0u32;
    let mut last_gc = Instant::now();
    loop {
        // Wait for a change (the first round publishes what exists at start).
        let first = Instant::now();
        // Debounce: quiet for DEBOUNCE, or MAX_DELAY since the first change.
        loop {
            let remaining = MAX_DELAY.saturating_sub(first.elapsed());
            if remaining.is_zero() {
                break;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(DEBOUNCE.min(remaining)) => break,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        changes.mark_unchanged();
        let outcome = async {
            let version = publisher.next_version().await?;
            let Some(table) = compile(version) else {
                return Ok(Round::NotCompiled);
            };
            if !publisher.changed(&table) {
                return Ok(Round::Unchanged);
            }
            let started = Instant::now();
            let tenants = table.tenants.len();
            let published = publisher.publish(table).await?;
            if member.is_none() {
                metrics
                    .table_publish_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok::<_, Error>(Round::Published(published, tenants))
        }
        .await;
        match outcome {
            Ok(Round::Published(p, tenants)) => {
                failures = 0;
                current.send_replace(Some(p.version));
                let latency = first.elapsed();
                if member.is_none() {
                    metrics
                        .table_change_to_publish_seconds
                        .observe(latency.as_secs_f64());
                }
                metrics.table_published(member.as_deref(), p.version, tenants);
                info!(
                    version = p.version,
                    chunks = p.chunks,
                    bytes = p.bytes,
                    stored_bytes = p.stored_bytes,
                    tenants,
                    latency_ms = latency.as_millis() as u64,
                    "published routing table"
                );
            }
            Ok(Round::Unchanged) => {
                failures = 0;
                current.send_replace(publisher.published());
            }
            Ok(Round::NotCompiled) => {
                failures = 0;
                current.send_replace(None);
            }
            Err(e) => {
                current.send_replace(None);
                failures += 1;
                metrics.table_publish_failed(member.as_deref());
                let delay = backoff.delay(failures, rand::random::<f64>());
                warn!(error = %e, retry_ms = delay.as_millis() as u64, "publishing the routing table failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        }
        if last_gc.elapsed() >= GC_GRACE / 2
            && let Some(current) = publisher.last_version
        {
            last_gc = Instant::now();
            match publisher.collect_garbage(current, GC_GRACE).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "collected old routing-table chunks"),
                Err(e) => warn!(error = %e, "collecting old routing-table chunks failed"),
            }
        }
        // The next change, or a periodic round that collects garbage (and republishes nothing
        // unless the content changed).
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(GC_GRACE) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
