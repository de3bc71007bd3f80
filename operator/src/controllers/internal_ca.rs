//! The release's internal CA (`--internal-tls`; docs/security.md): kept in a Secret of the
//! operator's namespace, its certificates published as a trust bundle ConfigMap the routers
//! mount, rotated in the steps of [`pki::next_step`]. The cell controller issues each cell's
//! certificate from the CA held here ([`InternalCa::issuing`]).
//!
//! The Secret's keys: `ca.crt`/`ca.key` (the issuing CA) and, while a rotation waits for the
//! widened bundle to reach every router, `next.crt`/`next.key`. Annotations record validity
//! and the rotation; `kubectl annotate secret cellstack-internal-ca cellstack.dev/rotate=now`
//! asks for a rotation.
//!
//! The CA also issues the lanes' client certificate ([`LANE_CLIENT_SECRET`], what routers and
//! the operator present to lanes that ask for one): changed to a new CA only once every lane
//! trusts it ([`pki::client_cert_due`]), and the old CA leaves the bundle only once the new
//! certificate has reached every router, here and in each member cluster.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use cellstack_api::v1alpha1::{
    Cell, INTERNAL_CA_BUNDLE, INTERNAL_CA_BUNDLE_KEY, INTERNAL_CA_SECRET,
    LANE_CLIENT_ISSUER_ANNOTATION, LANE_CLIENT_NAME, LANE_CLIENT_SECRET,
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, ObjectReference, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::DeserializeGuard,
    runtime::{events::EventType, reflector::Store},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    context::Context,
    controllers,
    error::{Error, Result},
    lane_client,
    logic::pki::{self, CaPair, CaRecord, CaState, CaStep, ClientCert, HeldBundle},
    names::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, PART_OF, PART_OF_LABEL},
};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NEXT_CERT: &str = "next.crt";
const NEXT_KEY: &str = "next.key";
const ISSUED: &str = "cellstack.dev/ca-issued";
const NOT_AFTER: &str = "cellstack.dev/ca-not-after";
const NEXT_ISSUED: &str = "cellstack.dev/next-issued";
const NEXT_NOT_AFTER: &str = "cellstack.dev/next-not-after";
const WIDENED_AT: &str = "cellstack.dev/widened-at";
/// The lanes' client certificate Secret's annotations: the fingerprint of the CA that issued
/// it, and its validity.
const CLIENT_ISSUER: &str = LANE_CLIENT_ISSUER_ANNOTATION;
const CLIENT_ISSUED: &str = "cellstack.dev/issued";
const CLIENT_NOT_AFTER: &str = "cellstack.dev/not-after";
/// Set by a person to ask for a rotation; the operator removes it when it starts one.
pub const ROTATE: &str = "cellstack.dev/rotate";
/// The rotation step the CA is in, for people (`kubectl get secret -o yaml`).
pub const STEP: &str = "cellstack.dev/rotation-step";
/// How often the CA is checked when nothing is pending.
const TICK: Duration = Duration::from_secs(10);
/// Timeout of one lane check while narrowing.
const LANE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the internal CA (`--internal-ca-*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The time a changed bundle takes to reach every router's mounted copy and be re-read.
    pub propagation: Duration,
}

/// The lanes' client certificate: what its Secret records, and the pair (PEM).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: ClientCert,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The internal CA as the operator holds it: the issuing CA, the lanes' client trusting the
/// published bundle, and a signal that tells the cell controller to reissue.
pub struct InternalCa {
    issuing: ArcSwapOption<CaRecord>,
    /// The trust bundle as last published (PEM).
    bundle: ArcSwap<String>,
    /// The lanes' client certificate as last written or read.
    client: ArcSwapOption<ClientIdentity>,
    /// Bumped each time the bundle or the client certificate changes: the member mirrors copy
    /// them.
    bundle_generation: watch::Sender<u64>,
    generation: watch::Sender<u64>,
    /// What each member cluster was last confirmed to hold ([`mirror_bundle`]).
    members: Mutex<BTreeMap<String, HeldBundle>>,
    settings: Settings,
}

impl InternalCa {
    /// An internal CA not read yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            issuing: ArcSwapOption::empty(),
            bundle: ArcSwap::from_pointee(String::new()),
            client: ArcSwapOption::empty(),
            bundle_generation: watch::channel(0).0,
            generation: watch::channel(0).0,
            members: Mutex::new(BTreeMap::new()),
            settings,
        }
    }

    /// The CA certificates are issued by now, once read or made.
    pub fn issuing(&self) -> Option<Arc<CaRecord>> {
        self.issuing.load_full()
    }

    /// The trust bundle as last published or read (PEM).
    pub fn bundle(&self) -> Arc<String> {
        self.bundle.load_full()
    }

    /// Changes each time the issuing CA does: every cell's certificate must be looked at.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Changes each time the published trust bundle or the lanes' client certificate does.
    pub fn mirror_changes(&self) -> watch::Receiver<u64> {
        self.bundle_generation.subscribe()
    }

    /// The lanes' client certificate as last written or read.
    pub fn client(&self) -> Option<Arc<ClientIdentity>> {
        self.client.load_full()
    }

    /// Records that member cluster `member` holds `bundle` and the client certificate of
    /// fingerprint `client` now.
    fn member_holds(&self, member: &str, bundle: &str, client: Option<&str>) {
        let fingerprints = pki::fingerprints(bundle, "the trust bundle")
            .unwrap_or_default()
            .into_iter()
            .chain(client.map(str::to_owned))
            .collect();
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let held = HeldBundle::confirmed(members.get(member), fingerprints, Timestamp::now());
        members.insert(member.to_owned(), held);
    }

    /// Forgets what member cluster `member` held (deleted).
    pub fn forget_member(&self, member: &str) {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(member);
    }

    /// Puts `identity` in force for the operator's own calls and the member mirrors.
    fn set_client(&self, ctx: &Context, identity: ClientIdentity) -> Result<()> {
        let changed = self
            .client
            .load()
            .as_ref()
            .is_none_or(|c| c.cert.fingerprint != identity.cert.fingerprint);
        if changed {
            ctx.lanes
                .present(&identity.cert_pem, &identity.key_pem)
                .map_err(|e| Error::InternalCa {
                    reason: format!("cannot present the lanes' client certificate: {e}"),
                })?;
        }
        self.client.store(Some(Arc::new(identity)));
        if changed {
            self.bundle_generation
                .send_modify(|g| *g = g.wrapping_add(1));
        }
        Ok(())
    }

    fn set_issuing(&self, record: CaRecord) {
        let changed = self
            .issuing
            .load()
            .as_ref()
            .is_none_or(|r| r.fingerprint != record.fingerprint);
        self.issuing.store(Some(Arc::new(record)));
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

fn annotation(secret: &Secret, key: &str) -> Option<Timestamp> {
    secret.annotations().get(key).and_then(|v| v.parse().ok())
}

fn key_of(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn record(
    secret: &Secret,
    cert: &str,
    key: &str,
    issued: &str,
    not_after: &str,
) -> Result<Option<CaRecord>> {
    let (Some(cert_pem), Some(key_pem)) = (key_of(secret, cert), key_of(secret, key)) else {
        return Ok(None);
    };
    let pair = CaPair { cert_pem, key_pem };
    let fingerprint = pair.fingerprint().map_err(|e| unreadable(&e.to_string()))?;
    let (Some(issued), Some(not_after)) =
        (annotation(secret, issued), annotation(secret, not_after))
    else {
        return Err(unreadable(&format!(
            "annotations {issued} and {not_after} are missing or not RFC 3339 times"
        )));
    };
    Ok(Some(CaRecord {
        pair,
        fingerprint,
        issued,
        not_after,
    }))
}

fn unreadable(reason: &str) -> Error {
    Error::InternalCa {
        reason: format!(
            "Secret {INTERNAL_CA_SECRET} cannot be read: {reason}; the operator never overwrites it: delete it to have a new CA made (every cell's certificate is then reissued)"
        ),
    }
}

/// What the CA Secret says.
pub fn state_of(secret: Option<&Secret>) -> Result<CaState> {
    let Some(secret) = secret else {
        return Ok(CaState::default());
    };
    let issuing = record(secret, CA_CERT, CA_KEY, ISSUED, NOT_AFTER)?;
    if issuing.is_none() {
        return Err(unreadable("it has no ca.crt and ca.key"));
    }
    Ok(CaState {
        issuing,
        next: record(secret, NEXT_CERT, NEXT_KEY, NEXT_ISSUED, NEXT_NOT_AFTER)?,
        widened_at: annotation(secret, WIDENED_AT),
        rotate_requested: secret.annotations().contains_key(ROTATE),
    })
}

fn meta(name: &str, namespace: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
            (PART_OF_LABEL.into(), PART_OF.into()),
        ])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

/// The Secret holding `state` (issuing and next CA), with `step` for people.
fn secret_of(
    state: &CaState,
    namespace: &str,
    step: &str,
    resource_version: Option<String>,
) -> Secret {
    let mut data = BTreeMap::new();
    let mut annotations = BTreeMap::from([(STEP.to_owned(), step.to_owned())]);
    if let Some(ca) = &state.issuing {
        data.insert(
            CA_CERT.to_owned(),
            ByteString(ca.pair.cert_pem.clone().into_bytes()),
        );
        data.insert(
            CA_KEY.to_owned(),
            ByteString(ca.pair.key_pem.clone().into_bytes()),
        );
        annotations.insert(ISSUED.into(), ca.issued.to_string());
        annotations.insert(NOT_AFTER.into(), ca.not_after.to_string());
    }
    if let Some(next) = &state.next {
        data.insert(
            NEXT_CERT.to_owned(),
            ByteString(next.pair.cert_pem.clone().into_bytes()),
        );
        data.insert(
            NEXT_KEY.to_owned(),
            ByteString(next.pair.key_pem.clone().into_bytes()),
        );
        annotations.insert(NEXT_ISSUED.into(), next.issued.to_string());
        annotations.insert(NEXT_NOT_AFTER.into(), next.not_after.to_string());
    }
    if let Some(at) = state.widened_at {
        annotations.insert(WIDENED_AT.into(), at.to_string());
    }
    // A request made while another rotation was under way is kept for the next one.
    if state.rotate_requested {
        annotations.insert(ROTATE.into(), "requested".into());
    }
    let mut metadata = meta(INTERNAL_CA_SECRET, namespace, annotations);
    metadata.resource_version = resource_version;
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

fn new_record(name: &str, now: Timestamp) -> Result<CaRecord> {
    let pair = CaPair::generate(name, now).map_err(|e| Error::InternalCa {
        reason: e.to_string(),
    })?;
    let fingerprint = pair.fingerprint().map_err(|e| Error::InternalCa {
        reason: e.to_string(),
    })?;
    Ok(CaRecord {
        pair,
        fingerprint,
        issued: now,
        not_after: now + pki::CA_LIFETIME,
    })
}

/// One look at the CA: reads the Secret and the bundle, takes the next step, and returns how
/// long until the next look. Without `cells` (their first list not in yet) the old CA is never
/// dropped from the bundle: an empty list would look like every lane reissued.
pub async fn step(
    ctx: &Context,
    ca: &InternalCa,
    cells: Option<&Store<DeserializeGuard<Cell>>>,
) -> Result<Duration> {
    let ns = &ctx.system_namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let secret = ctx
        .call(
            format!("read Secret {ns}/{INTERNAL_CA_SECRET}"),
            secrets.get_opt(INTERNAL_CA_SECRET),
        )
        .await?;
    let bundle_map = ctx
        .call(
            format!("read ConfigMap {ns}/{INTERNAL_CA_BUNDLE}"),
            maps.get_opt(INTERNAL_CA_BUNDLE),
        )
        .await?;
    let bundle = bundle_map
        .as_ref()
        .and_then(|m| m.data.as_ref()?.get(INTERNAL_CA_BUNDLE_KEY).cloned())
        .unwrap_or_default();
    // A bundle someone broke is rewritten from the Secret (it holds nothing else).
    let trusted = pki::fingerprints(&bundle, "the trust bundle").unwrap_or_default();
    let mut state = state_of(secret.as_ref())?;
    let now = Timestamp::now();
    let version = secret.as_ref().and_then(|s| s.resource_version());
    let step = pki::next_step(&state, &trusted, now, ca.settings.propagation);
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(INTERNAL_CA_SECRET.into()),
        namespace: Some(ns.clone()),
        uid: secret.as_ref().and_then(|s| s.uid()),
        ..ObjectReference::default()
    };
    let next = match step.clone() {
        CaStep::Create => {
            let record = new_record(&format!("cellstack internal CA ({ns})"), now)?;
            state.issuing = Some(record);
            let created = ctx
                .call(
                    format!("create Secret {ns}/{INTERNAL_CA_SECRET}"),
                    secrets.create(
                        &PostParams::default(),
                        &secret_of(&state, ns, "Steady", None),
                    ),
                )
                .await?;
            info!(namespace = %ns, "made the internal CA");
            let created = ObjectReference {
                uid: created.uid(),
                ..reference.clone()
            };
            controllers::publish(
                ctx,
                &created,
                EventType::Normal,
                "CACreated",
                "made the release's internal CA".into(),
            )
            .await;
            Duration::ZERO
        }
        CaStep::Publish { trusted: wanted } => {
            let mut pems: Vec<&str> = Vec::new();
            let known: Vec<&CaRecord> = state.issuing.iter().chain(state.next.iter()).collect();
            let old = pki::certificates(&bundle, "the trust bundle").unwrap_or_default();
            let old_pems: Vec<String> = old.iter().map(|der| pem_of(der)).collect();
            for fp in &wanted {
                if let Some(r) = known.iter().find(|r| &r.fingerprint == fp) {
                    pems.push(&r.pair.cert_pem);
                } else if let Some(i) = trusted.iter().position(|t| t == fp) {
                    pems.push(&old_pems[i]);
                }
            }
            write_bundle(ctx, ca, &maps, bundle_map, &pki::bundle(pems)).await?;
            Duration::ZERO
        }
        CaStep::Widen { why } => {
            state.next = Some(new_record(
                &format!("cellstack internal CA ({ns}, next)"),
                now,
            )?);
            state.widened_at = Some(now);
            state.rotate_requested = false;
            ctx.call(
                format!("replace Secret {ns}/{INTERNAL_CA_SECRET}"),
                secrets.replace(
                    INTERNAL_CA_SECRET,
                    &PostParams::default(),
                    &secret_of(&state, ns, "Widened", version),
                ),
            )
            .await?;
            ctx.metrics.internal_ca_rotations.inc();
            info!(
                why,
                "rotating the internal CA: the next CA joins the trust bundle"
            );
            controllers::publish(ctx, &reference, EventType::Normal, "CARotationStarted", format!("rotating the internal CA ({why}): the new CA joins the trust bundle, and issues once the bundle has reached every router ({:?})", ca.settings.propagation)).await;
            Duration::ZERO
        }
        CaStep::WaitForPropagation(left) => left.min(TICK),
        CaStep::Promote => {
            let waiting = members_not_trusting_next(ctx, ca, &state, now);
            if waiting.is_empty() {
                let promoted = state.next.take();
                state.issuing = promoted;
                state.widened_at = None;
                ctx.call(
                    format!("replace Secret {ns}/{INTERNAL_CA_SECRET}"),
                    secrets.replace(
                        INTERNAL_CA_SECRET,
                        &PostParams::default(),
                        &secret_of(&state, ns, "Reissuing", version),
                    ),
                )
                .await?;
                info!("the new internal CA issues; every cell's certificate is reissued");
                controllers::publish(ctx, &reference, EventType::Normal, "CAPromoted", "the new internal CA issues; every cell's certificate is being reissued, and the old CA leaves the trust bundle once every lane presents a new one".into()).await;
                Duration::ZERO
            } else {
                info!(waiting = ?waiting, "the new CA issues once every member cluster's routers trust it: waiting for these members to hold the widened bundle");
                TICK
            }
        }
        CaStep::NarrowWhenLanesReissued { .. } if cells.is_none() => TICK,
        CaStep::NarrowWhenLanesReissued { keep } => {
            let issuing = state
                .issuing
                .clone()
                .ok_or(Error::MissingObjectKey("issuing CA"))?;
            let waiting = match cells {
                Some(cells) => lanes_not_reissued(ctx, &issuing, cells).await,
                None => vec!["(cells not listed yet)".into()],
            };
            // Every lane trusts the new CA: the client certificate moves to it, and the old CA
            // stays until every router presents the new one.
            let waiting = if waiting.is_empty() {
                let client = ensure_client(ctx, ca, &issuing, true, now, &reference).await?;
                routers_not_presenting(ctx, ca, &issuing, &client, now)
            } else {
                waiting
            };
            if waiting.is_empty() {
                write_bundle(
                    ctx,
                    ca,
                    &maps,
                    bundle_map,
                    &pki::bundle([issuing.pair.cert_pem.as_str()]),
                )
                .await?;
                ctx.call(
                    format!("replace Secret {ns}/{INTERNAL_CA_SECRET}"),
                    secrets.replace(
                        INTERNAL_CA_SECRET,
                        &PostParams::default(),
                        &secret_of(&state, ns, "Steady", version),
                    ),
                )
                .await?;
                info!(
                    keep,
                    "every lane presents a certificate of the new CA: the old CA left the trust bundle"
                );
                controllers::publish(ctx, &reference, EventType::Normal, "CARotated", "every lane presents a certificate of the new internal CA; the old CA left the trust bundle".into()).await;
                Duration::ZERO
            } else {
                info!(waiting = ?waiting, "the old CA stays in the trust bundle until these lanes present a new certificate and these routers the new client certificate");
                TICK
            }
        }
        CaStep::Steady => TICK,
    };
    if let Some(issuing) = &state.issuing {
        ca.set_issuing(issuing.clone());
        ctx.metrics
            .internal_ca_expiry_seconds
            .set(issuing.not_after.as_second());
        // Only a steady CA is trusted by every lane (narrowing checks the lanes itself, above).
        let steady = matches!(step, CaStep::Steady);
        ensure_client(ctx, ca, issuing, steady, now, &reference).await?;
    }
    Ok(next)
}

/// What the lanes' client certificate Secret holds, if it is whole (else it is reissued: it
/// holds nothing the operator cannot make again).
fn client_of(secret: &Secret) -> Option<ClientIdentity> {
    let cert_pem = key_of(secret, "tls.crt")?;
    let key_pem = key_of(secret, "tls.key")?;
    Some(ClientIdentity {
        cert: ClientCert {
            issuer: secret.annotations().get(CLIENT_ISSUER)?.clone(),
            fingerprint: pki::fingerprint(&cert_pem, "the client certificate").ok()?,
            issued: annotation(secret, CLIENT_ISSUED)?,
            not_after: annotation(secret, CLIENT_NOT_AFTER)?,
        },
        cert_pem,
        key_pem,
    })
}

/// The lanes' client certificate Secret in `namespace`.
fn client_secret(identity: &ClientIdentity, namespace: &str) -> Secret {
    let annotations = BTreeMap::from([
        (CLIENT_ISSUER.to_owned(), identity.cert.issuer.clone()),
        (CLIENT_ISSUED.to_owned(), identity.cert.issued.to_string()),
        (
            CLIENT_NOT_AFTER.to_owned(),
            identity.cert.not_after.to_string(),
        ),
    ]);
    Secret {
        metadata: meta(LANE_CLIENT_SECRET, namespace, annotations),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(identity.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(identity.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Makes sure the lanes' client certificate Secret holds a current certificate
/// ([`pki::client_cert_due`]; a new CA's only when `lanes_trust_issuing`), writing it back if
/// it was deleted, and puts it in force for the operator's calls; returns it.
async fn ensure_client(
    ctx: &Context,
    ca: &InternalCa,
    issuing: &CaRecord,
    lanes_trust_issuing: bool,
    now: Timestamp,
    reference: &ObjectReference,
) -> Result<ClientIdentity> {
    let ns = &ctx.system_namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let read = ctx
        .call(
            format!("read Secret {ns}/{LANE_CLIENT_SECRET}"),
            secrets.get_opt(LANE_CLIENT_SECRET),
        )
        .await?
        .as_ref()
        .and_then(client_of);
    // Deleted or broken by hand: what the operator last held goes back.
    let held = read.clone().or_else(|| ca.client().map(|c| (*c).clone()));
    let due = pki::client_cert_due(
        held.as_ref().map(|c| &c.cert),
        &issuing.fingerprint,
        lanes_trust_issuing,
        now,
    );
    let identity = match (due, held) {
        (None, Some(held)) => held,
        (why, _) => {
            let why = why.unwrap_or("no client certificate yet");
            let issued = issuing
                .pair
                .issue_client(LANE_CLIENT_NAME, now, issuing.not_after)
                .map_err(|e| Error::InternalCa {
                    reason: format!("cannot issue the lanes' client certificate: {e}"),
                })?;
            let identity = ClientIdentity {
                cert: ClientCert {
                    issuer: issuing.fingerprint.clone(),
                    fingerprint: pki::fingerprint(&issued.cert_pem, "the client certificate")
                        .map_err(|e| Error::InternalCa {
                            reason: e.to_string(),
                        })?,
                    issued: now,
                    not_after: issued.not_after,
                },
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            };
            ctx.metrics.lane_client_certificates_issued.inc();
            info!(why, "issued the lanes' client certificate");
            controllers::publish(
                ctx,
                reference,
                EventType::Normal,
                "ClientCertificateIssued",
                format!("issued the lanes' client certificate (Secret {ns}/{LANE_CLIENT_SECRET}, presented by the routers and the operator): {why}"),
            )
            .await;
            identity
        }
    };
    let unchanged = read
        .as_ref()
        .is_some_and(|r| r.cert.fingerprint == identity.cert.fingerprint);
    if !unchanged {
        ctx.call(
            format!("apply Secret {ns}/{LANE_CLIENT_SECRET}"),
            secrets.patch(
                LANE_CLIENT_SECRET,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&client_secret(&identity, ns)),
            ),
        )
        .await?;
    }
    ca.set_client(ctx, identity.clone())?;
    Ok(identity)
}

/// The routers that may not present `client` yet: this cluster's until the certificate has
/// been in its Secret for the propagation time, each member's until its copy has (every
/// MemberCluster counts, as for the CA's promotion).
fn routers_not_presenting(
    ctx: &Context,
    ca: &InternalCa,
    issuing: &CaRecord,
    client: &ClientIdentity,
    now: Timestamp,
) -> Vec<String> {
    let mut waiting = Vec::new();
    if !pki::client_cert_in_force(
        Some(&client.cert),
        &issuing.fingerprint,
        now,
        ca.settings.propagation,
    ) {
        waiting.push(format!(
            "(this cluster's routers: the client certificate was written at {})",
            client.cert.issued
        ));
    }
    let Some(members) = ctx.members.names() else {
        waiting.push("(member clusters not listed yet)".into());
        return waiting;
    };
    let held = ca.members.lock().unwrap_or_else(|p| p.into_inner());
    waiting.extend(pki::members_not_trusting(
        &client.cert.fingerprint,
        &members,
        &held,
        now,
        ca.settings.propagation,
    ));
    waiting
}

fn pem_of(der: &rustls_pki_types::CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

async fn write_bundle(
    ctx: &Context,
    ca: &InternalCa,
    maps: &Api<ConfigMap>,
    existing: Option<ConfigMap>,
    bundle: &str,
) -> Result<()> {
    let ns = &ctx.system_namespace;
    let mut map = ConfigMap {
        metadata: meta(INTERNAL_CA_BUNDLE, ns, BTreeMap::new()),
        data: Some(BTreeMap::from([(
            INTERNAL_CA_BUNDLE_KEY.to_owned(),
            bundle.to_owned(),
        )])),
        ..ConfigMap::default()
    };
    match existing {
        Some(old) => {
            map.metadata.resource_version = old.resource_version();
            ctx.call(
                format!("replace ConfigMap {ns}/{INTERNAL_CA_BUNDLE}"),
                maps.replace(INTERNAL_CA_BUNDLE, &PostParams::default(), &map),
            )
            .await?;
        }
        None => {
            ctx.call(
                format!("create ConfigMap {ns}/{INTERNAL_CA_BUNDLE}"),
                maps.create(&PostParams::default(), &map),
            )
            .await?;
        }
    }
    let count = trust(ctx, ca, bundle)?;
    info!(cas = count, "published the internal CA trust bundle");
    Ok(())
}

/// The operator's own calls trust `bundle` from now on; returns how many CAs it holds.
fn trust(ctx: &Context, ca: &InternalCa, bundle: &str) -> Result<usize> {
    ctx.lanes
        .replace_bundle(bundle)
        .map_err(|e| Error::InternalCa {
            reason: e.to_string(),
        })?;
    let changed = ca.bundle.load().as_str() != bundle;
    ca.bundle.store(Arc::new(bundle.to_owned()));
    if changed {
        ca.bundle_generation.send_modify(|g| *g = g.wrapping_add(1));
    }
    let count = pki::fingerprints(bundle, "the trust bundle").map_or(0, |f| f.len());
    ctx.metrics
        .internal_ca_trusted
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    Ok(count)
}

/// The lanes (`cell/address`) that do not yet present a certificate of `issuing`: each cell's
/// lane addresses are called over TLS trusting `issuing` alone.
async fn lanes_not_reissued(
    ctx: &Context,
    issuing: &CaRecord,
    cells: &Store<DeserializeGuard<Cell>>,
) -> Vec<String> {
    let client = match lane_client::trusting(&issuing.pair.cert_pem) {
        Ok(c) => c,
        Err(e) => return vec![format!("(no client: {e})")],
    };
    let mut waiting = Vec::new();
    for guard in cells.state() {
        let Ok(cell) = &guard.0 else { continue };
        if cell.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let addresses = crate::logic::cell::exposure::admin_addresses(cell);
        // A member's cell the operator cannot reach (no `--multicluster`) may still serve a
        // certificate of the old CA: it holds the old CA in every bundle.
        if addresses.is_empty() && cell.spec.cluster.is_some() {
            waiting.push(format!(
                "{} (in member cluster {}: no lane address the operator can reach; needs --multicluster)",
                cell.name_any(),
                cell.spec.cluster.as_deref().unwrap_or_default()
            ));
        }
        for endpoint in addresses {
            let url = ctx.lanes.url(&endpoint, "/livez");
            let ok = tokio::time::timeout(LANE_CHECK_TIMEOUT, client.get(&url).send())
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok {
                waiting.push(format!("{}/{endpoint}", cell.name_any()));
            }
        }
    }
    waiting
}

/// The member clusters whose routers may not trust the next CA of `state` yet (every
/// MemberCluster counts, reachable or not; none are known before their first list: then the
/// answer is a placeholder, so nothing is promoted blind).
fn members_not_trusting_next(
    ctx: &Context,
    ca: &InternalCa,
    state: &CaState,
    now: Timestamp,
) -> Vec<String> {
    let Some(next) = &state.next else {
        return Vec::new();
    };
    let Some(members) = ctx.members.names() else {
        return vec!["(member clusters not listed yet)".into()];
    };
    let held = ca.members.lock().unwrap_or_else(|p| p.into_inner());
    pki::members_not_trusting(
        &next.fingerprint,
        &members,
        &held,
        now,
        ca.settings.propagation,
    )
}

/// How often a member's copy of the bundle is written again while nothing changes (a copy
/// deleted or edited there comes back; each write confirms what the member holds).
const MIRROR_RECHECK: Duration = Duration::from_secs(60);

/// Copies the trust bundle and the lanes' client certificate into `namespace` of member
/// cluster `member` (the ConfigMap and Secret its routers mount), at once and on every change
/// of either, and again every [`MIRROR_RECHECK`]; each time both writes succeed records what
/// the member holds, which the CA's promotion and narrowing wait for. A failure is logged at the start of a run of failures and retried with
/// backoff; ends at `stop` (or when aborted with the member's client).
pub async fn mirror_bundle(
    ctx: Arc<Context>,
    ca: Arc<InternalCa>,
    member: String,
    client: kube::Client,
    namespace: String,
    mut stop: watch::Receiver<bool>,
) {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let mut changes = ca.mirror_changes();
    let mut failures = 0u32;
    loop {
        changes.mark_unchanged();
        let bundle = ca.bundle();
        let wait = if bundle.is_empty() {
            // Not read or made yet: the first change brings it.
            MIRROR_RECHECK
        } else {
            let map = ConfigMap {
                metadata: meta(INTERNAL_CA_BUNDLE, &namespace, BTreeMap::new()),
                data: Some(BTreeMap::from([(
                    INTERNAL_CA_BUNDLE_KEY.to_owned(),
                    bundle.as_str().to_owned(),
                )])),
                ..ConfigMap::default()
            };
            let identity = ca.client();
            let written = async {
                ctx.call(
                    format!("apply ConfigMap {namespace}/{INTERNAL_CA_BUNDLE} in member cluster {member}"),
                    maps.patch(
                        INTERNAL_CA_BUNDLE,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&map),
                    ),
                )
                .await?;
                if let Some(identity) = &identity {
                    ctx.call(
                        format!("apply Secret {namespace}/{LANE_CLIENT_SECRET} in member cluster {member}"),
                        secrets.patch(
                            LANE_CLIENT_SECRET,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&client_secret(identity, &namespace)),
                        ),
                    )
                    .await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            match written {
                Ok(()) => {
                    if failures > 0 {
                        info!(member_cluster = %member, "the trust bundle reached the member again");
                    }
                    failures = 0;
                    let client = identity.as_ref().map(|c| c.cert.fingerprint.as_str());
                    ca.member_holds(&member, &bundle, client);
                    MIRROR_RECHECK
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(member_cluster = %member, error = %e, "mirroring the trust bundle and the lanes' client certificate into the member failed; retrying (a CA rotation waits for it)");
                    }
                    failures = failures.saturating_add(1);
                    ctx.backoff.delay(failures, rand::random::<f64>())
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads (or makes) the CA and publishes its bundle before any cell is reconciled, so the
/// first reconciles can issue certificates.
pub async fn ensure(ctx: &Context, ca: &InternalCa) -> Result<()> {
    // Create, then publish, then steady: a few steps at most.
    for _ in 0..4 {
        let next = step(ctx, ca, None).await?;
        if !next.is_zero() {
            break;
        }
    }
    // The bundle as published is what the operator trusts, even when nothing changed.
    let ns = &ctx.system_namespace;
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(bundle) = ctx
        .call(
            format!("read ConfigMap {ns}/{INTERNAL_CA_BUNDLE}"),
            maps.get_opt(INTERNAL_CA_BUNDLE),
        )
        .await?
        .and_then(|m| m.data?.get(INTERNAL_CA_BUNDLE_KEY).cloned())
    {
        trust(ctx, ca, &bundle)?;
    }
    Ok(())
}

/// Looks at the CA every [`TICK`] (sooner while a step is pending) until `stop` turns true;
/// the old CA of a rotation leaves the bundle only once `cells_listed`.
pub async fn run(
    ctx: Arc<Context>,
    ca: Arc<InternalCa>,
    cells: Store<DeserializeGuard<Cell>>,
    cells_listed: controllers::Listed,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let listed = cells_listed.wait();
    tokio::pin!(listed);
    let mut have_cells = false;
    loop {
        if !have_cells {
            have_cells = futures::poll!(listed.as_mut()).is_ready();
        }
        let wait = match step(&ctx, &ca, have_cells.then_some(&cells)).await {
            Ok(next) => {
                failures = 0;
                next.max(Duration::from_millis(200))
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, "internal CA step failed");
                ctx.backoff.delay(failures, rand::random::<f64>())
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, issued: Timestamp) -> CaRecord {
        new_record(name, issued).expect("CA")
    }

    #[test]
    fn the_secret_reads_back_as_the_state_it_was_written_from() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let state = CaState {
            issuing: Some(record("old", now)),
            next: Some(record("new", now)),
            widened_at: Some(now),
            rotate_requested: true,
        };
        let secret = secret_of(&state, "ns", "Widened", None);
        let read = state_of(Some(&secret)).expect("readable");
        let fp = |r: &Option<CaRecord>| r.as_ref().map(|r| r.fingerprint.clone());
        assert_eq!(fp(&read.issuing), fp(&state.issuing));
        assert_eq!(fp(&read.next), fp(&state.next));
        assert_eq!(read.widened_at, Some(now));
        assert_eq!(
            read.issuing.as_ref().map(|r| r.not_after),
            Some(now + pki::CA_LIFETIME)
        );
        // A rotation asked for during another one is kept for the next.
        assert!(read.rotate_requested);
        assert_eq!(
            secret.annotations().get(STEP).map(String::as_str),
            Some("Widened")
        );
    }

    #[test]
    fn a_secret_without_its_ca_or_its_validity_is_refused_not_replaced() {
        assert!(state_of(None).expect("no Secret").issuing.is_none());
        let empty = Secret::default();
        assert!(matches!(
            state_of(Some(&empty)),
            Err(Error::InternalCa { .. })
        ));
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let mut secret = secret_of(
            &CaState {
                issuing: Some(record("ca", now)),
                ..CaState::default()
            },
            "ns",
            "Steady",
            None,
        );
        secret.metadata.annotations = None;
        let refused = state_of(Some(&secret)).expect_err("no validity annotations");
        assert!(refused.to_string().contains("delete it"), "{refused}");
    }
}
