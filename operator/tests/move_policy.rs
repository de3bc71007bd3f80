//! A moved tenant's rate limiting on the real cluster, with real cells, while the target cell's
//! policy ConfigMap is held back by the operator's test-only knob
//! (`CELLSTACK_TEST_HOLD_POLICY_FILE`, see `operator/src/logic/effective/hold.rs`) for longer than a
//! minute, as a slow ConfigMap volume would be, without touching the kubelet's sync period:
//! - a tenant with a policy of its own, moved under load, is held to its own limit on the target
//!   from the Flip on and throughout the hold, never to the default policy the target's stale
//!   file would give it, a lane restarted meanwhile included; and once the file arrives, the
//!   file takes over with the same policy;
//! - a tenant that used up its limit on the source is still refused on the target right after
//!   the Flip: its limiter state moved with its data.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use cellstack_api::{
    admin::{
        POLICY_OVERRIDE_PATH, POLICY_VERSION_PATH, PREFIX, PolicyInForce, PolicySource,
        PolicyVersion,
    },
    policy::{CellPolicies, POLICY_FILE_KEY},
    v1alpha1::{Cell, MoveStep, RateLimitPolicy, TenantAssignment},
    wire::header,
};
use cellstack_operator::names::{ADMIN_PORT, ADMIN_TOKEN, ADMIN_TOKEN_KEY, LANES, POLICIES};
use cellstack_testkit::cluster::{pod_is_ready, poll};
use common::{TEST_LABEL, World, is_ready, traffic::Router};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::task::JoinHandle;

/// How long the target's policy file is held back: more than the minute a ConfigMap volume
/// can take in production.
const HOLD: Duration = Duration::from_secs(90);
/// How long the test checks the hold for, from the start of the move (a lane restart included).
const HOLD_CHECKED: Duration = Duration::from_secs(75);
/// The default policy's rate (requests per second, burst the same): what a stale target file
/// would hold the moved tenant to.
const DEFAULT_RPS: u32 = 20;
/// The moved tenant's own policy, as in the report: 500 requests per second, burst 1000.
const PREMIUM_RPS: u32 = 500;
const PREMIUM_BURST: u32 = 1000;

/// A world whose operator holds back `bravo`'s policy file, with two Ready cells of one lane
/// each (alpha, bravo): (alpha, bravo).
async fn cells_with_held_target(world: &mut World) -> anyhow::Result<(String, String)> {
    let alpha = world.cell_name("alpha");
    let bravo = world.cell_name("bravo");
    world.operator_env.extend([
        (
            "CELLSTACK_TEST_HOLD_POLICY_FILE".to_owned(),
            format!("{bravo}={}", HOLD.as_secs()),
        ),
        // A held file is written at the cell's first reconcile after its wait: resync often.
        ("CELLSTACK_RESYNC_SECS".to_owned(), "10".to_owned()),
        ("CELLSTACK_MOVE_RETRY_SECS".to_owned(), "2".to_owned()),
    ]);
    world.start_operator("a").await?;
    for name in [&alpha, &bravo] {
        let cell: Cell = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
            "metadata": {"name": name, "labels": {TEST_LABEL: world.id}},
            "spec": {"lanes": 1, "datastore": {"managed": {"storage": "Ephemeral"}}},
        }))?;
        world
            .cells_api()
            .create(&PostParams::default(), &cell)
            .await
            .with_context(|| format!("creating Cell {name}"))?;
    }
    world.wait_cell(&alpha, "Ready", is_ready).await?;
    world.wait_cell(&bravo, "Ready", is_ready).await?;
    Ok((alpha, bravo))
}

fn rate_limit_policy(
    world: &World,
    name: &str,
    selector: serde_json::Value,
    limit: serde_json::Value,
) -> anyhow::Result<RateLimitPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": format!("{}-{name}", world.id), "labels": {TEST_LABEL: world.id}},
        "spec": {"selector": selector, "limits": [limit], "failMode": "Open"},
    }))?)
}

async fn create_tenant(world: &World, tenant: &str, cell: &str) -> anyhow::Result<()> {
    let ta: TenantAssignment = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
        "metadata": {"name": tenant, "labels": {TEST_LABEL: world.id}},
        "spec": {"tenantId": tenant, "cell": cell},
    }))?;
    Api::<TenantAssignment>::all(world.client.clone())
        .create(&PostParams::default(), &ta)
        .await?;
    Ok(())
}

async fn retarget(world: &World, tenant: &str, cell: &str) -> anyhow::Result<()> {
    Api::<TenantAssignment>::all(world.client.clone())
        .patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cell": cell}})),
        )
        .await?;
    Ok(())
}

/// Waits until the tenant's status names `cell` (the Flip is recorded).
async fn flipped(world: &World, tenant: &str, cell: &str) -> anyhow::Result<()> {
    let api = Api::<TenantAssignment>::all(world.client.clone());
    poll(
        &format!("the flip of {tenant} to {cell}"),
        common::WAIT,
        || async {
            let status = api.get(tenant).await?.status.unwrap_or_default();
            if let Some(mv) = &status.move_
                && mv.step == MoveStep::RolledBack
            {
                bail!("the move rolled back: {:?}", mv.message);
            }
            Ok((status.cell.as_deref() == Some(cell)).then_some(()))
        },
    )
    .await
}

/// A cell's lanes, as the test reaches them: tenant API base URLs and admin base URLs, with the
/// admin token.
struct Lanes {
    api: Vec<String>,
    admin: Vec<String>,
    token: String,
    http: reqwest::Client,
}

impl Lanes {
    async fn of(world: &World, cell: &str) -> anyhow::Result<Self> {
        let c = world.cells_api().get(cell).await?;
        let endpoints = c.status.map(|s| s.endpoints).unwrap_or_default();
        ensure!(!endpoints.is_empty(), "cell {cell} reports no endpoints");
        let secret = Api::<Secret>::namespaced(world.client.clone(), &format!("cell-{cell}"))
            .get(ADMIN_TOKEN)
            .await?;
        let token = secret
            .data
            .and_then(|d| d.get(ADMIN_TOKEN_KEY).cloned())
            .map(|b| String::from_utf8(b.0))
            .transpose()?
            .context("admin token")?;
        let host = |e: &String| e.split(':').next().unwrap_or_default().to_owned();
        Ok(Self {
            api: endpoints.iter().map(|e| format!("http://{e}")).collect(),
            admin: endpoints
                .iter()
                .map(|e| format!("http://{}:{ADMIN_PORT}", host(e)))
                .collect(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// What every lane enforces for `tenant`. A lane answers 503 while a call to its Redis is
    /// slow (its breaker then fails calls fast for a second): asked again, for up to 10 s.
    async fn in_force(&self, tenant: &str) -> anyhow::Result<Vec<PolicyInForce>> {
        let mut out = Vec::new();
        for base in &self.admin {
            let url = format!("{base}{PREFIX}/{tenant}/{POLICY_OVERRIDE_PATH}");
            let mut tries = 0;
            let res = loop {
                tries += 1;
                let res = self.http.get(&url).bearer_auth(&self.token).send().await?;
                if res.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || tries == 20 {
                    break res;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            ensure!(res.status().is_success(), "{base}: {}", res.status());
            out.push(res.json().await?);
        }
        Ok(out)
    }

    /// The policy-file version every lane has loaded.
    async fn file_versions(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for base in &self.admin {
            let v: PolicyVersion = self
                .http
                .get(format!("{base}{POLICY_VERSION_PATH}"))
                .send()
                .await?
                .json()
                .await?;
            out.push(v.version);
        }
        Ok(out)
    }
}

/// The policy file in the cell's ConfigMap (what the operator has written so far).
async fn written_file(world: &World, cell: &str) -> anyhow::Result<CellPolicies> {
    let cm = Api::<ConfigMap>::namespaced(world.client.clone(), &format!("cell-{cell}"))
        .get(POLICIES)
        .await?;
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(POLICY_FILE_KEY))
        .context("policies.json in the ConfigMap")?;
    Ok(serde_json::from_str(json)?)
}

/// One answer the load got.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    status: u16,
    cell: Option<String>,
    limit: Option<u32>,
    /// `x-cellstack-error`.
    code: Option<String>,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

/// Writes through the router at a steady pace, keeping every answer.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(router: &str, tenant: &str, workers: usize, pace: Duration) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let tasks = (0..workers)
            .map(|w| {
                let (answers, stop, http) = (answers.clone(), stop.clone(), http.clone());
                let (router, tenant) = (router.to_owned(), tenant.to_owned());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(pace);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let res = http
                            .put(format!("{router}/v1/items/load-{w}-{n}"))
                            .header(header::TENANT, &tenant)
                            .body("x")
                            .send()
                            .await;
                        let answer = match res {
                            Ok(res) => {
                                let h = res.headers();
                                let text = |name: &str| {
                                    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                                };
                                Answer {
                                    at: Instant::now(),
                                    status: res.status().as_u16(),
                                    cell: text(header::CELL),
                                    limit: text(header::RATELIMIT_LIMIT)
                                        .and_then(|v| v.parse().ok()),
                                    code: text(header::ERROR),
                                    retry_after: text(header::RETRY_AFTER)
                                        .and_then(|v| v.parse().ok()),
                                }
                            }
                            Err(_) => Answer {
                                at: Instant::now(),
                                status: 0,
                                cell: None,
                                limit: None,
                                code: None,
                                retry_after: None,
                            },
                        };
                        if let Ok(mut all) = answers.lock() {
                            all.push(answer);
                        }
                    }
                })
            })
            .collect();
        Self {
            answers,
            stop,
            tasks,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.answers.clone();
        for task in self.tasks {
            let _ = task.await;
        }
        answers.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

#[tokio::test]
#[ignore = "full tier (e2e/test-all --full): holds the target's policy file back for over a \
            minute on purpose; the default tier keeps the limit state moving with the tenant"]
async fn a_moved_tenant_keeps_its_own_limit_on_the_target_while_the_targets_policy_file_is_held_back()
 {
    let mut world = World::new("op-mvpol").await.expect("test world");
    let result = async {
        let tenant = format!("{}-t", world.id);
        let policies: Api<RateLimitPolicy> = Api::all(world.client.clone());
        let limit = |rps: u32, burst: u32| {
            json!({"name": "requests", "requests": rps, "periodSeconds": 1, "burst": burst})
        };
        policies
            .create(
                &PostParams::default(),
                &rate_limit_policy(
                    &world,
                    "default",
                    json!({"allTenants": true}),
                    limit(DEFAULT_RPS, DEFAULT_RPS),
                )?,
            )
            .await?;
        policies
            .create(
                &PostParams::default(),
                &rate_limit_policy(
                    &world,
                    "premium",
                    json!({"tenantIds": [tenant]}),
                    limit(PREMIUM_RPS, PREMIUM_BURST),
                )?,
            )
            .await?;
        let (alpha, bravo) = cells_with_held_target(&mut world).await?;
        let default_name = format!("{}-default", world.id);
        let premium_name = format!("{}-premium", world.id);
        // The target enforces a file with the default policy and without the tenant: what it
        // would hold the tenant to if nothing else did.
        let bravo_lanes = Lanes::of(&world, &bravo).await?;
        let before = poll("bravo's lanes to enforce a file with the default policy", common::WAIT, || async {
            let file = written_file(&world, &bravo).await?;
            ensure!(
                file.default.as_ref().is_some_and(|p| p.policy == default_name),
                "bravo's file has default {:?}",
                file.default.as_ref().map(|p| &p.policy)
            );
            let loaded = bravo_lanes.file_versions().await?;
            ensure!(loaded.iter().all(|v| *v == file.version), "lanes enforce {loaded:?}, the file is {}", file.version);
            Ok(Some(file))
        })
        .await?;
        ensure!(!before.tenants.contains_key(tenant.as_str()), "bravo's file names the tenant before the move");

        create_tenant(&world, &tenant, &alpha).await?;
        let router = Router::start(&world).await?;
        // About 70 writes a second: over the default's 20, far under the tenant's own 500.
        let load = Load::start(&router.url, &tenant, 4, Duration::from_millis(56));
        poll("writes acknowledged by alpha under the tenant's own limit", common::WAIT, || {
            let n = load
                .answers()
                .iter()
                .filter(|a| a.cell.as_deref() == Some(alpha.as_str()) && a.status == 200 && a.limit == Some(PREMIUM_RPS))
                .count();
            async move { Ok((n >= 100).then_some(())) }
        })
        .await
        .map_err(|e| e.context(router.log_tail()))?;

        let move_started = Instant::now();
        retarget(&world, &tenant, &bravo).await?;
        flipped(&world, &tenant, &bravo).await?;
        let flip_seen = move_started.elapsed();

        // A lane that starts during the hold loads the stale file, and reads the override with
        // the tenant's record.
        let pods: Api<Pod> = Api::namespaced(world.client.clone(), &format!("cell-{bravo}"));
        let lane_pod = format!("{LANES}-0");
        let old_uid = pods.get(&lane_pod).await?.uid();
        pods.delete(&lane_pod, &DeleteParams::default()).await?;
        poll("bravo's lane to be replaced and serve again", common::WAIT, || async {
            let pod = pods.get_opt(&lane_pod).await?;
            ensure!(
                pod.as_ref().is_some_and(|p| p.uid() != old_uid && pod_is_ready(p)),
                "lane pod not replaced and Ready yet"
            );
            bravo_lanes.in_force(&tenant).await?;
            Ok(Some(()))
        })
        .await?;
        let restarted = move_started.elapsed();

        // Throughout the hold: the ConfigMap does not name the tenant, the lanes still enforce
        // the file from before the move, and each lane says the tenant's own policy is in force
        // through the override.
        let mut checks = 0u32;
        while move_started.elapsed() < HOLD_CHECKED {
            let written = written_file(&world, &bravo).await?;
            ensure!(
                !written.tenants.contains_key(tenant.as_str()),
                "the hold did not hold: bravo's ConfigMap names the tenant {:?} after the move started",
                move_started.elapsed()
            );
            let loaded = bravo_lanes.file_versions().await?;
            ensure!(loaded.iter().all(|v| *v == before.version), "bravo's lanes loaded {loaded:?} during the hold");
            for lane in bravo_lanes.in_force(&tenant).await? {
                ensure!(
                    lane.source == PolicySource::Override
                        && lane.policy.as_ref().is_some_and(|p| p.policy == premium_name),
                    "during the hold a bravo lane enforces {lane:?}"
                );
            }
            checks += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let hold_checked = move_started.elapsed();
        ensure!(
            checks >= 5,
            "only {checks} checks of the hold after the lane restart ({restarted:?} after the move started)"
        );

        // Then the file arrives, and the lanes enforce the same policy from it.
        poll("bravo's lanes to take the tenant's policy from their file", common::WAIT + HOLD, || async {
            let lanes = bravo_lanes.in_force(&tenant).await?;
            Ok(lanes
                .iter()
                .all(|l| l.source == PolicySource::File && l.policy.as_ref().is_some_and(|p| p.policy == premium_name))
                .then_some(()))
        })
        .await?;
        let file_arrived = move_started.elapsed();
        let answers = load.finish().await;

        let on_bravo: Vec<&Answer> =
            answers.iter().filter(|a| a.cell.as_deref() == Some(bravo.as_str())).collect();
        let during_hold = on_bravo
            .iter()
            .filter(|a| a.at.duration_since(move_started) < hold_checked)
            .count();
        let limited: Vec<&&Answer> = on_bravo.iter().filter(|a| a.status == 429).take(5).collect();
        ensure!(limited.is_empty(), "bravo refused the tenant as rate limited: {limited:?}");
        // Every limit bravo named was the tenant's own. (An answer admitted while the cell's
        // Redis was too slow to ask carries no limit: the policy fails open. Counted, not hidden.)
        let other_limit: Vec<&&Answer> = on_bravo
            .iter()
            .filter(|a| a.limit.is_some_and(|l| l != PREMIUM_RPS))
            .take(5)
            .collect();
        ensure!(
            other_limit.is_empty(),
            "bravo answered under a limit other than the tenant's {PREMIUM_RPS}/s: {other_limit:?}"
        );
        let premium_during_hold = on_bravo
            .iter()
            .filter(|a| a.at.duration_since(move_started) < hold_checked)
            .filter(|a| a.status == 200 && a.limit == Some(PREMIUM_RPS))
            .count();
        let unlimited = on_bravo
            .iter()
            .filter(|a| a.status == 200 && a.limit.is_none())
            .count();
        ensure!(
            premium_during_hold >= 500,
            "only {premium_during_hold} answers from bravo under the tenant's limit during the hold: too few to show anything"
        );
        // The source got the tenant's policy with its record (not a minute later with its
        // policy file): it never held the new tenant to the default.
        let refused_by_alpha = answers
            .iter()
            .filter(|a| a.cell.as_deref() == Some(alpha.as_str()) && a.status == 429)
            .count();
        let alpha_default: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.cell.as_deref() == Some(alpha.as_str()))
            .filter(|a| a.status == 429 || a.limit.is_some_and(|l| l != PREMIUM_RPS))
            .take(5)
            .collect();
        ensure!(
            alpha_default.is_empty(),
            "alpha held the new tenant to another limit than its own {PREMIUM_RPS}/s ({refused_by_alpha} refused): {alpha_default:?}"
        );
        eprintln!(
            "moved under load with bravo's policy file held back {}s: flip seen {:.1}s after the move started, bravo's lane restarted by {:.1}s; {} answers from bravo during the {:.0}s checked ({checks} checks of ConfigMap, lanes and override), {premium_during_hold} of them admitted under the tenant's {PREMIUM_RPS}/s, 0 rate limited, none under another limit ({unlimited} admitted without a limit while the cell's Redis was too slow to ask, fail-open); the file reached the lanes {:.0}s after the move started; {} answers in all, {refused_by_alpha} rate limited by alpha",
            HOLD.as_secs(),
            flip_seen.as_secs_f64(),
            restarted.as_secs_f64(),
            during_hold,
            hold_checked.as_secs_f64(),
            file_arrived.as_secs_f64(),
            answers.len(),
        );
        Api::<TenantAssignment>::all(world.client.clone())
            .delete(&tenant, &DeleteParams::default())
            .await?;
        Ok(())
    }
    .await;
    world
        .finish(result)
        .await
        .expect("moved tenant keeps its limit");
}

/// One request of `tenant` straight to a lane's tenant API.
async fn whoami(http: &reqwest::Client, lane: &str, tenant: &str) -> anyhow::Result<Answer> {
    let res = http
        .get(format!("{lane}/v1/whoami"))
        .header(header::TENANT, tenant)
        .send()
        .await?;
    let h = res.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(Answer {
        at: Instant::now(),
        status: res.status().as_u16(),
        cell: text(header::CELL),
        limit: text(header::RATELIMIT_LIMIT).and_then(|v| v.parse().ok()),
        code: text(header::ERROR),
        retry_after: text(header::RETRY_AFTER).and_then(|v| v.parse().ok()),
    })
}

#[tokio::test]
async fn a_tenant_that_used_up_its_limit_is_still_refused_on_the_target_right_after_the_flip() {
    const LIMIT: u32 = 20;
    let mut world = World::new("op-mvlim").await.expect("test world");
    let result = async {
        let tenant = format!("{}-t", world.id);
        // 20 requests an hour: nothing comes back within the test. No default policy, so a
        // target that did not know the tenant's policy would not limit it at all.
        Api::<RateLimitPolicy>::all(world.client.clone())
            .create(
                &PostParams::default(),
                &rate_limit_policy(
                    &world,
                    "hourly",
                    json!({"tenantIds": [tenant]}),
                    json!({"name": "hourly", "requests": LIMIT, "periodSeconds": 3600}),
                )?,
            )
            .await?;
        let (alpha, bravo) = cells_with_held_target(&mut world).await?;
        create_tenant(&world, &tenant, &alpha).await?;
        let alpha_lanes = Lanes::of(&world, &alpha).await?;
        let lane = alpha_lanes.api.first().context("alpha lane")?.clone();
        let http = alpha_lanes.http.clone();
        // Used up on the source: requests until the first refusal.
        poll("alpha to serve the tenant under its hourly limit", common::WAIT, || async {
            let a = whoami(&http, &lane, &tenant).await?;
            ensure!(a.status == 200 && a.limit == Some(LIMIT), "alpha answered {a:?}");
            Ok(Some(()))
        })
        .await?;
        let mut admitted = 1u32;
        let refusal = loop {
            let a = whoami(&http, &lane, &tenant).await?;
            match a.status {
                200 => admitted += 1,
                429 => break a,
                _ => bail!("alpha answered {a:?}"),
            }
            ensure!(admitted <= LIMIT, "alpha admitted {admitted} requests under a limit of {LIMIT}");
        };
        ensure!(refusal.limit == Some(LIMIT), "alpha's refusal names limit {:?}", refusal.limit);

        let move_started = Instant::now();
        retarget(&world, &tenant, &bravo).await?;
        flipped(&world, &tenant, &bravo).await?;
        let bravo_lanes = Lanes::of(&world, &bravo).await?;
        let mut answers = Vec::new();
        for lane in &bravo_lanes.api {
            answers.push(whoami(&bravo_lanes.http, lane, &tenant).await?);
        }
        let after_flip = move_started.elapsed();
        for a in &answers {
            ensure!(
                a.status == 429 && a.cell.as_deref() == Some(bravo.as_str()) && a.limit == Some(LIMIT),
                "bravo answered the tenant that had used up its limit on alpha with {a:?}"
            );
        }
        // Its file held back, bravo knows the tenant's policy only through the override.
        let written = written_file(&world, &bravo).await?;
        ensure!(
            !written.tenants.contains_key(tenant.as_str()),
            "bravo's ConfigMap names the tenant {after_flip:?} after the move started: the hold did not hold"
        );
        eprintln!(
            "used up on alpha after {admitted} admitted requests; right after the flip ({:.1}s after the move started) bravo refused: {:?}",
            after_flip.as_secs_f64(),
            answers.iter().map(|a| (a.status, a.code.clone(), a.limit, a.retry_after)).collect::<Vec<_>>()
        );
        Api::<TenantAssignment>::all(world.client.clone())
            .delete(&tenant, &DeleteParams::default())
            .await?;
        Ok(())
    }
    .await;
    world
        .finish(result)
        .await
        .expect("limited tenant stays limited");
}
