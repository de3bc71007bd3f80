//! `cellstack-load`: drives steady traffic to every tenant through a cellstack router and prints a
//! live summary per cell (tenants, requests/s, errors, rate limited, p99), as the demo shows it.
//!
//! Tenants and their cells come from the TenantAssignments in the cluster (`KUBECONFIG`); the
//! cell of each answer is the one the router's answer names (`x-cellstack-cell`).
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cellstack_api::v1alpha1::TenantAssignment;
use cellstack_testkit::traffic::{Load, Pace, TenantApi, TenantStats, percentile};
use clap::Parser;
use kube::{Api, Client, api::ListParams};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ApiArg {
    Reference,
    Orders,
}

/// Drive traffic to every tenant through a cellstack router and print a live summary per cell.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The router's base URL, e.g. http://10.96.12.34 (the router Service's address).
    #[arg(long, env = "CELLSTACK_ROUTER_URL")]
    router: String,
    /// Requests per second per tenant.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// One request in this many is a write (PUT); the rest read what was written.
    #[arg(long, default_value_t = 4)]
    writes_every: u64,
    /// The tenant API the cells serve: `reference` (cellstack's reference service, the
    /// default) or `orders` (the Go example behind the runtime, examples/go-orders).
    #[arg(long, value_enum, default_value_t = ApiArg::Reference)]
    api: ApiArg,
    /// Seconds to run; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds between two summary lines.
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// Only tenants whose TenantAssignment matches this label selector.
    #[arg(long, default_value = "")]
    selector: String,
    /// A noisy tenant sending writes at this many requests per second on top of the rest
    /// (`TENANT=RATE`), to watch its rate limit at work.
    #[arg(long, value_parser = parse_noisy)]
    noisy: Option<(String, f64)>,
}

fn parse_noisy(s: &str) -> Result<(String, f64), String> {
    let (tenant, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TENANT=RATE, got {s:?}"))?;
    let rate: f64 = rate
        .parse()
        .map_err(|e| format!("rate {rate:?} of --noisy: {e}"))?;
    if !(rate > 0.0 && rate <= 5000.0) {
        return Err(format!("rate of --noisy must be in (0, 5000], got {rate}"));
    }
    Ok((tenant.to_owned(), rate))
}

/// Where every tenant lives, by its TenantAssignment's status.
async fn tenants(selector: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG to the cluster running cellstack")?;
    let list = tokio::time::timeout(
        Duration::from_secs(15),
        Api::<TenantAssignment>::all(client).list(&ListParams::default().labels(selector)),
    )
    .await
    .context("listing TenantAssignments timed out after 15s")?
    .context("listing TenantAssignments")?;
    Ok(list
        .items
        .iter()
        .map(|ta| {
            let cell = ta
                .status
                .as_ref()
                .and_then(|s| s.cell.clone())
                .unwrap_or_else(|| "(unplaced)".into());
            (ta.spec.tenant_id.clone(), cell)
        })
        .collect())
}

/// Counts of one cell over one window.
#[derive(Default)]
struct Row {
    tenants: usize,
    requests: u64,
    ok: u64,
    limited: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// The per-cell rows of what happened between `before` and `now`.
fn window(
    before: &BTreeMap<String, TenantStats>,
    now: &BTreeMap<String, TenantStats>,
    homes: &BTreeMap<String, String>,
) -> BTreeMap<String, Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (tenant, s) in now {
        let empty = TenantStats::default();
        let b = before.get(tenant).unwrap_or(&empty);
        let cell = s
            .cell
            .clone()
            .or_else(|| homes.get(tenant).cloned())
            .unwrap_or_else(|| "?".into());
        let row = rows.entry(cell).or_default();
        row.tenants += 1;
        row.requests += s.requests().saturating_sub(b.requests());
        row.ok += s.ok.saturating_sub(b.ok);
        row.limited += s.limited.saturating_sub(b.limited);
        row.errors += s.error_count().saturating_sub(b.error_count());
        row.latencies
            .extend_from_slice(s.latencies.get(b.latencies.len()..).unwrap_or_default());
    }
    rows
}

fn print_rows(rows: &mut BTreeMap<String, Row>, secs: f64) {
    println!(
        "  {:<12} {:>7} {:>9} {:>8} {:>8} {:>7} {:>9}",
        "CELL", "TENANTS", "REQ/S", "OK", "LIMITED", "ERRORS", "P99"
    );
    for (cell, row) in rows.iter_mut() {
        row.latencies.sort_unstable();
        println!(
            "  {:<12} {:>7} {:>9.1} {:>8} {:>8} {:>7} {:>7.1}ms",
            cell,
            row.tenants,
            row.requests as f64 / secs,
            row.ok,
            row.limited,
            row.errors,
            percentile(&row.latencies, 0.99).as_secs_f64() * 1000.0
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        bail!("--rate must be in (0, 1000] requests per second per tenant");
    }
    let homes = tenants(&args.selector).await?;
    if homes.is_empty() {
        bail!(
            "no TenantAssignments{} in the cluster: apply some first (kubectl apply -f examples/)",
            if args.selector.is_empty() {
                String::new()
            } else {
                format!(" matching {}", args.selector)
            }
        );
    }
    let names: Vec<String> = homes.keys().cloned().collect();
    let api = match args.api {
        ApiArg::Reference => TenantApi::Reference,
        ApiArg::Orders => TenantApi::Orders,
    };
    let load = Load::start_speaking(
        &args.router,
        &names,
        Pace {
            per_second: args.rate,
            writes_every: args.writes_every.max(1),
        },
        api,
    );
    // A noisy tenant: writes only, from enough tasks that each stays well under its pace.
    let noisy = args.noisy.as_ref().map(|(tenant, rate)| {
        let tasks = (rate / 50.0).ceil().max(1.0) as usize;
        let per_task = rate / tasks as f64;
        println!("noisy tenant {tenant}: {rate} writes/s from {tasks} task(s)");
        Load::start_speaking(
            &args.router,
            &vec![tenant.clone(); tasks],
            Pace {
                per_second: per_task,
                writes_every: 1,
            },
            api,
        )
    });
    println!(
        "driving {} tenants at {} req/s each through {} ({}; Ctrl-C stops)",
        names.len(),
        args.rate,
        args.router,
        if args.duration == 0 {
            "until stopped".to_owned()
        } else {
            format!("for {}s", args.duration)
        }
    );
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    every.tick().await;
    let mut before = load.snapshot();
    let mut noisy_before = noisy.as_ref().map(Load::snapshot).unwrap_or_default();
    let mut last = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = &mut ctrl_c => { println!("stopping"); break; }
        }
        let now = load.snapshot();
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let mut rows = window(&before, &now, &homes);
        let total: u64 = rows.values().map(|r| r.requests).sum();
        let errors: u64 = rows.values().map(|r| r.errors).sum();
        let limited: u64 = rows.values().map(|r| r.limited).sum();
        println!(
            "[+{:>4}s] {} tenants · {:.0} req/s · errors {} · limited {}",
            started.elapsed().as_secs(),
            names.len(),
            total as f64 / secs,
            errors,
            limited
        );
        print_rows(&mut rows, secs);
        if let Some(n) = &noisy {
            let now = n.snapshot();
            for (tenant, s) in &now {
                let b = noisy_before.get(tenant).cloned().unwrap_or_default();
                println!(
                    "  noisy {tenant}: {:.0} req/s offered, {:.1} admitted/s, {} limited, {} errors",
                    s.requests().saturating_sub(b.requests()) as f64 / secs,
                    s.ok.saturating_sub(b.ok) as f64 / secs,
                    s.limited.saturating_sub(b.limited),
                    s.error_count().saturating_sub(b.error_count())
                );
            }
            noisy_before = now;
        }
        std::io::stdout().flush().ok();
        before = now;
        if args.duration > 0 && started.elapsed() >= Duration::from_secs(args.duration) {
            break;
        }
    }
    if let Some(n) = noisy {
        n.finish().await;
    }
    let end = load.finish().await;
    let mut rows = window(&BTreeMap::new(), &end, &homes);
    let secs = started.elapsed().as_secs_f64();
    println!("total over {secs:.0}s:");
    print_rows(&mut rows, secs);
    let errors: u64 = rows.values().map(|r| r.errors).sum();
    let requests: u64 = rows.values().map(|r| r.requests).sum();
    println!(
        "{requests} requests, {errors} errors ({:.3}%)",
        if requests == 0 {
            0.0
        } else {
            errors as f64 * 100.0 / requests as f64
        }
    );
    Ok(())
}
