//! How the operator reaches the lanes' admin port (admin API, policy acknowledgement, the
//! rollout gate's metrics): plain HTTP, or HTTPS trusting only the release's internal CA
//! bundle (`--internal-tls`), which the operator replaces when the CA rotates, presenting the
//! lanes' client certificate once it is issued (lanes reached through node ports ask for one;
//! docs/security.md "Client certificates"). Every caller takes the client and the URL from
//! here, so none can talk to a lane in clear by mistake.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;

/// Time to open a connection to a lane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a client trusting a bundle could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build an HTTPS client trusting the internal CA bundle: {0}")]
pub struct BundleError(#[from] reqwest::Error);

/// What the HTTPS client is built from: the CAs it trusts, and the client certificate and key
/// it presents (PEM, concatenated), if any.
#[derive(Default)]
struct Trust {
    bundle: String,
    identity: Option<String>,
}

/// The client of the lanes' admin ports. Cheap to clone; clones share the trust.
#[derive(Clone)]
pub struct LaneClient {
    tls: bool,
    trust: Arc<Mutex<Trust>>,
    current: Arc<ArcSwap<reqwest::Client>>,
}

impl LaneClient {
    /// Plain HTTP (internal TLS off).
    pub fn plain() -> Self {
        Self {
            tls: false,
            trust: Arc::default(),
            current: Arc::new(ArcSwap::from_pointee(base().build().unwrap_or_default())),
        }
    }

    /// HTTPS trusting nothing until [`LaneClient::replace_bundle`] gives it the bundle.
    pub fn tls_pending() -> Result<Self, BundleError> {
        Self::trusting("")
    }

    /// HTTPS trusting the CA certificates of `bundle` (PEM) and nothing else.
    pub fn trusting(bundle: &str) -> Result<Self, BundleError> {
        Ok(Self {
            tls: true,
            trust: Arc::new(Mutex::new(Trust {
                bundle: bundle.to_owned(),
                identity: None,
            })),
            current: Arc::new(ArcSwap::from_pointee(trusting(bundle)?)),
        })
    }

    /// Trusts `bundle` from now on (clones too); calls in flight finish with the old trust.
    pub fn replace_bundle(&self, bundle: &str) -> Result<(), BundleError> {
        self.rebuild(|trust| trust.bundle = bundle.to_owned())
    }

    /// Presents `cert_pem` (with its `key_pem`) to lanes that ask for a client certificate from
    /// now on (clones too).
    pub fn present(&self, cert_pem: &str, key_pem: &str) -> Result<(), BundleError> {
        let identity = format!("{cert_pem}{key_pem}");
        self.rebuild(|trust| trust.identity = Some(identity))
    }

    fn rebuild(&self, change: impl FnOnce(&mut Trust)) -> Result<(), BundleError> {
        let mut trust = self.trust.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Trust {
            bundle: trust.bundle.clone(),
            identity: trust.identity.clone(),
        };
        change(&mut next);
        let mut builder = trusting_builder(&next.bundle)?;
        if let Some(pem) = &next.identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
        }
        self.current.store(Arc::new(builder.build()?));
        *trust = next;
        Ok(())
    }

    /// Whether lanes are reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The client to make a call with now.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::clone(&self.current.load())
    }

    /// `http(s)://<address><path>`, `address` being a lane's admin port as `host:port`
    /// ([`crate::logic::cell::exposure::admin_addresses`]).
    pub fn url(&self, address: &str, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{address}{path}")
    }
}

fn base() -> reqwest::ClientBuilder {
    reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT)
}

/// A client trusting exactly the certificates of `bundle`.
pub fn trusting(bundle: &str) -> Result<reqwest::Client, BundleError> {
    Ok(trusting_builder(bundle)?.build()?)
}

fn trusting_builder(bundle: &str) -> Result<reqwest::ClientBuilder, BundleError> {
    let mut builder = base().tls_built_in_root_certs(false).https_only(true);
    for cert in reqwest::Certificate::from_pem_bundle(bundle.as_bytes())? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_say_https_exactly_when_tls_is_on() {
        assert_eq!(
            LaneClient::plain().url("10.0.0.1:9090", "/livez"),
            "http://10.0.0.1:9090/livez"
        );
        let ca = crate::logic::pki::CaPair::generate(
            "t",
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"),
        )
        .expect("CA");
        let tls = LaneClient::trusting(&ca.cert_pem).expect("client");
        assert!(tls.tls());
        assert_eq!(
            tls.url("10.0.0.1:9090", "/livez"),
            "https://10.0.0.1:9090/livez"
        );
    }
}
