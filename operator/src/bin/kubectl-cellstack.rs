//! `kubectl cellstack`: the kubectl plugin for the people who run cells (copy this binary,
//! `kubectl-cellstack`, onto the PATH). It reads what `kubectl` reads, through the user's own
//! kubeconfig: `status` and `tenant` in one screen each, `move`, `drain` and `rollout status`
//! followed live with `--watch`, and the blast radius of a cell, a set of lanes or a zone from
//! the routing table the routers actually serve — read and verified the way a router reads it
//! (pointer, then every chunk it names, digests checked), or from a table file — with the same
//! shard function the routers use.

#![forbid(unsafe_code)]

use std::{
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
    cli::{
        self,
        output::{Output, Painter, emit},
    },
    logic::blast_radius::{self, PoolCell, PoolTenant},
};
use clap::{Args, CommandFactory, Parser, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

/// Run cellstack cells: status, tenants, moves, drains, rollouts and blast radius.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-cellstack",
    bin_name = "kubectl cellstack",
    version,
    about
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every reading verb takes.
#[derive(Debug, Args)]
struct Common {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Never colour the tables (colour is also off when stdout is not a terminal, or with
    /// NO_COLOR set).
    #[arg(long)]
    no_color: bool,

    /// Timeout of each Kubernetes API call, in seconds.
    #[arg(long, default_value_t = 30)]
    api_timeout_secs: u64,
}

impl Common {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_secs.max(1))
    }

    fn painter(&self) -> Painter {
        Painter::for_stdout(self.no_color)
    }
}

/// What every following verb takes besides [`Common`].
#[derive(Debug, Args)]
struct Follow {
    /// Follow the change until it is done or has failed (exit status 1 when it failed).
    #[arg(long, short = 'w')]
    watch: bool,

    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every cell by zone (lanes ready, tenants, utilization, datastore, version), tenants by
    /// phase, moves and rollouts in progress, and every condition that is not healthy.
    ///
    /// Example: kubectl cellstack status
    Status {
        /// Only the cellstack objects with these labels (e.g. `env=prod`).
        #[arg(long, short = 'l', default_value = "")]
        selector: String,

        #[command(flatten)]
        common: Common,
    },

    /// One tenant: its cell and zone, epoch, the lanes serving it, the limits in force, its
    /// move in progress or its last one, and its conditions.
    ///
    /// Example: kubectl cellstack tenant tenant-01 -o yaml
    Tenant {
        /// The TenantAssignment, by name (as in `kubectl get tenantassignments`).
        name: String,

        /// Namespace the operator publishes the routing table into (for the lanes).
        #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
        namespace: String,

        #[command(flatten)]
        common: Common,
    },

    /// Move a tenant to another cell (sets its spec.cell; the operator moves it with zero lost
    /// writes). With --watch: the step, keys copied with a progress bar, the measured write
    /// pause and the result.
    ///
    /// Example: kubectl cellstack move tenant-01 --to bravo --watch
    Move {
        /// The TenantAssignment, by name.
        tenant: String,

        /// The cell to move it to.
        #[arg(long)]
        to: String,

        #[command(flatten)]
        follow: Follow,

        #[command(flatten)]
        common: Common,
    },

    /// Drain a cell: its tenants move to other cells (sets spec.draining). With --watch: the
    /// tenants moved away, each move's step, keys copied and write pause, until the cell is
    /// Drained. --undo takes tenants again.
    ///
    /// Example: kubectl cellstack drain alpha --watch
    Drain {
        /// The Cell, by name.
        cell: String,

        /// Stop draining: the cell takes tenants again.
        #[arg(long)]
        undo: bool,

        #[command(flatten)]
        follow: Follow,

        #[command(flatten)]
        common: Common,
    },

    /// CellRollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),

    /// Serve a local, read-only web page of the installation through your kubeconfig: cells
    /// by zone with their lanes and health, tenants per cell, moves and drains in progress,
    /// rollouts and their waves, and the blast radius of a cell or lane you click. It updates
    /// live: the dashboard watches (one LIST, then WATCH), the page gets every change pushed.
    ///
    /// Example: kubectl cellstack dashboard   (then open http://127.0.0.1:3100/)
    Dashboard {
        /// Address to serve the page on (keep it on loopback: the page shows what your
        /// kubeconfig may read).
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: std::net::SocketAddr,

        /// Namespace the operator publishes the routing table into (for the blast radius).
        #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
        namespace: String,

        /// Only the cellstack objects with these labels.
        #[arg(long, short = 'l', default_value = "")]
        selector: String,

        /// Timeout of each Kubernetes API call, in seconds.
        #[arg(long, default_value_t = 30)]
        api_timeout_secs: u64,
    },

    /// Print a shell completion script.
    ///
    /// Example: kubectl cellstack completion bash > /etc/bash_completion.d/kubectl-cellstack
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// List the tenants a failure of a cell, a lane, a set of lanes or a zone would touch, from
    /// the published routing table and the routers' own shard function.
    ///
    /// A cell alone: every lane with its address and tenant count. --lane N: the ids of the
    /// tenants lane N serves, one per line, then their count. --lanes N,M: the tenants that lose
    /// every lane they have when those fail together. --zone Z: every tenant of the zone's cells.
    ///
    /// Examples: kubectl cellstack blast-radius alpha --lanes 0,2;
    /// kubectl cellstack blast-radius --zone zone-a -o json
    BlastRadius(BlastRadiusArgs),

    /// Export a tenant's data from its cell to a file.
    ///
    /// The export is checked against the cell's own count and digest of the tenant's data (the
    /// figures moves verify by) and taken again while writes keep changing them. The file is
    /// JSON lines: a header (tenant, cell, data marker, count, digest), then one key per line.
    /// Needs to reach the cell's lanes (their Service addresses, as the operator does) and to
    /// read the cell's `admin-token` Secret.
    ///
    /// Example: kubectl cellstack backup tenant-01 -o tenant-01.backup
    Backup(BackupArgs),

    /// Import a tenant's data from a backup file into its cell, after the cell lost it.
    ///
    /// Only for a tenant in phase DataLost: the data goes back under the lost data marker, the
    /// cell's count and digest must then equal the file's, and only then is the tenant served
    /// again; the operator clears DataLost at its next check (Event DataRestored). A file whose
    /// entries do not add up to its header (truncated, edited) is refused before anything is
    /// written.
    ///
    /// Example: kubectl cellstack restore tenant-01 -f tenant-01.backup
    Restore(RestoreArgs),
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// A rollout's phase, wave and cells done; with --watch until it completes (exit status
    /// 1 when it halts or is aborted).
    ///
    /// Example: kubectl cellstack rollout status v2 --watch
    Status {
        /// The CellRollout, by name.
        name: String,

        #[command(flatten)]
        follow: Follow,

        #[command(flatten)]
        common: Common,
    },
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

    /// The backup file for a tenant; the directory `kubectl cellstack backup --cell` wrote for a cell.
    #[arg(long, short = 'f', value_name = "PATH")]
    from: PathBuf,

    /// Timeout of each Kubernetes API call, in seconds.
    #[arg(long, default_value_t = 30)]
    api_timeout_secs: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["cell", "zone"])))]
struct BlastRadiusArgs {
    /// The cell, by name (as in `kubectl get cells`).
    cell: Option<String>,

    /// Only this lane (0-based lane number): list the tenants it serves.
    #[arg(long, requires = "cell", conflicts_with = "lanes")]
    lane: Option<u32>,

    /// A set of lanes failing together (e.g. `0,2`): the tenants that lose every lane they
    /// have, by name, and how many lose some.
    #[arg(long, requires = "cell", value_delimiter = ',')]
    lanes: Vec<u32>,

    /// Every cell of this zone failing: the tenants that lose everything, by name and cell.
    #[arg(long, conflicts_with = "cell")]
    zone: Option<String>,

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
        Command::Status { selector, common } => status_command(&selector, &common).await,
        Command::Tenant {
            name,
            namespace,
            common,
        } => tenant_command(&name, &namespace, &common).await,
        Command::Move {
            tenant,
            to,
            follow,
            common,
        } => match client(common.timeout()).await {
            Ok(client) => {
                cli::watch::move_tenant(
                    &client,
                    &tenant,
                    &to,
                    follow.watch,
                    common.output,
                    Duration::from_secs(follow.timeout_secs),
                )
                .await
            }
            Err(e) => Err(e),
        },
        Command::Drain {
            cell,
            undo,
            follow,
            common,
        } => match client(common.timeout()).await {
            Ok(client) => {
                cli::watch::drain_cell(
                    &client,
                    &cell,
                    undo,
                    follow.watch,
                    common.output,
                    Duration::from_secs(follow.timeout_secs),
                )
                .await
            }
            Err(e) => Err(e),
        },
        Command::Rollout(RolloutCommand::Status {
            name,
            follow,
            common,
        }) => match client(common.timeout()).await {
            Ok(client) => {
                cli::watch::rollout_status(
                    &client,
                    &name,
                    follow.watch,
                    common.output,
                    Duration::from_secs(follow.timeout_secs),
                )
                .await
            }
            Err(e) => Err(e),
        },
        Command::Dashboard {
            listen,
            namespace,
            selector,
            api_timeout_secs,
        } => {
            let timeout = Duration::from_secs(api_timeout_secs.max(1));
            match client(timeout).await {
                Ok(client) => {
                    cli::dashboard::serve(&client, listen, &namespace, &selector, timeout).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubectl-cellstack",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::BlastRadius(args) => blast_radius_command(&args).await,
        Command::Backup(args) => backup_command(&args).await,
        Command::Restore(args) => restore_command(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl cellstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn status_command(selector: &str, common: &Common) -> anyhow::Result<()> {
    let client = client(common.timeout()).await?;
    let report = cli::status_report(&client, selector, common.timeout()).await?;
    let painter = common.painter();
    emit(common.output, &report, |r| r.render(painter))
}

async fn tenant_command(name: &str, namespace: &str, common: &Common) -> anyhow::Result<()> {
    let client = client(common.timeout()).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    // Without a published table the tenant is served by no lane yet: said in the report.
    let table = match read_published_table(&api, namespace, common.timeout()).await {
        Ok(table) => Some(table),
        Err(e) => {
            eprintln!("note: no routing table read from namespace {namespace}: {e:#}");
            None
        }
    };
    let report = cli::tenant_report(&client, name, table.as_ref(), common.timeout()).await?;
    let painter = common.painter();
    emit(common.output, &report, |r| r.render(painter))
}

/// The tenants that lose every lane when `failed` lanes of a set fail together.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LaneSetReport {
    source: Source,
    table_version: u64,
    cell: String,
    lanes: Vec<u32>,
    cell_tenants: u32,
    /// Tenants with at least one of the lanes.
    touched: usize,
    /// Tenants whose every lane is in the set: they lose service, by id.
    lose_everything: Vec<String>,
}

/// The tenants a zone's failure takes down, by cell.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ZoneReport {
    source: Source,
    table_version: u64,
    zone: String,
    cells: Vec<ZoneCell>,
    /// Every tenant of those cells: each loses every lane it has.
    tenants: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ZoneCell {
    cell: String,
    tenants: Vec<String>,
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
    // The table's tenants as the blast-radius functions take them.
    let tenants = || {
        table.tenants.iter().map(|t| PoolTenant {
            id: t.id.as_str(),
            cell: table.cell(t).name.as_str(),
            shard_variant: t.shard_variant,
        })
    };
    let cell_name = match (&args.cell, &args.zone) {
        (_, Some(zone)) => {
            let cells: Vec<&CellRoute> = table
                .cells
                .iter()
                .filter(|c| c.zone.as_deref() == Some(zone.as_str()))
                .collect();
            if cells.is_empty() {
                let zones: std::collections::BTreeSet<&str> = table
                    .cells
                    .iter()
                    .filter_map(|c| c.zone.as_deref())
                    .collect();
                bail!(
                    "no cell of routing table version {} ({source}) is in zone {zone:?}; its zones: {}",
                    table.version,
                    if zones.is_empty() {
                        "none".to_owned()
                    } else {
                        zones.into_iter().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            let cells: Vec<ZoneCell> = cells
                .iter()
                .map(|c| {
                    let mut ids: Vec<String> = tenants()
                        .filter(|t| t.cell == c.name)
                        .map(|t| t.id.to_owned())
                        .collect();
                    ids.sort();
                    ZoneCell {
                        cell: c.name.clone(),
                        tenants: ids,
                    }
                })
                .collect();
            let report = ZoneReport {
                source,
                table_version: table.version,
                zone: zone.clone(),
                tenants: cells.iter().map(|c| c.tenants.len()).sum(),
                cells,
            };
            return emit(args.output, &report, |r| {
                let mut out = String::new();
                for c in &r.cells {
                    for id in &c.tenants {
                        out.push_str(&format!("{id}  {}\n", c.cell));
                    }
                }
                out.push_str(&format!(
                    "{} tenant(s) lose every lane if zone {} fails: cells {} (routing table version {}, {})\n",
                    r.tenants,
                    r.zone,
                    r.cells.iter().map(|c| c.cell.as_str()).collect::<Vec<_>>().join(", "),
                    r.table_version,
                    r.source
                ));
                out
            });
        }
        (Some(cell), None) => cell,
        (None, None) => bail!("name a cell or a --zone"),
    };
    let cell = find_cell(&table, cell_name, &source)?;
    let params = cell.shard_params().with_context(|| {
        format!(
            "cell {} has invalid sharding in the routing table",
            cell.name
        )
    })?;
    let pool_cell = PoolCell {
        name: cell.name.clone(),
        lanes_healthy: params.lanes,
    };
    let figures = blast_radius::figures(params, std::slice::from_ref(&pool_cell), tenants());
    let cell_figures = figures
        .cells
        .first()
        .context("no figures computed for the cell")?;
    let check_lane = |lane: u32| -> anyhow::Result<&String> {
        cell.lanes.get(lane as usize).with_context(|| {
            format!(
                "cell {} has {} lane(s), numbered 0 to {}: there is no lane {lane}",
                cell.name,
                cell.lanes.len(),
                cell.lanes.len().saturating_sub(1)
            )
        })
    };

    if !args.lanes.is_empty() {
        for lane in &args.lanes {
            check_lane(*lane)?;
        }
        let (touched, lose) =
            blast_radius::tenants_losing(params, &cell.name, &args.lanes, tenants());
        let mut lanes = args.lanes.clone();
        lanes.sort_unstable();
        lanes.dedup();
        let report = LaneSetReport {
            source,
            table_version: table.version,
            cell: cell.name.clone(),
            lanes,
            cell_tenants: cell_figures.tenants,
            touched: touched.len(),
            lose_everything: lose.into_iter().map(str::to_owned).collect(),
        };
        return emit(args.output, &report, |r| {
            let mut out = String::new();
            for id in &r.lose_everything {
                out.push_str(id);
                out.push('\n');
            }
            out.push_str(&format!(
                "{} tenant(s) lose every lane if lanes {} of cell {} fail; {} lose some, of {} on the cell (routing table version {}, {})\n",
                r.lose_everything.len(),
                r.lanes.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                r.cell,
                r.touched,
                r.cell_tenants,
                r.table_version,
                r.source
            ));
            out
        });
    }
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
            emit(args.output, &report, |r| {
                let mut out = Vec::new();
                let _ = write_cell_table(&mut out, r);
                String::from_utf8_lossy(&out).into_owned()
            })
        }
        Some(lane) => {
            let address = check_lane(lane)?;
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
            emit(args.output, &report, |r| {
                let mut out = String::new();
                for id in &r.tenants {
                    out.push_str(id);
                    out.push('\n');
                }
                out.push_str(&format!(
                    "{} tenant(s) on lane {} ({}) of cell {}, of {} on the cell (routing table version {}, {})\n",
                    r.count, r.lane, r.address, r.cell, r.cell_tenants, r.table_version, r.source
                ));
                out
            })
        }
    }
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
             is nothing to back up; restore it from an earlier backup (kubectl cellstack restore) or \
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
