//! The Rust half of `bench/operator.sh`: creates TenantAssignments concurrently and times their
//! convergence, publishes and reads back a synthetic 1M-tenant routing table, and cleans up.
//! Every wait has a deadline. Figures go to stdout as `figure NAME=VALUE` lines for the script;
//! progress goes to stderr.
//!
//!   bench_operator tenants --label cellstack.dev/bench=ID --prefix P --from 0 --to 10000 \
//!       --published-metrics http://127.0.0.1:PORT/metrics
//!   bench_operator status-ceiling --label cellstack.dev/bench=ID --count 10000
//!   bench_operator publish-table --namespace NS --tenants 1000000
//!   bench_operator delete-tenants --label cellstack.dev/bench=ID
//!   bench_operator table-swap --namespace NS --router http://127.0.0.1:P \
//!       --router-metrics http://127.0.0.1:A/metrics --lane 127.0.0.1:C --tenant bench

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::{
    routing::{CellRoute, CellState, EdgeLimit, RoutingTable, TenantRoute},
    tenant::TenantId,
    v1alpha1::{TenantAssignment, TenantPhase},
};
use cellstack_operator::controllers::publish::{Publisher, unix_ms};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::watch;

#[derive(Debug, Parser)]
struct Cli {
    /// Ids of the synthetic tables' tenants (`publish-table`, `table-swap`): `uuid`, random
    /// UUID-shaped ids (a hash of the tenant's number, the same in every version), which a
    /// compressed table barely shrinks; or `sequential`, `tenant-0000000` on, which it shrinks
    /// about 40 times (`cargo bench -p cellstack-router --bench table` prints both).
    #[arg(long, global = true, value_enum, default_value_t = Ids::Uuid)]
    ids: Ids,
    /// How the synthetic tables' chunks store them (`publish-table`, `table-swap` from
    /// Kubernetes): `zstd`, the operator's default, or `none`.
    #[arg(long, global = true, default_value = "zstd")]
    compression: cellstack_api::routing::Compression,
    #[command(subcommand)]
    command: Cmd,
}

/// See [`Cli::ids`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ids {
    Uuid,
    Sequential,
}

impl Ids {
    /// The id of synthetic tenant `i`.
    fn of(self, i: usize) -> String {
        match self {
            Self::Sequential => format!("tenant-{i:07}"),
            Self::Uuid => cellstack_testkit::ids::uuid_like(i as u64),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Creates TenantAssignments `<prefix>-<from>` .. `<prefix>-<to - 1>` (automatic placement,
    /// labelled), then waits until every labelled one has converged: placed, provisioned (its
    /// status carries the marker of its record in the cell) and published (the operator's last
    /// table holds all of them, read from its `/metrics`).
    Tenants {
        /// `key=value` put on every tenant; also the selector of those counted.
        #[arg(long)]
        label: String,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        from: usize,
        #[arg(long)]
        to: usize,
        /// Creations in flight at once.
        #[arg(long, default_value_t = 32)]
        parallelism: usize,
        /// Deadline for creation plus convergence.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// The operator's `/metrics` URL: converged also means its last published routing table
        /// (`cellstack_operator_routing_table_tenants`) holds `to` tenants.
        #[arg(long)]
        published_metrics: Option<String>,
    },
    /// The API server's own ceiling for what the operator does per tenant: one status merge
    /// patch (the operator's shape, a new marker) to each of `count` labelled TenantAssignments
    /// by a bare client, `parallelism` in flight. Run with the operator stopped.
    StatusCeiling {
        #[arg(long)]
        label: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        parallelism: usize,
    },
    /// Builds a synthetic table, publishes it with the operator's `Publisher` into `namespace`,
    /// then reads it back and verifies it the way a router does.
    PublishTable {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value_t = 1_000_000)]
        tenants: usize,
        #[arg(long, default_value_t = 100)]
        cells: u32,
        #[arg(long, default_value_t = 8)]
        lanes: u32,
        #[arg(long, default_value_t = 2)]
        shard_size: u32,
    },
    /// A router's pickup of a large table under load: publishes a synthetic table (one of its
    /// tenants, `tenant`, on a cell whose one lane is `lane`) into `namespace`, waits until the
    /// router reading that namespace serves it, then sends `connections` closed loops of
    /// requests for `tenant` through the router: `steady_secs` of steady state, then a second
    /// table is published and requests go on until `after_secs` past the router serving it.
    /// Prints the publish and pickup times and the latency of the requests started in each
    /// window (p50, p99, p99.9, max).
    TableSwap {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value_t = 1_000_000)]
        tenants: usize,
        /// The router's traffic URL.
        #[arg(long)]
        router: String,
        /// The router's `/metrics` URL (its `cellstack_router_table_version` says what it serves).
        #[arg(long)]
        router_metrics: String,
        /// The lane of the cell that serves `tenant`.
        #[arg(long)]
        lane: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 10)]
        steady_secs: u64,
        #[arg(long, default_value_t = 1)]
        after_secs: u64,
        /// Deadline for a router to serve a published table.
        #[arg(long, default_value_t = 120)]
        pickup_timeout_secs: u64,
        /// Deliver each table by writing it to this file (a new file renamed over it) for a
        /// router reading it with `--table-file`, instead of publishing it in `namespace`: the
        /// router's own cost of a swap, without an API server on the same CPUs.
        #[arg(long)]
        table_file: Option<std::path::PathBuf>,
    },
    /// Deletes every TenantAssignment carrying `label` (one delete-collection call) and waits
    /// until they are gone.
    DeleteTenants {
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("cannot build a client from KUBECONFIG")?;
    match cli.command {
        Cmd::Tenants {
            label,
            prefix,
            from,
            to,
            parallelism,
            timeout_secs,
            published_metrics,
        } => {
            tenants(
                client,
                &label,
                &prefix,
                from..to,
                parallelism,
                Duration::from_secs(timeout_secs),
                published_metrics.as_deref(),
            )
            .await
        }
        Cmd::StatusCeiling {
            label,
            count,
            parallelism,
        } => status_ceiling(client, &label, count, parallelism).await,
        Cmd::PublishTable {
            namespace,
            tenants,
            cells,
            lanes,
            shard_size,
        } => {
            let publisher = Publisher::new(client.clone(), &namespace, Duration::from_secs(60))
                .with_compression(cli.compression);
            publish_table(
                publisher, client, &namespace, tenants, cells, lanes, shard_size, cli.ids,
            )
            .await
        }
        Cmd::DeleteTenants {
            label,
            timeout_secs,
        } => delete_tenants(client, &label, Duration::from_secs(timeout_secs)).await,
        Cmd::TableSwap {
            namespace,
            tenants,
            router,
            router_metrics,
            lane,
            tenant,
            connections,
            warmup_secs,
            steady_secs,
            after_secs,
            pickup_timeout_secs,
            table_file,
        } => {
            let swap = TableSwap {
                namespace,
                tenants,
                router,
                router_metrics,
                lane,
                tenant,
                connections,
                warmup: Duration::from_secs(warmup_secs),
                steady: Duration::from_secs(steady_secs),
                after: Duration::from_secs(after_secs),
                pickup_timeout: Duration::from_secs(pickup_timeout_secs),
                table_file,
                ids: cli.ids,
                compression: cli.compression,
            };
            table_swap(swap).await
        }
    }
}

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("figure {name}={value}");
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("[bench_operator] {msg}");
}

async fn tenants(
    client: Client,
    label: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    parallelism: usize,
    timeout: Duration,
    published_metrics: Option<&str>,
) -> anyhow::Result<()> {
    let (key, value) = label.split_once('=').context("--label must be key=value")?;
    let api: Api<TenantAssignment> = Api::all(client);
    let want = range.end;

    // Count placed tenants from a watch (one list, then events), not by listing 100k objects
    // over and over.
    let (placed_tx, mut placed_rx) = watch::channel(0usize);
    let counter = {
        let api = api.clone();
        let cfg = watcher::Config::default().labels(label).any_semantic();
        tokio::spawn(async move {
            let mut placed: HashSet<String> = HashSet::new();
            let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
            while let Some(event) = stream.next().await {
                let (obj, deleted) = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                    Ok(watcher::Event::Delete(o)) => (o, true),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                    Err(e) => {
                        log(format_args!("watch error (retrying): {e}"));
                        continue;
                    }
                };
                // Placed and provisioned: the marker is written once the cell holds the record.
                let is_placed = !deleted
                    && obj.status.as_ref().is_some_and(|s| {
                        s.phase == TenantPhase::Placed
                            && s.cell.is_some()
                            && s.epoch >= 1
                            && s.data_marker.is_some()
                    });
                let name = obj.name_any();
                if is_placed {
                    placed.insert(name);
                } else {
                    placed.remove(&name);
                }
                placed_tx.send_replace(placed.len());
            }
        })
    };

    let started = Instant::now();
    let deadline = started + timeout;
    let created = futures::stream::iter(range.clone().map(|i| {
        let api = api.clone();
        let name = format!("{prefix}-{i}");
        async move {
            let ta: TenantAssignment = serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
                "metadata": {"name": name, "labels": {key: value}},
                "spec": {"tenantId": name, "automatic": {}},
            }))
            .context("building a TenantAssignment")?;
            // A few retries for transient API-server refusals (429, timeouts) under load.
            let mut attempt = 0;
            loop {
                match api.create(&PostParams::default(), &ta).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        log(format_args!("creating {name}: {e}; retry {attempt}"));
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {name}"))),
                }
            }
        }
    }))
    .buffer_unordered(parallelism.max(1))
    .try_fold(0usize, |n, ()| async move {
        let n = n + 1;
        if n % 10_000 == 0 {
            log(format_args!("created {n}"));
        }
        Ok(n)
    });
    let created = tokio::time::timeout_at(deadline.into(), created)
        .await
        .context("creating the tenants did not finish before the deadline")??;
    let created_secs = started.elapsed().as_secs_f64();
    log(format_args!(
        "created {created} TenantAssignments in {created_secs:.1}s; waiting for {want} placed"
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;
    let mut last_report = Instant::now();
    let mut placed_secs = None;
    loop {
        let placed = *placed_rx.borrow_and_update();
        if placed >= want && placed_secs.is_none() {
            placed_secs = Some(started.elapsed().as_secs_f64());
        }
        let published = match (placed_secs, published_metrics) {
            (Some(_), Some(url)) => published_tenants(&http, url).await,
            _ => None,
        };
        if placed_secs.is_some() && (published_metrics.is_none() || published == Some(want)) {
            break;
        }
        if Instant::now() >= deadline {
            counter.abort();
            bail!(
                "only {placed} of {want} tenants placed and provisioned, {} published, after {:.0}s",
                published.map_or("?".to_owned(), |p| p.to_string()),
                started.elapsed().as_secs_f64()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            log(format_args!(
                "{placed} of {want} placed and provisioned after {:.0}s",
                started.elapsed().as_secs_f64()
            ));
        }
        if placed_secs.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(1), placed_rx.changed()).await;
        }
    }
    let converged_secs = started.elapsed().as_secs_f64();
    counter.abort();
    figure("created", created);
    figure("total", want);
    figure("create_seconds", format_args!("{created_secs:.1}"));
    figure(
        "placed_seconds",
        format_args!("{:.1}", placed_secs.unwrap_or(converged_secs)),
    );
    figure("converge_seconds", format_args!("{converged_secs:.1}"));
    // The goal's clock: from the last create to the last tenant converged.
    figure(
        "after_last_create_seconds",
        format_args!("{:.1}", converged_secs - created_secs),
    );
    Ok(())
}

/// `cellstack_operator_routing_table_tenants` from the operator's `/metrics`.
async fn published_tenants(http: &reqwest::Client, url: &str) -> Option<usize> {
    let page = http.get(url).send().await.ok()?.text().await.ok()?;
    page.lines().find_map(|line| {
        let value = line.strip_prefix("cellstack_operator_routing_table_tenants ")?;
        value.trim().parse::<f64>().ok().map(|v| v as usize)
    })
}

async fn status_ceiling(
    client: Client,
    label: &str,
    count: usize,
    parallelism: usize,
) -> anyhow::Result<()> {
    let api: Api<TenantAssignment> = Api::all(client);
    let mut found: Vec<TenantAssignment> = Vec::with_capacity(count);
    let mut params = ListParams::default().labels(label).limit(500);
    while found.len() < count {
        let page = api
            .list(&params)
            .await
            .with_context(|| format!("listing TenantAssignments labelled {label}"))?;
        found.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    found.truncate(count);
    ensure!(
        found.len() == count,
        "only {} TenantAssignments labelled {label}, {count} asked",
        found.len()
    );
    let started = Instant::now();
    let written = futures::stream::iter(found.into_iter().map(|ta| {
        let api = api.clone();
        async move {
            let name = ta.name_any();
            let mut status = ta.status.unwrap_or_default();
            status.data_marker = Some(format!("{:032x}", rand::random::<u128>()));
            status.move_ = None;
            let patch = json!({
                "metadata": { "resourceVersion": ta.metadata.resource_version },
                "status": status,
            });
            // A connection the API server closes mid-call is tried again (3 tries at most); a
            // 409 on a later try means the earlier one was applied (nothing else writes these
            // statuses while the operator is stopped, and the patch names the resourceVersion).
            for attempt in 1..=3u32 {
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if attempt > 1 && e.code == 409 => break,
                    Err(e @ kube::Error::Service(_)) if attempt < 3 => {
                        log(format_args!(
                            "patching the status of {name}: {e}; trying again"
                        ));
                        tokio::time::sleep(Duration::from_millis(
                            100 * u64::from(attempt) + rand::random::<u64>() % 100,
                        ))
                        .await;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("patching the status of {name}"));
                    }
                }
            }
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(parallelism.max(1))
    .try_fold(0usize, |n, ()| async move { Ok(n + 1) })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    figure("ceiling_count", written);
    figure("ceiling_seconds", format_args!("{secs:.1}"));
    figure(
        "ceiling_per_second",
        format_args!("{:.0}", written as f64 / secs),
    );
    Ok(())
}

async fn delete_tenants(client: Client, label: &str, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<TenantAssignment> = Api::all(client);
    let started = Instant::now();
    // One delete-collection call deletes until the API server's request timeout ends it (about
    // a minute; 100k tenants take longer), so it is repeated until nothing is left.
    loop {
        let left = api
            .list_metadata(&ListParams::default().labels(label).limit(1))
            .await
            .with_context(|| format!("listing TenantAssignments labelled {label}"))?;
        if left.items.is_empty() {
            break;
        }
        if started.elapsed() >= timeout {
            bail!("TenantAssignments labelled {label} still there after {timeout:?}");
        }
        let (dp, lp) = (DeleteParams::default(), ListParams::default().labels(label));
        let call = api.delete_collection(&dp, &lp);
        match tokio::time::timeout(Duration::from_secs(120), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log(format_args!(
                "deleting TenantAssignments labelled {label}: {e}; trying again"
            )),
            Err(_) => log("delete-collection call still running after 120s; trying again"),
        }
    }
    log(format_args!(
        "deleted TenantAssignments labelled {label} in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `cells` cells of `lanes` lanes with `shard_size` lanes per tenant, three zones, two edge
/// limits, and `n` tenants spread over the cells: the shape of router/benches/table.rs.
fn synthetic_table(
    version: u64,
    n: usize,
    cells: u32,
    lanes: u32,
    shard_size: u32,
    ids: Ids,
) -> anyhow::Result<RoutingTable> {
    synthetic_table_with(version, n, cells, lanes, shard_size, ids, None)
}

/// A tenant the benchmark sends requests for, on a cell of its own whose one lane is `lane`.
struct Served<'a> {
    tenant: &'a str,
    lane: &'a str,
}

/// [`synthetic_table`], plus `served` when given. Each version gives the synthetic tenants
/// other epochs, so two versions differ in every tenant but `served`.
fn synthetic_table_with(
    version: u64,
    n: usize,
    cells: u32,
    lanes: u32,
    shard_size: u32,
    ids: Ids,
    served: Option<&Served<'_>>,
) -> anyhow::Result<RoutingTable> {
    let mut cell_routes: Vec<CellRoute> = (0..cells)
        .map(|c| CellRoute {
            name: format!("cell-{c:03}"),
            zone: Some(format!("zone-{}", c % 3)),
            state: CellState::Active,
            lanes: (0..lanes)
                .map(|l| format!("cell-{c:03}-lane-{l}.cellstack.svc:8080"))
                .collect(),
            shard_size,
            shard_seed: c,
        })
        .collect();
    let limits = vec![
        EdgeLimit {
            requests: 100,
            period_ms: 1000,
            burst: 200,
        },
        EdgeLimit {
            requests: 1000,
            period_ms: 1000,
            burst: 2000,
        },
    ];
    let mut tenants = (0..n)
        .map(|i| {
            Ok(TenantRoute {
                id: TenantId::parse(&ids.of(i))?,
                cell: u32::try_from(i % cells as usize)?,
                epoch: version + (i % 7) as u64,
                shard_variant: (i % 3) as u32,
                edge_limit: Some((i % 2) as u32),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(served) = served {
        tenants.push(TenantRoute {
            id: TenantId::parse(served.tenant)?,
            cell: cells,
            epoch: 1,
            shard_variant: 0,
            edge_limit: None,
        });
        cell_routes.push(CellRoute {
            name: "served".to_string(),
            zone: None,
            state: CellState::Active,
            lanes: vec![served.lane.to_string()],
            shard_size: 1,
            shard_seed: 0,
        });
    }
    Ok(RoutingTable::canonical(
        version,
        unix_ms(),
        cell_routes,
        limits,
        tenants,
    )?)
}

#[allow(clippy::too_many_arguments)]
async fn publish_table(
    mut publisher: Publisher,
    client: Client,
    namespace: &str,
    n: usize,
    cells: u32,
    lanes: u32,
    shard_size: u32,
    ids: Ids,
) -> anyhow::Result<()> {
    let version = publisher.next_version().await?;
    let started = Instant::now();
    let table = synthetic_table(version, n, cells, lanes, shard_size, ids)?;
    let build_secs = started.elapsed().as_secs_f64();
    log(format_args!(
        "built a {n}-tenant table in {build_secs:.2}s; publishing into {namespace}"
    ));

    let started = Instant::now();
    let published = publisher.publish(table).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let table = publisher
        .last()
        .context("the publisher keeps what it published")?;

    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let started = Instant::now();
    let read = read_table(&api).await?;
    let read_secs = started.elapsed().as_secs_f64();
    ensure!(
        read == *table,
        "the table read back differs from the one published"
    );

    figure("table_tenants", table.tenants.len());
    figure("table_cells", table.cells.len());
    figure("table_bytes", published.bytes);
    figure("table_stored_bytes", published.stored_bytes);
    figure(
        "table_ids",
        format_args!("{ids:?}").to_string().to_lowercase(),
    );
    figure("table_chunks", published.chunks);
    figure("table_objects", published.chunks + 1);
    figure("table_build_seconds", format_args!("{build_secs:.2}"));
    figure("table_publish_seconds", format_args!("{publish_secs:.2}"));
    figure("table_read_verify_seconds", format_args!("{read_secs:.2}"));
    Ok(())
}

/// Reads the table the way a router does: pointer, every chunk it names, digests checked,
/// decoded and validated.
async fn read_table(api: &Api<ConfigMap>) -> anyhow::Result<RoutingTable> {
    cellstack_operator::controllers::publish::read_published(api, Duration::from_secs(60))
        .await?
        .context("no routing table published")
}

/// What `table-swap` measures against (see [`Cmd::TableSwap`]).
struct TableSwap {
    namespace: String,
    tenants: usize,
    router: String,
    router_metrics: String,
    lane: String,
    tenant: String,
    connections: usize,
    warmup: Duration,
    steady: Duration,
    after: Duration,
    pickup_timeout: Duration,
    table_file: Option<std::path::PathBuf>,
    ids: Ids,
    compression: cellstack_api::routing::Compression,
}

/// One request's start (since the load began), latency and whether it was answered 2xx.
type Sample = (Duration, Duration, bool);

/// One table delivered by [`spawn_publisher`]: its version, when its publish began (after the
/// table was built) and how long the publish took.
struct Delivered {
    version: u64,
    started: Instant,
    seconds: f64,
}

type PublishRequest = tokio::sync::oneshot::Sender<anyhow::Result<Delivered>>;

/// Puts the calling thread under `SCHED_IDLE`: it runs when nothing else on its CPU wants to, and
/// a thread that wakes up there preempts it at once. (At nice 19 it would only get a smaller
/// share: each of its time slices would still delay the load loops' wake-ups.)
fn idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) only reads `param`, valid for the call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The publishing side of `table-swap`: a thread of its own under `SCHED_IDLE` ([`idle_policy`]),
/// with its own runtime and client, that builds and publishes the next synthetic table each time
/// it is asked. It stands in for an operator on another machine: this process runs on the load
/// generator's CPU, and building and encoding a 1M-tenant table (about a second of CPU) among
/// the load loops would stall them and be counted as the router's latency.
fn spawn_publisher(
    namespace: String,
    tenants: usize,
    tenant: String,
    lane: String,
    file: Option<std::path::PathBuf>,
    ids: Ids,
    compression: cellstack_api::routing::Compression,
) -> anyhow::Result<tokio::sync::mpsc::Sender<PublishRequest>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            if let Err(e) = idle_policy() {
                log(format_args!(
                    "cannot put the publisher under SCHED_IDLE: {e}"
                ));
            }
            runtime.block_on(async move {
                let mut publisher = match Client::try_default().await {
                    Ok(client) => Publisher::new(client, &namespace, Duration::from_secs(60))
                        .with_compression(compression),
                    Err(e) => {
                        if let Some(reply) = rx.recv().await {
                            let _ = reply.send(Err(anyhow::Error::new(e)
                                .context("the publisher cannot build a client from KUBECONFIG")));
                        }
                        return;
                    }
                };
                let served = Served {
                    tenant: &tenant,
                    lane: &lane,
                };
                let mut file_version = 0;
                while let Some(reply) = rx.recv().await {
                    let result = async {
                        let version = match &file {
                            Some(_) => {
                                file_version += 1;
                                file_version
                            }
                            None => publisher.next_version().await?,
                        };
                        let table =
                            synthetic_table_with(version, tenants, 100, 8, 2, ids, Some(&served))?;
                        let started = Instant::now();
                        match &file {
                            Some(path) => write_table(path, &table)?,
                            None => {
                                publisher.publish(table).await?;
                            }
                        }
                        Ok(Delivered {
                            version,
                            started,
                            seconds: started.elapsed().as_secs_f64(),
                        })
                    }
                    .await;
                    let _ = reply.send(result);
                }
            })
        })?;
    Ok(tx)
}

/// Writes `table` encoded to a new file beside `path` and renames it over `path`, so a router
/// polling `path` never reads half a table.
fn write_table(path: &std::path::Path, table: &RoutingTable) -> anyhow::Result<()> {
    let encoded = table.encode()?;
    let new = path.with_extension("new");
    std::fs::write(&new, &encoded).with_context(|| format!("cannot write {}", new.display()))?;
    std::fs::rename(&new, path)
        .with_context(|| format!("cannot rename {} to {}", new.display(), path.display()))
}

/// Asks the publisher thread for the next table and waits for it to be published.
async fn publish_next(
    publisher: &tokio::sync::mpsc::Sender<PublishRequest>,
) -> anyhow::Result<Delivered> {
    let (reply, published) = tokio::sync::oneshot::channel();
    publisher
        .send(reply)
        .await
        .map_err(|_| anyhow::anyhow!("the publisher thread is gone"))?;
    published
        .await
        .map_err(|_| anyhow::anyhow!("the publisher thread is gone"))?
}

async fn table_swap(swap: TableSwap) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(swap.connections)
        .build()?;
    let publisher = spawn_publisher(
        swap.namespace.clone(),
        swap.tenants,
        swap.tenant.clone(),
        swap.lane.clone(),
        swap.table_file.clone(),
        swap.ids,
        swap.compression,
    )?;

    // 1. The first table, to a router that serves none yet.
    let first = publish_next(&publisher).await?;
    figure(
        "first_publish_seconds",
        format_args!("{:.2}", first.seconds),
    );
    router_serves(
        &http,
        &swap.router_metrics,
        first.version,
        swap.pickup_timeout,
    )
    .await?;
    figure(
        "first_pickup_seconds",
        format_args!("{:.2}", first.started.elapsed().as_secs_f64()),
    );

    // 2. Load: closed loops until told to stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let load_start = Instant::now();
    let url = format!("{}/v1/whoami", swap.router.trim_end_matches('/'));
    let loops: Vec<_> = (0..swap.connections)
        .map(|_| {
            let (http, url, tenant, mut stop) = (
                http.clone(),
                url.clone(),
                swap.tenant.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let mut samples: Vec<Sample> = Vec::with_capacity(1 << 16);
                while !*stop.borrow_and_update() {
                    let sent = Instant::now();
                    let ok = match http
                        .get(&url)
                        .header(cellstack_api::wire::header::TENANT, &tenant)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    samples.push((sent - load_start, sent.elapsed(), ok));
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(swap.warmup + swap.steady).await;

    // 3. The second table, under load; the swap window opens when its publish begins.
    let published = publish_next(&publisher).await;
    let picked = match &published {
        Ok(p) => router_serves(&http, &swap.router_metrics, p.version, swap.pickup_timeout).await,
        Err(_) => Ok(()),
    };
    let swapped = Instant::now();
    tokio::time::sleep(swap.after).await;
    let _ = stop_tx.send(true);
    let mut samples = Vec::new();
    for l in loops {
        samples.extend(l.await?);
    }
    let second = published?;
    picked?;
    let swap_start = second.started;
    let pickup_secs = (swapped - swap_start).as_secs_f64();
    figure("table_tenants", swap.tenants + 1);
    figure(
        "swap_publish_seconds",
        format_args!("{:.2}", second.seconds),
    );
    figure("swap_pickup_seconds", format_args!("{pickup_secs:.2}"));

    // 4. Latency of the requests started in each window.
    let steady_from = swap.warmup;
    let swap_from = swap_start - load_start;
    let swap_to = swapped - load_start + swap.after;
    let steady = window(&samples, steady_from, swap_from);
    let during = window(&samples, swap_from, swap_to);
    for (name, w) in [("steady", &steady), ("swap", &during)] {
        figure(&format!("{name}_requests"), w.requests);
        figure(&format!("{name}_errors"), w.errors);
        figure(
            &format!("{name}_per_second"),
            format_args!("{:.0}", w.per_second),
        );
        for (q, v) in &w.quantiles {
            figure(&format!("{name}_{q}_ms"), format_args!("{v:.3}"));
        }
    }
    let p999 = |w: &Window| {
        w.quantiles
            .iter()
            .find(|(q, _)| *q == "p999")
            .map(|(_, v)| *v)
    };
    if let (Some(a), Some(b)) = (p999(&during), p999(&steady)) {
        figure("swap_p999_ratio", format_args!("{:.2}", a / b));
    }
    ensure!(
        steady.requests >= 1000 && during.requests >= 1000,
        "too few requests for a p99.9 (steady {}, swap {}): lengthen --steady-secs or --after-secs",
        steady.requests,
        during.requests
    );
    Ok(())
}

/// The requests started in `[from, to)`: how many, how many failed, and the quantiles of the
/// latency of those answered (ms).
struct Window {
    requests: usize,
    errors: usize,
    per_second: f64,
    quantiles: Vec<(&'static str, f64)>,
}

fn window(samples: &[Sample], from: Duration, to: Duration) -> Window {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|(start, _, _)| *start >= from && *start < to)
        .collect();
    let mut ms: Vec<f64> = inside
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(_, latency, _)| latency.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            f64::NAN
        } else {
            // Nearest rank.
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
            ms[rank - 1]
        }
    };
    let secs = (to - from).as_secs_f64().max(1e-9);
    Window {
        requests: inside.len(),
        errors: inside.iter().filter(|(_, _, ok)| !ok).count(),
        per_second: inside.len() as f64 / secs,
        quantiles: vec![
            ("p50", at(0.5)),
            ("p99", at(0.99)),
            ("p999", at(0.999)),
            ("max", at(1.0)),
        ],
    }
}

/// Waits until the router's `/metrics` says it serves table `version` (or a later one).
async fn router_serves(
    http: &reqwest::Client,
    metrics: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let served = async {
            let text = http.get(metrics).send().await.ok()?.text().await.ok()?;
            text.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == "cellstack_router_table_version")
                    .then(|| f.next()?.parse::<f64>().ok())
                    .flatten()
            })
        }
        .await;
        if served.is_some_and(|v| v >= version as f64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the router did not serve table {version} within {timeout:?} (it serves {served:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
