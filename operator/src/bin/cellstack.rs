//! `cellstack`: the operator's command-line companion. Ensures an operator can answer "who is hurt
//! if this cell, or this lane, fails?" from the routing table the routers actually serve — read
//! and verified the way a router reads it (pointer, then every chunk it names, digests checked),
//! or from a table file — with the same shard function the routers use.

#![forbid(unsafe_code)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use cellstack_api::{
    routing::{
        CellRoute, RoutingTable,
        publication::{DEFAULT_NAMESPACE, POINTER_NAME},
    },
    v1alpha1::{Cell, TenantAssignment},
};
use cellstack_operator::{
    backup,
    cell_admin::CellAdmin,
    logic::blast_radius::{self, PoolCell, PoolTenant},
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

/// Inspect a cellstack installation.
#[derive(Debug, Parser)]
#[command(name = "cellstack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the tenants a failure of a cell, or of one of its lanes, would touch, from the
    /// published routing table.
    ///
    /// Without --lane: every lane of the cell with its address and tenant count. With --lane N:
    /// the ids of the tenants lane N serves, one per line, then their count.
    BlastRadius(BlastRadiusArgs),

    /// Export a tenant's data from its cell to a file.
    ///
    /// The export is checked against the cell's own count and digest of the tenant's data (the
    /// figures moves verify by) and taken again while writes keep changing them. The file is
    /// JSON lines: a header (tenant, cell, data marker, count, digest), then one key per line.
    /// Needs to reach the cell's lanes (their Service addresses, as the operator does) and to
    /// read the cell's `admin-token` Secret.
    ///
    /// Example: cellstack backup tenant-01 -o tenant-01.backup
    Backup(BackupArgs),

    /// Import a tenant's data from a backup file into its cell, after the cell lost it.
    ///
    /// Only for a tenant in phase DataLost: the data goes back under the lost data marker, the
    /// cell's count and digest must then equal the file's, and only then is the tenant served
    /// again; the operator clears DataLost at its next check (Event DataRestored). A file whose
    /// entries do not add up to its header (truncated, edited) is refused before anything is
    /// written.
    ///
    /// Example: cellstack restore tenant-01 -f tenant-01.backup
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["tenant", "cell"])))]
struct BackupArgs {
    /// The TenantAssignment, by name (as in `kubectl get tenantassignments`).
    tenant: Option<String>,

    /// Every tenant the cell holds instead, one file each (`<dir>/<tenantassignment>.backup`).
    #[arg(long, conflicts_with = "tenant")]
    cell: Option<String>,

    /// The file to write for a tenant (written whole, then renamed into place); the directory
    /// to write into for a cell (created if missing).
    #[arg(long, short = 'o', value_name = "PATH")]
    out: PathBuf,

    /// Timeout of each Kubernetes API call, in seconds.
    #[arg(long, default_value_t = 30)]
    api_timeout_secs: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["tenant", "cell"])))]
struct RestoreArgs {
    /// The TenantAssignment, by name.
    tenant: Option<String>,

    /// Every DataLost tenant of the cell instead, each from `<dir>/<tenantassignment>.backup`.
    #[arg(long, conflicts_with = "tenant")]
    cell: Option<String>,

    /// The backup file for a tenant; the directory `cellstack backup --cell` wrote for a cell.
    #[arg(long, short = 'f', value_name = "PATH")]
    from: PathBuf,

    /// Timeout of each Kubernetes API call, in seconds.
    #[arg(long, default_value_t = 30)]
    api_timeout_secs: u64,
}

#[derive(Debug, Args)]
struct BlastRadiusArgs {
    /// The cell, by name (as in `kubectl get cells`).
    cell: String,

    /// Only this lane (0-based lane number): list the tenants it serves.
    #[arg(long)]
    lane: Option<u32>,

    /// Namespace the operator publishes the routing table into (its `--namespace`).
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    namespace: String,

    /// Read the table from this file (the format `cellstack-router --table-file` reads)
    /// instead of the cluster.
    #[arg(long, value_name = "PATH", conflicts_with = "namespace")]
    table_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Timeout of each Kubernetes API call, in seconds.
    #[arg(long, default_value_t = 30)]
    api_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document for machines.
    Json,
}

/// Where the table came from, for the output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
enum Source {
    /// The pointer ConfigMap in this namespace.
    Namespace(String),
    /// A table file.
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Namespace(ns) => write!(f, "ConfigMap {ns}/{POINTER_NAME}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// One lane of a cell and who it serves.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LaneReport {
    lane: u32,
    address: String,
    tenants: u32,
}

/// The blast radius of a whole cell.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct CellReport {
    source: Source,
    table_version: u64,
    cell: String,
    zone: Option<String>,
    state: String,
    /// k: lanes per tenant.
    shard_size: u32,
    /// Tenants on the cell: what a failure of the whole cell touches.
    tenants: u32,
    /// Most lanes any two tenants of the cell share.
    worst_overlap: u32,
    lanes: Vec<LaneReport>,
}

/// The blast radius of one lane.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LaneTenantsReport {
    source: Source,
    table_version: u64,
    cell: String,
    lane: u32,
    address: String,
    /// Tenants on the cell.
    cell_tenants: u32,
    /// Tenants the lane serves: `tenants.len()`.
    count: usize,
    /// Their ids, sorted.
    tenants: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BlastRadius(args) => blast_radius_command(&args).await,
        Command::Backup(args) => backup_command(&args).await,
        Command::Restore(args) => restore_command(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cellstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn blast_radius_command(args: &BlastRadiusArgs) -> anyhow::Result<()> {
    let (source, table) = match &args.table_file {
        Some(path) => (Source::File(path.clone()), read_table_file(path)?),
        None => {
            let timeout = Duration::from_secs(args.api_timeout_secs.max(1));
            let client = client(timeout).await?;
            let api: Api<ConfigMap> = Api::namespaced(client, &args.namespace);
            let table = read_published_table(&api, &args.namespace, timeout).await?;
            (Source::Namespace(args.namespace.clone()), table)
        }
    };
    let cell = find_cell(&table, &args.cell, &source)?;
    let params = cell.shard_params().with_context(|| {
        format!(
            "cell {} has invalid sharding in the routing table",
            cell.name
        )
    })?;
    // The table's tenants as the blast-radius functions take them.
    let tenants = || {
        table.tenants.iter().map(|t| PoolTenant {
            id: t.id.as_str(),
            cell: table.cell(t).name.as_str(),
            shard_variant: t.shard_variant,
        })
    };
    let pool_cell = PoolCell {
        name: cell.name.clone(),
        lanes_healthy: params.lanes,
    };
    let figures = blast_radius::figures(params, std::slice::from_ref(&pool_cell), tenants());
    let cell_figures = figures
        .cells
        .first()
        .context("no figures computed for the cell")?;

    let mut out = std::io::stdout().lock();
    match args.lane {
        None => {
            let report = CellReport {
                source,
                table_version: table.version,
                cell: cell.name.clone(),
                zone: cell.zone.clone(),
                state: format!("{:?}", cell.state),
                shard_size: cell.shard_size,
                tenants: cell_figures.tenants,
                worst_overlap: cell_figures.worst_overlap,
                lanes: cell
                    .lanes
                    .iter()
                    .zip(&cell_figures.tenants_per_lane)
                    .zip(0u32..)
                    .map(|((address, &tenants), lane)| LaneReport {
                        lane,
                        address: address.clone(),
                        tenants,
                    })
                    .collect(),
            };
            match args.output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                Output::Table => write_cell_table(&mut out, &report)?,
            }
        }
        Some(lane) => {
            let Some(address) = cell.lanes.get(lane as usize) else {
                bail!(
                    "cell {} has {} lane(s), numbered 0 to {}: there is no lane {lane}",
                    cell.name,
                    cell.lanes.len(),
                    cell.lanes.len().saturating_sub(1)
                );
            };
            let ids = blast_radius::tenants_on_lane(params, &cell.name, lane, tenants());
            let report = LaneTenantsReport {
                source,
                table_version: table.version,
                cell: cell.name.clone(),
                lane,
                address: address.clone(),
                cell_tenants: cell_figures.tenants,
                count: ids.len(),
                tenants: ids.into_iter().map(str::to_owned).collect(),
            };
            match args.output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                Output::Table => {
                    for id in &report.tenants {
                        writeln!(out, "{id}")?;
                    }
                    writeln!(
                        out,
                        "{} tenant(s) on lane {} ({}) of cell {}, of {} on the cell (routing table version {}, {})",
                        report.count,
                        report.lane,
                        report.address,
                        report.cell,
                        report.cell_tenants,
                        report.table_version,
                        report.source
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_cell_table(out: &mut impl std::io::Write, r: &CellReport) -> std::io::Result<()> {
    writeln!(
        out,
        "cell {} ({}, zone {}): {} tenant(s), {} lane(s), {} per tenant, worst overlap of two tenants {} lane(s)",
        r.cell,
        r.state,
        r.zone.as_deref().unwrap_or("none"),
        r.tenants,
        r.lanes.len(),
        r.shard_size,
        r.worst_overlap
    )?;
    writeln!(
        out,
        "routing table version {} from {}",
        r.table_version, r.source
    )?;
    let width = r
        .lanes
        .iter()
        .map(|l| l.address.len())
        .max()
        .unwrap_or(0)
        .max("ADDRESS".len());
    writeln!(out, "{:<6}{:<width$}  TENANTS", "LANE", "ADDRESS")?;
    for l in &r.lanes {
        writeln!(out, "{:<6}{:<width$}  {}", l.lane, l.address, l.tenants)?;
    }
    Ok(())
}

/// The cell named `name`, or an error listing the cells the table has.
fn find_cell<'t>(
    table: &'t RoutingTable,
    name: &str,
    source: &Source,
) -> anyhow::Result<&'t CellRoute> {
    if let Some(cell) = table.cells.iter().find(|c| c.name == name) {
        return Ok(cell);
    }
    let known: Vec<&str> = table.cells.iter().map(|c| c.name.as_str()).collect();
    let known = if known.is_empty() {
        "it has no cells".to_owned()
    } else {
        format!("its cells: {}", known.join(", "))
    };
    bail!(
        "cell {name:?} is not in routing table version {} ({source}); {known}. \
         A cell enters the table once every one of its lanes has an address \
         (`kubectl get cell {name}` shows its phase)",
        table.version
    )
}

/// A table file as `cellstack-router --table-file` reads it: one encoded table.
fn read_table_file(path: &Path) -> anyhow::Result<RoutingTable> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the routing table file {}", path.display()))?;
    RoutingTable::decode(&bytes)
        .with_context(|| format!("{} is not a valid routing table", path.display()))
}

/// The tenant's TenantAssignment, its cell, and the cell's admin API.
async fn tenant_in_cell(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(TenantAssignment, String, CellAdmin)> {
    let ta = tokio::time::timeout(
        timeout,
        Api::<TenantAssignment>::all(client.clone()).get_opt(name),
    )
    .await
    .with_context(|| format!("reading TenantAssignment {name} took longer than {timeout:?}"))?
    .with_context(|| format!("cannot read TenantAssignment {name}"))?
    .with_context(|| {
        format!("TenantAssignment {name} does not exist (kubectl get tenantassignments)")
    })?;
    let cell_name = ta
        .status
        .as_ref()
        .and_then(|s| s.cell.clone())
        .with_context(|| format!("TenantAssignment {name} is not placed in a cell yet"))?;
    let cell = tokio::time::timeout(timeout, Api::<Cell>::all(client.clone()).get(&cell_name))
        .await
        .with_context(|| format!("reading Cell {cell_name} took longer than {timeout:?}"))?
        .with_context(|| {
            format!("cannot read Cell {cell_name}, where TenantAssignment {name} lives")
        })?;
    let lanes = cellstack_operator::cell_admin::lanes_of(client, &cell, timeout).await?;
    let admin = CellAdmin::with_client(client, &lanes, &cell, timeout).await?;
    Ok((ta, cell_name, admin))
}

/// The names of the TenantAssignments placed in `cell` (and whether each is DataLost).
async fn tenants_of_cell(
    client: &Client,
    cell: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, bool)>> {
    tokio::time::timeout(timeout, Api::<Cell>::all(client.clone()).get_opt(cell))
        .await
        .with_context(|| format!("reading Cell {cell} took longer than {timeout:?}"))?
        .with_context(|| format!("cannot read Cell {cell}"))?
        .with_context(|| format!("Cell {cell} does not exist (kubectl get cells)"))?;
    let list = tokio::time::timeout(
        timeout,
        Api::<TenantAssignment>::all(client.clone()).list(&Default::default()),
    )
    .await
    .with_context(|| format!("listing TenantAssignments took longer than {timeout:?}"))?
    .context("cannot list TenantAssignments")?;
    let mut tenants: Vec<(String, bool)> = list
        .items
        .into_iter()
        .filter_map(|ta| {
            let status = ta.status.as_ref()?;
            (status.cell.as_deref() == Some(cell))
                .then(|| (ta.name_any(), status.data_loss.is_some()))
        })
        .collect();
    tenants.sort();
    Ok(tenants)
}

async fn backup_command(args: &BackupArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.api_timeout_secs);
    let client = client(timeout).await?;
    if let Some(tenant) = &args.tenant {
        return backup_tenant(&client, tenant, &args.out, timeout).await;
    }
    let cell = args.cell.as_deref().unwrap_or_default();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the directory {}", args.out.display()))?;
    let tenants = tenants_of_cell(&client, cell, timeout).await?;
    let mut failed = Vec::new();
    for (name, lost) in &tenants {
        if *lost {
            eprintln!("skipping TenantAssignment {name}: DataLost, nothing to back up");
            continue;
        }
        let file = args.out.join(format!("{name}.backup"));
        if let Err(e) = backup_tenant(&client, name, &file, timeout).await {
            eprintln!("cellstack: {e:#}");
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} tenants of cell {cell} were not backed up: {}",
            failed.len(),
            tenants.len(),
            failed.join(", ")
        );
    }
    println!(
        "backed up the {} tenants of cell {cell} that hold data into {}",
        tenants.iter().filter(|(_, lost)| !lost).count(),
        args.out.display()
    );
    Ok(())
}

async fn backup_tenant(
    client: &Client,
    name: &str,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (ta, cell, admin) = tenant_in_cell(client, name, timeout).await?;
    let status = ta.status.clone().unwrap_or_default();
    if let Some(loss) = &status.data_loss {
        bail!(
            "TenantAssignment {name} is DataLost (cell {} lost the data under marker {}): there \
             is nothing to back up; restore it from an earlier backup (cellstack restore) or \
             accept the loss",
            loss.cell,
            loss.marker
        );
    }
    let tenant = ta.spec.tenant_id.clone();
    let (entries, checksum) = backup::export(&admin, &tenant).await?;
    let header = backup::Header {
        format: backup::FORMAT.into(),
        tenant: tenant.clone(),
        cell: cell.clone(),
        marker: status.data_marker.clone(),
        checksum: checksum.clone(),
        entries: entries.len() as u64,
    };
    let partial = out.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    backup::write(std::io::BufWriter::new(file), &header, &entries)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot move {} to {}", partial.display(), out.display()))?;
    println!(
        "backed up tenant {tenant} from cell {cell}: {} keys, digest {}, {} entries with limiter \
         state, to {}",
        checksum.keys,
        checksum.digest,
        entries.len(),
        out.display()
    );
    Ok(())
}

async fn restore_command(args: &RestoreArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.api_timeout_secs);
    let client = client(timeout).await?;
    if let Some(tenant) = &args.tenant {
        return restore_tenant(&client, tenant, &args.from, timeout).await;
    }
    let cell = args.cell.as_deref().unwrap_or_default();
    let lost: Vec<String> = tenants_of_cell(&client, cell, timeout)
        .await?
        .into_iter()
        .filter_map(|(name, lost)| lost.then_some(name))
        .collect();
    if lost.is_empty() {
        println!("no tenant of cell {cell} is DataLost: nothing to restore");
        return Ok(());
    }
    let mut failed = Vec::new();
    for name in &lost {
        let file = args.from.join(format!("{name}.backup"));
        if let Err(e) = restore_tenant(&client, name, &file, timeout).await {
            eprintln!("cellstack: {e:#}");
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of the {} DataLost tenants of cell {cell} were not restored: {}",
            failed.len(),
            lost.len(),
            failed.join(", ")
        );
    }
    println!(
        "restored the {} DataLost tenants of cell {cell}: {}",
        lost.len(),
        lost.join(", ")
    );
    Ok(())
}

async fn restore_tenant(
    client: &Client,
    name: &str,
    from: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let (header, entries) = backup::read(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a usable backup", from.display()))?;
    let (ta, cell, admin) = tenant_in_cell(client, name, timeout).await?;
    let tenant = ta.spec.tenant_id.clone();
    if header.tenant != tenant {
        bail!(
            "{} holds tenant {}, not {tenant} (TenantAssignment {name})",
            from.display(),
            header.tenant
        );
    }
    let status = ta.status.clone().unwrap_or_default();
    let Some(loss) = status.data_loss.clone() else {
        bail!(
            "TenantAssignment {name} is not DataLost (phase {:?}): restoring would overwrite the \
             data its cell {cell} holds; restore only after a loss",
            status.phase
        );
    };
    if header.marker.as_deref() != Some(loss.marker.as_str()) {
        eprintln!(
            "note: {} was taken under data marker {}, the lost data's marker is {}: restoring it \
             under the lost marker",
            from.display(),
            header.marker.as_deref().unwrap_or("(none)"),
            loss.marker
        );
    }
    let got = backup::restore(
        &admin,
        &tenant,
        status.epoch,
        &loss.marker,
        entries,
        &header.checksum,
    )
    .await?;
    println!(
        "restored tenant {tenant} into cell {cell} under data marker {}: {} keys, digest {} \
         (the file's); the operator clears DataLost at its next check: kubectl get \
         tenantassignment {name} -w",
        loss.marker, got.keys, got.digest
    );
    Ok(())
}

/// A client from `KUBECONFIG` (or the pod's service account), with a connect timeout.
async fn client(timeout: Duration) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await.context(
        "cannot find a Kubernetes configuration: set KUBECONFIG, or read a file with --table-file",
    )?;
    config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Reads the table the operator published in `namespace`, verified the way a router does.
async fn read_published_table(
    api: &Api<ConfigMap>,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<RoutingTable> {
    let table = cellstack_operator::controllers::publish::read_published(api, timeout)
        .await
        .with_context(|| {
            format!("cannot read the routing table published in namespace {namespace}")
        })?;
    table.with_context(|| {
        format!(
            "no routing table is published in namespace {namespace} (ConfigMap {POINTER_NAME} \
             does not exist). The cellstack operator publishes it once it leads, into the \
             namespace of its --namespace flag: is it running, and is that namespace \
             {namespace}? (pass --namespace to read another one, or --table-file for a file)"
        )
    })
}
