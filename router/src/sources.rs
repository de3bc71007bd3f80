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
