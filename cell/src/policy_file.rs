//! The effective policies, reloaded from the file the operator's ConfigMap mounts, without a
//! restart. Readers on the request path load an `Arc` snapshot (`arc-swap`); no lock.
//!
//! The file is polled (content compared, not just mtime): ConfigMap volumes update by swapping a
//! symlink, which inotify-based watchers miss unless they watch the parent directory, and a poll
//! every couple of seconds costs nothing. A file that does not parse keeps the previous policies
//! and is reported (log + metric).

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use cellstack_api::policy::CellPolicies;

use crate::metrics::{Metrics, ResultLabels};

pub type Policies = Arc<ArcSwap<CellPolicies>>;

/// Reads and parses the policy file.
pub fn load(path: &std::path::Path) -> anyhow::Result<CellPolicies> {
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read policy file {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("policy file {} is not valid: {e}", path.display()))
}

/// Polls `path` every `every` and swaps in new content; stops when `shutdown` fires.
pub async fn watch(
    path: PathBuf,
    every: Duration,
    policies: Policies,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        match serde_json::from_slice::<CellPolicies>(&bytes) {
            Ok(new) => {
                tracing::info!(version = %new.version, tenants = new.tenants.len(), "policies reloaded");
                policies.store(Arc::new(new));
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "policy file is invalid; keeping the previous policies");
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "invalid" })
                    .inc();
            }
        }
        last = Some(bytes);
    }
}
