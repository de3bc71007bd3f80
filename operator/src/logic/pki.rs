//! The internal CA's decisions (docs/security.md, "Internal TLS"): certificates made with
//! rcgen, and what to do next from what the CA Secret, the trust bundle and a cell's
//! certificate Secret hold. No I/O: `controllers::internal_ca` reads and writes the objects.
//!
//! Rotation never leaves a client distrusting a server: the new CA joins the bundle
//! (**widen**), and only after the bundle has had time to reach every mounted copy does it
//! start issuing (**promote**); every cell's certificate is then reissued, and once every lane
//! presents a certificate of the new CA, the old one leaves the bundle (**narrow**).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};

/// Life of a CA certificate.
pub const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(365 * 24);
/// Life of a cell's certificate.
pub const CELL_CERT_LIFETIME: SignedDuration = SignedDuration::from_hours(90 * 24);
/// Backdating of `notBefore`, for clocks a little behind the operator's.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: String, reason: String },
    #[error("time {0} is outside what a certificate can hold")]
    Time(Timestamp),
}

/// A CA: its certificate and private key, PEM, as kept in the CA Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A server certificate and its key, PEM, and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: Timestamp,
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| PkiError::Time(t))
}

impl CaPair {
    /// A new CA named `name` (its common name), valid from `now` for [`CA_LIFETIME`], with a
    /// fresh P-256 key.
    pub fn generate(name: &str, now: Timestamp) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset(now - BACKDATE)?;
        params.not_after = offset(now + CA_LIFETIME)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The SHA-256 fingerprint of the CA's certificate (hex), naming it in annotations.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint(&self.cert_pem, "the CA certificate")
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from `now` for
    /// [`CELL_CERT_LIFETIME`] (never past the CA's own `ca_not_after`).
    pub fn issue(
        &self,
        names: &[String],
        now: Timestamp,
        ca_not_after: Timestamp,
    ) -> Result<Issued, PkiError> {
        self.sign(
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            ca_not_after,
        )
    }

    /// A client certificate named `name` (its common name and DNS name), meant for client
    /// authentication only, valid from `now` for [`CELL_CERT_LIFETIME`] (never past
    /// `ca_not_after`): what lanes asking for one accept ([`client_cert_due`]).
    pub fn issue_client(
        &self,
        name: &str,
        now: Timestamp,
        ca_not_after: Timestamp,
    ) -> Result<Issued, PkiError> {
        self.sign(
            &[name.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            ca_not_after,
        )
    }

    /// A certificate for `names` (the first is its common name) restricted to `usage`: a lane's
    /// cannot be presented as a client's, nor a client's served by a lane.
    fn sign(
        &self,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        now: Timestamp,
        ca_not_after: Timestamp,
    ) -> Result<Issued, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("cellstack lane", String::as_str),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let not_after = (now + CELL_CERT_LIFETIME).min(ca_not_after);
        params.not_before = offset(now - BACKDATE)?;
        params.not_after = offset(not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// Every certificate of a PEM bundle, DER.
pub fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

/// The SHA-256 fingerprint (hex) of the first certificate of `pem`.
pub fn fingerprint(pem: &str, what: &str) -> Result<String, PkiError> {
    let first =
        certificates(pem, what)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::NoCertificate {
                what: what.to_owned(),
            })?;
    Ok(hex::encode(Sha256::digest(first.as_ref())))
}

/// The fingerprints of every certificate of a bundle, in order.
pub fn fingerprints(bundle: &str, what: &str) -> Result<Vec<String>, PkiError> {
    Ok(certificates(bundle, what)?
        .iter()
        .map(|der| hex::encode(Sha256::digest(der.as_ref())))
        .collect())
}

/// A bundle of CA certificates, in the order given, each PEM block ending in a newline.
pub fn bundle<'a>(cas: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for ca in cas {
        out.push_str(ca.trim_end());
        out.push('\n');
    }
    out
}

/// Whether a certificate valid from `issued` to `not_after` is due for renewal at `now`: two
/// thirds of its life are gone.
pub fn renewal_due(issued: Timestamp, not_after: Timestamp, now: Timestamp) -> bool {
    let life = not_after.duration_since(issued);
    now >= issued + life * 2 / 3
}

/// What the CA Secret holds, read back (the `controllers::internal_ca` module's annotations).
#[derive(Debug, Clone, Default)]
pub struct CaState {
    /// The CA certificates are issued by.
    pub issuing: Option<CaRecord>,
    /// A new CA already in the bundle, not yet issuing.
    pub next: Option<CaRecord>,
    /// When `next` entered the bundle.
    pub widened_at: Option<Timestamp>,
    /// Someone asked for a rotation (the Secret's rotate annotation).
    pub rotate_requested: bool,
}

/// A CA with its fingerprint and validity.
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub pair: CaPair,
    pub fingerprint: String,
    pub issued: Timestamp,
    pub not_after: Timestamp,
}

/// The next thing to do about the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaStep {
    /// No CA yet: make one and publish it.
    Create,
    /// The bundle lacks a CA that must be trusted: write it with these fingerprints (first
    /// the required ones, then the extra ones it already held).
    Publish { trusted: Vec<String> },
    /// Rotation is due: make the next CA and add it to the bundle.
    Widen { why: &'static str },
    /// The widened bundle needs this long yet to reach every mounted copy.
    WaitForPropagation(Duration),
    /// The next CA starts issuing; every cell's certificate will be reissued by it.
    Promote,
    /// The bundle still trusts CAs that no longer issue: drop them once every lane presents a
    /// certificate of the issuing CA.
    NarrowWhenLanesReissued { keep: String },
    /// Nothing to do.
    Steady,
}

/// The step for `state` and the bundle's fingerprints `trusted` at `now`, where a bundle
/// change takes `propagation` to reach every router.
pub fn next_step(
    state: &CaState,
    trusted: &[String],
    now: Timestamp,
    propagation: Duration,
) -> CaStep {
    let Some(issuing) = &state.issuing else {
        return CaStep::Create;
    };
    let mut required = vec![issuing.fingerprint.clone()];
    if let Some(next) = &state.next {
        required.push(next.fingerprint.clone());
    }
    if required.iter().any(|r| !trusted.contains(r)) {
        let mut all = required.clone();
        all.extend(trusted.iter().filter(|t| !required.contains(t)).cloned());
        return CaStep::Publish { trusted: all };
    }
    if state.next.is_some() {
        let since = state
            .widened_at
            .map_or(Duration::ZERO, |w| now.duration_since(w).unsigned_abs());
        return match propagation.checked_sub(since) {
            Some(left) if !left.is_zero() => CaStep::WaitForPropagation(left),
            _ => CaStep::Promote,
        };
    }
    let extra: BTreeSet<&String> = trusted.iter().filter(|t| **t != required[0]).collect();
    if !extra.is_empty() {
        return CaStep::NarrowWhenLanesReissued {
            keep: issuing.fingerprint.clone(),
        };
    }
    if state.rotate_requested {
        return CaStep::Widen {
            why: "a rotation was requested",
        };
    }
    if renewal_due(issuing.issued, issuing.not_after, now) {
        return CaStep::Widen {
            why: "two thirds of the CA's life are gone",
        };
    }
    CaStep::Steady
}

/// What a member cluster was last confirmed to hold as its trust bundle (the copy its routers
/// mount): the fingerprints of its CAs, and since when it has held that very set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBundle {
    pub fingerprints: BTreeSet<String>,
    pub since: Timestamp,
}

impl HeldBundle {
    /// A confirmation at `now` that the member holds `fingerprints`: the same set as `previous`
    /// keeps its `since` (held all along), another starts it at `now`.
    pub fn confirmed(
        previous: Option<&HeldBundle>,
        fingerprints: BTreeSet<String>,
        now: Timestamp,
    ) -> Self {
        let since = previous
            .filter(|p| p.fingerprints == fingerprints)
            .map_or(now, |p| p.since);
        Self {
            fingerprints,
            since,
        }
    }
}

/// The member clusters (of `members`) whose routers may not trust CA `next` yet: their bundle
/// was never confirmed to hold it, or not for `propagation` by `now` (the time a changed
/// ConfigMap takes to reach the routers' mounted copy). Sorted. The new CA issues only once
/// this is empty: a router anywhere must trust it before any lane serves a certificate of it.
pub fn members_not_trusting(
    next: &str,
    members: &[String],
    held: &BTreeMap<String, HeldBundle>,
    now: Timestamp,
    propagation: Duration,
) -> Vec<String> {
    let mut waiting: Vec<String> = members
        .iter()
        .filter(|member| {
            !held.get(member.as_str()).is_some_and(|h| {
                h.fingerprints.contains(next)
                    && now.duration_since(h.since).unsigned_abs() >= propagation
            })
        })
        .cloned()
        .collect();
    waiting.sort();
    waiting
}

/// What a cell's certificate Secret says about itself (its annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellCert {
    pub issuer: String,
    pub names: Vec<String>,
    pub issued: Option<Timestamp>,
    pub not_after: Option<Timestamp>,
}

/// Why a cell's certificate is (re)issued; `None` when the one it has is right.
pub fn cell_cert_due(
    current: Option<&CellCert>,
    issuer: &str,
    names: &[String],
    now: Timestamp,
) -> Option<&'static str> {
    let Some(cert) = current else {
        return Some("the cell has no certificate");
    };
    if cert.issuer != issuer {
        return Some("the issuing CA changed");
    }
    if cert.names != names {
        return Some("the lanes' names or addresses changed");
    }
    match (cert.issued, cert.not_after) {
        (Some(issued), Some(not_after)) if !renewal_due(issued, not_after, now) => None,
        (Some(_), Some(_)) => Some("two thirds of the certificate's life are gone"),
        _ => Some("the certificate's validity is not recorded"),
    }
}

/// What the lanes' client certificate Secret says about itself: the CA that issued it, its
/// own fingerprint (what member clusters are confirmed to hold), and its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub issuer: String,
    pub fingerprint: String,
    pub issued: Timestamp,
    pub not_after: Timestamp,
}

/// Why the lanes' client certificate is (re)issued now; `None` when the one in force stays.
///
/// A client certificate of a new CA is refused by every lane that does not trust that CA yet,
/// so a change of issuer waits for `lanes_trust_issuing`: the CA is steady, or every lane
/// presents a certificate of the new CA (each lane trusts the bundle it was issued under, which
/// during a rotation holds both CAs). The old CA leaves the bundle only once this certificate
/// has reached every router ([`client_cert_in_force`]). An expiring one is renewed whatever the
/// step.
pub fn client_cert_due(
    current: Option<&ClientCert>,
    issuing: &str,
    lanes_trust_issuing: bool,
    now: Timestamp,
) -> Option<&'static str> {
    let Some(cert) = current else {
        return Some("no client certificate yet");
    };
    if renewal_due(cert.issued, cert.not_after, now) {
        return Some("two thirds of the client certificate's life are gone");
    }
    (cert.issuer != issuing && lanes_trust_issuing)
        .then_some("the issuing CA changed and every lane trusts it")
}

/// Whether the routers of the operator's own cluster present `current` by `now`: issued by
/// `issuing`, and written at least `propagation` ago (the time a changed Secret takes to reach
/// the routers' mounted copy and be re-read). Member clusters are checked with
/// [`members_not_trusting`] on the certificate's fingerprint.
pub fn client_cert_in_force(
    current: Option<&ClientCert>,
    issuing: &str,
    now: Timestamp,
    propagation: Duration,
) -> bool {
    current.is_some_and(|c| {
        c.issuer == issuing && now.duration_since(c.issued).unsigned_abs() >= propagation
    })
}

/// The names a cell's certificate carries: every lane Service's DNS names and cluster
/// addresses, the node addresses other clusters may dial its lanes by (`nodes`: every node's,
/// not only those published now, so a lane moved to another node, or a table that could not be
/// republished, still names an address the certificate covers — a router verifies the address
/// it dials), and the scrapers' common name; sorted, without duplicates.
pub fn cell_names<'a>(
    namespace: &str,
    lane_services: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    nodes: &[std::net::IpAddr],
    common: &str,
) -> Vec<String> {
    let mut names: BTreeSet<String> = nodes.iter().map(ToString::to_string).collect();
    for (service, address) in lane_services {
        names.insert(format!("{service}.{namespace}.svc"));
        names.insert(format!("{service}.{namespace}.svc.cluster.local"));
        if let Some(ip) = address.filter(|a| !a.is_empty() && *a != "None") {
            names.insert(ip.to_owned());
        }
    }
    names.insert(common.to_owned());
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {

    fn held(fingerprints: &[&str], since: Timestamp) -> HeldBundle {
        HeldBundle {
            fingerprints: fingerprints.iter().map(|f| (*f).to_owned()).collect(),
            since,
        }
    }

    #[test]
    fn a_member_trusts_the_next_ca_once_its_bundle_held_it_for_the_propagation_time() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let propagation = Duration::from_secs(60);
        let members = vec!["west".to_owned(), "east".to_owned(), "north".to_owned()];
        let mut bundles = BTreeMap::new();
        bundles.insert("east".to_owned(), held(&["old", "new"], t0));
        bundles.insert("west".to_owned(), held(&["old"], t0));
        // north: never confirmed (unreachable since before the rotation).
        let at = |secs: i64| t0 + SignedDuration::from_secs(secs);
        assert_eq!(
            members_not_trusting("new", &members, &bundles, at(59), propagation),
            ["east", "north", "west"],
            "east has held it for 59 s only"
        );
        assert_eq!(
            members_not_trusting("new", &members, &bundles, at(60), propagation),
            ["north", "west"]
        );
        // A deleted member is not waited for; one without a record is.
        assert!(
            members_not_trusting("new", &["east".to_owned()], &bundles, at(60), propagation)
                .is_empty()
        );
        assert!(members_not_trusting("new", &[], &bundles, at(0), propagation).is_empty());
    }

    #[test]
    fn a_confirmation_of_the_same_bundle_keeps_its_start_and_another_bundle_restarts_it() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let later = t0 + SignedDuration::from_secs(30);
        let set = |f: &[&str]| f.iter().map(|f| (*f).to_owned()).collect::<BTreeSet<_>>();
        let first = HeldBundle::confirmed(None, set(&["old", "new"]), t0);
        assert_eq!(first, held(&["old", "new"], t0));
        assert_eq!(
            HeldBundle::confirmed(Some(&first), set(&["new", "old"]), later),
            held(&["old", "new"], t0),
            "the same set, in any order: held all along"
        );
        assert_eq!(
            HeldBundle::confirmed(Some(&first), set(&["new"]), later),
            held(&["new"], later)
        );
    }

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("timestamp")
    }

    fn record(name: &str, issued: Timestamp) -> CaRecord {
        let pair = CaPair::generate(name, issued).expect("CA");
        CaRecord {
            fingerprint: pair.fingerprint().expect("fingerprint"),
            pair,
            issued,
            not_after: issued + CA_LIFETIME,
        }
    }

    #[test]
    fn an_issued_certificate_chains_to_its_ca_and_names_every_address() {
        let ca = CaPair::generate("test", at(0)).expect("CA");
        let names = vec!["10.96.0.7".to_owned(), "lane-0.cell-a.svc".to_owned()];
        let issued = ca.issue(&names, at(0), at(0) + CA_LIFETIME).expect("issue");
        let leaf = certificates(&issued.cert_pem, "leaf").expect("pem");
        assert_eq!(leaf.len(), 1);
        let anchor = certificates(&ca.cert_pem, "ca").expect("pem");
        let anchors = [webpki::anchor_from_trusted_cert(&anchor[0]).expect("anchor")];
        let end = webpki::EndEntityCert::try_from(&leaf[0]).expect("leaf parses");
        let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            at(60).as_second().unsigned_abs(),
        ));
        end.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .expect("chains to the CA");
        for name in ["10.96.0.7", "lane-0.cell-a.svc"] {
            let server = rustls_pki_types::ServerName::try_from(name).expect("name");
            end.verify_is_valid_for_subject_name(&server)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("10.96.0.8").expect("name");
        assert!(end.verify_is_valid_for_subject_name(&other).is_err());
        assert_eq!(issued.not_after, at(0) + CELL_CERT_LIFETIME);
    }

    #[test]
    fn a_client_certificate_is_for_client_authentication_only_and_a_lanes_for_servers_only() {
        let ca = CaPair::generate("test", at(0)).expect("CA");
        let anchor = certificates(&ca.cert_pem, "ca").expect("pem");
        let anchors = [webpki::anchor_from_trusted_cert(&anchor[0]).expect("anchor")];
        let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            at(60).as_second().unsigned_abs(),
        ));
        let verify = |pem: &str, usage: webpki::KeyUsage| {
            let leaf = certificates(pem, "leaf").expect("pem");
            let end = webpki::EndEntityCert::try_from(&leaf[0]).expect("leaf parses");
            end.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                time,
                usage,
                None,
                None,
            )
            .is_ok()
        };
        let client = ca
            .issue_client("cellstack-lane-client", at(0), at(0) + CA_LIFETIME)
            .expect("client");
        let lane = ca
            .issue(
                &["lanes.cellstack.internal".into()],
                at(0),
                at(0) + CA_LIFETIME,
            )
            .expect("lane");
        assert!(verify(&client.cert_pem, webpki::KeyUsage::client_auth()));
        assert!(!verify(&client.cert_pem, webpki::KeyUsage::server_auth()));
        assert!(verify(&lane.cert_pem, webpki::KeyUsage::server_auth()));
        assert!(!verify(&lane.cert_pem, webpki::KeyUsage::client_auth()));
        assert_eq!(client.not_after, at(0) + CELL_CERT_LIFETIME);
    }

    #[test]
    fn the_client_certificate_changes_ca_only_once_every_lane_trusts_the_new_one() {
        let cert = |issuer: &str, issued: i64| ClientCert {
            issuer: issuer.into(),
            fingerprint: format!("leaf-of-{issuer}"),
            issued: at(issued),
            not_after: at(issued) + CELL_CERT_LIFETIME,
        };
        assert!(client_cert_due(None, "new", false, at(0)).is_some());
        let old = cert("old", 0);
        // Mid-rotation the old CA's certificate stays; once lanes trust the new CA, it goes.
        assert_eq!(client_cert_due(Some(&old), "new", false, at(10)), None);
        assert!(client_cert_due(Some(&old), "new", true, at(10)).is_some());
        assert_eq!(client_cert_due(Some(&old), "old", true, at(10)), None);
        // Renewed two thirds into its life, whatever the step.
        let late = at(0) + CELL_CERT_LIFETIME * 2 / 3;
        assert!(client_cert_due(Some(&old), "new", false, late).is_some());
        assert!(client_cert_due(Some(&old), "old", true, late).is_some());
        // In force: issued by the issuing CA, and written a propagation time ago.
        let new = cert("new", 100);
        let propagation = Duration::from_secs(90);
        assert!(!client_cert_in_force(None, "new", at(500), propagation));
        assert!(!client_cert_in_force(
            Some(&old),
            "new",
            at(500),
            propagation
        ));
        assert!(!client_cert_in_force(
            Some(&new),
            "new",
            at(189),
            propagation
        ));
        assert!(client_cert_in_force(
            Some(&new),
            "new",
            at(190),
            propagation
        ));
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca = CaPair::generate("test", at(0)).expect("CA");
        let issued = ca
            .issue(&["lanes.cellstack.internal".into()], at(0), at(3600))
            .expect("issue");
        assert_eq!(issued.not_after, at(3600));
    }

    #[test]
    fn fingerprints_name_each_certificate_of_a_bundle_in_order() {
        let a = CaPair::generate("a", at(0)).expect("a");
        let b = CaPair::generate("b", at(0)).expect("b");
        let both = bundle([a.cert_pem.as_str(), b.cert_pem.as_str()]);
        assert_eq!(
            fingerprints(&both, "bundle").expect("fingerprints"),
            vec![a.fingerprint().expect("a"), b.fingerprint().expect("b")]
        );
        assert!(matches!(
            fingerprint("", "empty"),
            Err(PkiError::NoCertificate { .. })
        ));
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life() {
        assert!(!renewal_due(at(0), at(300), at(199)));
        assert!(renewal_due(at(0), at(300), at(200)));
    }

    #[test]
    fn rotation_goes_create_widen_wait_promote_narrow_steady() {
        let propagation = Duration::from_secs(60);
        let mut state = CaState::default();
        assert_eq!(next_step(&state, &[], at(0), propagation), CaStep::Create);

        let old = record("old", at(0));
        state.issuing = Some(old.clone());
        // Created but not yet published.
        assert_eq!(
            next_step(&state, &[], at(1), propagation),
            CaStep::Publish {
                trusted: vec![old.fingerprint.clone()]
            }
        );
        let trusted = vec![old.fingerprint.clone()];
        assert_eq!(
            next_step(&state, &trusted, at(1), propagation),
            CaStep::Steady
        );

        state.rotate_requested = true;
        assert!(matches!(
            next_step(&state, &trusted, at(2), propagation),
            CaStep::Widen { .. }
        ));
        let new = record("new", at(2));
        state.next = Some(new.clone());
        state.widened_at = Some(at(2));
        state.rotate_requested = false;
        // The Secret holds the next CA but the bundle does not yet: publish both.
        assert_eq!(
            next_step(&state, &trusted, at(2), propagation),
            CaStep::Publish {
                trusted: vec![old.fingerprint.clone(), new.fingerprint.clone()]
            }
        );
        let widened = vec![old.fingerprint.clone(), new.fingerprint.clone()];
        assert_eq!(
            next_step(&state, &widened, at(12), propagation),
            CaStep::WaitForPropagation(Duration::from_secs(50))
        );
        assert_eq!(
            next_step(&state, &widened, at(62), propagation),
            CaStep::Promote
        );

        state.issuing = Some(new.clone());
        state.next = None;
        state.widened_at = None;
        assert_eq!(
            next_step(&state, &widened, at(63), propagation),
            CaStep::NarrowWhenLanesReissued {
                keep: new.fingerprint.clone()
            }
        );
        assert_eq!(
            next_step(
                &state,
                std::slice::from_ref(&new.fingerprint),
                at(64),
                propagation
            ),
            CaStep::Steady
        );
    }

    #[test]
    fn a_ca_two_thirds_through_its_life_rotates_without_being_asked() {
        let ca = record("old", at(0));
        let state = CaState {
            issuing: Some(ca.clone()),
            ..CaState::default()
        };
        let trusted = vec![ca.fingerprint.clone()];
        let later = at(0) + CA_LIFETIME * 2 / 3;
        assert_eq!(
            next_step(
                &state,
                &trusted,
                later - SignedDuration::from_secs(1),
                Duration::ZERO
            ),
            CaStep::Steady
        );
        assert!(matches!(
            next_step(&state, &trusted, later, Duration::ZERO),
            CaStep::Widen { .. }
        ));
    }

    #[test]
    fn a_cell_certificate_is_reissued_for_a_new_ca_new_names_or_age_only() {
        let names = vec!["10.0.0.1".to_owned()];
        let cert = CellCert {
            issuer: "ca1".into(),
            names: names.clone(),
            issued: Some(at(0)),
            not_after: Some(at(900)),
        };
        assert_eq!(cell_cert_due(Some(&cert), "ca1", &names, at(10)), None);
        assert!(cell_cert_due(None, "ca1", &names, at(10)).is_some());
        assert!(cell_cert_due(Some(&cert), "ca2", &names, at(10)).is_some());
        assert!(cell_cert_due(Some(&cert), "ca1", &["10.0.0.2".into()], at(10)).is_some());
        assert!(cell_cert_due(Some(&cert), "ca1", &names, at(600)).is_some());
        let unrecorded = CellCert {
            issued: None,
            ..cert
        };
        assert!(cell_cert_due(Some(&unrecorded), "ca1", &names, at(10)).is_some());
    }

    #[test]
    fn cell_names_cover_each_lane_service_and_node_address_and_skip_headless_ones() {
        let names = cell_names(
            "cell-a",
            [("lane-0", Some("10.96.0.7")), ("lanes", Some("None"))],
            &[
                "172.18.0.2".parse().expect("ip"),
                "172.18.0.2".parse().expect("ip"),
                "fd00::3".parse().expect("ip"),
            ],
            "lanes.cellstack.internal",
        );
        assert_eq!(
            names,
            vec![
                "10.96.0.7",
                "172.18.0.2",
                "fd00::3",
                "lane-0.cell-a.svc",
                "lane-0.cell-a.svc.cluster.local",
                "lanes.cell-a.svc",
                "lanes.cell-a.svc.cluster.local",
                "lanes.cellstack.internal",
            ]
        );
    }
}
