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
//! new CA, so connections made either side of the switch verify. A client may present a
//! certificate of its own ([`TrustStore::with_client_certificate`]: a [`CertStore`], re-read
//! like a server's).
//!
//! Client certificates on a server port ([`ClientCas`], docs/security.md "Client
//! certificates"): a presented certificate must chain to a CA of a PEM bundle (re-read the same
//! way) and be meant for client authentication (a server certificate with only the
//! `serverAuth` usage is refused); [`ClientCas::verifier`] makes one either mandatory (the
//! handshake fails without one) or optional (the port's handlers decide, from the
//! [`TlsPeer`] each request of a TLS connection carries).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    client::ResolvesClientCert,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
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
    /// `h2` then `http/1.1`; client certificates verified by `clients` (none: not asked for).
    pub fn server_config(
        self: &Arc<Self>,
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let builder =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// An acceptor presenting the certificate in force ([`Self::server_config`]), verifying
    /// client certificates with `clients` when given.
    pub fn acceptor(
        self: &Arc<Self>,
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(
            self.server_config(clients)?,
        ))
    }
}

/// As a client's identity: the pair in force, whatever CAs the server hints at (the server
/// decides whether it chains to one it trusts).
impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
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
    identity: Option<Arc<CertStore>>,
    current: ArcSwap<rustls::ClientConfig>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The CAs of a PEM bundle: an error when it holds none.
fn roots(path: &Path, bundle: &[u8]) -> Result<rustls::RootCertStore, TrustError> {
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
    Ok(roots)
}

fn client_config(
    path: &Path,
    bundle: &[u8],
    alpn: &[Vec<u8>],
    identity: Option<&Arc<CertStore>>,
) -> Result<rustls::ClientConfig, TrustError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TrustError::Config(e.to_string()))?
    .with_root_certificates(roots(path, bundle)?);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity.clone()),
        None => builder.with_no_client_auth(),
    };
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
        let config = client_config(&path, &bundle, &alpn, None)?;
        Ok(Self {
            path,
            alpn,
            identity: None,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Presents the pair in force of `identity` to servers that ask for a client certificate
    /// (re-read by [`watch_pair`], so a renewed one is used for the next connection).
    pub fn with_client_certificate(self, identity: Arc<CertStore>) -> Result<Self, TrustError> {
        let bundle = std::fs::read(&self.path).map_err(|source| TrustError::Read {
            path: self.path.clone(),
            source,
        })?;
        let config = client_config(&self.path, &bundle, &self.alpn, Some(&identity))?;
        self.current.store(Arc::new(config));
        Ok(Self {
            identity: Some(identity),
            ..self
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
        let outcome =
            match client_config(&store.path, &files[0], &store.alpn, store.identity.as_ref()) {
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

/// The CAs whose certificates a server port accepts from its clients, swapped whole when the
/// bundle changes; [`Self::verifier`] is what a server configuration holds.
pub struct ClientCas {
    path: PathBuf,
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ClientCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCas")
            .field("path", &self.path)
            .finish()
    }
}

/// WebPKI's verification (the chain, validity, and the `clientAuth` usage when the certificate
/// names its usages) against the CAs of `bundle`.
fn client_verifier(path: &Path, bundle: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TrustError> {
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(path, bundle)?),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TrustError::Config(e.to_string()))
}

impl ClientCas {
    /// Reads the bundle at `path` now (an error when it holds no CA).
    pub fn load(path: PathBuf) -> Result<Self, TrustError> {
        let bundle = std::fs::read(&path).map_err(|source| TrustError::Read {
            path: path.clone(),
            source,
        })?;
        let verifier = client_verifier(&path, &bundle)?;
        Ok(Self {
            path,
            current: ArcSwap::from_pointee(verifier),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A verifier of the CAs in force: with `mandatory`, a handshake without a client
    /// certificate fails; without, it completes and the request's [`TlsPeer`] says so. No CA
    /// names are hinted to clients (they are swapped on a rotation; a client then presents the
    /// one certificate it has).
    pub fn verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientAuth {
            cas: self.clone(),
            mandatory,
        })
    }
}

#[derive(Debug)]
struct ClientAuth {
    cas: Arc<ClientCas>,
    mandatory: bool,
}

impl ClientCertVerifier for ClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.cas
            .current
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cas
            .current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cas
            .current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.cas.current.load().supported_verify_schemes()
    }
}

/// Re-reads the client CAs every `every` until `shutdown` ([`crate::reload::watch_files`]),
/// putting a changed bundle in force for new handshakes when it holds a CA; `on_reload` hears
/// of every change.
pub async fn watch_client_cas(
    store: Arc<ClientCas>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Reload) + Send + 'static,
) {
    crate::reload::watch_files(vec![store.path.clone()], every, shutdown, move |files| {
        let outcome = match client_verifier(&store.path, &files[0]) {
            Ok(verifier) => {
                store.current.store(Arc::new(verifier));
                tracing::info!(path = %store.path.display(), "client CA bundle reloaded");
                Reload::Loaded
            }
            Err(error) => {
                tracing::error!(%error, "client CA bundle refused; keeping the CAs in force");
                Reload::Refused
            }
        };
        on_reload(outcome);
        outcome
    })
    .await;
}

/// What a request on a TLS port knows of its connection's client: the certificate it
/// presented, verified during the handshake (none when the port does not ask for one or the
/// client had none). Requests on a plain-HTTP port carry no `TlsPeer`.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    pub certificate: Option<Arc<CertificateDer<'static>>>,
}

impl TlsPeer {
    /// The peer of a completed server handshake.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        Self {
            certificate: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::new(leaf.clone().into_owned())),
        }
    }
}
