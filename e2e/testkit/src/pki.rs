//! Certificates for tests: a CA of the test's own and server certificates it issues, as PEM
//! (what a `kubernetes.io/tls` Secret holds), made with rcgen.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate chain (leaf first) and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name` (its common name), with a fresh P-256 key.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)
            .context("signing the test CA")?;
        Ok(Self { issuer })
    }

    /// The CA's own certificate, PEM: what a client trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA, naming
    /// no usage (so a client may present it too).
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<Issued> {
        self.issue_for(names, &[])
    }

    /// A certificate for `names` restricted to `usages` (its extended key usage), as the
    /// operator's CA issues them: `ServerAuth` for a lane, `ClientAuth` for a router.
    pub fn issue_for(
        &self,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a test certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

pub use rcgen::ExtendedKeyUsagePurpose as Usage;
