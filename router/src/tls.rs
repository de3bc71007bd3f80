//! TLS on the traffic port (`--tls-cert-file`, `--tls-key-file`): rustls with the ring provider,
//! HTTP/2 or HTTP/1.1 by ALPN, the certificate re-read when its files change.
//!
//! Contract:
//! - the certificate chain and key are PEM files (a `kubernetes.io/tls` Secret's `tls.crt` and
//!   `tls.key`); the key must be the chain's leaf's, or the files are refused;
//! - a router told to serve TLS does not start without a usable pair; a changed pair is put in
//!   force for new handshakes when it parses and matches, else refused and logged, and the pair
//!   in force stays. Connections already open keep the certificate they were made with, so a
//!   rotation drops nothing;
//! - TLS 1.2 and 1.3 with rustls' safe defaults; ALPN offers `h2` and `http/1.1` (the connection
//!   is then served as any other: [`crate::serve`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate and key are refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} is not the key of the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a certificate chain and its key, checking that they belong together.
pub fn certified_key(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// The certificate in force, swapped whole on a rotation.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Reads the pair now: an error when it is missing, unreadable or mismatched.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let key = certified_key(&files, &read(&files.cert)?, &read(&files.key)?)?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(key),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The server configuration that presents the certificate in force: TLS 1.2 and 1.3, ALPN
    /// `h2` then `http/1.1`, no client certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What a check of the files did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// A changed pair was put in force.
    Loaded,
    /// A changed pair was refused; the one in force stays.
    Refused,
}

impl Reload {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Loaded => "loaded",
            Self::Refused => "refused",
        }
    }
}

/// Re-reads the pair every `every` until `shutdown`; `on_reload` hears of every change. A
/// Secret's volume changes by an atomic symlink swap, so both files are read from one version;
/// a pair read half-way through another kind of update is refused as mismatched and read again
/// at the next check.
pub async fn watch(
    store: Arc<CertStore>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Reload) + Send + 'static,
) {
    let read_pair = |files: &TlsFiles| -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&files.cert).ok()?,
            std::fs::read(&files.key).ok()?,
        ))
    };
    let mut last = read_pair(&store.files);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let Some(pair) = read_pair(&store.files) else {
            tracing::warn!(cert = %store.files.cert.display(), key = %store.files.key.display(), "cannot re-read the TLS certificate or key; keeping the pair in force");
            continue;
        };
        if last.as_ref() == Some(&pair) {
            continue;
        }
        let outcome = match certified_key(&store.files, &pair.0, &pair.1) {
            Ok(key) => {
                store.current.store(Arc::new(key));
                tracing::info!(cert = %store.files.cert.display(), "TLS certificate reloaded");
                Reload::Loaded
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificate refused; keeping the pair in force");
                Reload::Refused
            }
        };
        last = Some(pair);
        on_reload(outcome);
    }
}
