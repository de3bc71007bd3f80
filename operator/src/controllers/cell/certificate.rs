//! The lanes' certificate (`--internal-tls`): issued by the internal CA for the lanes' Service
//! names and addresses once the Services exist, reissued when the CA, the names or two thirds
//! of its life say so ([`pki::cell_cert_due`]). Lanes re-read it, so nothing restarts.

use cellstack_api::v1alpha1::{Cell, LANE_TLS_SECRET, LANE_TLS_SERVER_NAME};
use k8s_openapi::{
    api::core::v1::{Secret, Service},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use tracing::info;

use crate::{
    context::Context,
    controllers,
    error::{Error, Result},
    logic::{
        cell::{lane_tls, ownership::Owner},
        pki::{self, CellCert},
    },
    names::FIELD_MANAGER,
    target::Target,
};

/// Makes sure the lanes of `cell` (in `namespace` of `target`, behind `lane_services`, and
/// reached from other clusters through the node addresses `nodes`) have a current
/// certificate, its Secret marked as the cell's the way `owner` says; does nothing without
/// internal TLS.
pub async fn ensure(
    ctx: &Context,
    target: &Target,
    cell: &Cell,
    owner: &Owner,
    namespace: &str,
    lane_services: &[Service],
    nodes: &[std::net::IpAddr],
) -> Result<()> {
    let Some(ca) = &ctx.internal_ca else {
        return Ok(());
    };
    let issuing = ca.issuing().ok_or_else(|| Error::InternalCa {
        reason: "no issuing CA yet: the operator makes or reads it when it starts leading (see its log for why it could not)".into(),
    })?;
    let names = pki::cell_names(
        namespace,
        lane_services.iter().map(|s| {
            (
                s.metadata.name.as_deref().unwrap_or_default(),
                s.spec.as_ref().and_then(|spec| spec.cluster_ip.as_deref()),
            )
        }),
        nodes,
        LANE_TLS_SERVER_NAME,
    );
    let api: Api<Secret> = Api::namespaced(target.client().clone(), namespace);
    let existing = ctx
        .call(
            format!("read Secret {namespace}/{LANE_TLS_SECRET}"),
            api.get_opt(LANE_TLS_SECRET),
        )
        .await?;
    let now = Timestamp::now();
    let current = existing.as_ref().map(lane_tls::recorded);
    let Some(why) = pki::cell_cert_due(current.as_ref(), &issuing.fingerprint, &names, now) else {
        return Ok(());
    };
    let issued = issuing
        .pair
        .issue(&names, now, issuing.not_after)
        .map_err(|e| Error::InternalCa {
            reason: format!(
                "cannot issue the certificate of cell {}: {e}",
                cell.name_any()
            ),
        })?;
    let cert = CellCert {
        issuer: issuing.fingerprint.clone(),
        names,
        issued: Some(now),
        not_after: Some(issued.not_after),
    };
    let secret = lane_tls::secret(cell, owner, &issued, &cert, &ca.bundle());
    ctx.call(
        format!("apply Secret {namespace}/{LANE_TLS_SECRET}"),
        api.patch(
            LANE_TLS_SECRET,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        ),
    )
    .await?;
    ctx.metrics.lane_certificates_issued.inc();
    info!(cell = %cell.name_any(), why, "issued the lanes' certificate");
    controllers::publish(
        ctx,
        &cell.object_ref(&()),
        EventType::Normal,
        "CertificateIssued",
        format!("issued the lanes' certificate (Secret {namespace}/{LANE_TLS_SECRET}): {why}"),
    )
    .await;
    Ok(())
}
