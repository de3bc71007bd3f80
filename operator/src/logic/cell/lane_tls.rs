//! The lanes' certificate Secret ([`LANE_TLS_SECRET`]): built from what the internal CA issued,
//! and read back through its annotations, which say whom it was issued by, for which names,
//! and for how long ([`pki::cell_cert_due`] decides from them).

use std::collections::BTreeMap;

use cellstack_api::v1alpha1::{Cell, INTERNAL_CA_BUNDLE_KEY, LANE_TLS_SECRET};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use super::ownership::Owner;
use crate::{
    logic::pki::{CellCert, Issued},
    names::*,
};

const ISSUER: &str = "cellstack.dev/issuer";
const NAMES: &str = "cellstack.dev/names";
const ISSUED: &str = "cellstack.dev/issued";
const NOT_AFTER: &str = "cellstack.dev/not-after";

/// The `kubernetes.io/tls` Secret of `cell` holding `issued` (described by `cert`), with the
/// trust bundle it was issued under as `ca.crt`, for clients outside the operator; marked as
/// the cell's the way `owner` says (an owner reference, or labels in a member cluster).
pub fn secret(
    cell: &Cell,
    owner: &Owner,
    issued: &Issued,
    cert: &CellCert,
    bundle: &str,
) -> Secret {
    let name = cell.name_any();
    let mut annotations = BTreeMap::from([
        (ISSUER.to_owned(), cert.issuer.clone()),
        (NAMES.to_owned(), cert.names.join(",")),
    ]);
    if let Some(at) = cert.issued {
        annotations.insert(ISSUED.into(), at.to_string());
    }
    if let Some(at) = cert.not_after {
        annotations.insert(NOT_AFTER.into(), at.to_string());
    }
    let mut metadata = ObjectMeta {
        name: Some(LANE_TLS_SECRET.into()),
        namespace: Some(namespace_of(&name)),
        labels: Some(BTreeMap::from([
            (CELL_LABEL.to_owned(), name),
            (COMPONENT_LABEL.to_owned(), "cell".to_owned()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (PART_OF_LABEL.to_owned(), PART_OF.to_owned()),
        ])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    owner.mark(&mut metadata);
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(issued.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(issued.key_pem.clone().into_bytes()),
            ),
            (
                INTERNAL_CA_BUNDLE_KEY.to_owned(),
                ByteString(bundle.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// What an existing certificate Secret records about itself.
pub fn recorded(secret: &Secret) -> CellCert {
    let a = secret.annotations();
    let time = |key: &str| a.get(key).and_then(|v| v.parse().ok());
    CellCert {
        issuer: a.get(ISSUER).cloned().unwrap_or_default(),
        names: a
            .get(NAMES)
            .map(|n| {
                n.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        issued: time(ISSUED),
        not_after: time(NOT_AFTER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{
        cell::ownership::{cell_of, controls},
        pki::CaPair,
    };
    use k8s_openapi::jiff::Timestamp;

    fn cell() -> Cell {
        let mut cell = Cell::new(
            "a",
            serde_json::from_value(serde_json::json!({
                "lanes": 1, "datastore": { "managed": { "storage": "Ephemeral" } }
            }))
            .expect("spec"),
        );
        cell.metadata.uid = Some("uid-a".into());
        cell
    }

    /// A certificate issued for one lane address, and what the Secret records of it.
    fn issued() -> (CaPair, Issued, CellCert) {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let ca = CaPair::generate("t", now).expect("CA");
        let names = vec!["10.0.0.1".to_owned(), "lanes.cellstack.internal".to_owned()];
        let issued = ca
            .issue(&names, now, now + crate::logic::pki::CA_LIFETIME)
            .expect("issue");
        let cert = CellCert {
            issuer: ca.fingerprint().expect("fp"),
            names,
            issued: Some(now),
            not_after: Some(issued.not_after),
        };
        (ca, issued, cert)
    }

    #[test]
    fn the_secret_is_the_cells_by_owner_reference_locally_and_by_labels_in_a_member() {
        let cell = cell();
        let (ca, issued, cert) = issued();
        for member_cluster in [None, Some("east")] {
            let owner = Owner::of(&cell, member_cluster).expect("owner");
            let secret = secret(&cell, &owner, &issued, &cert, &ca.cert_pem);
            assert!(controls(&owner, &secret.metadata), "{member_cluster:?}");
            assert_eq!(cell_of(&secret.metadata), Some("a"));
            assert_eq!(
                secret.metadata.owner_references.is_some(),
                member_cluster.is_none()
            );
            let labels = secret.labels();
            assert_eq!(
                labels.get(MEMBER_CLUSTER_LABEL).map(String::as_str),
                member_cluster
            );
        }
    }

    #[test]
    fn a_written_secret_reads_back_as_the_certificate_it_describes() {
        let cell = cell();
        let (ca, issued, cert) = issued();
        let owner = Owner::of(&cell, None).expect("owner");
        let secret = secret(&cell, &owner, &issued, &cert, &ca.cert_pem);
        assert_eq!(recorded(&secret), cert);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("cell-a"));
        let data = secret.data.expect("data");
        assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
        assert_eq!(data["ca.crt"].0, ca.cert_pem.as_bytes());
    }
}
