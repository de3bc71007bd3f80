//! TLS for cellstack's ports and clients: rustls with the ring provider, files re-read when they
//! change, so a renewed certificate or a rotated CA needs no restart.
//!
//! Servers ([`CertStore`]: the router's traffic port, a cell's ports):
//! - the certificate chain and key are PEM files (a `kubernetes.io/tls` Secret's `tls.crt` and
//!   `tls.key`); the key must be the chain's leaf's, or the files are refused;
//! - a process told to serve TLS does not start without a usable pair; a changed pair is put in
//!   force for new handshakes when it parses and matches, else refused and logged, and the pair
//!   in force stays. Connections already open keep the certificate they were made with, so a
//!   rotation drops nothing;
//! - TLS 1.2 and 1.3 with rustls' safe defaults; ALPN offers `h2` and `http/1.1`.
//!
//! Clients ([`TrustStore`]: the router to its lanes): the peer's certificate must chain to a CA
//! of a PEM bundle, re-read the same way; during a CA rotation the bundle holds the old and the
//! new CA, so connections made either side of the switch verify.

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

/// Why a TLS handshake on a listener did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
    #[error("TLS handshake not completed within {0:?}")]
    TimedOut(Duration),
}

/// The server side of a handshake on `tcp`, bounded by `within` (the listener's time to read a
/// request head, so a client that stalls in the handshake is dropped like a slow-loris one).
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    within: Duration,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, HandshakeError> {
    tokio::time::timeout(within, acceptor.accept(tcp))
        .await
        .map_err(|_| HandshakeError::TimedOut(within))?
        .map_err(HandshakeError::Failed)
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

impl CertStore {
    /// An acceptor presenting the certificate in force ([`Self::server_config`]).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config()?))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

pub use crate::reload::Reload;

/// Re-reads the pair every `every` until `shutdown` ([`crate::reload::watch_files`]): a changed
/// pair that parses and matches is put in force, another is refused and the pair in force stays.
/// A pair read half-way through a non-atomic update is refused as mismatched and read again at
/// the next check. `on_reload` hears of every change.
pub async fn watch_pair(
    store: Arc<CertStore>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Reload) + Send + 'static,
) {
    let paths = vec![store.files.cert.clone(), store.files.key.clone()];
    crate::reload::watch_files(paths, every, shutdown, move |files| {
        let outcome = match certified_key(&store.files, &files[0], &files[1]) {
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
        on_reload(outcome);
        outcome
    })
    .await;
}

/// Why a CA bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the CA bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {path} holds no usable CA certificate{reason}")]
    NoCa { path: PathBuf, reason: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Config(String),
}

/// The client side: which CAs a peer's certificate must chain to, and the ALPN protocols to
/// offer. The configuration in force is swapped whole when the bundle changes.
pub struct TrustStore {
    path: PathBuf,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<rustls::ClientConfig>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("path", &self.path)
            .finish()
    }
}

fn client_config(
    path: &Path,
    bundle: &[u8],
    alpn: &[Vec<u8>],
) -> Result<rustls::ClientConfig, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reasons = Vec::new();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        match cert
            .map_err(|e| e.to_string())
            .and_then(|c| roots.add(c).map_err(|e| e.to_string()))
        {
            Ok(()) => {}
            Err(reason) => reasons.push(reason),
        }
    }
    if roots.is_empty() {
        return Err(TrustError::NoCa {
            path: path.to_owned(),
            reason: if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            },
        });
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TrustError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

impl TrustStore {
    /// Reads the bundle at `path` now (an error when it holds no CA), offering `alpn`.
    pub fn load(path: PathBuf, alpn: &[&[u8]]) -> Result<Self, TrustError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let bundle = std::fs::read(&path).map_err(|source| TrustError::Read {
            path: path.clone(),
            source,
        })?;
        let config = client_config(&path, &bundle, &alpn)?;
        Ok(Self {
            path,
            alpn,
            current: ArcSwap::from_pointee(config),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connector with the CAs in force: use one per connection attempt, so a rotated bundle
    /// applies to the next connection.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current.load_full())
    }
}

/// Re-reads the bundle every `every` until `shutdown` ([`crate::reload::watch_files`]), putting
/// a changed one in force when it holds a CA; `on_reload` hears of every change.
pub async fn watch_trust(
    store: Arc<TrustStore>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Reload) + Send + 'static,
) {
    crate::reload::watch_files(vec![store.path.clone()], every, shutdown, move |files| {
        let outcome = match client_config(&store.path, &files[0], &store.alpn) {
            Ok(config) => {
                store.current.store(Arc::new(config));
                tracing::info!(path = %store.path.display(), "CA bundle reloaded");
                Reload::Loaded
            }
            Err(error) => {
                tracing::error!(%error, "CA bundle refused; keeping the CAs in force");
                Reload::Refused
            }
        };
        on_reload(outcome);
        outcome
    })
    .await;
}
