//! `kubectl cellstack dashboard` in a real browser (Debian's chromium, headless, driven over
//! the DevTools protocol) against the real API server: the page shows the cells by zone with
//! their tenants; a move the test drives step by step appears with its progress and completes
//! on the open page; clicking a lane shows its blast radius; the API server counts no new LIST
//! of the watched kinds while the page is open (it is fed by watches); and a screenshot is
//! saved (`<target>/tmp/cellstack-dashboard.png`).

mod common;

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    routing::{CellRoute, CellState, RoutingTable, TenantRoute},
    tenant::TenantId,
    v1alpha1::{Cell, TenantAssignment},
};
use cellstack_operator::controllers::publish::Publisher;
use cellstack_testkit::{
    browser::Browser,
    cluster::{TestNamespace, require_cluster},
};
use common::{
    TEST_LABEL,
    objects::{condition, create, fixed_id, set_status},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// LIST requests the API server has served for cells, tenant assignments and cell rollouts.
async fn lists(client: &Client) -> anyhow::Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut total = 0.0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let watched = ["cells", "tenantassignments", "cellrollouts"]
            .iter()
            .any(|r| line.contains(&format!("resource=\"{r}\"")));
        if watched && line.contains("verb=\"LIST\"") {
            total += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(total as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_stack_and_follows_a_move_live_without_listing_again() {
    let client = require_cluster().await.expect("cluster");
    cellstack_testkit::ensure_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "dashboard")
        .await
        .expect("namespace");
    let id = fixed_id(&ns.name);
    let (alpha, bravo, t1) = (
        format!("alpha-{id}"),
        format!("bravo-{id}"),
        format!("t1-{id}"),
    );
    let result = run(&client, &ns.name, &id, &alpha, &bravo, &t1).await;
    let dp = DeleteParams::default();
    let _ = Api::<TenantAssignment>::all(client.clone())
        .delete(&t1, &dp)
        .await;
    let cells = Api::<Cell>::all(client.clone());
    for c in [&alpha, &bravo] {
        let _ = cells
            .patch(
                c,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = cells.delete(c, &dp).await;
    }
    ns.finish(result).await.expect("dashboard");
}

async fn run(
    client: &Client,
    namespace: &str,
    id: &str,
    alpha: &str,
    bravo: &str,
    t1: &str,
) -> anyhow::Result<()> {
    let cells: Api<Cell> = Api::all(client.clone());
    let tenants: Api<TenantAssignment> = Api::all(client.clone());
    let labels = json!({ TEST_LABEL: id });
    for (name, zone) in [(alpha, "zone-a"), (bravo, "zone-b")] {
        create(
            &cells,
            json!({
                "apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell",
                "metadata": { "name": name, "labels": labels },
                "spec": { "zone": zone, "lanes": 3,
                          "datastore": { "managed": { "storage": "Ephemeral" } } },
            }),
        )
        .await?;
        set_status(
            &cells,
            name,
            json!({ "phase": "Ready", "lanes": 3, "readyLanes": 3, "datastoreReplicas": 1,
                    "conditions": [condition("Ready", "True", "AllLanesReady", "3/3 lanes ready")] }),
        )
        .await?;
    }
    create(
        &tenants,
        json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": { "name": t1, "labels": labels },
            "spec": { "tenantId": t1, "cell": alpha },
        }),
    )
    .await?;
    set_status(
        &tenants,
        t1,
        json!({ "phase": "Placed", "cell": alpha, "epoch": 1 }),
    )
    .await?;
    // The routing table the blast radius comes from: alpha's 3 lanes, 1 per tenant.
    let mut publisher = Publisher::new(client.clone(), namespace, Duration::from_secs(10));
    let table = RoutingTable::canonical(
        publisher.next_version().await?,
        1_700_000_000_000,
        vec![CellRoute {
            name: alpha.to_owned(),
            zone: Some("zone-a".into()),
            state: CellState::Active,
            lanes: (0..3).map(|i| format!("10.96.1.{i}:8080")).collect(),
            shard_size: 1,
            shard_seed: 3,
        }],
        vec![],
        vec![TenantRoute {
            id: TenantId::parse(t1)?,
            cell: 0,
            epoch: 1,
            shard_variant: 0,
            edge_limit: None,
        }],
    )?;
    publisher.publish(table.clone()).await?;
    let t1_lane = table
        .lanes(&table.tenants[0])
        .iter()
        .next()
        .context("t1 has a lane")?;

    // The dashboard, on a free port, for this test's objects only.
    let selector = format!("{TEST_LABEL}={id}");
    let mut dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-cellstack"))
        .args([
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "-n",
            namespace,
            "-l",
            &selector,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(dashboard.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .context("the dashboard did not say where it serves")??
        .context("the dashboard exited")?;
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no URL in {first:?}"))?
        .to_owned();

    let mut page = Browser::open(&url, 1280, 900).await?;
    let cell = |name: &str| format!("document.querySelector('[data-cell=\"{name}\"]')");
    page.until(
        "both cells, in their zones, with t1 in alpha",
        &format!(
            "{} !== null && {}?.closest('[data-zone]')?.dataset.zone === 'zone-b' \
             && document.querySelector('[data-tenants-of=\"{alpha}\"]')?.textContent.includes('{t1}') \
             && document.getElementById('connection').textContent === 'live'",
            cell(alpha),
            cell(bravo)
        ),
        WAIT,
    )
    .await?;
    let lists_open = lists(client).await?;
    let updates_open = page
        .eval("Number(document.getElementById('generation').textContent)")
        .await?;

    // A move, step by step: the open page shows its progress, then t1 in bravo.
    set_status(
        &tenants,
        t1,
        json!({ "phase": "Moving", "move": { "from": alpha, "to": bravo, "step": "Copy",
                "keysCopied": 300, "keysTotal": 600 } }),
    )
    .await?;
    page.until(
        "the move with its progress",
        &format!(
            "document.querySelector('[data-move=\"{t1}\"] progress')?.value === 300 \
             && document.querySelector('[data-move=\"{t1}\"] progress')?.max === 600"
        ),
        WAIT,
    )
    .await?;
    set_status(
        &tenants,
        t1,
        json!({ "phase": "Placed", "cell": bravo, "epoch": 2,
                "move": { "from": alpha, "to": bravo, "step": "Done",
                          "keysCopied": 600, "keysTotal": 600 } }),
    )
    .await?;
    page.until(
        "the move done: t1 in bravo, no move left",
        &format!(
            "document.querySelector('[data-move]') === null \
             && document.querySelector('[data-tenants-of=\"{bravo}\"]')?.textContent.includes('{t1}')"
        ),
        WAIT,
    )
    .await?;

    // The blast radius of the lane serving t1 (from the table published before the move).
    page.eval(&format!(
        "{}.querySelectorAll('.lane')[{t1_lane}].click()",
        cell(alpha)
    ))
    .await?;
    page.until(
        "the lane's blast radius",
        &format!(
            "document.querySelector('[data-blast]')?.textContent.includes('1 tenant(s) lose every lane') \
             && document.getElementById('blast').textContent.includes('{t1}')"
        ),
        WAIT,
    )
    .await?;

    let screenshot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cellstack-dashboard.png");
    page.screenshot(&screenshot).await?;
    eprintln!("dashboard screenshot: {}", screenshot.display());

    let updates = page
        .eval("Number(document.getElementById('generation').textContent)")
        .await?;
    ensure!(
        updates.as_u64() > updates_open.as_u64(),
        "the page got no pushed update ({updates_open} → {updates})"
    );
    let lists_after = lists(client).await?;
    ensure!(
        lists_after == lists_open,
        "the API server served {} LIST(s) of cells, tenants or rollouts while the page was open: \
         something polls instead of watching",
        lists_after - lists_open
    );
    drop(page);
    dashboard.kill().await?;
    Ok(())
}
