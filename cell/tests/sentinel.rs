//! The cell runtime against a real replicated datastore: Debian's `redis-server` as a primary,
//! two replicas and three sentinels on loopback, with a password, configured by
//! `cellstack-cell datastore-init` as a cell's pods are. The runtime finds the primary through
//! the sentinels, follows a failover by itself without losing an acknowledged write, and refuses
//! (503 `not_durable`) a write no replica acknowledged.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cellstack_api::{
    admin::TenantState,
    keys::{ItemName, TenantKeys},
    tenant::TenantId,
    wire::header,
};
use common::*;
use reqwest::{Method, StatusCode};

const MASTER: &str = "cellstack";

/// One pod of the datastore: a Redis and its sentinel.
struct Pod {
    redis_port: u16,
    sentinel_port: u16,
    dir: PathBuf,
    redis: Option<Child>,
    sentinel: Option<Child>,
}

impl Pod {
    fn conf(&self) -> PathBuf {
        self.dir.join("conf")
    }
}

/// A primary, replicas and sentinels, started from the configuration `datastore-init` writes.
struct Datastore {
    dir: PathBuf,
    password: String,
    pods: Vec<Pod>,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("cellstack-sentinel-{name}")));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs `cellstack-cell datastore-init` for pod `ordinal` of `nodes`, writing into `out`;
/// returns what it printed. Sentinel timings are short for the test.
fn datastore_init(
    ordinal: usize,
    nodes: &[(u16, u16)],
    password_file: &Path,
    out: &Path,
    data: &Path,
    discovery_secs: u64,
) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|(r, s)| format!("127.0.0.1:{r}:{s}"))
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_cellstack-cell"))
        .arg("datastore-init")
        .args(["--pod-name", &format!("redis-{ordinal}")])
        .args(["--namespace", "test"])
        .args(["--replicas", &nodes.len().to_string()])
        .arg("--password-file")
        .arg(password_file)
        .arg("--out")
        .arg(out)
        .arg("--data-dir")
        .arg(data)
        .args(["--nodes", &list.join(",")])
        .args(["--bind", "127.0.0.1"])
        .args(["--down-after-ms", "1000", "--failover-timeout-ms", "3000"])
        .args(["--discovery-secs", &discovery_secs.to_string()])
        .args(["--failover-wait-secs", "5"])
        .stderr(Stdio::inherit())
        .output()
        .expect("running cellstack-cell datastore-init");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "datastore-init for pod {ordinal} failed ({}): {stdout}",
        output.status
    );
    stdout
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new("redis-server")
        .args(args)
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("redis-server on PATH (e2e/scripts/install-deps.sh installs it)")
}

async fn connect(port: u16, password: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{password}@127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// `INFO replication` of the Redis at `port`, as fields.
async fn replication(port: u16, password: &str) -> Option<Vec<(String, String)>> {
    let mut c = connect(port, password).await?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .ok()?;
    Some(
        info.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Datastore {
    /// Three pods configured as a cell's first boot (no sentinel anywhere yet: pod 0 is the
    /// primary, the others replicate it), replication up, then the sentinels, until each
    /// knows both replicas and both other sentinels.
    async fn start() -> Self {
        let dir = scratch("datastore");
        let password = format!("pw-{}", unique("p"));
        std::fs::write(dir.join("password"), format!("{password}\n")).unwrap();
        let nodes: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut pods = Vec::new();
        for (i, (redis_port, sentinel_port)) in nodes.iter().enumerate() {
            let pod_dir = dir.join(format!("redis-{i}"));
            let pod = Pod {
                redis_port: *redis_port,
                sentinel_port: *sentinel_port,
                dir: pod_dir.clone(),
                redis: None,
                sentinel: None,
            };
            let printed = datastore_init(
                i,
                &nodes,
                &dir.join("password"),
                &pod.conf(),
                &pod_dir.join("data"),
                0,
            );
            let expected = if i == 0 {
                "starts as primary".to_owned()
            } else {
                format!("starts as replica of 127.0.0.1:{}", nodes[0].0)
            };
            assert!(printed.contains(&expected), "pod {i}: {printed}");
            pods.push(pod);
        }
        let mut ds = Self {
            dir,
            password,
            pods,
        };
        for i in 0..3 {
            ds.start_redis(i);
        }
        for i in 1..3 {
            let (port, pw) = (ds.pods[i].redis_port, ds.password.clone());
            wait_until(
                &format!("replica {i} in sync with the primary"),
                Duration::from_secs(20),
                || {
                    let pw = pw.clone();
                    async move {
                        replication(port, &pw)
                            .await
                            .is_some_and(|f| field(&f, "master_link_status") == Some("up"))
                    }
                },
            )
            .await;
        }
        for i in 0..3 {
            let conf = ds.pods[i].conf().join("sentinel.conf");
            let log = ds.pods[i].dir.join("sentinel.log");
            ds.pods[i].sentinel = Some(spawn(&[conf.to_str().unwrap(), "--sentinel"], &log));
        }
        for i in 0..3 {
            let (port, pw) = (ds.pods[i].sentinel_port, ds.password.clone());
            wait_until(
                &format!("sentinel {i} to know 2 replicas and 2 other sentinels"),
                Duration::from_secs(30),
                || {
                    let pw = pw.clone();
                    async move {
                        let Some(mut c) = connect(port, &pw).await else {
                            return false;
                        };
                        let Ok(flat) = redis::cmd("SENTINEL")
                            .arg("master")
                            .arg(MASTER)
                            .query_async::<Vec<String>>(&mut c)
                            .await
                        else {
                            return false;
                        };
                        let f: Vec<(String, String)> = flat
                            .chunks(2)
                            .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                            .collect();
                        field(&f, "num-slaves") == Some("2")
                            && field(&f, "num-other-sentinels") == Some("2")
                    }
                },
            )
            .await;
        }
        ds
    }

    fn start_redis(&mut self, i: usize) {
        let conf = self.pods[i].conf().join("redis.conf");
        let log = self.pods[i].dir.join("redis.log");
        self.pods[i].redis = Some(spawn(&[conf.to_str().unwrap()], &log));
    }

    fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    fn sentinels(&self) -> String {
        self.pods
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.sentinel_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn nodes(&self) -> Vec<(u16, u16)> {
        self.pods
            .iter()
            .map(|p| (p.redis_port, p.sentinel_port))
            .collect()
    }

    /// The primary's port as every running sentinel names it, once they agree.
    async fn agreed_primary(&self) -> Option<u16> {
        let mut named = Vec::new();
        for p in &self.pods {
            if p.sentinel.is_none() {
                continue;
            }
            let mut c = connect(p.sentinel_port, &self.password).await?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
                .ok()??;
            named.push(port);
        }
        let first = *named.first()?;
        named.iter().all(|p| *p == first).then_some(first)
    }

    /// Whether the Redis at `port` answers `ROLE` as a primary.
    async fn is_primary(&self, port: u16) -> bool {
        replication(port, &self.password)
            .await
            .is_some_and(|f| field(&f, "role") == Some("master"))
    }

    /// Sends `signal` to pod `i`'s Redis.
    fn signal_redis(&self, i: usize, signal: &str) {
        let pid = self.pods[i].redis.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// A cell runtime that finds the primary through these sentinels and waits for one
    /// replica's acknowledgement of every write.
    async fn cell(&self) -> CellProcess {
        let options = CellOptions {
            extra_args: vec![
                "--redis-sentinels".into(),
                self.sentinels(),
                "--redis-password-file".into(),
                self.password_file().display().to_string(),
                "--redis-write-acks".into(),
                "1".into(),
                "--redis-timeout-ms".into(),
                "300".into(),
            ],
            ..Default::default()
        };
        // The URL is ignored when sentinels are given: nothing listens on port 1.
        CellProcess::start("redis://127.0.0.1:1", options).await
    }
}

impl Drop for Datastore {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            for child in [pod.redis.take(), pod.sentinel.take()]
                .into_iter()
                .flatten()
            {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("datastore logs kept in {}", self.dir.display());
        }
    }
}

async fn put(cell: &CellProcess, tenant: &str, item: &str, body: &str) -> reqwest::Response {
    cell.req(Method::PUT, tenant, &format!("/v1/items/{item}"))
        .body(body.to_owned())
        .send()
        .await
        .expect("the tenant API answers")
}

async fn get(cell: &CellProcess, tenant: &str, item: &str) -> (StatusCode, String) {
    let res = cell
        .req(Method::GET, tenant, &format!("/v1/items/{item}"))
        .send()
        .await
        .expect("the tenant API answers");
    (res.status(), res.text().await.unwrap_or_default())
}

async fn metrics(cell: &CellProcess) -> String {
    cell.http
        .get(cell.admin_url("/metrics"))
        .send()
        .await
        .expect("the admin port answers")
        .text()
        .await
        .expect("a /metrics page")
}

/// The value of the series `series` (name and labels, exactly as on the page).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn item_key(tenant: &str, item: &str) -> String {
    let keys = TenantKeys::new(&TenantId::parse(tenant).unwrap());
    keys.item(&ItemName::parse(item).unwrap())
}

#[tokio::test]
async fn writes_and_reads_go_to_the_primary_the_sentinels_name_and_a_replica_holds_each_write() {
    let ds = Datastore::start().await;
    let primary = ds.pods[0].redis_port;
    assert_eq!(ds.agreed_primary().await, Some(primary));
    let cell = ds.cell().await;
    let tenant = unique("t");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;

    let res = put(&cell, &tenant, "a", "hello").await;
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    assert_eq!(
        get(&cell, &tenant, "a").await,
        (StatusCode::OK, "hello".into())
    );

    // On the primary, and (WAIT 1 answered before the 200) already on a replica.
    let key = item_key(&tenant, "a");
    let mut on_primary = connect(primary, &ds.password).await.expect("primary");
    let v: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut on_primary)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("hello"));
    let mut replicas_holding = 0;
    for pod in &ds.pods[1..] {
        let mut c = connect(pod.redis_port, &ds.password)
            .await
            .expect("replica");
        let v: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        replicas_holding += usize::from(v.as_deref() == Some("hello"));
    }
    assert!(
        replicas_holding >= 1,
        "no replica holds the acknowledged write"
    );

    let page = metrics(&cell).await;
    assert_eq!(
        sample(
            &page,
            &format!("cellstack_cell_redis_primary{{address=\"127.0.0.1:{primary}\"}}")
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "cellstack_cell_redis_primary_changes_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn after_the_primary_is_killed_the_cell_follows_the_promoted_replica_and_keeps_acknowledged_writes()
 {
    let ds = Datastore::start().await;
    let old = ds.pods[0].redis_port;
    let cell = ds.cell().await;
    let tenant = unique("t");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    for i in 0..20 {
        let res = put(&cell, &tenant, &format!("k{i}"), &format!("v{i}")).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "write {i}: {:?}",
            res.text().await
        );
    }

    ds.signal_redis(0, "KILL");
    let killed = std::time::Instant::now();

    // Writes come back by themselves once the sentinels promote a replica: nothing restarts
    // the cell or tells it where the primary went.
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let res = put(&cell, &tenant, "after", "failover").await;
        if res.status() == StatusCode::OK {
            eprintln!(
                "writes resumed {:?} after the primary was killed",
                killed.elapsed()
            );
            break;
        }
        last = format!("{} {}", res.status(), res.text().await.unwrap_or_default());
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not resume within 40 s of killing the primary; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = ds
        .agreed_primary()
        .await
        .expect("the sentinels agree on a primary");
    assert_ne!(new, old, "the sentinels still name the killed primary");
    assert!(
        ds.is_primary(new).await,
        "the named primary is not ROLE master"
    );

    for i in 0..20 {
        assert_eq!(
            get(&cell, &tenant, &format!("k{i}")).await,
            (StatusCode::OK, format!("v{i}")),
            "acknowledged write k{i} after the failover (last error while failing over: {last})"
        );
    }
    let page = metrics(&cell).await;
    assert!(
        sample(&page, "cellstack_cell_redis_primary_changes_total").is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!("cellstack_cell_redis_primary{{address=\"127.0.0.1:{new}\"}}")
        ),
        Some(1.0),
        "{page}"
    );
    assert!(
        !page.contains(&format!("address=\"127.0.0.1:{old}\"")),
        "the old primary is still reported: {page}"
    );
}

#[tokio::test]
async fn with_every_replica_frozen_writes_are_refused_as_not_durable_until_one_is_back() {
    let ds = Datastore::start().await;
    let cell = ds.cell().await;
    let tenant = unique("t");
    cell.put_tenant(&tenant, TenantState::Active, 1).await;
    assert_eq!(
        put(&cell, &tenant, "before", "1").await.status(),
        StatusCode::OK
    );

    ds.signal_redis(1, "STOP");
    ds.signal_redis(2, "STOP");
    let res = put(&cell, &tenant, "frozen", "2").await;
    let status = res.status();
    let code = res
        .headers()
        .get(header::ERROR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = res.headers().get(reqwest::header::RETRY_AFTER).cloned();
    let body = res.text().await.unwrap_or_default();
    // Reads never wait for replicas.
    let read = get(&cell, &tenant, "before").await;
    let page = metrics(&cell).await;
    ds.signal_redis(1, "CONT");
    ds.signal_redis(2, "CONT");

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code.as_deref(), Some("not_durable"), "{body}");
    assert!(body.contains("\"error\":\"not_durable\""), "{body}");
    assert!(retry_after.is_some(), "no Retry-After: {body}");
    assert_eq!(read, (StatusCode::OK, "1".into()));
    assert!(
        sample(
            &page,
            "cellstack_cell_writes_not_durable_total{reason=\"acks_timeout\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );

    wait_until(
        "writes to be acknowledged again after SIGCONT",
        Duration::from_secs(20),
        || async { put(&cell, &tenant, "thawed", "3").await.status() == StatusCode::OK },
    )
    .await;
    assert_eq!(
        get(&cell, &tenant, "thawed").await,
        (StatusCode::OK, "3".into())
    );
}

#[tokio::test]
async fn datastore_init_replicates_the_primary_the_sentinels_name_after_a_failover() {
    let ds = Datastore::start().await;
    let mut c = connect(ds.pods[0].sentinel_port, &ds.password)
        .await
        .expect("sentinel 0");
    let _: String = redis::cmd("SENTINEL")
        .arg("failover")
        .arg(MASTER)
        .query_async(&mut c)
        .await
        .expect("SENTINEL FAILOVER");
    let old = ds.pods[0].redis_port;
    wait_until(
        "the sentinels to agree on a new primary",
        Duration::from_secs(30),
        || async {
            match ds.agreed_primary().await {
                Some(p) if p != old => ds.is_primary(p).await,
                _ => false,
            }
        },
    )
    .await;
    let new = ds.agreed_primary().await.unwrap();

    // Pod 0 restarting (with an empty volume: a fresh directory) replicates the new primary.
    let fresh = scratch("init-after-failover");
    let printed = datastore_init(
        0,
        &ds.nodes(),
        &ds.password_file(),
        &fresh.join("conf"),
        &fresh.join("data"),
        0,
    );
    let conf = std::fs::read_to_string(fresh.join("conf/redis.conf")).unwrap();
    assert!(
        conf.contains(&format!("\nreplicaof 127.0.0.1 {new}\n")),
        "{printed}\n{conf}"
    );
    let sentinel = std::fs::read_to_string(fresh.join("conf/sentinel.conf")).unwrap();
    assert!(
        sentinel.contains(&format!("sentinel monitor {MASTER} 127.0.0.1 {new} 2\n")),
        "{sentinel}"
    );

    // A restart keeps the sentinel.conf Sentinel maintains.
    let own = ds.pods[0].conf().join("sentinel.conf");
    let before = std::fs::read_to_string(&own).unwrap();
    let printed = datastore_init(
        0,
        &ds.nodes(),
        &ds.password_file(),
        &ds.pods[0].conf(),
        &ds.pods[0].dir.join("data"),
        0,
    );
    assert!(printed.contains("kept"), "{printed}");
    assert_eq!(std::fs::read_to_string(&own).unwrap(), before);
    let _ = std::fs::remove_dir_all(&fresh);
}

/// The sentinels name pod 0 as the primary while pod 1's Redis answers `ROLE` as one (what a
/// sentinel that missed a failover looks like from a restarting pod): pod 0's `datastore-init`
/// replicates pod 1 at once instead of waiting to start as a second primary.
#[tokio::test]
async fn datastore_init_named_primary_by_sentinels_that_are_behind_replicates_the_peer_that_is_primary()
 {
    let ds = Datastore::start().await;
    let (old, peer) = (ds.pods[0].redis_port, ds.pods[1].redis_port);
    assert_eq!(ds.agreed_primary().await, Some(old));
    let mut c = connect(peer, &ds.password).await.expect("redis 1");
    let _: String = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut c)
        .await
        .expect("REPLICAOF NO ONE");
    assert!(ds.is_primary(peer).await);

    let fresh = scratch("init-behind");
    let started = std::time::Instant::now();
    let printed = datastore_init(
        0,
        &ds.nodes(),
        &ds.password_file(),
        &fresh.join("conf"),
        &fresh.join("data"),
        0,
    );
    let conf = std::fs::read_to_string(fresh.join("conf/redis.conf")).unwrap();
    assert!(
        conf.contains(&format!("\nreplicaof 127.0.0.1 {peer}\n")),
        "{printed}\n{conf}"
    );
    assert!(printed.contains("answers ROLE as the primary"), "{printed}");
    // Not after the failover wait (5 s here): the peer was asked first.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: {printed}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&fresh);
}

#[tokio::test]
async fn datastore_init_without_reachable_sentinels_makes_pod_zero_primary_and_the_others_its_replicas()
 {
    let dir = scratch("init-alone");
    std::fs::write(dir.join("password"), "pw\n").unwrap();
    // Nothing listens on these ports.
    let nodes: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let run = |i: usize| {
        let out = dir.join(format!("redis-{i}"));
        let printed = datastore_init(
            i,
            &nodes,
            &dir.join("password"),
            &out.join("conf"),
            &out.join("data"),
            1,
        );
        let conf = std::fs::read_to_string(out.join("conf/redis.conf")).unwrap();
        let sentinel = std::fs::read_to_string(out.join("conf/sentinel.conf")).unwrap();
        (printed, conf, sentinel)
    };
    let (printed, conf, sentinel) = run(0);
    assert!(printed.contains("starts as primary"), "{printed}");
    assert!(!conf.contains("replicaof"), "{conf}");
    assert!(conf.contains("min-replicas-to-write 1\n"), "{conf}");
    assert!(conf.contains("requirepass pw\nmasterauth pw\n"), "{conf}");
    assert!(
        sentinel.contains(&format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 2\n",
            nodes[0].0
        )),
        "{sentinel}"
    );
    for i in [1, 2] {
        let (printed, conf, _) = run(i);
        assert!(
            conf.contains(&format!("\nreplicaof 127.0.0.1 {}\n", nodes[0].0)),
            "pod {i}: {printed}\n{conf}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sentinels announce a failover (`+switch-master`) and the cell moves to the new primary on
/// that announcement: with no request made to it at all, so no failing call could have sent it
/// asking, its primary changes within 3 s of the sentinels agreeing on the new one.
#[tokio::test]
async fn a_failover_the_sentinels_announce_moves_the_cell_before_any_call_fails() {
    let ds = Datastore::start().await;
    let old = ds.pods[0].redis_port;
    let cell = ds.cell().await;
    let series =
        |port: u16| format!("cellstack_cell_redis_primary{{address=\"127.0.0.1:{port}\"}}");
    assert_eq!(sample(&metrics(&cell).await, &series(old)), Some(1.0));

    ds.signal_redis(0, "KILL");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let new = loop {
        if let Some(p) = ds.agreed_primary().await.filter(|p| *p != old) {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sentinels did not agree on a new primary within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let agreed = std::time::Instant::now();
    wait_until(
        "the cell to move to the announced primary",
        Duration::from_secs(3),
        || async { sample(&metrics(&cell).await, &series(new)) == Some(1.0) },
    )
    .await;
    eprintln!(
        "the cell moved {:?} after the sentinels agreed",
        agreed.elapsed()
    );
    let page = metrics(&cell).await;
    assert_eq!(sample(&page, &series(old)), None, "{page}");
    assert_eq!(
        sample(&page, "cellstack_cell_redis_primary_changes_total"),
        Some(1.0)
    );
}
