//! Files re-read on a timer and put in force when they change: the TLS pair and CA bundle
//! ([`crate::tls`]) and the router's JWKS. One loop for all of them, so each reads, compares and
//! reports the same way.
//!
//! A Secret's volume changes by an atomic symlink swap, so the files of one check come from one
//! version. A file that cannot be read is logged and what is in force stays; a changed one is
//! handed to the caller, which puts it in force ([`Reload::Loaded`]) or refuses it
//! ([`Reload::Refused`], what is in force stays). A refused content is not handed over again
//! until it changes.

use std::{path::PathBuf, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// What the caller did with changed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Put in force.
    Loaded,
    /// Refused; what was in force stays.
    Refused,
}

impl Reload {
    pub const ALL: [Self; 2] = [Self::Loaded, Self::Refused];

    /// The `result` label of the reload counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Refused => "refused",
        }
    }
}

/// The labels of a counter by result, such as the reload counters' `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Counts each change of a re-read file in `family` by its result: the callback the
/// [`crate::tls`] watchers take.
pub fn count_reloads(family: &Family<ResultLabels, Counter>) -> impl Fn(Reload) + Send + 'static {
    let family = family.clone();
    move |reload| {
        family
            .get_or_create(&ResultLabels {
                result: reload.as_str(),
            })
            .inc();
    }
}

/// Reads `paths` every `every` until `shutdown`; whenever their contents differ from the last
/// read (or from what was there at the start), calls `apply` with them, in the order of `paths`.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut apply: impl FnMut(&[Vec<u8>]) -> Reload + Send,
) {
    let read_all = |paths: &[PathBuf]| -> Result<Vec<Vec<u8>>, (PathBuf, std::io::Error)> {
        paths
            .iter()
            .map(|p| std::fs::read(p).map_err(|e| (p.clone(), e)))
            .collect()
    };
    let mut last = read_all(&paths).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match read_all(&paths) {
            Err((path, error)) => {
                tracing::warn!(%error, path = %path.display(), "cannot re-read the file; keeping what is in force");
            }
            Ok(contents) if last.as_ref() == Some(&contents) => {}
            Ok(contents) => {
                apply(&contents);
                last = Some(contents);
            }
        }
    }
}
