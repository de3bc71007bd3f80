//! Traffic through a `cellstack-router`, for the end-to-end suites, the move tests and the demo:
//! a steady per-tenant [`Load`] that counts every answer by tenant, and a [`Checker`] that writes
//! sequence-numbered items and keeps every acknowledgement, so a test can prove none was lost.
//!
//! Both are bounded: a fixed number of tasks, a timeout on every request, and they stop when told.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    admin::{ExportPage, PREFIX},
    v1alpha1::{
        Cell, INTERNAL_CA_BUNDLE_KEY, LANE_CLIENT_ISSUER_ANNOTATION, LANE_CLIENT_SECRET,
        LANE_TLS_SECRET, LANE_TLS_SERVER_NAME,
    },
    wire::{ErrorBody, header},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rustls_pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

/// Timeout of one request of the load and the checker: longer than the router's own deadline,
/// so a slow answer is the router's to report.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the traffic clients keep an idle connection to the router: well under the router's
/// `--header-read-timeout-ms` (30 s), after which it closes a keep-alive connection that sent
/// nothing. A client that reuses a connection the server is closing at that moment gets "error
/// sending request" — the keep-alive race every HTTP client has, which a one-off error of
/// that kind in a rollout scenario looked like.
const IDLE_CONNECTION: Duration = Duration::from_secs(10);

/// A client for traffic through the router: [`REQUEST_TIMEOUT`] per request, idle connections
/// dropped after [`IDLE_CONNECTION`].
fn router_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(IDLE_CONNECTION)
        .build()
        .unwrap_or_default()
}

/// Locks a mutex, recovering the data if a panicking holder poisoned it: the counters stay
/// meaningful (each update is one statement).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `p` quantile (0..=1) of sorted durations; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The position of the `k`-th (from 0) set bit of `bits`; 0 when there are fewer.
fn nth_set_bit(bits: u16, k: u32) -> u32 {
    (0..16)
        .filter(|i| bits & (1 << i) != 0)
        .nth(k as usize)
        .unwrap_or(0)
}

/// What one tenant's requests got.
#[derive(Debug, Clone, Default)]
pub struct TenantStats {
    /// 2xx answers.
    pub ok: u64,
    /// 429 answers (rate limited at the router's edge or in the cell).
    pub limited: u64,
    /// Every other answer by status; 0 stands for no answer (connection error, timeout).
    pub errors: BTreeMap<u16, u64>,
    /// Those answers by the error code they carried (`x-cellstack-error`; `-` for none), to tell
    /// a cell's shedding from a router's refusal.
    pub error_codes: BTreeMap<String, u64>,
    /// Latency of every 2xx answer, in the order they came.
    pub latencies: Vec<Duration>,
    /// The cell named by the last answer's `x-cellstack-cell` header.
    pub cell: Option<String>,
    /// 2xx answers since the last error (429s neither count nor break it).
    pub streak: u64,
    /// The first few errors as they were answered (method, status and body), to say why.
    pub first_errors: Vec<String>,
}

/// How many errors per tenant [`TenantStats::first_errors`] keeps.
pub const FIRST_ERRORS_KEPT: usize = 3;

impl TenantStats {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.limited + self.error_count()
    }

    fn record(
        &mut self,
        answer: Result<(u16, Option<String>, Option<String>), ()>,
        latency: Duration,
    ) {
        match answer {
            Ok((status, cell, code)) => {
                if cell.is_some() {
                    self.cell = cell;
                }
                match status {
                    200..=299 => {
                        self.ok += 1;
                        self.streak += 1;
                        self.latencies.push(latency);
                    }
                    429 => self.limited += 1,
                    other => {
                        *self.errors.entry(other).or_default() += 1;
                        *self
                            .error_codes
                            .entry(code.unwrap_or_else(|| "-".into()))
                            .or_default() += 1;
                        self.streak = 0;
                    }
                }
            }
            Err(()) => {
                *self.errors.entry(0).or_default() += 1;
                self.streak = 0;
            }
        }
    }
}

/// How a [`Load`] drives one tenant.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Requests per second per tenant (each tenant has its own task).
    pub per_second: f64,
    /// Every `writes_every`-th request is a PUT, the rest GETs of the items written; 1 = writes
    /// only.
    pub writes_every: u64,
}

impl Pace {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(0.01))
    }
}

/// The tenant API a [`Load`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TenantApi {
    /// cellstack's reference service: `PUT`/`GET /v1/items/load-<n>`.
    #[default]
    Reference,
    /// The Go example behind the runtime (examples/go-orders): `POST /orders`, `GET
    /// /orders/<id>` of orders it created.
    Orders,
}

/// Steady traffic to a set of tenants through a router: one task per tenant, each sending at
/// its pace (closed loop: a slow answer delays the next request, so an overloaded system is not
/// buried under a growing backlog), counting answers per tenant until stopped.
pub struct Load {
    stats: Arc<Mutex<BTreeMap<String, TenantStats>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(router: &str, tenants: &[String], pace: Pace) -> Self {
        Self::start_speaking(router, tenants, pace, TenantApi::Reference)
    }

    pub fn start_speaking(router: &str, tenants: &[String], pace: Pace, api: TenantApi) -> Self {
        let stats: Arc<Mutex<BTreeMap<String, TenantStats>>> = Arc::new(Mutex::new(
            tenants
                .iter()
                .map(|t| (t.clone(), TenantStats::default()))
                .collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let http = router_client();
        let tasks = tenants
            .iter()
            .map(|tenant| {
                let (stats, stop, http) = (stats.clone(), stop.clone(), http.clone());
                let (router, tenant) = (router.trim_end_matches('/').to_owned(), tenant.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(pace.interval());
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // Writes go to 16 items in turn; reads only ask for items a write was
                    // acknowledged for, so a 404 is a real error (e.g. data lost with a
                    // datastore).
                    let (mut n, mut writes, mut known): (u64, u64, u16) = (0, 0, 0);
                    // With `TenantApi::Orders`: the id of the order each slot's write created.
                    let mut ids = [0i64; 16];
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let write =
                            known == 0 || pace.writes_every <= 1 || n % pace.writes_every == 0;
                        n += 1;
                        let item = if write {
                            writes += 1;
                            (writes % 16) as u32
                        } else {
                            nth_set_bit(known, (n % u64::from(known.count_ones())) as u32)
                        };
                        let request = match (api, write) {
                            (TenantApi::Reference, true) => http
                                .put(format!("{router}/v1/items/load-{item}"))
                                .body(n.to_string()),
                            (TenantApi::Reference, false) => {
                                http.get(format!("{router}/v1/items/load-{item}"))
                            }
                            (TenantApi::Orders, true) => http.post(format!("{router}/orders")).json(
                                &serde_json::json!({"item": format!("load-{item}"), "quantity": 1}),
                            ),
                            (TenantApi::Orders, false) => {
                                http.get(format!("{router}/orders/{}", ids[item as usize]))
                            }
                        };
                        let verb = match (api, write) {
                            (TenantApi::Reference, true) => "PUT",
                            (TenantApi::Orders, true) => "POST",
                            (_, false) => "GET",
                        };
                        let started = Instant::now();
                        let (answer, why) =
                            match request.header(header::TENANT, &tenant).send().await {
                                Ok(r) => {
                                    let header_of = |name: &str| {
                                        r.headers()
                                            .get(name)
                                            .and_then(|v| v.to_str().ok())
                                            .map(str::to_owned)
                                    };
                                    let (cell, code) =
                                        (header_of(header::CELL), header_of(header::ERROR));
                                    let status = r.status().as_u16();
                                    let why = if (200..300).contains(&status) || status == 429 {
                                        if api == TenantApi::Orders && write && status < 300 {
                                            let order: serde_json::Value =
                                                r.json().await.unwrap_or_default();
                                            ids[item as usize] = order["id"].as_i64().unwrap_or(0);
                                        }
                                        None
                                    } else {
                                        let body = r.text().await.unwrap_or_default();
                                        Some(format!(
                                            "{verb} {status}: {}",
                                            body.chars().take(240).collect::<String>()
                                        ))
                                    };
                                    (Ok((status, cell, code)), why)
                                }
                                Err(e) => (Err(()), Some(format!("no answer: {e}"))),
                            };
                        let latency = started.elapsed();
                        if write && matches!(answer, Ok((200..=299, _, _))) {
                            known |= 1 << item;
                        }
                        let mut stats = lock(&stats);
                        let tenant_stats = stats.entry(tenant.clone()).or_default();
                        tenant_stats.record(answer, latency);
                        if let Some(why) = why
                            && tenant_stats.first_errors.len() < FIRST_ERRORS_KEPT
                        {
                            tenant_stats.first_errors.push(why);
                        }
                    }
                })
            })
            .collect();
        Self { stats, stop, tasks }
    }

    /// What every tenant got so far.
    pub fn snapshot(&self) -> BTreeMap<String, TenantStats> {
        lock(&self.stats).clone()
    }

    /// Waits (up to `wait`) until `done` holds for every tenant's counts so far, e.g. each has
    /// had a few answers (a warm-up) or a run of successes (a recovery).
    pub async fn until_every_tenant(
        &self,
        what: &str,
        wait: Duration,
        done: impl Fn(&TenantStats) -> bool,
    ) -> anyhow::Result<()> {
        crate::cluster::poll(what, wait, || {
            let stats = self.snapshot();
            let behind: Vec<String> = stats
                .iter()
                .filter(|(_, s)| !done(s))
                .map(|(t, _)| t.clone())
                .collect();
            async move {
                ensure!(behind.is_empty(), "not yet: {behind:?}");
                Ok(Some(()))
            }
        })
        .await
    }

    /// Forgets what was counted so far (after a warm-up, or between phases).
    pub fn reset(&self) {
        for s in lock(&self.stats).values_mut() {
            *s = TenantStats {
                cell: s.cell.take(),
                ..TenantStats::default()
            };
        }
    }

    /// Stops every task, waits for requests in flight, and returns the final counts.
    pub async fn finish(mut self) -> BTreeMap<String, TenantStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        lock(&self.stats).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One write the router acknowledged: which item, which cell applied it, when it was sent and
/// how long it took.
#[derive(Debug, Clone)]
pub struct Ack {
    pub item: String,
    pub cell: String,
    pub started: Instant,
    pub latency: Duration,
}

impl Ack {
    /// When the acknowledgement arrived.
    pub fn completed(&self) -> Instant {
        self.started + self.latency
    }
}

/// What a [`Checker`] writes.
#[derive(Debug, Clone)]
pub enum Writes {
    /// Sequence-numbered items of the reference service, `PUT /v1/items/<prefix>-<n>`.
    Items(String),
    /// Orders of the Go example service behind the runtime (examples/go-orders), `POST
    /// /orders`; each acknowledged one is the item `order-<id>` it keeps in the state API.
    Orders,
}

/// Refusals counted by what they were: `"<status> <error code>"` (`"503 shed"`) for an answer
/// with cellstack's error body, the status alone for any other, `"no answer"` when none came
/// and `"2xx without an order id"` for an order the service acknowledged without its id.
pub type Refusals = BTreeMap<String, u64>;

/// The key under which a refusal `res` is counted in [`Refusals`], and the message its body
/// gave (if any); reads its body.
async fn refusal(res: reqwest::Response) -> (String, Option<String>) {
    let status = res.status().as_u16();
    match res.json::<ErrorBody>().await {
        Ok(body) => (format!("{status} {}", body.error), Some(body.message)),
        Err(_) => (status.to_string(), None),
    }
}

/// How many distinct refusal messages a [`Checker`] keeps, so a failed test can say why.
const MESSAGES_KEPT: usize = 8;

/// Writes to one tenant through the router from a few workers, at a steady pace, until
/// stopped; keeps every acknowledgement and counts refusals by status and error code.
pub struct Checker {
    acks: Arc<Mutex<Vec<Ack>>>,
    refused: Arc<Mutex<Refusals>>,
    messages: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Checker {
    /// Sequence-numbered items `<prefix>-<n>` of the reference service.
    pub fn start(router: &str, tenant: &str, prefix: &str, workers: usize, pace: Duration) -> Self {
        Self::writing(
            router,
            tenant,
            Writes::Items(prefix.to_owned()),
            workers,
            pace,
        )
    }

    pub fn writing(
        router: &str,
        tenant: &str,
        writes: Writes,
        workers: usize,
        pace: Duration,
    ) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(BTreeMap::new()));
        let messages = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let seq = Arc::new(AtomicU64::new(0));
        let http = router_client();
        let workers = (0..workers)
            .map(|_| {
                let (acks, refused, messages, stop, seq, http) = (
                    acks.clone(),
                    refused.clone(),
                    messages.clone(),
                    stop.clone(),
                    seq.clone(),
                    http.clone(),
                );
                let (router, tenant, writes) = (
                    router.trim_end_matches('/').to_owned(),
                    tenant.to_owned(),
                    writes.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let started = Instant::now();
                        let (mut item, request) = match &writes {
                            Writes::Items(prefix) => {
                                let item = format!("{prefix}-{n:08}");
                                let url = format!("{router}/v1/items/{item}");
                                (item, http.put(url).body(n.to_string()))
                            }
                            Writes::Orders => (
                                String::new(),
                                http.post(format!("{router}/orders")).json(
                                    &serde_json::json!({"item": format!("w{n}"), "quantity": 1}),
                                ),
                            ),
                        };
                        let res = request
                            .header(header::TENANT, &tenant)
                            .timeout(REQUEST_TIMEOUT)
                            .send()
                            .await;
                        match res {
                            Ok(r) if r.status().is_success() => {
                                let cell = r
                                    .headers()
                                    .get(header::CELL)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                if matches!(writes, Writes::Orders) {
                                    let order: serde_json::Value =
                                        r.json().await.unwrap_or_default();
                                    match order["id"].as_i64() {
                                        Some(id) => item = format!("order-{id}"),
                                        None => {
                                            *lock(&refused)
                                                .entry("2xx without an order id".into())
                                                .or_default() += 1;
                                            continue;
                                        }
                                    }
                                }
                                lock(&acks).push(Ack {
                                    item,
                                    cell,
                                    started,
                                    latency: started.elapsed(),
                                });
                            }
                            Ok(r) => {
                                let (key, message) = refusal(r).await;
                                if let Some(message) = message {
                                    let mut kept = lock(&messages);
                                    if kept.len() < MESSAGES_KEPT {
                                        kept.insert(format!("{key}: {message}"));
                                    }
                                }
                                *lock(&refused).entry(key).or_default() += 1;
                            }
                            Err(e) => {
                                let mut kept = lock(&messages);
                                if kept.len() < MESSAGES_KEPT {
                                    kept.insert(format!("no answer: {e}"));
                                }
                                drop(kept);
                                *lock(&refused).entry("no answer".into()).or_default() += 1
                            }
                        }
                        if !pace.is_zero() {
                            tokio::time::sleep(pace).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            acks,
            refused,
            messages,
            stop,
            workers,
        }
    }

    /// Stops the workers, waits for writes in flight, and returns every acknowledgement and the
    /// refusals (see [`Refusals`]).
    pub async fn finish(mut self) -> (Vec<Ack>, Refusals) {
        self.stop().await;
        let acks = lock(&self.acks).clone();
        let refused = lock(&self.refused).clone();
        (acks, refused)
    }

    /// Stops the workers and waits for writes in flight; the counts stay readable.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            let _ = w.await;
        }
    }

    /// The refusals so far, by what they were.
    pub fn refused(&self) -> Refusals {
        lock(&self.refused).clone()
    }

    /// Up to eight distinct refusals so far as `"<key>: <message>"`, so a test that fails on a
    /// refusal can say what the router or cell gave as the reason.
    pub fn refusal_messages(&self) -> Vec<String> {
        lock(&self.messages).iter().cloned().collect()
    }

    pub fn acked(&self) -> usize {
        lock(&self.acks).len()
    }

    /// The acknowledgements so far.
    pub fn acks(&self) -> Vec<Ack> {
        lock(&self.acks).clone()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The item names (`i:` keys) a cell holds for `tenant`, read page by page through the cell's
/// admin API (its first endpoint, port 9090, with the token from the cell's `admin-token`
/// Secret). Needs the host to reach the cell's Service addresses.
pub async fn items_in(
    client: &Client,
    cell: &str,
    tenant: &str,
) -> anyhow::Result<BTreeSet<String>> {
    items_in_at(client, client, cell, tenant).await
}

/// [`items_in`] for a cell whose stack lives in another cluster than its Cell: the Cell read
/// through `cells` (the management cluster), its admin token and certificate through `stack`
/// (the member), and its lane called at its ClusterIP in that cluster (which the host reaches
/// through that cluster's test path, e2e/cluster).
pub async fn items_in_at(
    cells: &Client,
    stack: &Client,
    cell: &str,
    tenant: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let client = cells;
    let secrets: Api<Secret> = Api::namespaced(stack.clone(), &format!("cell-{cell}"));
    let token = secrets
        .get("admin-token")
        .await?
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0))
        .transpose()?
        .context("admin token")?;
    let c = Api::<Cell>::all(client.clone()).get(cell).await?;
    let endpoint = c
        .status
        .and_then(|s| s.endpoints.first().cloned())
        .context("cell has no endpoint")?;
    let host = endpoint.split(':').next().unwrap_or_default().to_owned();
    let (http, scheme) = lane_client(&secrets).await?;
    let mut items = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{scheme}://{host}:9090{PREFIX}/{tenant}/export?count=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        // A busy cell may answer 503 (a Redis call timed out, its breaker is open for a
        // moment) or be out of its Service for a failed readiness probe: that page again, for
        // up to 10 s.
        let mut tries = 0;
        let res = loop {
            tries += 1;
            match http.get(&url).bearer_auth(&token).send().await {
                Ok(res)
                    if res.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || tries == 20 =>
                {
                    break res;
                }
                Err(e) if tries == 20 => return Err(e.into()),
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(items);
        }
        ensure!(
            res.status().is_success(),
            "export from {cell}: {}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        let page: ExportPage = res.json().await?;
        for e in page.entries {
            if let Some(name) = e.key.strip_prefix("i:") {
                items.insert(name.to_owned());
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(items),
        }
    }
}

/// A client of a cell's lanes and its scheme: HTTPS trusting the CA bundle of the cell's
/// `lane-tls` Secret when it has one (internal TLS), else plain HTTP.
pub async fn lane_client(secrets: &Api<Secret>) -> anyhow::Result<(reqwest::Client, &'static str)> {
    let (builder, scheme) = lane_client_builder(secrets).await?;
    Ok((builder.build()?, scheme))
}

/// A client of the one lane pod at `ip` and the base URL of its `port`. With internal TLS the
/// URL names the certificate's name for pod addresses ([`LANE_TLS_SERVER_NAME`]), which the
/// client resolves to `ip`.
pub async fn lane_pod_client(
    secrets: &Api<Secret>,
    ip: std::net::IpAddr,
    port: u16,
) -> anyhow::Result<(reqwest::Client, String)> {
    let (builder, scheme) = lane_client_builder(secrets).await?;
    Ok(match scheme {
        "https" => (
            builder
                .resolve(LANE_TLS_SERVER_NAME, (ip, port).into())
                .build()?,
            format!("https://{LANE_TLS_SERVER_NAME}:{port}"),
        ),
        _ => (
            builder.build()?,
            format!("http://{}", std::net::SocketAddr::from((ip, port))),
        ),
    })
}

async fn lane_client_builder(
    secrets: &Api<Secret>,
) -> anyhow::Result<(reqwest::ClientBuilder, &'static str)> {
    let builder = reqwest::Client::builder();
    let Some(tls) = secrets.get_opt(LANE_TLS_SECRET).await? else {
        return Ok((builder, "http"));
    };
    let bundle = tls
        .data
        .and_then(|d| d.get(INTERNAL_CA_BUNDLE_KEY).cloned())
        .context("Secret lane-tls has no ca.crt")?;
    let mut builder = builder.tls_built_in_root_certs(false);
    for cert in reqwest::Certificate::from_pem_bundle(&bundle.0)? {
        builder = builder.add_root_certificate(cert);
    }
    // Lanes reached through node ports ask for the release's client certificate: the one whose
    // issuing CA is in the bundle the lanes trust, from whichever namespace of this cluster
    // holds it (the operator's, or a member's copy).
    let trusted: BTreeSet<String> = rustls_pki_types::CertificateDer::pem_slice_iter(&bundle.0)
        .filter_map(Result::ok)
        .map(|der| hex::encode(Sha256::digest(der.as_ref())))
        .collect();
    let all: Api<Secret> = Api::all(secrets.clone().into_client());
    let named =
        kube::api::ListParams::default().fields(&format!("metadata.name={LANE_CLIENT_SECRET}"));
    let identity = all.list(&named).await?.items.into_iter().find_map(|s| {
        let issuer = s
            .metadata
            .annotations
            .as_ref()?
            .get(LANE_CLIENT_ISSUER_ANNOTATION)?;
        if !trusted.contains(issuer) {
            return None;
        }
        let data = s.data?;
        let mut pem = data.get("tls.crt")?.0.clone();
        pem.extend_from_slice(&data.get("tls.key")?.0);
        Some(pem)
    });
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok((builder, "https"))
}

/// The acknowledged writes (first ten) that `cell` does not hold for `tenant`: empty when
/// none was lost.
pub async fn lost_writes(
    client: &Client,
    cell: &str,
    tenant: &str,
    acks: &[Ack],
) -> anyhow::Result<Vec<String>> {
    lost_writes_at(client, client, cell, tenant, acks).await
}

/// [`lost_writes`] for a cell whose stack lives in another cluster ([`items_in_at`]).
pub async fn lost_writes_at(
    cells: &Client,
    stack: &Client,
    cell: &str,
    tenant: &str,
    acks: &[Ack],
) -> anyhow::Result<Vec<String>> {
    let held = items_in_at(cells, stack, cell, tenant).await?;
    Ok(acks
        .iter()
        .filter(|a| !held.contains(&a.item))
        .map(|a| a.item.clone())
        .take(10)
        .collect())
}

/// One PUT of `item` for `tenant` through the router; an error unless it is acknowledged (2xx).
pub async fn put_ok(
    http: &reqwest::Client,
    router: &str,
    tenant: &str,
    item: &str,
    body: &str,
) -> anyhow::Result<()> {
    let res = http
        .put(format!("{}/v1/items/{item}", router.trim_end_matches('/')))
        .header(header::TENANT, tenant)
        .body(body.to_owned())
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?;
    ensure!(
        res.status().is_success(),
        "PUT {item} for {tenant}: {}",
        res.status()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn reads_only_pick_items_that_were_written() {
        let bits = 0b1010_0100u16;
        let picked: Vec<u32> = (0..6).map(|k| nth_set_bit(bits, k % 3)).collect();
        assert_eq!(picked, vec![2, 5, 7, 2, 5, 7]);
    }

    #[test]
    fn stats_count_limits_and_errors_apart() {
        let mut s = TenantStats::default();
        s.record(
            Ok((200, Some("alpha".into()), None)),
            Duration::from_millis(3),
        );
        s.record(
            Ok((429, None, Some("rate_limited".into()))),
            Duration::from_millis(1),
        );
        s.record(
            Ok((503, None, Some("shed".into()))),
            Duration::from_millis(1),
        );
        s.record(Err(()), Duration::from_millis(1));
        assert_eq!(
            (s.ok, s.limited, s.error_count(), s.requests()),
            (1, 1, 2, 4)
        );
        assert_eq!(s.cell.as_deref(), Some("alpha"));
        assert_eq!(s.latencies[0], Duration::from_millis(3));
        assert_eq!(s.error_codes.get("shed"), Some(&1));
    }
}
