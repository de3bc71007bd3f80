//! A team's own service behind the cell runtime (docs/services.md): two cells running the Go
//! example (examples/go-orders) as their only service, its tenants served through the router;
//! a tenant over its limit refused before the service; 50 compare-and-set increments at once;
//! the service's and the state API's ports closed outside the pod; one tenant moved under a
//! load of orders and a background job, then one lane's service frozen. The cells are deleted
//! at the end; the rollout scenario names the examples' cells, so they are not part of it.

use std::net::{IpAddr, SocketAddr};

use cellstack_api::{
    v1alpha1::{LANE_STATE_PORT, LANE_TENANT_PORT},
    wire::{ErrorBody, ErrorCode},
};
use cellstack_testkit::{
    cluster::{container_pids, pod_is_ready, signal},
    reach::{self, Reach},
    traffic::{TenantApi, Writes, lane_pod_client},
};
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};

use super::*;

/// The two cells of this scenario; deleted at its end.
const CELLS: [&str; 2] = ["orders-a", "orders-b"];
/// Its tenants, all placed on the first cell; the first one moves.
const TENANTS: [&str; 3] = ["go-mover", "go-stay-1", "go-stay-2"];
/// The Go example's container in each lane, and the loopback port it listens on.
const SERVICE: &str = "orders";
const SERVICE_PORT: u16 = 8081;
/// A tenant of the first cell whose orders `LIMIT_POLICY` limits to `ORDER_LIMIT` a second.
const LIMITED: &str = "go-limited";
const LIMIT_POLICY: &str = "go-limited-orders";
const ORDER_LIMIT: u32 = 10;

/// A cell of `lanes` running the Go example. Small requests: the single-node cluster's 2 CPUs
/// are mostly requested by the examples' cells already.
fn cell_doc(env: &Env, name: &str, zone: &str, lanes: u32, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
        "metadata": { "name": name, "labels": { RUN_LABEL: env.id, "cellstack.dev/example": "go-orders" } },
        "spec": {
            "zone": zone, "lanes": lanes, "version": "v1",
            "capacity": { "maxTenants": 10 },
            "datastore": { "managed": { "storage": "Ephemeral" } },
            "services": [{
                "name": SERVICE, "image": image, "port": SERVICE_PORT,
                "healthPath": "/healthz", "timeoutSeconds": 5,
                "args": ["-version", "v1"],
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
            }],
        },
    })
}

/// Every line of the service's log in `cell`'s lanes that mentions `needle`.
async fn service_log_lines(env: &Env, cell: &str, needle: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &format!("cell-{cell}"));
    let mut lines = vec![];
    for pod in pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=lane"))
        .await?
    {
        let params = kube::api::LogParams {
            container: Some(SERVICE.into()),
            ..Default::default()
        };
        let log = pods
            .logs(&pod.name_any(), &params)
            .await
            .unwrap_or_default();
        lines.extend(
            log.lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned),
        );
    }
    Ok(lines)
}

pub async fn a_go_service_behind_the_runtime_is_served_moved_and_fenced_without_losing_a_write(
    env: &Env,
) -> anyhow::Result<()> {
    let image = image("CELLSTACK_E2E_GO_ORDERS_IMAGE")?;
    let cells: Api<Cell> = Api::all(env.client.clone());
    let tas: Api<TenantAssignment> = Api::all(env.client.clone());
    let policies: Api<RateLimitPolicy> = Api::all(env.client.clone());
    let started = Instant::now();
    // Two lanes each: the target's lane-0 is frozen below, and a moment's trouble of one lane
    // of the source (the move's export under load) is not its staying tenants' refusal.
    for (name, zone) in CELLS.iter().zip(["zone-a", "zone-b"]) {
        cells
            .create(
                &PostParams::default(),
                &serde_json::from_value(cell_doc(env, name, zone, 2, &image))?,
            )
            .await
            .with_context(|| format!("creating Cell {name}"))?;
    }
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "RateLimitPolicy",
                "metadata": { "name": LIMIT_POLICY, "labels": { RUN_LABEL: env.id } },
                "spec": {
                    "selector": { "tenantIds": [LIMITED] },
                    "priority": 30,
                    "limits": [{
                        "name": "orders", "requests": ORDER_LIMIT, "periodSeconds": 1,
                        "algorithm": "SlidingWindow",
                        "match": { "methods": ["POST"], "pathPrefix": "/orders" },
                    }],
                    "failMode": "Closed",
                },
            }))?,
        )
        .await
        .with_context(|| format!("creating RateLimitPolicy {LIMIT_POLICY}"))?;
    for tenant in TENANTS.into_iter().chain([LIMITED]) {
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": tenant, "labels": {RUN_LABEL: env.id}},
            "spec": {"tenantId": tenant, "cell": CELLS[0]},
        }))?;
        tas.create(&PostParams::default(), &ta).await?;
    }
    let result = scenario(env, &tas, started).await;
    // What the dump after a failure would not show: these cells go before it runs.
    let mut state = String::new();
    if result.is_err() {
        for name in CELLS {
            if let Ok(c) = cells.get(name).await {
                state.push_str(&format!("cell {name}: {:?}\n", c.status));
            }
            let ns = cellstack_testkit::cluster::TestNamespace {
                client: env.client.clone(),
                name: format!("cell-{name}"),
            };
            state.push_str(&ns.dump().await);
        }
    }
    // Gone at the end either way, so that the scenarios after this one have the CPU they expect
    // (the metric check finds the gateway's families among the series Prometheus keeps).
    // Tenants first: a cell holding tenants may not be deleted.
    for tenant in TENANTS.into_iter().chain([LIMITED]) {
        let _ = tas.delete(tenant, &DeleteParams::default()).await;
    }
    let _ = policies
        .delete(LIMIT_POLICY, &DeleteParams::default())
        .await;
    let deleted = poll("the Go example's cells to be deleted", WAIT, || async {
        for name in CELLS {
            if cells.get_opt(name).await?.is_some() {
                // Refused while the cell still counts a tenant: asked again until it is not.
                let _ = cells.delete(name, &DeleteParams::default()).await;
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await;
    result.with_context(|| state)?;
    deleted
}

async fn scenario(env: &Env, tas: &Api<TenantAssignment>, started: Instant) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let router = env.router.trim_end_matches('/').to_owned();
    // Served through the router: the cells are Ready (the runtime found the service healthy)
    // and each tenant's first order is created by the service.
    for tenant in TENANTS.into_iter().chain([LIMITED]) {
        poll(
            &format!("{tenant}'s first order through the router"),
            SETUP_WAIT,
            || {
                let req = http
                    .post(format!("{router}/orders"))
                    .header(header::TENANT, tenant)
                    .json(&json!({"item": "first", "quantity": 1}));
                async move {
                    let res = req.send().await?;
                    Ok((res.status() == reqwest::StatusCode::CREATED).then_some(()))
                }
            },
        )
        .await?;
    }
    let ready_after = started.elapsed();
    orders_over_the_limit_never_reach_the_service(env, &http, &router).await?;
    concurrent_increments_lose_none(&http, &router).await?;
    only_the_runtime_listens_outside_the_pod(env, CELLS[0]).await?;

    // Orders from every tenant; a background job of the mover writing every 5 ms.
    let checkers: Vec<(&str, Checker)> = TENANTS
        .iter()
        .map(|t| {
            (
                *t,
                Checker::writing(&router, t, Writes::Orders, 2, Duration::from_millis(25)),
            )
        })
        .collect();
    let job: serde_json::Value = http
        .post(format!("{router}/jobs"))
        .header(header::TENANT, TENANTS[0])
        .json(&json!({"writes": 100_000, "intervalMs": 5}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let job_id = job["job"].as_str().context("job id")?.to_owned();
    poll("orders before the move", WAIT, || {
        let n = checkers[0].1.acked();
        async move { Ok((n >= 100).then_some(())) }
    })
    .await?;
    let (from, to) = (CELLS[0], CELLS[1]);
    tas.patch(
        TENANTS[0],
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"cell": to}})),
    )
    .await?;
    let mv = poll(
        &format!("the move of {} to {to}", TENANTS[0]),
        WAIT,
        || async {
            let mv = tas.get(TENANTS[0]).await?.status.and_then(|s| s.move_);
            Ok(mv.filter(|m| m.to == to && m.step == MoveStep::Done))
        },
    )
    .await?;
    let at_flip = checkers[0].1.acked();
    poll("orders after the move", WAIT, || {
        let n = checkers[0].1.acked();
        async move { Ok((n >= at_flip + 50).then_some(())) }
    })
    .await?;
    let mut results = vec![];
    for (tenant, checker) in checkers {
        let (acks, refused) = checker.finish().await;
        let home = if tenant == TENANTS[0] { to } else { from };
        let lost = lost_writes(&env.client, home, tenant, &acks).await?;
        results.push((tenant, acks, refused, lost));
    }
    for (tenant, acks, refused, lost) in &results {
        eprintln!(
            "    {tenant}: {} orders acknowledged by the Go service, {} lost, refused {refused:?}",
            acks.len(),
            lost.len()
        );
        ensure!(
            lost.is_empty(),
            "{tenant}: acknowledged orders missing: {lost:?}"
        );
    }
    for (tenant, _, refused, _) in &results[1..] {
        ensure!(
            refused.is_empty(),
            "{tenant} did not move, yet saw refusals: {refused:?}"
        );
    }
    ensure!(
        results[0].1.iter().any(|a| a.cell == to),
        "no order of the mover was acknowledged by {to}"
    );

    // The job ran in a lane of the first cell: refused once its tenant moved (it stops there),
    // and every write it had acknowledged is in the tenant's data in the new cell.
    let ended = poll("the job's end in its lane's log", WAIT, || async {
        let lines = service_log_lines(
            env,
            from,
            &format!("job {job_id} of tenant {} ended", TENANTS[0]),
        )
        .await?;
        Ok(lines.into_iter().next())
    })
    .await?;
    let acked: i64 = ended
        .split("acked=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no acked count in {ended:?}"))?;
    let refusals = service_log_lines(
        env,
        from,
        &format!("job {job_id} of tenant {}: write refused", TENANTS[0]),
    )
    .await?;
    let held: serde_json::Value = http
        .get(format!("{router}/jobs/{job_id}"))
        .header(header::TENANT, TENANTS[0])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let held = held["writes"].as_i64().context("writes")?;
    let fenced = refusals.iter().filter(|l| l.contains("(fenced)")).count();
    eprintln!(
        "    cells ready and serving after {ready_after:.1?}; move paused writes {:?} ms; job: {acked} writes acknowledged, {held} held by {to}, refused {} times ({fenced} fenced) and stopped",
        mv.write_pause_millis,
        refusals.len()
    );
    ensure!(
        refusals
            .iter()
            .any(|l| l.contains("(moved)") || l.contains("(stale_epoch)")),
        "the job was never told its tenant left: {refusals:?}"
    );
    // A write whose answer was lost (none expected) could make `held` one more, never less.
    ensure!(
        (acked..=acked + 1).contains(&held),
        "the job acknowledged {acked} writes; {to} holds {held}"
    );

    // One lane's service frozen: that lane goes unready (the operator says Degraded, with a
    // Warning Event), and the mover's orders go on through its other lane.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &format!("cell-{to}"));
    let pod = pods.get("lane-0").await?;
    let pids = container_pids(&pod, SERVICE)?;
    signal(&pids, "STOP")?;
    let frozen_at = Instant::now();
    // Event times have a second's resolution.
    let frozen_wall = now_seconds() - 1;
    let outcome = async {
        let checker = Checker::writing(&router, TENANTS[0], Writes::Orders, 2, Duration::from_millis(25));
        poll("lane-0 unready with its service frozen", WAIT, || async {
            Ok((!pod_is_ready(&pods.get("lane-0").await?)).then_some(()))
        })
        .await?;
        let unready_after = frozen_at.elapsed();
        let event = poll("a Warning Event on the Cell", WAIT, || async {
            let events: Api<Event> = Api::all(env.client.clone());
            Ok(events
                .list(&ListParams::default())
                .await?
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("Cell") && r.name.as_deref() == Some(to)
                    }) && e.reason.as_deref() == Some("CellDegraded")
                        && last_seen(e) >= frozen_wall
                }))
        })
        .await?;
        let at = checker.acked();
        poll("orders through the other lane", WAIT, || {
            let n = checker.acked();
            async move { Ok((n >= at + 40).then_some(())) }
        })
        .await?;
        let (acks, refused) = checker.finish().await;
        eprintln!(
            "    lane-0's service frozen: unready after {unready_after:.1?}, Event {:?}: {:?}; {} orders acknowledged meanwhile, refused {refused:?}",
            event.reason,
            event.note,
            acks.len()
        );
        anyhow::Ok(())
    }
    .await;
    signal(&pids, "CONT")?;
    outcome?;
    poll("lane-0 ready again", WAIT, || async {
        Ok(pod_is_ready(&pods.get("lane-0").await?).then_some(()))
    })
    .await?;
    // The full tier (`e2e/test-all --full`) also rolls the cells from the example's v1 to a
    // broken v2; the default tier's rollout scenario covers a broken Go version after the
    // reference service.
    if std::env::var("CELLSTACK_TEST_TIER").is_ok_and(|t| t == "full") {
        broken_version_is_halted_and_rolled_back(env, &router).await?;
    }
    Ok(())
}

/// `LIMITED` sends 60 orders, six at a time, through the router: the cell runtime refuses
/// those over the tenant's limit with 429 `rate_limited`, and the Go service never sees them:
/// its own count of the tenant's requests grows by the orders admitted, exactly.
async fn orders_over_the_limit_never_reach_the_service(
    env: &Env,
    http: &reqwest::Client,
    router: &str,
) -> anyhow::Result<()> {
    let policies: Api<RateLimitPolicy> = Api::all(env.client.clone());
    poll(
        &format!("RateLimitPolicy {LIMIT_POLICY} acknowledged by every cell"),
        SETUP_WAIT,
        || async {
            let p = policies.get(LIMIT_POLICY).await?;
            let status = p.status.unwrap_or_default();
            Ok((status.observed_generation == p.metadata.generation
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Acknowledged" && c.status == "True"))
            .then_some(()))
        },
    )
    .await?;
    let cell = CELLS[0];
    let before = requests_seen_by_service(env, cell, LIMITED).await?;
    let sent = 60;
    let answers = futures::future::join_all((0..6).map(|w| {
        let (http, router) = (http.clone(), router.to_owned());
        async move {
            let mut answers = vec![];
            for n in 0..sent / 6 {
                let res = http
                    .post(format!("{router}/orders"))
                    .header(header::TENANT, LIMITED)
                    .json(&json!({"item": format!("burst-{w}-{n}"), "quantity": 1}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await?;
                let status = res.status().as_u16();
                let from = res
                    .headers()
                    .get(header::CELL)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let code = res.json::<ErrorBody>().await.ok().map(|b| b.error);
                answers.push((status, code, from));
            }
            anyhow::Ok(answers)
        }
    }))
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?
    .concat();
    let admitted = answers.iter().filter(|(s, ..)| *s == 201).count();
    let limited = answers
        .iter()
        .filter(|(s, code, from)| {
            *s == 429 && *code == Some(ErrorCode::RateLimited) && from == cell
        })
        .count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(s, code, from)| {
            *s != 201 && !(*s == 429 && *code == Some(ErrorCode::RateLimited) && from == cell)
        })
        .collect();
    let after = requests_seen_by_service(env, cell, LIMITED).await?;
    eprintln!(
        "    {LIMITED} ({ORDER_LIMIT} orders/s): {sent} sent, {admitted} created, {limited} refused 429 by {cell}'s runtime; the Go service counted {} requests",
        after - before
    );
    ensure!(
        other.is_empty(),
        "answers neither 201 nor the runtime's 429: {other:?}"
    );
    ensure!(
        limited > 0,
        "none of {sent} orders at once was limited to {ORDER_LIMIT}/s"
    );
    ensure!(admitted > 0, "no order of {LIMITED} was admitted");
    ensure!(
        after - before == admitted as u64,
        "the Go service counted {} requests of {LIMITED}; the runtime admitted {admitted}",
        after - before
    );
    Ok(())
}

/// The Go service's own count of `tenant`'s requests (`GET /stats`, which it does not count),
/// summed over `cell`'s lanes: each lane's process counts its own, so each is asked directly.
async fn requests_seen_by_service(env: &Env, cell: &str, tenant: &str) -> anyhow::Result<u64> {
    let ns = format!("cell-{cell}");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let mut total = 0;
    for (name, ip) in lane_ips(&pods).await? {
        let (client, base) = lane_pod_client(&secrets, ip, LANE_TENANT_PORT as u16).await?;
        let stats: serde_json::Value = client
            .get(format!("{base}/stats"))
            .header(header::TENANT, tenant)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET /stats from {ns}/{name}"))?
            .json()
            .await?;
        total += stats["requests"]
            .as_u64()
            .with_context(|| format!("no request count from {ns}/{name}: {stats}"))?;
    }
    Ok(total)
}

/// Every lane pod of a cell's namespace and its address.
async fn lane_ips(pods: &Api<Pod>) -> anyhow::Result<Vec<(String, IpAddr)>> {
    pods.list(&ListParams::default().labels("app.kubernetes.io/component=lane"))
        .await?
        .into_iter()
        .map(|p| {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .with_context(|| format!("lane pod {} has no address", p.name_any()))?
                .parse()?;
            Ok((p.name_any(), ip))
        })
        .collect()
}

/// 50 increments of one tally at once through the router, each a read-modify-write with
/// compare-and-set in the Go service: every one acknowledged with a value of its own, 1 to 50.
/// A refusal that applied nothing (shed, say) is sent again, as a client would.
async fn concurrent_increments_lose_none(
    http: &reqwest::Client,
    router: &str,
) -> anyhow::Result<()> {
    let tenant = TENANTS[2];
    let results = futures::future::join_all((0..50).map(|_| {
        let (http, router) = (http.clone(), router.to_owned());
        async move {
            for _ in 0..20 {
                let res = http
                    .post(format!("{router}/tallies/concurrent"))
                    .header(header::TENANT, tenant)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await?;
                if res.status().is_success() {
                    let v: serde_json::Value = res.json().await?;
                    return (v["value"].as_u64()).with_context(|| format!("no value in {v}"));
                }
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&body) {
                    Ok(b) if b.error.nothing_applied() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => anyhow::bail!("an increment was answered {status}: {body}"),
                }
            }
            anyhow::bail!("an increment was refused 20 times")
        }
    }))
    .await;
    let mut values = results.into_iter().collect::<anyhow::Result<Vec<u64>>>()?;
    values.sort_unstable();
    eprintln!(
        "    50 compare-and-set increments of one tally at once: values {}..={}, {} distinct",
        values.first().unwrap_or(&0),
        values.last().unwrap_or(&0),
        values.iter().collect::<BTreeSet<_>>().len()
    );
    ensure!(
        values == (1..=50).collect::<Vec<u64>>(),
        "50 increments at once should answer 1 to 50, each once; answered {values:?}"
    );
    Ok(())
}

/// From outside the pod (this host, through the test path: a client on the pod's node) a lane's
/// tenant port accepts a connection; its state API and the Go service's port refuse one: they
/// listen on the pod's loopback only (the runtime refuses any other address for the state API).
async fn only_the_runtime_listens_outside_the_pod(env: &Env, cell: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &format!("cell-{cell}"));
    for (name, ip) in lane_ips(&pods).await? {
        for (what, port, want) in [
            ("tenant port", LANE_TENANT_PORT as u16, Reach::Open),
            ("state API", LANE_STATE_PORT as u16, Reach::Refused),
            ("Go service", SERVICE_PORT, Reach::Refused),
        ] {
            let addr = SocketAddr::from((ip, port));
            let got = reach::from_host(addr).await?;
            ensure!(
                got == want,
                "{cell}'s {name}: its {what} ({addr}) was {got} from outside the pod, not {want}"
            );
        }
    }
    eprintln!(
        "    {cell}'s lanes: tenant port open, state API ({LANE_STATE_PORT}) and Go service ({SERVICE_PORT}) refused outside the pod"
    );
    Ok(())
}

/// A `CellRollout` of both cells from the example's v1 to a v2 that fails half of its
/// requests: halted by the gate in its first wave (one cell), that cell back on v1, the other
/// never touched.
async fn broken_version_is_halted_and_rolled_back(env: &Env, router: &str) -> anyhow::Result<()> {
    let image = image("CELLSTACK_E2E_GO_ORDERS_IMAGE")?;
    let name = "orders-v2-broken";
    let rollouts: Api<CellRollout> = Api::all(env.client.clone());
    let tenants: Vec<String> = TENANTS.iter().map(|t| (*t).to_owned()).collect();
    let pace = Pace {
        per_second: 10.0,
        writes_every: 2,
    };
    let load = Load::start_speaking(router, &tenants, pace, TenantApi::Orders);
    let before: BTreeMap<&str, _> = {
        let mut m = BTreeMap::new();
        for cell in CELLS {
            m.insert(cell, lane_pods(env, cell).await?);
        }
        m
    };
    let started = Instant::now();
    let rollout: CellRollout = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "CellRollout",
        "metadata": { "name": name, "labels": { RUN_LABEL: env.id } },
        "spec": {
            "cells": { "names": CELLS },
            "version": "v2-broken",
            "services": [{
                "name": SERVICE, "image": image, "port": SERVICE_PORT,
                "healthPath": "/healthz", "timeoutSeconds": 5,
                "args": ["-fail-ratio", "0.5", "-version", "v2-broken"],
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
            }],
            "strategy": { "firstWave": 1, "waveGrowth": 2, "bakeSeconds": 10, "progressDeadlineSeconds": 240 },
            "gate": { "maxErrorRateIncrease": 0.05, "maxP99Ratio": 3.0, "p99ToleranceMs": 100, "minRequests": 20 },
        },
    }))?;
    rollouts.create(&PostParams::default(), &rollout).await?;
    let outcome = async {
        let halted = await_rollout(env, name, "the broken v2 to be halted", |s| {
            s.phase == RolloutPhase::Halted
        })
        .await?;
        let first: Vec<&str> = halted
            .cells
            .iter()
            .filter(|c| c.wave == 1)
            .map(|c| c.name.as_str())
            .collect();
        ensure!(
            first.len() == 1
                && halted.cells.iter().all(|c| {
                    (c.state == RolloutCellState::RolledBack) == (c.wave == 1)
                        && (c.wave == 1 || c.state == RolloutCellState::Pending)
                }),
            "the first wave (one cell) rolled back, the other never started: {:?}",
            halted.cells
        );
        let gate = halted.last_gate.clone().unwrap_or_default();
        ensure!(gate.contains("failed the health gate"), "the halt names the gate: {gate}");
        await_cell_version(env, first[0], "v1").await?;
        for cell in CELLS.iter().filter(|c| !first.contains(c)) {
            ensure!(
                lane_pods(env, cell).await? == before[cell],
                "cell {cell}'s lanes changed during the broken rollout"
            );
        }
        let stats = load.finish().await;
        let errors: u64 = stats.values().map(TenantStats::error_count).sum();
        let requests: u64 = stats.values().map(TenantStats::requests).sum();
        eprintln!(
            "    broken v2 of the Go example: halted in wave 1 ({first:?}) and back on v1 after {:.1?}; {errors} errors in {requests} requests meanwhile; gate: {gate}",
            started.elapsed()
        );
        anyhow::Ok(())
    }
    .await;
    let _ = rollouts.delete(name, &DeleteParams::default()).await;
    outcome
}

/// Seconds since the epoch, now.
fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When `event` was last seen, in seconds since the epoch.
fn last_seen(event: &Event) -> i64 {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0.as_second())
        .or_else(|| event.event_time.as_ref().map(|t| t.0.as_second()))
        .or_else(|| {
            event
                .deprecated_last_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
        })
        .unwrap_or(0)
}
