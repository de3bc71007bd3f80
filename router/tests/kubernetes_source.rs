//! Static stability with the real source: the router follows the routing table the operator
//! publishes as ConfigMaps (chunks + pointer), keeps serving with zero errors when the API
//! server is stopped, and a router restarted while the API server is down serves from disk.
//!
//! The test starts its own control plane (e2e/control-plane, with its own state directory) so it
//! can stop it; the Kubernetes binaries come from the cache the test command fills.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cellstack_api::{
    routing::{RoutingTable, TenantRoute},
    tenant::TenantId,
    wire::header,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use reqwest::StatusCode;

mod common;
use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A control plane of this test's own; `down` on drop.
struct ControlPlane {
    dir: PathBuf,
    stopped: bool,
}

impl ControlPlane {
    fn up(dir: PathBuf) -> Self {
        let out = Command::new(repo().join("e2e/control-plane"))
            .arg("up")
            .env("CELLSTACK_CP_DIR", &dir)
            .output()
            .expect("running e2e/control-plane");
        assert!(
            out.status.success(),
            "e2e/control-plane up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir,
            stopped: false,
        }
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    fn down(&mut self) {
        let out = Command::new(repo().join("e2e/control-plane"))
            .arg("down")
            .env("CELLSTACK_CP_DIR", &self.dir)
            .output()
            .expect("running e2e/control-plane");
        assert!(
            out.status.success(),
            "e2e/control-plane down failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.stopped = true;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = Command::new(repo().join("e2e/control-plane"))
                .arg("down")
                .env("CELLSTACK_CP_DIR", &self.dir)
                .output();
        }
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_router(kubeconfig: &Path, ns: &str, lkg: &Path, port: u16, admin: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_cellstack-router"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(["--kubernetes", "--namespace", ns, "--drain-delay-secs", "0"])
            .args(["--tenant-from", "header"])
            .arg("--last-known-good")
            .arg(lkg)
            .env("KUBECONFIG", kubeconfig)
            .env("CELLSTACK_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn table_version(http: &reqwest::Client, admin: u16) -> Option<u64> {
    let status: serde_json::Value = http
        .get(format!("http://127.0.0.1:{admin}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["tableVersion"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_published_tables_and_survives_the_api_server() {
    let http = reqwest::Client::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "cellstack-router-k8s-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cp = ControlPlane::up(dir.join("control-plane"));
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ns = format!("routes-{nanos:x}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // One real cell with two tenants.
    let alpha = lane(&http, "alpha", &redis_url(), &dir).await;
    let (t1, t2) = (format!("k1-{nanos:x}"), format!("k2-{nanos:x}"));
    for t in [&t1, &t2] {
        put_tenant(&http, &alpha, t, &active(1)).await;
    }
    let cell = cell_route("alpha", &[&alpha], 1);
    let route = |t: &str| TenantRoute {
        id: TenantId::parse(t).unwrap(),
        cell: 0,
        epoch: 1,
        shard_variant: 0,
        edge_limit: None,
    };

    publish(
        &client,
        &ns,
        &RoutingTable::canonical(1, 0, vec![cell.clone()], vec![], vec![route(&t1)]).unwrap(),
    )
    .await;
    let (port, admin) = (free_port(), free_port());
    let lkg = dir.join("lkg.bin");
    let router = start_router(&cp.kubeconfig(), &ns, &lkg, port, admin);
    wait_for("table version 1 from Kubernetes", async || {
        table_version(&http, admin).await == Some(1)
    })
    .await;
    let get = |t: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/v1/whoami"))
                .header(header::TENANT, t)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    assert_eq!(get(t1.clone()).await.unwrap(), StatusCode::OK);
    assert_eq!(
        get(t2.clone()).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not published yet"
    );

    // A new version adds a tenant.
    publish(
        &client,
        &ns,
        &RoutingTable::canonical(
            2,
            0,
            vec![cell.clone()],
            vec![],
            vec![route(&t1), route(&t2)],
        )
        .unwrap(),
    )
    .await;
    wait_for("table version 2", async || {
        table_version(&http, admin).await == Some(2)
    })
    .await;
    assert_eq!(get(t2.clone()).await.unwrap(), StatusCode::OK);

    // The API server goes away: routing goes on, with zero errors. (Credentials outlive an
    // API-server outage; `down` deletes the state directory, so keep a copy of the kubeconfig.)
    let kubeconfig_copy = dir.join("kubeconfig");
    std::fs::copy(cp.kubeconfig(), &kubeconfig_copy).unwrap();
    cp.down();
    for i in 0..200 {
        let t = if i % 2 == 0 { t1.clone() } else { t2.clone() };
        assert_eq!(
            get(t).await.unwrap(),
            StatusCode::OK,
            "request {i} with the API server down"
        );
    }

    // A router restarted while the API server is down serves from disk.
    drop(router);
    let (port2, admin2) = (free_port(), free_port());
    let _restarted = start_router(&kubeconfig_copy, &ns, &lkg, port2, admin2);
    wait_for("the restarted router to be ready", async || {
        http.get(format!("http://127.0.0.1:{admin2}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    for t in [&t1, &t2] {
        let res = http
            .get(format!("http://127.0.0.1:{port2}/v1/whoami"))
            .header(header::TENANT, t.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{t} served from disk with the API server down"
        );
    }
    assert_eq!(table_version(&http, admin2).await, Some(2));
}
