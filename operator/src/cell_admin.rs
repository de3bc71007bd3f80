//! A client of one cell's admin API (`cellstack_api::admin`): what moves and tenant
//! provisioning call. Every lane of a cell shares the cell's Redis, so any lane answers for the
//! cell: a call goes to the lanes in turn until one answers, each try with its own timeout.
//! A 4xx answer is the cell's word and is not retried on another lane.

use std::time::Duration;

use cellstack_api::{
    admin::{
        self, Activate, Checksum, ConfirmDatastore, DatastoreConfirmation, Entry, ExportPage,
        Import, Moved, NewTenant, NewTenantOutcome, NewTenants, POLICY_OVERRIDE_PATH,
        PolicyInForce, PolicyOverride, TakenChanges, TenantRecord, TenantState,
    },
    v1alpha1::{
        Cell, INTERNAL_CA_BUNDLE_KEY, LANE_CLIENT_ISSUER_ANNOTATION, LANE_CLIENT_SECRET,
        LANE_TLS_SECRET,
    },
    wire::ErrorCode,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    context::Context,
    error::{Error, Result},
    lane_client::LaneClient,
    logic::{
        cell::exposure::admin_addresses,
        data_marker::{self, Judgement},
    },
    names::{ADMIN_TOKEN, ADMIN_TOKEN_KEY, namespace_of},
    target::Target,
};

/// Rounds over the lanes before a call fails.
const ROUNDS: u32 = 3;

/// Timeout of one try of an admin call (an import page of a few thousand keys included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin API of one cell.
#[derive(Clone)]
pub struct CellAdmin {
    lanes: LaneClient,
    cell: String,
    /// `http(s)://<lane's admin address>` ([`admin_addresses`]), in lane order.
    bases: Vec<String>,
    token: String,
}

/// Whether `cell` reports lane addresses the operator can call (its pods may still be
/// starting otherwise; a member's cell needs its node ports, `--multicluster`).
pub fn reachable(cell: &Cell) -> bool {
    !admin_addresses(cell).is_empty()
}

/// How a client outside the operator reaches the lanes of `cell`: over HTTPS trusting the CA
/// bundle its certificate Secret carries when it has one (internal TLS), else plain HTTP. Lanes
/// that ask for a client certificate (`--multicluster`) get the release's
/// ([`release_client_certificate`]) when the caller may read it.
pub async fn lanes_of(client: &kube::Client, cell: &Cell, timeout: Duration) -> Result<LaneClient> {
    let namespace = namespace_of(&cell.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let action = format!("read Secret {namespace}/{LANE_TLS_SECRET}");
    let secret = tokio::time::timeout(timeout, api.get_opt(LANE_TLS_SECRET))
        .await
        .map_err(|_| Error::Timeout {
            action: action.clone(),
            timeout,
        })?
        .map_err(|source| Error::kube(action, source))?;
    let Some(secret) = secret else {
        return Ok(LaneClient::plain());
    };
    let bundle = secret
        .data
        .and_then(|d| d.get(INTERNAL_CA_BUNDLE_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .ok_or_else(|| Error::CellAdmin {
            cell: cell.name_any(),
            action: "find the lanes' CA".into(),
            reason: format!(
                "Secret {namespace}/{LANE_TLS_SECRET} has no UTF-8 key '{INTERNAL_CA_BUNDLE_KEY}'"
            ),
        })?;
    let lanes = LaneClient::trusting(&bundle).map_err(|e| Error::InternalCa {
        reason: e.to_string(),
    })?;
    if let Some((cert, key)) = release_client_certificate(client, &bundle, timeout).await {
        lanes.present(&cert, &key).map_err(|e| Error::InternalCa {
            reason: format!("cannot present Secret {LANE_CLIENT_SECRET}: {e}"),
        })?;
    }
    Ok(lanes)
}

/// The lanes' client certificate and key (PEM) of the release whose CA is in `bundle`: the
/// `cellstack-lane-client` Secret, from whichever namespace holds it (the operator's), whose
/// issuer is one of the bundle's CAs. `None` when the caller may not list Secrets across
/// namespaces, or there is none: the lanes that ask then answer `401 no_client_certificate`.
async fn release_client_certificate(
    client: &kube::Client,
    bundle: &str,
    timeout: Duration,
) -> Option<(String, String)> {
    let trusted = crate::logic::pki::fingerprints(bundle, "the lanes' CA bundle").ok()?;
    let named =
        kube::api::ListParams::default().fields(&format!("metadata.name={LANE_CLIENT_SECRET}"));
    let listed = tokio::time::timeout(timeout, Api::<Secret>::all(client.clone()).list(&named))
        .await
        .ok()?;
    let secrets = match listed {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the lanes' client certificate Secrets");
            return None;
        }
    };
    secrets.into_iter().find_map(|secret| {
        let issuer = secret.annotations().get(LANE_CLIENT_ISSUER_ANNOTATION)?;
        if !trusted.contains(issuer) {
            return None;
        }
        let data = secret.data?;
        let pem = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
        Some((pem("tls.crt")?, pem("tls.key")?))
    })
}

impl CellAdmin {
    /// The admin API of `cell`, from its status' lane addresses and its admin Secret (read in
    /// `target`, the cluster the cell's stack lives in).
    pub async fn of(ctx: &Context, target: &Target, cell: &Cell) -> Result<Self> {
        let namespace = namespace_of(&cell.name_any());
        let api: Api<Secret> = Api::namespaced(target.client().clone(), &namespace);
        let secret = ctx
            .call(
                format!("read Secret {namespace}/{ADMIN_TOKEN}"),
                api.get_opt(ADMIN_TOKEN),
            )
            .await?;
        Self::from_secret(&ctx.lanes, cell, secret)
    }

    /// The same, for a client outside the operator (the `cellstack` CLI): the Secret is read
    /// with `client`, bounded by `timeout`, and lanes are reached through `lanes`.
    pub async fn with_client(
        client: &kube::Client,
        lanes: &LaneClient,
        cell: &Cell,
        timeout: Duration,
    ) -> Result<Self> {
        let namespace = namespace_of(&cell.name_any());
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let action = format!("read Secret {namespace}/{ADMIN_TOKEN}");
        let secret = tokio::time::timeout(timeout, api.get_opt(ADMIN_TOKEN))
            .await
            .map_err(|_| Error::Timeout {
                action: action.clone(),
                timeout,
            })?
            .map_err(|source| Error::kube(action, source))?;
        Self::from_secret(lanes, cell, secret)
    }

    fn from_secret(lanes: &LaneClient, cell: &Cell, secret: Option<Secret>) -> Result<Self> {
        let name = cell.name_any();
        let namespace = namespace_of(&name);
        let problem = |reason: String| Error::CellAdmin {
            cell: name.clone(),
            action: "find the admin API".into(),
            reason,
        };
        let bases: Vec<String> = admin_addresses(cell)
            .iter()
            .map(|address| lanes.url(address, ""))
            .collect();
        if bases.is_empty() {
            return Err(problem(if cell.spec.cluster.is_some() {
                "the cell is in a member cluster and reports no cross-cluster lane addresses (status.crossClusterAdminEndpoints is empty: is the operator running with --multicluster?)".into()
            } else {
                "the cell reports no lane addresses yet (status.endpoints is empty)".into()
            }));
        }
        let secret = secret
            .ok_or_else(|| problem(format!("Secret {namespace}/{ADMIN_TOKEN} does not exist")))?;
        let token = secret
            .data
            .and_then(|d| d.get(ADMIN_TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .ok_or_else(|| {
                problem(format!(
                    "Secret {namespace}/{ADMIN_TOKEN} has no UTF-8 key '{ADMIN_TOKEN_KEY}'"
                ))
            })?;
        Ok(Self {
            lanes: lanes.clone(),
            cell: name,
            bases,
            token,
        })
    }

    pub fn cell(&self) -> &str {
        &self.cell
    }

    /// One call under the tenants' prefix; `Ok(None)` when the cell answers that it does not
    /// know the tenant.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<Option<T>> {
        let path = format!("{}{path}", admin::PREFIX);
        self.call_lanes(&self.bases, method, &path, body).await
    }

    /// One call of the admin API's `path` to the first of `bases` that answers (each tried up
    /// to [`ROUNDS`] times).
    async fn call_lanes<T: DeserializeOwned>(
        &self,
        bases: &[String],
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<Option<T>> {
        let action = format!("{method} {path}");
        let mut last = String::new();
        // Every lane, up to ROUNDS times: a cell answers 503 while its Redis is briefly slow,
        // and a bulk step should not start over for that.
        for round in 0..ROUNDS {
            if round > 0 {
                let jitter = rand::random::<u64>() % 50;
                tokio::time::sleep(Duration::from_millis((100 << round) + jitter)).await;
            }
            for base in bases {
                let url = format!("{base}{path}");
                let mut req = self
                    .lanes
                    .http()
                    .request(method.clone(), &url)
                    .bearer_auth(&self.token)
                    .timeout(CALL_TIMEOUT);
                if let Some(body) = body {
                    req = req.json(body);
                }
                let res = match req.send().await {
                    Ok(res) => res,
                    Err(e) => {
                        last = format!("{base}: {e}");
                        continue;
                    }
                };
                let status = res.status();
                if status.is_success() {
                    if status == StatusCode::NO_CONTENT {
                        return serde_json::from_str("null").map(Some).map_err(|e| {
                            self.error(
                                &action,
                                format!("empty answer where a body was expected: {e}"),
                            )
                        });
                    }
                    return res
                        .json::<T>()
                        .await
                        .map(Some)
                        .map_err(|e| self.error(&action, format!("unreadable answer: {e}")));
                }
                let code = res
                    .headers()
                    .get(cellstack_api::wire::header::ERROR)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<ErrorCode>().ok());
                let text = res.text().await.unwrap_or_default();
                if code == Some(ErrorCode::UnknownTenant) {
                    return Ok(None);
                }
                if status.is_client_error() {
                    return Err(Error::CellAdminRefused {
                        cell: self.cell.clone(),
                        action: action.clone(),
                        status: status.as_u16(),
                        reason: text,
                    });
                }
                last = format!("{base}: {status}: {text}");
            }
        }
        Err(self.error(&action, format!("no lane answered; last: {last}")))
    }

    fn error(&self, action: &str, reason: String) -> Error {
        Error::CellAdmin {
            cell: self.cell.clone(),
            action: action.to_owned(),
            reason,
        }
    }

    fn absent(&self, tenant: &str, action: &str) -> Error {
        self.error(action, format!("tenant {tenant} is not in this cell"))
    }

    /// The tenant's record, if the cell has one.
    pub async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>> {
        self.call(Method::GET, &format!("/{tenant}"), None::<&()>)
            .await
    }

    /// Whether the cell's datastore carries the confirmation that it holds every tenant placed
    /// in the cell (`admin::DATASTORE_PATH`).
    pub async fn confirmation(&self) -> Result<DatastoreConfirmation> {
        self.call_lanes(&self.bases, Method::GET, admin::DATASTORE_PATH, None::<&()>)
            .await?
            .ok_or_else(|| self.error("read the datastore confirmation", "no answer".into()))
    }

    /// Confirms the cell's datastore if it holds a record of each of `tenants`; the answer
    /// names those it does not hold (then nothing is confirmed).
    pub async fn confirm(&self, tenants: Vec<String>) -> Result<DatastoreConfirmation> {
        let body = ConfirmDatastore { tenants };
        self.call_lanes(&self.bases, Method::PUT, admin::DATASTORE_PATH, Some(&body))
            .await?
            .ok_or_else(|| self.error("confirm the datastore", "no answer".into()))
    }

    /// Creates new tenants' records where they have none, many in one durable write
    /// ([`admin::NEW_TENANTS_PATH`]); one outcome per tenant, in order.
    pub async fn new_tenants(&self, tenants: Vec<NewTenant>) -> Result<Vec<NewTenantOutcome>> {
        let asked = tenants.len();
        let action = format!("create {asked} new tenants' records");
        let body = NewTenants { tenants };
        let answer: Vec<NewTenantOutcome> = self
            .call_lanes(
                &self.bases,
                Method::POST,
                admin::NEW_TENANTS_PATH,
                Some(&body),
            )
            .await?
            .ok_or_else(|| self.error(&action, "no answer".into()))?;
        if answer.len() != asked {
            return Err(self.error(&action, format!("answered {} outcomes", answer.len())));
        }
        Ok(answer)
    }

    /// Creates or overwrites the tenant's record.
    pub async fn put(&self, tenant: &str, record: &TenantRecord) -> Result<TenantRecord> {
        let action = format!("put tenant {tenant}");
        self.call(Method::PUT, &format!("/{tenant}"), Some(record))
            .await?
            .ok_or_else(|| self.absent(tenant, &action))
    }

    /// Removes every key of the tenant, its record included.
    pub async fn purge(&self, tenant: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/{tenant}"), None::<&()>)
            .await
            .map(|_| ())
    }

    /// Refuses the tenant's writes from now on (idempotent).
    pub async fn fence(&self, tenant: &str) -> Result<TenantRecord> {
        self.call(Method::POST, &format!("/{tenant}/fence"), None::<&()>)
            .await?
            .ok_or_else(|| self.absent(tenant, "fence"))
    }

    /// Serves the tenant at `epoch`.
    pub async fn activate(&self, tenant: &str, epoch: u64) -> Result<TenantRecord> {
        self.call(
            Method::POST,
            &format!("/{tenant}/activate"),
            Some(&Activate { epoch }),
        )
        .await?
        .ok_or_else(|| self.absent(tenant, "activate"))
    }

    /// Records that the tenant lives in `to` at `epoch` now.
    pub async fn moved(&self, tenant: &str, to: &str, epoch: u64) -> Result<TenantRecord> {
        let body = Moved {
            to: to.to_owned(),
            epoch,
        };
        self.call(Method::POST, &format!("/{tenant}/moved"), Some(&body))
            .await?
            .ok_or_else(|| self.absent(tenant, "moved"))
    }

    /// Starts recording the tenant's writes (clears what was recorded).
    pub async fn mark(&self, tenant: &str) -> Result<()> {
        self.call::<()>(Method::POST, &format!("/{tenant}/mark"), None::<&()>)
            .await?
            .ok_or_else(|| self.absent(tenant, "mark"))
    }

    /// A page of the tenant's data.
    pub async fn export(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<ExportPage> {
        self.page("export", tenant, cursor, count).await
    }

    /// Takes the keys written since `mark` (or the last take) as the taken set; writes from now
    /// on are recorded afresh. `Ok(None)` when the cell refused with a 4xx (a cell too old to
    /// know the call): nothing was taken then.
    pub async fn take_changes(&self, tenant: &str) -> Result<Option<u64>> {
        let action = format!("take the changes of tenant {tenant}");
        match self
            .call::<TakenChanges>(
                Method::POST,
                &format!("/{tenant}/changes/take"),
                None::<&()>,
            )
            .await
        {
            Ok(Some(taken)) => Ok(Some(taken.keys)),
            Ok(None) => Err(self.absent(tenant, &action)),
            Err(Error::CellAdminRefused { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A page of the set [`Self::take_changes`] took.
    pub async fn taken_changes(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<ExportPage> {
        self.page("changes?taken=true", tenant, cursor, count).await
    }

    /// A page of the keys written since `mark`.
    pub async fn changes(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<ExportPage> {
        self.page("changes", tenant, cursor, count).await
    }

    async fn page(
        &self,
        what: &str,
        tenant: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<ExportPage> {
        // `what` may carry a query of its own.
        let sep = if what.contains('?') { '&' } else { '?' };
        let mut path = format!("/{tenant}/{what}{sep}count={count}");
        if let Some(c) = cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        Ok(self
            .call(Method::GET, &path, None::<&()>)
            .await?
            .unwrap_or(ExportPage {
                entries: vec![],
                cursor: None,
            }))
    }

    /// Writes `entries` into the tenant (which must be importing).
    pub async fn import(&self, tenant: &str, entries: Vec<Entry>) -> Result<()> {
        let body = Import { entries };
        self.call::<()>(Method::POST, &format!("/{tenant}/import"), Some(&body))
            .await?
            .ok_or_else(|| self.absent(tenant, "import"))
    }

    /// Count and digest of the tenant's data.
    pub async fn checksum(&self, tenant: &str) -> Result<Checksum> {
        self.call(Method::GET, &format!("/{tenant}/checksum"), None::<&()>)
            .await?
            .ok_or_else(|| self.absent(tenant, "checksum"))
    }

    /// Hands the cell the tenant's effective policy ahead of its policy file (stored with the
    /// tenant's record, which must exist), then asks every lane what it enforces for the tenant:
    /// succeeds only when each lane answers that it knows this override, whether it enforces
    /// it or its file already carries it. A lane missing from the cell's status (still
    /// starting) reads the override with the tenant's record on its first request.
    pub async fn hand_over_policy(&self, tenant: &str, handed: &PolicyOverride) -> Result<()> {
        let action = format!("hand over the policy of tenant {tenant}");
        let path = format!("/{tenant}/{POLICY_OVERRIDE_PATH}");
        self.call::<PolicyInForce>(Method::PUT, &path, Some(handed))
            .await?
            .ok_or_else(|| self.absent(tenant, &action))?;
        let full = format!("{}{path}", admin::PREFIX);
        for base in &self.bases {
            let answer = self
                .call_lanes::<PolicyInForce>(
                    std::slice::from_ref(base),
                    Method::GET,
                    &full,
                    None::<&()>,
                )
                .await?
                .ok_or_else(|| self.absent(tenant, &action))?;
            if answer.override_version.as_deref() != Some(handed.version.as_str()) {
                return Err(self.error(
                    &action,
                    format!(
                        "lane {base} does not acknowledge policy version {} (it knows {:?}, enforces {:?} from its {:?}, file version {})",
                        handed.version,
                        answer.override_version,
                        answer.policy.map(|p| p.policy),
                        answer.source,
                        answer.file_version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes sure the cell serves the tenant at `epoch`, judged against `expected`, the marker
    /// of the tenant's data kept in its status ([`data_marker::judge`]): creates its record
    /// when the tenant never had one, gives an unmarked record a marker, and marks the tenant
    /// lost when the cell no longer holds the data the marker names — never recreates it as
    /// empty. Never touches a record that carries the expected marker.
    pub async fn provision(
        &self,
        tenant: &str,
        epoch: u64,
        expected: Option<&str>,
    ) -> Result<Provisioned> {
        let record = self.tenant(tenant).await?;
        Ok(match data_marker::judge(record.as_ref(), expected) {
            Judgement::Intact => Provisioned::Present {
                marker: expected.unwrap_or_default().to_owned(),
            },
            Judgement::Create => {
                let marker = data_marker::new_marker();
                let record = TenantRecord::new(TenantState::Active, epoch, Some(marker.clone()));
                self.put(tenant, &record).await?;
                Provisioned::Created { marker }
            }
            Judgement::Adopt { marker } => {
                let marker = marker.unwrap_or_else(data_marker::new_marker);
                if let Some(current) = record {
                    let adopted = TenantRecord {
                        marker: Some(marker.clone()),
                        ..current
                    };
                    self.put(tenant, &adopted).await?;
                }
                Provisioned::Present { marker }
            }
            Judgement::Lost { marker, found } => {
                let tombstone = TenantRecord {
                    state: TenantState::Lost,
                    epoch: record.as_ref().map_or(epoch, |r| r.epoch.max(epoch)),
                    moved_to: None,
                    tracking: false,
                    marker: Some(marker.clone()),
                };
                self.put(tenant, &tombstone).await?;
                Provisioned::Lost { marker, found }
            }
            Judgement::StillLost { marker } => Provisioned::StillLost { marker },
        })
    }

    /// Serves the tenant again, empty, under a new marker, in place of data that was lost (the
    /// owner accepted the loss). Only a record the cell answers as lost is replaced.
    pub async fn accept_loss(&self, tenant: &str, epoch: u64) -> Result<Option<String>> {
        let Some(current) = self.tenant(tenant).await? else {
            return Ok(None);
        };
        if current.state != TenantState::Lost {
            return Ok(None);
        }
        self.purge(tenant).await?;
        let marker = data_marker::new_marker();
        let fresh = TenantRecord::new(
            TenantState::Active,
            current.epoch.max(epoch),
            Some(marker.clone()),
        );
        self.put(tenant, &fresh).await?;
        Ok(Some(marker))
    }
}

/// What [`CellAdmin::provision`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// The record is there and carries `marker` (given to it just now if it had none).
    Present { marker: String },
    /// A new tenant's record was created with `marker`.
    Created { marker: String },
    /// The data `marker` names is gone (`found` says what the cell holds instead); the cell
    /// answers the tenant as lost from now on.
    Lost { marker: String, found: String },
    /// The cell already answers the tenant as lost.
    StillLost { marker: Option<String> },
}

impl Provisioned {
    /// The marker to keep in the tenant's status, while its data is there.
    pub fn marker(&self) -> Option<&str> {
        match self {
            Self::Present { marker } | Self::Created { marker } => Some(marker),
            Self::Lost { .. } | Self::StillLost { .. } => None,
        }
    }
}
