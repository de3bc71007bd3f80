//! Traffic and move helpers shared by the move tests and the move benchmark: a real
//! `cellstack-router` process, a checker client writing sequence-numbered items through it,
//! and readers of a tenant's items and move record.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::{
    admin::{ExportPage, PREFIX},
    v1alpha1::{MoveStatus, MoveStep, TenantAssignment},
    wire::header,
};
use cellstack_e2e::cluster::{host_reaches_cluster_ips, poll};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::process::{Child, Command};

use super::{TEST_LABEL, WAIT, World, is_ready};

/// Items written before a move, so the bulk copy has something to do.
pub const PRELOAD: u64 = 2000;

/// A `cellstack-router` process serving the table the world's operator publishes.
pub struct Router {
    pub url: String,
    pub log: PathBuf,
    /// Killed on drop.
    pub _child: Child,
}

impl Router {
    pub async fn start(world: &World) -> anyhow::Result<Self> {
        // The router is another package's binary: the workspace build the test command runs
        // puts it beside this test's own.
        let exe = std::env::current_exe()?
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("cellstack-router"))
            .context("locating the target directory")?;
        ensure!(
            exe.exists(),
            "{} is missing: build it first (cargo build -p cellstack-router)",
            exe.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let admin = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("{}-router", world.id));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("router.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--kubernetes", "--namespace", &world.system.name])
            .arg("--last-known-good")
            .arg(dir.join("table.bin"))
            .args(["--deadline-ms", "5000", "--worker-threads", "2"])
            .env("CELLSTACK_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .context("starting cellstack-router")?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            log,
            _child: child,
        })
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- router log ---\n{}\n",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// One write the router acknowledged: which item, which cell applied it, how long it took.
#[derive(Debug, Clone)]
pub struct Ack {
    pub item: String,
    pub cell: String,
    pub latency: Duration,
}

/// Writes sequence-numbered items to one tenant through the router from a few workers, at a
/// steady pace, until stopped; keeps every acknowledgement and counts refusals.
pub struct Checker {
    pub acks: Arc<Mutex<Vec<Ack>>>,
    pub refused: Arc<Mutex<BTreeMap<u16, u64>>>,
    pub stop: Arc<AtomicBool>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Checker {
    pub fn start(router: &str, tenant: &str, prefix: &str, workers: usize, pace: Duration) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let seq = Arc::new(AtomicU64::new(0));
        let http = reqwest::Client::new();
        let handles = (0..workers)
            .map(|_| {
                let (acks, refused, stop, seq, http) = (
                    acks.clone(),
                    refused.clone(),
                    stop.clone(),
                    seq.clone(),
                    http.clone(),
                );
                let (router, tenant, prefix) =
                    (router.to_owned(), tenant.to_owned(), prefix.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let item = format!("{prefix}-{n:08}");
                        let started = Instant::now();
                        let res = http
                            .put(format!("{router}/v1/items/{item}"))
                            .header(header::TENANT, &tenant)
                            .body(n.to_string())
                            .timeout(Duration::from_secs(10))
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
                                acks.lock().expect("acks").push(Ack {
                                    item,
                                    cell,
                                    latency: started.elapsed(),
                                });
                            }
                            Ok(r) => {
                                *refused
                                    .lock()
                                    .expect("refused")
                                    .entry(r.status().as_u16())
                                    .or_default() += 1;
                            }
                            Err(_) => *refused.lock().expect("refused").entry(0).or_default() += 1,
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
            stop,
            workers: handles,
        }
    }

    pub async fn finish(self) -> (Vec<Ack>, BTreeMap<u16, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        let acks = self.acks.lock().expect("acks").clone();
        let refused = self.refused.lock().expect("refused").clone();
        (acks, refused)
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }
}

/// The item names a cell holds for `tenant`, read through its admin API.
pub async fn items_in(world: &World, cell: &str, tenant: &str) -> anyhow::Result<BTreeSet<String>> {
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &format!("cell-{cell}"));
    let token = secrets
        .get("admin-token")
        .await?
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0))
        .transpose()?
        .context("admin token")?;
    let c = world.cells_api().get(cell).await?;
    let endpoint = c
        .status
        .and_then(|s| s.endpoints.first().cloned())
        .context("cell has no endpoint")?;
    let host = endpoint.split(':').next().unwrap_or_default().to_owned();
    let http = reqwest::Client::new();
    let mut items = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("http://{host}:9090{PREFIX}/{tenant}/export?count=500");
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

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Two Ready cells and a tenant pinned to the first, provisioned and reachable through a
/// router: (alpha, bravo, tenant, router).
pub async fn setup(world: &mut World) -> anyhow::Result<(String, String, String, Router)> {
    ensure!(
        host_reaches_cluster_ips(),
        "these tests drive the cells' admin APIs from this host: the cluster's Service addresses must be reachable (e2e/cluster sets that up)"
    );
    // On this small machine a move may roll back on the pause bound; it is then tried again
    // after 2 s (not 5 minutes), so tests and the benchmark still see it end on the target.
    world
        .operator_env
        .push(("CELLSTACK_MOVE_RETRY_SECS".into(), "2".into()));
    world.start_operator("a").await?;
    let spec = json!({"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}});
    let alpha = world.create_cell("alpha", spec.clone()).await?.name_any();
    let bravo = world.create_cell("bravo", spec).await?.name_any();
    world.wait_cell(&alpha, "Ready", is_ready).await?;
    world.wait_cell(&bravo, "Ready", is_ready).await?;
    let tenant = format!("{}-t", world.id);
    let ta: TenantAssignment = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
        "metadata": {"name": tenant, "labels": {TEST_LABEL: world.id}},
        "spec": {"tenantId": tenant, "cell": alpha},
    }))?;
    Api::<TenantAssignment>::all(world.client.clone())
        .create(&PostParams::default(), &ta)
        .await?;
    let router = Router::start(world).await?;
    // Served through the router: the table names the tenant, and its cell has its record.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/items/probe", router.url);
    poll("a first write through the router", WAIT, || {
        let (http, url, tenant) = (http.clone(), url.clone(), tenant.clone());
        async move {
            let res = http
                .put(&url)
                .header(header::TENANT, &tenant)
                .body("1")
                .send()
                .await?;
            if res.status().is_success() {
                Ok(Some(()))
            } else {
                bail!("{}: {}", res.status(), res.text().await.unwrap_or_default())
            }
        }
    })
    .await
    .map_err(|e| e.context(router.log_tail()))?;
    Ok((alpha, bravo, tenant, router))
}

pub async fn preload(router: &Router, tenant: &str) -> anyhow::Result<()> {
    let checker = Checker::start(&router.url, tenant, "pre", 16, Duration::ZERO);
    poll("the preload", WAIT, || {
        let n = checker.acked();
        async move { Ok((n as u64 >= PRELOAD).then_some(())) }
    })
    .await?;
    let (_, refused) = checker.finish().await;
    ensure!(refused.is_empty(), "preload writes refused: {refused:?}");
    Ok(())
}

/// Points the tenant at `cell`.
pub async fn retarget(world: &World, tenant: &str, cell: &str) -> anyhow::Result<()> {
    Api::<TenantAssignment>::all(world.client.clone())
        .patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cell": cell}})),
        )
        .await?;
    Ok(())
}

pub async fn move_of(world: &World, tenant: &str) -> anyhow::Result<Option<MoveStatus>> {
    Ok(Api::<TenantAssignment>::all(world.client.clone())
        .get(tenant)
        .await?
        .status
        .and_then(|s| s.move_))
}

/// Waits for the move to `to` to end (Done or RolledBack).
/// Waits for the move to `to` to end (Done or RolledBack); with `started`, that move only.
pub async fn finished(
    world: &World,
    tenant: &str,
    to: &str,
    started: Option<&Time>,
) -> anyhow::Result<MoveStatus> {
    poll(
        &format!("the move of {tenant} to {to} to end"),
        WAIT,
        || async {
            let mv = move_of(world, tenant).await?;
            Ok(mv.filter(|m| {
                m.to == to
                    && started.is_none_or(|s| m.started_at.as_ref() == Some(s))
                    && matches!(m.step, MoveStep::Done | MoveStep::RolledBack)
            }))
        },
    )
    .await
}

/// Every acknowledged write is in `home` (where the tenant lives after the move).
pub async fn no_write_lost(
    world: &World,
    home: &str,
    tenant: &str,
    acks: &[Ack],
) -> anyhow::Result<()> {
    let held = items_in(world, home, tenant).await?;
    let lost: Vec<&str> = acks
        .iter()
        .filter(|a| !held.contains(&a.item))
        .map(|a| a.item.as_str())
        .take(10)
        .collect();
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing from {home} (first {}): {lost:?}",
        lost.len()
    );
    Ok(())
}
