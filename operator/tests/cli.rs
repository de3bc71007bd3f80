//! `kubectl cellstack blast-radius` reports, for a cell and each of its lanes, exactly the
//! tenants `RoutingTable::lanes` puts there — read from a table the operator's `Publisher`
//! published into a fresh namespace of the local cluster, or from a table file — and fails with
//! a message that says what to do when there is no table or no such cell.

use std::{collections::BTreeMap, process::Output, time::Duration};

use anyhow::{Context as _, ensure};
use cellstack_api::{
    routing::{CellRoute, CellState, RoutingTable, TenantRoute},
    tenant::TenantId,
};
use cellstack_operator::controllers::publish::Publisher;
use cellstack_testkit::cluster::{TestNamespace, require_cluster};
use serde_json::Value;
use tokio::process::Command;

const TENANTS: usize = 300;

/// Two cells: alpha with 6 lanes and 2 per tenant, bravo with 3 lanes and 1 per tenant; tenants
/// alternate between them with shard variants 0..3.
fn small_table(version: u64) -> RoutingTable {
    let cell = |name: &str, lanes: usize, k: u32, seed: u32| CellRoute {
        name: name.to_owned(),
        zone: Some("z-a".into()),
        state: CellState::Active,
        lanes: (0..lanes)
            .map(|i| format!("10.1.{seed}.{i}:8080"))
            .collect(),
        shard_size: k,
        shard_seed: seed,
    };
    let tenants = (0..TENANTS)
        .map(|i| TenantRoute {
            id: TenantId::parse(&format!("tenant-{i}")).expect("valid tenant id"),
            cell: (i % 2) as u32,
            epoch: 1,
            shard_variant: (i % 3) as u32,
            edge_limit: None,
        })
        .collect();
    RoutingTable::canonical(
        version,
        1_700_000_000_000,
        vec![cell("alpha", 6, 2, 7), cell("bravo", 3, 1, 9)],
        vec![],
        tenants,
    )
    .expect("valid table")
}

/// Tenant ids per lane of `cell`, as the router computes them.
fn expected(table: &RoutingTable, cell: &str) -> BTreeMap<u32, Vec<String>> {
    let mut per_lane: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let lanes = table
        .cells
        .iter()
        .find(|c| c.name == cell)
        .map_or(0, |c| c.lanes.len() as u32);
    for lane in 0..lanes {
        per_lane.insert(lane, Vec::new());
    }
    for route in table.tenants.iter().filter(|t| table.cell(t).name == cell) {
        for lane in table.lanes(route).iter() {
            per_lane
                .entry(lane)
                .or_default()
                .push(route.id.as_str().to_owned());
        }
    }
    for ids in per_lane.values_mut() {
        ids.sort();
    }
    per_lane
}

async fn cellstack(args: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-cellstack"));
    command.args(args).kill_on_drop(true);
    if args.contains(&"--table-file") {
        // A file needs no cluster: show that none is asked.
        command.env_remove("KUBECONFIG");
    }
    let run = command.output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("cellstack did not finish within 60s")?
        .context("running cellstack")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cellstack args` and expects success.
async fn succeeds(args: &[&str]) -> anyhow::Result<String> {
    let out = cellstack(args).await?;
    ensure!(
        out.status.success(),
        "cellstack {args:?} failed: {}",
        stderr(&out)
    );
    Ok(stdout(&out))
}

/// Runs `cellstack args` and expects a failure whose message contains every one of `needles`.
async fn fails_saying(args: &[&str], needles: &[&str]) -> anyhow::Result<()> {
    let out = cellstack(args).await?;
    ensure!(
        !out.status.success(),
        "cellstack {args:?} succeeded: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    for needle in needles {
        ensure!(
            err.contains(needle),
            "cellstack {args:?}: error {err:?} does not mention {needle:?}"
        );
    }
    Ok(())
}

/// Checks every report of `blast-radius` for both cells of [`small_table`], reading the table
/// through `source` (`--namespace NS` or `--table-file PATH`).
async fn check_reports(table: &RoutingTable, source: &[&str]) -> anyhow::Result<()> {
    for cell in ["alpha", "bravo"] {
        let want = expected(table, cell);
        let on_cell = table
            .tenants
            .iter()
            .filter(|t| table.cell(t).name == cell)
            .count();

        // JSON: every lane's count.
        let mut args = vec!["blast-radius", cell, "--output", "json"];
        args.extend(source);
        let json: Value = serde_json::from_str(&succeeds(&args).await?)?;
        ensure!(json["tableVersion"] == table.version, "version in {json}");
        ensure!(json["tenants"] == on_cell, "tenants on {cell} in {json}");
        let lanes = json["lanes"].as_array().context("lanes array")?;
        ensure!(lanes.len() == want.len(), "lanes of {cell} in {json}");
        for (lane, ids) in &want {
            let l = &lanes[*lane as usize];
            ensure!(
                l["lane"] == *lane && l["tenants"] == ids.len(),
                "lane {lane} of {cell}: want {} tenants, got {l}",
                ids.len()
            );
        }

        // The human table: one row per lane, `LANE ADDRESS TENANTS`.
        let mut args = vec!["blast-radius", cell];
        args.extend(source);
        let text = succeeds(&args).await?;
        ensure!(
            text.contains(&format!("{on_cell} tenant(s)")),
            "summary of {cell}: {text}"
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("LANE"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        ensure!(rows.len() == want.len(), "rows of {cell}: {text}");
        for (row, (lane, ids)) in rows.iter().zip(&want) {
            let address = &table
                .cells
                .iter()
                .find(|c| c.name == cell)
                .context("cell in table")?
                .lanes[*lane as usize];
            ensure!(
                *row == [
                    lane.to_string().as_str(),
                    address.as_str(),
                    ids.len().to_string().as_str()
                ],
                "row for lane {lane} of {cell}: {row:?}, want {} tenants",
                ids.len()
            );
        }

        // One lane: exactly its tenants, then the count.
        for (lane, ids) in &want {
            let lane_arg = lane.to_string();
            let mut args = vec!["blast-radius", cell, "--lane", &lane_arg];
            args.extend(source);
            let text = succeeds(&args).await?;
            let lines: Vec<&str> = text.lines().collect();
            let (last, listed) = lines.split_last().context("no output")?;
            ensure!(listed == ids.as_slice(), "tenants on lane {lane} of {cell}");
            ensure!(
                last.starts_with(&format!("{} tenant(s) on lane {lane} ", ids.len())),
                "count line: {last}"
            );
            args.extend(["-o", "json"]);
            let json: Value = serde_json::from_str(&succeeds(&args).await?)?;
            ensure!(
                json["count"] == ids.len() && json["tenants"] == serde_json::json!(ids),
                "lane {lane} of {cell} as JSON: {json}"
            );
        }
    }

    // Unknown cell: the known ones are listed. Unknown lane: the range is given.
    let mut args = vec!["blast-radius", "charlie"];
    args.extend(source);
    fails_saying(
        &args,
        &["\"charlie\" is not in routing table", "alpha, bravo"],
    )
    .await?;
    let mut args = vec!["blast-radius", "bravo", "--lane", "3"];
    args.extend(source);
    fails_saying(&args, &["3 lane(s), numbered 0 to 2"]).await?;
    Ok(())
}

#[tokio::test]
async fn blast_radius_counts_what_the_published_table_puts_on_each_lane() {
    let client = require_cluster().await.expect("a cluster");
    let ns = TestNamespace::create(&client, "cli")
        .await
        .expect("namespace");
    let result = async {
        let source = ["--namespace", ns.name.as_str()];
        // Nothing published yet: the error says so and names what publishes it.
        fails_saying(
            &["blast-radius", "alpha", "--namespace", &ns.name],
            &["no routing table is published", "operator"],
        )
        .await?;

        let mut publisher = Publisher::new(client.clone(), &ns.name, Duration::from_secs(10));
        let table = small_table(publisher.next_version().await?);
        let published = publisher.publish(table.clone()).await?;
        ensure!(published.chunks >= 1, "published {published:?}");
        check_reports(&table, &source).await?;

        // A newer version is what the CLI reads next.
        let mut newer = small_table(publisher.next_version().await?);
        newer.tenants.truncate(TENANTS / 2);
        publisher.publish(newer.clone()).await?;
        check_reports(&newer, &source).await
    }
    .await;
    ns.finish(result).await.expect("scenario");
}

#[tokio::test]
async fn blast_radius_reads_a_table_file_without_a_cluster() {
    let dir = std::env::temp_dir().join(cellstack_testkit::unique_name("cellstack-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let result = async {
        let table = small_table(42);
        let path = dir.join("table.bin");
        std::fs::write(&path, table.encode()?)?;
        let path_arg = path.to_str().context("utf-8 path")?;
        check_reports(&table, &["--table-file", path_arg]).await?;

        // A set of lanes: the tenants whose every lane is in it lose service, by name.
        let out = cellstack(&[
            "blast-radius",
            "alpha",
            "--table-file",
            path_arg,
            "--lanes",
            "0,1",
            "-o",
            "json",
        ])
        .await?;
        ensure!(out.status.success(), "{}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout)?;
        let mut lose = Vec::new();
        let mut touched = 0;
        for route in table
            .tenants
            .iter()
            .filter(|t| table.cell(t).name == "alpha")
        {
            let lanes: Vec<u32> = table.lanes(route).iter().collect();
            if lanes.iter().any(|l| *l <= 1) {
                touched += 1;
            }
            if lanes.iter().all(|l| *l <= 1) {
                lose.push(route.id.as_str().to_owned());
            }
        }
        lose.sort();
        ensure!(
            !lose.is_empty(),
            "the test table should put some tenant on lanes 0 and 1 only"
        );
        ensure!(json["loseEverything"] == serde_json::json!(lose), "{json}");
        ensure!(json["touched"] == touched, "{json}");
        // A zone: every tenant of its cells, by cell.
        let out = cellstack(&[
            "blast-radius",
            "--zone",
            "z-a",
            "--table-file",
            path_arg,
            "-o",
            "yaml",
        ])
        .await?;
        ensure!(out.status.success(), "{}", stderr(&out));
        let yaml: Value = serde_yaml::from_slice(&out.stdout)?;
        ensure!(yaml["tenants"] == TENANTS, "{yaml}");
        fails_saying(
            &["blast-radius", "--zone", "z-x", "--table-file", path_arg],
            &["is in zone \"z-x\"", "its zones: z-a"],
        )
        .await?;
        fails_saying(
            &[
                "blast-radius",
                "alpha",
                "--table-file",
                path_arg,
                "--lanes",
                "0,9",
            ],
            &["there is no lane 9"],
        )
        .await?;

        let garbage = dir.join("garbage.bin");
        std::fs::write(&garbage, b"not a table")?;
        let garbage_arg = garbage.to_str().context("utf-8 path")?;
        fails_saying(
            &["blast-radius", "alpha", "--table-file", garbage_arg],
            &["is not a valid routing table"],
        )
        .await?;
        fails_saying(
            &[
                "blast-radius",
                "alpha",
                "--table-file",
                "/nonexistent/table.bin",
            ],
            &["cannot read the routing table file"],
        )
        .await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result.expect("scenario");
}
