//! A cell's datastore under faults (docs/durability.md): its primary killed with its volume, the
//! whole datastore killed, the primary frozen, every replica frozen, and failovers in a row —
//! each under a sequence-numbered write load through the router that keeps every
//! acknowledgement, then proves that the cell holds every acknowledged write.
//!
//! Faults come from this host: pods deleted with no grace period (the kubelet SIGKILLs them), a
//! container's processes stopped and continued by signal (the local cluster's node is this
//! machine). Redis and the sentinels are read at the pods' addresses with the cell's password.

use std::future::Future;

use cellstack_testkit::{
    cluster::{container_pids, pod_is_ready, signal},
    traffic::{Ack, Refusals},
};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{PersistentVolumeClaim, Secret},
};

use kube::api::LogParams;

use super::*;

/// The sentinels' name for a cell's primary (docs/durability.md).
const MASTER: &str = "cellstack";
/// The datastore's StatefulSet, Service and pod label (`app.kubernetes.io/component`), and
/// its pods' Redis container.
const REDIS: &str = "redis";
/// The datastore pods' Sentinel container.
const SENTINEL: &str = "sentinel";
/// Writes resume within this bound of losing the primary: the bound for the test. The
/// goal, 10 s, is the failover benchmark's to report (bench/failover.sh).
const RESUME: Duration = Duration::from_secs(20);
/// How long the primary stays frozen.
const PRIMARY_FREEZE: Duration = Duration::from_secs(20);
/// How long every replica stays frozen.
const REPLICAS_FREEZE: Duration = Duration::from_secs(10);
/// Acknowledged writes to have before a fault, and after recovery before the count.
const WRITES_AROUND: usize = 100;
/// Failovers in a row in the repeated-failover scenario, unless `CELLSTACK_E2E_FAILOVERS` says
/// more (bench/failover.sh; the test command drops every `CELLSTACK_*` variable).
const FAILOVERS: usize = 5;

/// One cell's managed datastore, read from this host.
struct Datastore {
    cell: String,
    pods: Api<Pod>,
    pvcs: Api<PersistentVolumeClaim>,
    password: String,
    replicas: usize,
}

/// `INFO replication`, as its fields.
struct Replication(BTreeMap<String, String>);

impl Replication {
    fn role(&self) -> &str {
        self.0.get("role").map_or("", String::as_str)
    }

    fn offset(&self) -> u64 {
        self.0
            .get("master_repl_offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or_default()
    }

    /// Replicas this primary sees online.
    fn online_replicas(&self) -> usize {
        self.0
            .iter()
            .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
            .count()
    }

    /// A replica whose link to its primary is up.
    fn is_linked_replica(&self) -> bool {
        self.role() == "slave" && self.0.get("master_link_status").map(String::as_str) == Some("up")
    }
}

impl Datastore {
    async fn of(env: &Env, cell: &str) -> anyhow::Result<Self> {
        let ns = format!("cell-{cell}");
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
        let password = secrets
            .get("redis-auth")
            .await
            .with_context(|| format!("reading Secret {ns}/redis-auth"))?
            .data
            .and_then(|d| d.get("password").cloned())
            .map(|b| String::from_utf8(b.0))
            .transpose()?
            .with_context(|| format!("Secret {ns}/redis-auth has no password"))?;
        let replicas = Api::<StatefulSet>::namespaced(env.client.clone(), &ns)
            .get(REDIS)
            .await
            .with_context(|| format!("reading StatefulSet {ns}/{REDIS}"))?
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        ensure!(
            replicas >= 3,
            "cell {cell} runs {replicas} datastore pods: the scenario needs a failover (3 or more)"
        );
        Ok(Self {
            cell: cell.to_owned(),
            pods: Api::namespaced(env.client.clone(), &ns),
            pvcs: Api::namespaced(env.client.clone(), &ns),
            password,
            replicas: replicas as usize,
        })
    }

    async fn list(&self) -> anyhow::Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/component={REDIS}"));
        Ok(self.pods.list(&lp).await?.items)
    }

    async fn connect(
        &self,
        pod: &Pod,
        port: u16,
    ) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .with_context(|| format!("pod {} has no address", pod.name_any()))?;
        let client = redis::Client::open(format!("redis://:{}@{ip}:{port}", self.password))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to {}:{port}", pod.name_any()))
    }

    async fn replication(&self, pod: &Pod) -> anyhow::Result<Replication> {
        let mut c = self.connect(pod, 6379).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        Ok(Replication(
            info.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
        ))
    }

    /// The primary's pod as a majority of the sentinels name it (what the lanes follow); `None`
    /// while no majority agrees.
    async fn primary(&self) -> anyhow::Result<Option<String>> {
        let pods = self.list().await?;
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for pod in &pods {
            let Ok(mut c) = self.connect(pod, 26379).await else {
                continue;
            };
            let addr: Option<Vec<String>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            let Some(host) = addr.and_then(|a| a.into_iter().next()) else {
                continue;
            };
            // Announced as `redis-<i>.<namespace>.svc...` (the pod's own Service), or an address.
            let name = pods
                .iter()
                .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(&host))
                .map(ResourceExt::name_any)
                .unwrap_or_else(|| host.split('.').next().unwrap_or_default().to_owned());
            *votes.entry(name).or_default() += 1;
        }
        Ok(votes
            .into_iter()
            .find(|(_, n)| *n > self.replicas / 2)
            .map(|(name, _)| name))
    }

    /// Waits until the datastore is whole — every pod Ready, a majority of sentinels naming one
    /// primary, and that primary seeing every other pod as an online replica — and returns the
    /// primary's pod name.
    async fn await_whole(&self, wait: Duration) -> anyhow::Result<String> {
        poll(
            &format!("cell {}'s datastore to be whole", self.cell),
            wait,
            || async {
                let pods = self.list().await?;
                let ready = pods.iter().filter(|p| pod_is_ready(p)).count();
                ensure!(
                    ready == self.replicas,
                    "{ready} of {} pods Ready",
                    self.replicas
                );
                let primary = self
                    .primary()
                    .await?
                    .context("no primary a majority agrees on")?;
                let pod = pods
                    .iter()
                    .find(|p| p.name_any() == primary)
                    .with_context(|| format!("no pod {primary}"))?;
                let info = self.replication(pod).await?;
                ensure!(info.role() == "master", "{primary} is {}", info.role());
                let online = info.online_replicas();
                ensure!(
                    online == self.replicas - 1,
                    "{primary} has {online} replicas online"
                );
                Ok(Some(primary))
            },
        )
        .await
    }

    /// Kills pod `name`: SIGKILL to its Redis and its sentinel (so the moment of death is
    /// known, not whenever the kubelet gets to it), then the pod deleted with no grace period
    /// so that its StatefulSet makes a new one. Returns the moment of the kill.
    async fn kill(&self, name: &str) -> anyhow::Result<Instant> {
        let pod = self.pods.get(name).await?;
        let mut pids = container_pids(&pod, REDIS)?;
        pids.extend(container_pids(&pod, SENTINEL)?);
        signal(&pids, "KILL")?;
        let killed = Instant::now();
        self.pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await?;
        Ok(killed)
    }

    /// Write commands this pod's Redis has executed: the `calls` of every command in
    /// `writes` (a command refused, e.g. with `-NOREPLICAS`, is no call). Sentinel's hello
    /// messages move a primary's replication offset but are no write command.
    async fn write_calls(&self, pod: &Pod, writes: &BTreeSet<String>) -> anyhow::Result<u64> {
        let mut c = self.connect(pod, 6379).await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await?;
        Ok(stats
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
            .filter(|(cmd, _)| writes.contains(*cmd))
            .filter_map(|(_, v)| {
                v.strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// The names of the commands Redis counts as writes (ACL category `@write`), lower case as
    /// `INFO commandstats` names them (subcommands as `parent|sub`).
    async fn write_commands(&self, pod: &Pod) -> anyhow::Result<BTreeSet<String>> {
        let mut c = self.connect(pod, 6379).await?;
        let names: Vec<String> = redis::cmd("COMMAND")
            .arg("LIST")
            .arg("FILTERBY")
            .arg("ACLCAT")
            .arg("write")
            .query_async(&mut c)
            .await?;
        ensure!(!names.is_empty(), "Redis lists no @write command");
        Ok(names.into_iter().map(|n| n.to_lowercase()).collect())
    }

    /// The sentinels' new primary, once it is not `old`.
    async fn await_promotion(&self, old: &str, wait: Duration) -> anyhow::Result<String> {
        poll("the sentinels to promote a replica", wait, || async {
            Ok(self.primary().await?.filter(|p| p != old))
        })
        .await
    }
}

/// Sends SIGCONT to frozen processes when dropped, so a failing scenario never leaves a Redis
/// stopped.
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(pids: Vec<i32>) -> anyhow::Result<Self> {
        signal(&pids, "STOP")?;
        Ok(Self(pids))
    }

    fn thaw(self) -> anyhow::Result<()> {
        signal(&self.0, "CONT")
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(&self.0, "CONT");
    }
}

/// How long after `at` the first write sent after it was acknowledged; `None` until one is.
fn resumed_after(checker: &Checker, at: Instant) -> Option<Duration> {
    checker
        .acks()
        .iter()
        .filter(|a| a.started >= at)
        .map(|a| a.completed() - at)
        .min()
}

async fn await_resumed(checker: &Checker, at: Instant, wait: Duration) -> anyhow::Result<Duration> {
    poll("acknowledged writes again", wait, || {
        // Not yet: what the writes meet instead says why (no primary, no replica acks, ...).
        let r = resumed_after(checker, at).ok_or_else(|| {
            anyhow::anyhow!(
                "no write acknowledged since; refusals of the whole run so far: {:?}",
                checker.refused()
            )
        });
        async move { r.map(Some) }
    })
    .await
}

async fn await_acks(checker: &Checker, n: usize) -> anyhow::Result<()> {
    poll(&format!("{n} acknowledged writes"), WAIT, || {
        let acked = checker.acked();
        async move { Ok((acked >= n).then_some(())) }
    })
    .await
}

/// About 80 writes/s to `tenant`, under the default policy's 100/s: a refusal is the fault's.
fn checker(env: &Env, tenant: &str, prefix: &str) -> Checker {
    Checker::start(&env.router, tenant, prefix, 2, Duration::from_millis(25))
}

/// `WRITES_AROUND` more acknowledged writes, then the checker's count against the cell: every
/// acknowledged write must be there. Returns the acknowledgements and refusals.
async fn finish_and_count(
    env: &Env,
    cell: &str,
    tenant: &str,
    checker: Checker,
) -> anyhow::Result<(Vec<Ack>, Refusals)> {
    await_acks(&checker, checker.acked() + WRITES_AROUND).await?;
    let (acks, refused) = checker.finish().await;
    let lost = lost_writes(&env.client, cell, tenant, &acks).await?;
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing from {cell} (first ten): {lost:?} of {}",
        acks.len()
    );
    Ok((acks, refused))
}

/// The first tenant placed in `cell`.
fn tenant_of(env: &Env, cell: &str) -> anyhow::Result<String> {
    env.tenants_of(cell)
        .into_iter()
        .next()
        .with_context(|| format!("no tenant in cell {cell}"))
}

/// The `i`th cell holding tenants (wrapping), so scenarios spread over the cells.
fn cell(env: &Env, i: usize) -> anyhow::Result<String> {
    let cells: BTreeSet<&String> = env.homes.values().collect();
    ensure!(!cells.is_empty(), "no tenants placed");
    Ok(cells
        .iter()
        .nth(i % cells.len())
        .map(|c| (*c).clone())
        .unwrap_or_default())
}

/// Runs `scenario` with the release's operator stopped (its Deployment scaled to 0, until no
/// operator pod is left), and starts the operator again afterwards whatever the scenario did.
pub(super) async fn with_operator_stopped<T>(
    env: &Env,
    scenario: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let deployments: Api<Deployment> = env.ns.api();
    let selector = "app.kubernetes.io/component=operator";
    let operator = deployments
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .next()
        .context("the release has no operator Deployment")?;
    let name = operator.name_any();
    let replicas = operator.spec.and_then(|s| s.replicas).unwrap_or(1);
    let scale = |n: i32| {
        let deployments = deployments.clone();
        let name = name.clone();
        async move {
            deployments
                .patch_scale(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
                .with_context(|| format!("scaling Deployment {name} to {n}"))
        }
    };
    scale(0).await?;
    let pods: Api<Pod> = env.ns.api();
    let stopped = poll("every operator pod gone", WAIT, || async {
        let left = pods.list(&ListParams::default().labels(selector)).await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await;
    let result = match stopped {
        Ok(()) => scenario.await,
        Err(e) => Err(e),
    };
    let restarted = async {
        scale(replicas).await?;
        env.ns.wait_deployment_available(&name, replicas).await
    }
    .await;
    match (result, restarted) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("starting the operator again")),
    }
}

/// The primary Redis of one cell killed (its pod deleted with no grace period) together with
/// its volume, the operator stopped for the whole scenario, under traffic to every tenant: the
/// sentinels promote a replica, writes to the cell resume within [`RESUME`], no acknowledged
/// write is lost, no tenant of another cell sees an error, and the pod comes back on a new,
/// empty volume as a replica of the new primary.
pub(super) async fn killing_a_cells_primary_and_its_volume_loses_no_acknowledged_write(
    env: &Env,
) -> anyhow::Result<()> {
    let cell = cell(env, 0)?;
    let tenant = tenant_of(env, &cell)?;
    let ds = Datastore::of(env, &cell).await?;
    let old = ds.await_whole(WAIT).await?;
    with_operator_stopped(env, async {
        let load = env.steady_load();
        let stalls = StallWatch::start();
        let checker = checker(env, &tenant, "kill");
        load.until_every_tenant("the warm-up", WAIT, |s| s.requests() >= 5)
            .await?;
        await_acks(&checker, WRITES_AROUND).await?;
        let (bad, why) = failing(&load.snapshot());
        ensure!(bad.is_empty(), "errors before the fault: {why}");
        load.reset();

        let claim = format!("data-{old}");
        let old_claim = ds.pvcs.get(&claim).await?.uid();
        let old_pod = ds.pods.get(&old).await?.uid();
        // The volume first: its deletion waits for the pod (pvc-protection), then goes with it.
        ds.pvcs.delete(&claim, &DeleteParams::default()).await?;
        let killed = ds.kill(&old).await?;
        let promoted = ds.await_promotion(&old, RESUME).await?;
        let promoted_after = killed.elapsed();
        let resumed = await_resumed(&checker, killed, RESUME.saturating_sub(killed.elapsed()))
            .await
            .context("writes did not resume in time")?;
        // The killed pod back on a new claim, following the new primary.
        let back = poll(
            &format!("{old} back on a new volume as a replica"),
            RECOVERY,
            || async {
                let Some(pod) = ds.pods.get_opt(&old).await? else {
                    return Ok(None);
                };
                let claim = ds.pvcs.get_opt(&claim).await?;
                let fresh = pod.uid() != old_pod
                    && pod_is_ready(&pod)
                    && claim.is_some_and(|c| c.uid() != old_claim);
                if !fresh {
                    return Ok(None);
                }
                let info = ds.replication(&pod).await?;
                Ok(info.is_linked_replica().then(|| killed.elapsed()))
            },
        )
        .await?;
        let (acks, refused) = finish_and_count(env, &cell, &tenant, checker).await?;
        let stats = load.finish().await;
        let (bad, why) = failing(&stats);
        let victims = env.tenants_of(&cell);
        let outside: Vec<&String> = bad.iter().filter(|t| !victims.contains(*t)).collect();
        eprintln!(
            "    killed {cell}'s primary {old} and its volume, operator stopped: {promoted} \
             promoted after {promoted_after:.1?}, writes resumed after {resumed:.1?}, {old} back \
             as a replica on a new volume after {back:.1?}; {} writes acknowledged, 0 lost, \
             refused {refused:?}; {} of {} tenants saw errors ({} in {cell}); this process \
             was kept off the CPU for up to {:?} at a time",
            acks.len(),
            bad.len(),
            stats.len(),
            victims.len(),
            stalls.worst()
        );
        if !outside.is_empty() {
            let cells: BTreeSet<&String> =
                outside.iter().filter_map(|t| env.homes.get(*t)).collect();
            let mut lanes = String::new();
            for other in cells {
                lanes.push_str(&lane_warnings(env, other, killed.elapsed()).await);
            }
            bail!(
                "tenants outside {cell} saw errors: {outside:?} ({why}); this process was kept off the CPU for up to {:?} at a time; what their cells' lanes logged since the kill:\n{lanes}",
                stalls.worst()
            );
        }
        Ok(())
    })
    .await
}

/// The warnings and errors `cell`'s lanes logged in the last `since`, each line under its pod
/// and node: what a blast-radius failure needs to be understood.
async fn lane_warnings(env: &Env, cell: &str, since: Duration) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &format!("cell-{cell}"));
    let lp = ListParams::default().labels("app.kubernetes.io/component=lane");
    let Ok(list) = pods.list(&lp).await else {
        return format!("  (cannot list the lanes of {cell})\n");
    };
    let mut out = String::new();
    for pod in list.items {
        let name = pod.name_any();
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        let params = LogParams {
            since_seconds: Some(since.as_secs() as i64 + 5),
            ..LogParams::default()
        };
        let log = pods
            .logs(&name, &params)
            .await
            .unwrap_or_else(|e| e.to_string());
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect();
        out.push_str(&format!(
            "  {cell}/{name} on {node}: {} warnings\n",
            lines.len()
        ));
        for line in lines {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// Every Redis pod of a `Persistent` cell killed at once (deleted with no grace period): once
/// they are back on their volumes and writes resume, no acknowledged write is lost. Meanwhile
/// the cell is not Ready, and the chart's `CellstackCellNotReady` fires for it in the test
/// command's Prometheus, then resolves.
pub(super) async fn killing_every_datastore_pod_of_a_cell_loses_no_acknowledged_write(
    env: &Env,
) -> anyhow::Result<()> {
    let cell = cell(env, 1)?;
    let tenant = tenant_of(env, &cell)?;
    let ds = Datastore::of(env, &cell).await?;
    ds.await_whole(WAIT).await?;
    let prometheus = super::alerts::prometheus_with_the_release_rules(env).await?;
    let this_cell = [("cell", cell.as_str())];
    prometheus
        .until_resolved("CellstackCellNotReady", &this_cell, WAIT)
        .await?;
    let checker = checker(env, &tenant, "all");
    await_acks(&checker, WRITES_AROUND).await?;
    let before: BTreeSet<String> = ds
        .list()
        .await?
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    let mut killed = None;
    for pod in ds.list().await? {
        let at = ds.kill(&pod.name_any()).await?;
        killed.get_or_insert(at);
    }
    let killed = killed.context("no datastore pod")?;
    prometheus
        .until_firing("CellstackCellNotReady", &this_cell, RECOVERY)
        .await?;
    let alert_after = killed.elapsed();
    let primary = ds.await_whole(RECOVERY).await?;
    let whole_after = killed.elapsed();
    let now: BTreeSet<String> = ds
        .list()
        .await?
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    ensure!(
        before.is_disjoint(&now),
        "not every datastore pod of {cell} was replaced"
    );
    let resumed = await_resumed(&checker, killed, RECOVERY).await?;
    prometheus
        .until_resolved("CellstackCellNotReady", &this_cell, RECOVERY)
        .await?;
    let resolved_after = killed.elapsed();
    let (acks, refused) = finish_and_count(env, &cell, &tenant, checker).await?;
    eprintln!(
        "    killed all {} datastore pods of {cell}: CellstackCellNotReady firing after \
         {alert_after:.1?}, whole again after {whole_after:.1?} (primary {primary}), writes \
         resumed after {resumed:.1?}, the alert resolved after {resolved_after:.1?}; {} writes \
         acknowledged, 0 lost, refused {refused:?}",
        ds.replicas,
        acks.len()
    );
    Ok(())
}

/// The primary's Redis frozen (SIGSTOP) for [`PRIMARY_FREEZE`], then let go: the sentinels
/// promote a replica meanwhile and writes resume within [`RESUME`]; no acknowledged write is
/// lost; and the old primary, once it runs again, never takes a write as a primary — it executes
/// no write command while it still calls itself primary (it refuses them: `min-replicas-to-write`)
/// — and becomes a replica of the new one.
pub(super) async fn freezing_the_primary_loses_nothing_and_it_never_writes_as_primary_again(
    env: &Env,
) -> anyhow::Result<()> {
    let cell = cell(env, 2)?;
    let tenant = tenant_of(env, &cell)?;
    let ds = Datastore::of(env, &cell).await?;
    let old = ds.await_whole(WAIT).await?;
    let pod = ds.pods.get(&old).await?;
    let writes = ds.write_commands(&pod).await?;
    let checker = checker(env, &tenant, "freeze");
    await_acks(&checker, WRITES_AROUND).await?;
    let frozen = Frozen::freeze(container_pids(&pod, REDIS)?)?;
    let frozen_at = Instant::now();
    let promoted = ds.await_promotion(&old, PRIMARY_FREEZE).await?;
    let promoted_after = frozen_at.elapsed();
    let resumed = await_resumed(
        &checker,
        frozen_at,
        RESUME.saturating_sub(frozen_at.elapsed()),
    )
    .await
    .context("writes did not resume in time")?;
    // The fault's length, not a synchronisation: the primary stays frozen this long.
    tokio::time::sleep_until((frozen_at + PRIMARY_FREEZE).into()).await;
    frozen.thaw()?;
    // From the moment it runs again, every 50 ms: its role, its replication offset, and the
    // write commands it has executed. (The first look comes after any command that was in its
    // socket buffers when it froze, sent while it was the primary: none of those was
    // acknowledged, since no replica could confirm it.)
    let mut as_primary: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + WAIT;
    let demoted_after = loop {
        if let Ok(info) = ds.replication(&pod).await {
            if info.role() == "master" {
                // Only a look at both counts while it is still primary counts.
                if let Ok(calls) = ds.write_calls(&pod, &writes).await
                    && ds
                        .replication(&pod)
                        .await
                        .is_ok_and(|i| i.role() == "master")
                {
                    as_primary.push((calls, info.offset()));
                }
            } else if info.is_linked_replica() {
                break frozen_at.elapsed() - PRIMARY_FREEZE;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{old} did not become a replica of {promoted} within {WAIT:?} of running again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (acks, refused) = finish_and_count(env, &cell, &tenant, checker).await?;
    let (calls, offsets): (Vec<u64>, Vec<u64>) = as_primary.iter().copied().unzip();
    eprintln!(
        "    froze {cell}'s primary {old} for {PRIMARY_FREEZE:?}: {promoted} promoted after \
         {promoted_after:.1?}, writes resumed after {resumed:.1?}; {old} a replica \
         {demoted_after:.1?} after running again, seen {} times as primary meanwhile with write \
         commands executed {:?}..{:?} (replication offset {:?}..{:?}: Sentinel's hellos); {} \
         writes acknowledged, 0 lost, refused {refused:?}",
        as_primary.len(),
        calls.first(),
        calls.last(),
        offsets.first(),
        offsets.last(),
        acks.len()
    );
    ensure!(
        calls.windows(2).all(|w| w[0] == w[1]),
        "{old} executed write commands while it called itself primary after {promoted} was \
         promoted: {calls:?}"
    );
    Ok(())
}

/// Every replica's Redis frozen (SIGSTOP) for [`REPLICAS_FREEZE`]: no write sent meanwhile is
/// acknowledged (the cell answers 503: no replica confirmed it), writes are acknowledged again
/// within [`RESUME`] of the replicas running again, and no acknowledged write is lost.
pub(super) async fn freezing_every_replica_refuses_writes_until_one_is_back(
    env: &Env,
) -> anyhow::Result<()> {
    let cell = cell(env, 0)?;
    let tenant = tenant_of(env, &cell)?;
    let ds = Datastore::of(env, &cell).await?;
    let primary = ds.await_whole(WAIT).await?;
    let mut pids = Vec::new();
    for pod in ds.list().await?.iter().filter(|p| p.name_any() != primary) {
        pids.extend(container_pids(pod, REDIS)?);
    }
    let checker = checker(env, &tenant, "replicas");
    await_acks(&checker, WRITES_AROUND).await?;
    let frozen = Frozen::freeze(pids)?;
    let frozen_at = Instant::now();
    // The fault's length, not a synchronisation.
    tokio::time::sleep(REPLICAS_FREEZE).await;
    let during = checker.acks();
    frozen.thaw()?;
    let thawed_at = Instant::now();
    let resumed = await_resumed(&checker, thawed_at, RESUME)
        .await
        .context("writes were not acknowledged again in time")?;
    let acked_while_frozen: Vec<String> = during
        .iter()
        .filter(|a| a.started >= frozen_at)
        .map(|a| a.item.clone())
        .collect();
    let (acks, refused) = finish_and_count(env, &cell, &tenant, checker).await?;
    eprintln!(
        "    froze every replica of {cell} for {REPLICAS_FREEZE:?}: {} writes acknowledged \
         meanwhile, writes acknowledged again {resumed:.1?} after they ran again; {} writes \
         acknowledged in all, 0 lost, refused {refused:?}",
        acked_while_frozen.len(),
        acks.len()
    );
    ensure!(
        acked_while_frozen.is_empty(),
        "writes sent while every replica of {cell} was frozen were acknowledged: {:?}",
        acked_while_frozen.iter().take(10).collect::<Vec<_>>()
    );
    ensure!(
        refused.keys().any(|k| k.starts_with("503")),
        "no write was refused with 503 while every replica was frozen: refused {refused:?}"
    );
    Ok(())
}

/// The primary killed (its pod deleted with no grace period) [`FAILOVERS`] times in a row, each
/// time once the datastore is whole again: writes resume within [`RESUME`] every time and no
/// acknowledged write is lost. Prints the time to resume at p50 and max (the failover
/// benchmark, bench/failover.sh, is this scenario).
pub(super) async fn failing_over_again_and_again_loses_no_acknowledged_write(
    env: &Env,
) -> anyhow::Result<()> {
    let rounds = std::env::var("CELLSTACK_E2E_FAILOVERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(FAILOVERS, |n| n.max(FAILOVERS));
    let cell = cell(env, 1)?;
    let tenant = tenant_of(env, &cell)?;
    let ds = Datastore::of(env, &cell).await?;
    let checker = checker(env, &tenant, "failovers");
    let mut resumes = Vec::new();
    for round in 1..=rounds {
        let old = ds.await_whole(RECOVERY).await?;
        let n = checker.acked();
        await_acks(&checker, n + 50).await?;
        let killed = ds.kill(&old).await?;
        let promoted = ds.await_promotion(&old, RESUME).await?;
        let promoted_after = killed.elapsed();
        let resumed = await_resumed(&checker, killed, RESUME.saturating_sub(killed.elapsed()))
            .await
            .with_context(|| format!("failover {round}: writes did not resume in time"))?;
        eprintln!(
            "    failover {round}: {old} killed, {promoted} named primary by the sentinels within \
             {promoted_after:.1?}, writes resumed after {resumed:.1?}"
        );
        resumes.push(resumed);
    }
    ds.await_whole(RECOVERY).await?;
    let (acks, refused) = finish_and_count(env, &cell, &tenant, checker).await?;
    resumes.sort_unstable();
    eprintln!(
        "    {rounds} failovers of {cell}: writes resumed after p50 {:.1?}, max {:.1?} (goal \
         10 s); {} writes acknowledged, 0 lost, refused {refused:?}",
        percentile(&resumes, 0.5),
        resumes.last().copied().unwrap_or_default(),
        acks.len()
    );
    Ok(())
}
