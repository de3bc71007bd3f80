//! Harness shared by the router's integration tests: real `cellstack-cell` and `redis-server`
//! processes on loopback, killed when dropped.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    routing::{CellRoute, CellState, EdgeLimit, RoutingTable, TenantRoute},
    tenant::TenantId,
    wire::header,
};
use reqwest::Method;

pub const TOKEN: &str = "router-test-admin-token-0123";

pub use cellstack_testkit::ports::free_port;

pub fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "cellstack-router-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `cellstack-cell` from the workspace's target directory (the test command builds every binary
/// before running tests).
pub fn cell_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("cellstack-cell");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cellstack-cell` (e2e/test-all does)",
        bin.display()
    );
    bin
}

pub fn redis_url() -> String {
    std::env::var("CELLSTACK_TEST_REDIS_URL")
        .expect("CELLSTACK_TEST_REDIS_URL: run e2e/test-all, or e2e/scripts/redis.sh up")
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_ok(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{url} not ready within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One lane: a cell process.
pub struct Lane {
    pub api: u16,
    pub admin: u16,
    pub proc: Option<Proc>,
}

pub async fn lane(http: &reqwest::Client, cell: &str, redis: &str, dir: &Path) -> Lane {
    lane_with(http, cell, redis, dir, &[]).await
}

/// A lane started with `extra` arguments (a simulated backend, say).
pub async fn lane_with(
    http: &reqwest::Client,
    cell: &str,
    redis: &str,
    dir: &Path,
    extra: &[&str],
) -> Lane {
    lane_in(http, cell, redis, dir, extra, &[], Stdio::null()).await
}

/// A lane started with `extra` arguments, the environment `env` (which may set `CELLSTACK_LOG`)
/// and its log (stdout) going to `log`.
pub async fn lane_in(
    http: &reqwest::Client,
    cell: &str,
    redis: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, String)],
    log: impl Into<Stdio>,
) -> Lane {
    let (api, admin) = (free_port(), free_port());
    let token = dir.join(format!("token-{api}"));
    std::fs::write(&token, TOKEN).unwrap();
    let child = Command::new(cell_binary())
        .args([
            "--cell",
            cell,
            "--redis-url",
            redis,
            "--drain-delay-secs",
            "0",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--admin-token-file")
        .arg(&token)
        .args(extra)
        .env("CELLSTACK_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log)
        .spawn()
        .unwrap();
    let lane = Lane {
        api,
        admin,
        proc: Some(Proc(child)),
    };
    wait_ok(http, &format!("http://127.0.0.1:{admin}/livez")).await;
    // Connected to its Redis (a Redis just started may take a moment): until then its admin
    // API answers 503 and a test's first `put_tenant` would fail.
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    wait_until(
        "the lane connected to its redis",
        Duration::from_secs(20),
        async || match http.get(&readyz).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => r
                .text()
                .await
                .is_ok_and(|body| !body.starts_with("starting")),
            Ok(_) => true,
            Err(_) => false,
        },
    )
    .await;
    lane
}

pub async fn put_tenant(http: &reqwest::Client, lane: &Lane, tenant: &str, record: &TenantRecord) {
    let res = http
        .put(format!(
            "http://127.0.0.1:{}/admin/v1/tenants/{tenant}",
            lane.admin
        ))
        .bearer_auth(TOKEN)
        .json(record)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

pub fn active(epoch: u64) -> TenantRecord {
    TenantRecord::new(TenantState::Active, epoch, None)
}

pub fn cell_route(name: &str, lanes: &[&Lane], k: u32) -> CellRoute {
    CellRoute {
        name: name.into(),
        zone: None,
        state: CellState::Active,
        lanes: lanes
            .iter()
            .map(|l| format!("127.0.0.1:{}", l.api))
            .collect(),
        shard_size: k,
        shard_seed: 0,
    }
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{:x}", nanos ^ std::process::id())
}

/// A throwaway `redis-server` on a free port, waited for until it listens; its URL.
pub async fn start_redis() -> (Proc, String) {
    let port = free_port();
    let proc = Proc(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (proc, format!("redis://127.0.0.1:{port}"))
}

/// A `cellstack-router` process.
pub struct Router {
    pub port: u16,
    pub admin: u16,
    pub proc: Proc,
}

pub async fn router(
    http: &reqwest::Client,
    table_file: Option<&std::path::Path>,
    lkg: &std::path::Path,
) -> Router {
    router_with(http, table_file, lkg, &[]).await
}

pub async fn router_with(
    http: &reqwest::Client,
    table_file: Option<&std::path::Path>,
    lkg: &std::path::Path,
    extra: &[&str],
) -> Router {
    router_in(http, table_file, lkg, extra, &[], Stdio::null()).await
}

/// A router started with `extra` arguments, the environment `env` (which may set
/// `CELLSTACK_LOG`) and its log (stdout) going to `log`.
pub async fn router_in(
    http: &reqwest::Client,
    table_file: Option<&std::path::Path>,
    lkg: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
    log: impl Into<Stdio>,
) -> Router {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellstack-router"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ])
    .arg("--last-known-good")
    .arg(lkg)
    .args(extra)
    .env("CELLSTACK_LOG", "warn")
    .envs(env.iter().map(|(k, v)| (k, v)))
    .stdout(log);
    // Test defaults, unless `extra` sets them.
    for (arg, value) in [
        ("--tenant-from", "header"),
        ("--table-poll-ms", "100"),
        ("--try-timeout-ms", "1000"),
        ("--drain-delay-secs", "0"),
    ] {
        if !extra.contains(&arg) {
            cmd.args([arg, value]);
        }
    }
    if let Some(f) = table_file {
        cmd.arg("--table-file").arg(f);
    }
    let r = Router {
        port,
        admin,
        proc: Proc(cmd.spawn().unwrap()),
    };
    wait_ok(http, &format!("http://127.0.0.1:{admin}/livez")).await;
    r
}

impl Router {
    pub fn req(
        &self,
        http: &reqwest::Client,
        method: Method,
        tenant: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        http.request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .header(header::TENANT, tenant)
    }
}

/// Sums every sample of a metric family in a Prometheus text page.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `/metrics` page of whatever admin port is at `port` on loopback.
pub async fn metrics_of(http: &reqwest::Client, port: u16) -> String {
    http.get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

impl Router {
    /// The router's `/metrics` page.
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        metrics_of(http, self.admin).await
    }
}

/// Waits until `check` holds, polling, for at most `within`; fails naming `what` otherwise.
pub async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `POST {admin}/admin/v1/tenants/{tenant}/{action}` on a lane (`fence`, `moved`,
/// `activate`), with `body` as JSON when given.
pub async fn tenant_admin(
    http: &reqwest::Client,
    lane: &Lane,
    tenant: &str,
    action: &str,
    body: Option<serde_json::Value>,
) {
    let mut req = http
        .post(format!(
            "http://127.0.0.1:{}/admin/v1/tenants/{tenant}/{action}",
            lane.admin
        ))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    assert!(
        res.status().is_success(),
        "{action} {tenant}: {}",
        res.status()
    );
}

/// A table (version 1) of one cell and one tenant at `epoch`, with `edge_limit` if given.
pub fn one_tenant_table(
    cell: CellRoute,
    tenant: &str,
    epoch: u64,
    edge_limit: Option<EdgeLimit>,
) -> RoutingTable {
    RoutingTable::canonical(
        1,
        0,
        vec![cell],
        edge_limit.into_iter().collect(),
        vec![TenantRoute {
            id: TenantId::parse(tenant).unwrap(),
            cell: 0,
            epoch,
            shard_variant: 0,
            edge_limit: edge_limit.map(|_| 0),
        }],
    )
    .unwrap()
}

/// Writes a table of one cell and one tenant at `epoch`, with `edge_limit` if given; a router
/// serving it with `extra` arguments, once it reports ready.
pub async fn router_for(
    http: &reqwest::Client,
    dir: &std::path::Path,
    cell: CellRoute,
    tenant: &str,
    epoch: u64,
    edge_limit: Option<EdgeLimit>,
    extra: &[&str],
) -> Router {
    let table = one_tenant_table(cell, tenant, epoch, edge_limit);
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().unwrap()).unwrap();
    let r = router_with(http, Some(&table_file), &dir.join("lkg.bin"), extra).await;
    wait_ok(http, &format!("http://127.0.0.1:{}/readyz", r.admin)).await;
    r
}

/// Publishes `table` the way the operator does: immutable chunk objects first, the pointer last.
pub async fn publish(client: &kube::Client, ns: &str, table: &RoutingTable) {
    use cellstack_api::routing::{
        Compression, chunk,
        publication::{
            CHUNK_KEY, COMPONENT_LABEL, COMPONENT_VALUE, POINTER_KEY, POINTER_NAME, VERSION_LABEL,
            chunk_name,
        },
        table::FORMAT_VERSION,
    };
    use k8s_openapi::{ByteString, api::core::v1::ConfigMap};
    use kube::{
        Api,
        api::{ObjectMeta, PostParams},
    };
    use std::collections::BTreeMap;

    let bytes = table.encode().unwrap();
    // Compressed, as the operator publishes by default, and a small budget so even this table
    // spans several chunks.
    let (manifest, chunks) =
        chunk::split(table.version, FORMAT_VERSION, &bytes, Compression::Zstd, 40).unwrap();
    assert!(chunks.len() > 1);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for c in chunks {
        let labels = BTreeMap::from([
            (COMPONENT_LABEL.to_owned(), COMPONENT_VALUE.to_owned()),
            (VERSION_LABEL.to_owned(), table.version.to_string()),
        ]);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(chunk_name(table.version, c.index)),
                labels: Some(labels),
                ..Default::default()
            },
            binary_data: Some(BTreeMap::from([(CHUNK_KEY.to_owned(), ByteString(c.data))])),
            immutable: Some(true),
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let pointer = ConfigMap {
        metadata: ObjectMeta {
            name: Some(POINTER_NAME.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            POINTER_KEY.to_owned(),
            serde_json::to_string(&manifest).unwrap(),
        )])),
        ..Default::default()
    };
    api.patch(
        POINTER_NAME,
        &kube::api::PatchParams::apply("cellstack-test").force(),
        &kube::api::Patch::Apply(&pointer),
    )
    .await
    .unwrap();
}

/// Writes `files` (name, content) into `dir` the way a Secret's volume changes: each written
/// aside and renamed over the old one.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

/// Writes a certificate and key as `tls.crt` and `tls.key` in `dir`, like a TLS Secret.
pub fn write_pair(dir: &Path, issued: &cellstack_testkit::pki::Issued) {
    write_files(
        dir,
        &[("tls.crt", &issued.cert_pem), ("tls.key", &issued.key_pem)],
    );
}

/// An HTTPS client that trusts only `cas`: HTTP/2 when ALPN picks it, or HTTP/1.1 only.
pub fn trusting(cas: &[&cellstack_testkit::pki::TestCa], http1_only: bool) -> reqwest::Client {
    trusting_builder(cas, http1_only).build().expect("a client")
}

/// As [`trusting`], presenting `identity` to servers that ask for a client certificate.
pub fn presenting(
    cas: &[&cellstack_testkit::pki::TestCa],
    identity: &cellstack_testkit::pki::Issued,
) -> reqwest::Client {
    let pem = format!("{}{}", identity.cert_pem, identity.key_pem);
    trusting_builder(cas, false)
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("a client identity"))
        .build()
        .expect("a client")
}

fn trusting_builder(
    cas: &[&cellstack_testkit::pki::TestCa],
    http1_only: bool,
) -> reqwest::ClientBuilder {
    let builder = cas.iter().fold(
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .use_rustls_tls()
            .timeout(Duration::from_secs(10)),
        |b, ca| {
            b.add_root_certificate(
                reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("a CA certificate"),
            )
        },
    );
    if http1_only {
        builder.http1_only()
    } else {
        builder
    }
}
