//! Harness for the cell runtime's integration tests: real `cellstack-cell` processes talking to
//! a real Redis — the shared test Redis from the test command, or one a test starts (and stops)
//! itself when it needs to take Redis away.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    policy::{CellPolicies, EffectiveLimit, EffectivePolicy},
    v1alpha1::{Algorithm, FailMode},
    wire::header,
};

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A deadline-bounded wait for `check` to return true, polling every 20 ms.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_or(what, timeout, check, String::new).await
}

/// Like [`wait_until`], and on timeout reports what `last` says was last seen.
pub async fn wait_until_or<F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    last: impl Fn() -> String,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {}",
            last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use cellstack_testkit::ports::free_port;

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:x}{}",
        std::process::id() % 0xfff,
        nanos % 0xffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("cellstack-cell-test-{name}")));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The shared Redis of the test command.
pub fn shared_redis() -> String {
    std::env::var("CELLSTACK_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "CELLSTACK_TEST_REDIS_URL is not set: run e2e/test-all, or `e2e/scripts/redis.sh up && eval \"$(e2e/scripts/redis.sh env)\"`"
        )
    })
}

/// A Redis this test owns, so it can stop and restart it (data survives a restart).
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            dir: scratch("redis"),
            child: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        // Persistent like a cell's Redis, so a restart keeps the tenants.
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (e2e/scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_until("redis to answer PING", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    /// The server's process id, while it runs (for a test that hangs it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the test's Redis is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options of a cell process.
#[derive(Clone, Default)]
pub struct CellOptions {
    pub policies: Option<CellPolicies>,
    pub extra_args: Vec<String>,
    /// Return once `/livez` answers, even while the cell is still connecting to Redis (by
    /// default `start` waits until it is connected and serving).
    pub not_waiting_for_redis: bool,
}

/// A running `cellstack-cell`.
pub struct CellProcess {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    child: Child,
    pub http: reqwest::Client,
}

impl CellProcess {
    pub async fn start(redis_url: &str, options: CellOptions) -> Self {
        let dir = scratch("cell");
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token file");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellstack-cell"));
        cmd.args(["--cell", "test-cell", "--redis-url", redis_url])
            .arg("--listen")
            .arg(api.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--admin-token-file")
            .arg(&token)
            // Quick defaults for tests, unless the test sets them itself.
            .args(
                [("--drain-delay-secs", "0"), ("--policy-poll-ms", "100")]
                    .into_iter()
                    .filter(|(flag, _)| !options.extra_args.iter().any(|a| a == flag))
                    .flat_map(|(flag, value)| [flag, value]),
            )
            .args(&options.extra_args)
            .env("CELLSTACK_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(p) = &options.policies {
            let path = dir.join("policies.json");
            std::fs::write(&path, serde_json::to_vec(p).unwrap()).unwrap();
            cmd.arg("--policy-file").arg(&path);
        }
        let child = cmd.spawn().expect("spawning cellstack-cell");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut cell = Self {
            api,
            admin,
            dir,
            child,
            http,
        };
        let url = format!("http://{admin}/livez");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = cell.child.try_wait() {
                panic!("cellstack-cell exited before serving ({status}); its stderr is above");
            }
            if cell
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
                && (options.not_waiting_for_redis || !cell.starting().await)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cellstack-cell did not serve {url} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cell
    }

    /// Whether the admin port still answers for a process that is connecting to Redis
    /// (`/readyz`: 503 `starting: ...`).
    pub async fn starting(&self) -> bool {
        match self.http.get(self.admin_url("/readyz")).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => r
                .text()
                .await
                .is_ok_and(|body| body.starts_with("starting")),
            Ok(_) => false,
            Err(_) => true,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A request for `tenant` to the tenant API.
    pub fn req(
        &self,
        method: reqwest::Method,
        tenant: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(header::TENANT, tenant)
    }

    pub fn admin_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.admin_url(path))
            .bearer_auth(TOKEN)
    }

    /// Creates `tenant` in the cell's Redis with `state` and `epoch` through the admin API.
    pub async fn put_tenant(&self, tenant: &str, state: TenantState, epoch: u64) {
        let record = TenantRecord {
            state,
            epoch,
            moved_to: None,
            tracking: false,
            marker: None,
        };
        // Setup, not the subject: a busy machine can make the cell's first Redis calls miss
        // their 100 ms timeout, and the cell says so (503 `unavailable` with Retry-After). Wait
        // as it asks, a bounded number of times.
        for attempt in 1.. {
            let res = self
                .admin_req(reqwest::Method::PUT, &format!("/admin/v1/tenants/{tenant}"))
                .json(&record)
                .send()
                .await
                .expect("admin API reachable");
            let status = res.status();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = res.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && let Some(secs) = retry_after
                && attempt < 5
            {
                tokio::time::sleep(Duration::from_secs(secs.min(2))).await;
                continue;
            }
            assert!(
                status.is_success(),
                "creating tenant {tenant}: {status} {body}"
            );
            return;
        }
    }

    /// The cell's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("the admin listener answers /metrics")
            .text()
            .await
            .expect("a /metrics page")
    }

    /// Asks the cell to confirm its datastore holds `tenants` (`PUT /admin/v1/datastore`),
    /// waiting as it asks when it answers 503 (a busy machine, or another test's confirmation
    /// of the shared Redis under way), a bounded number of times.
    pub async fn confirm_datastore(
        &self,
        tenants: &[&str],
    ) -> cellstack_api::admin::DatastoreConfirmation {
        let body = cellstack_api::admin::ConfirmDatastore {
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        };
        for attempt in 1.. {
            let res = self
                .admin_req(reqwest::Method::PUT, cellstack_api::admin::DATASTORE_PATH)
                .json(&body)
                .send()
                .await
                .expect("admin API reachable");
            let status = res.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < 5 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                continue;
            }
            assert!(status.is_success(), "confirming the datastore: {status}");
            return res.json().await.expect("a confirmation answer");
        }
        unreachable!("the loop returns or panics")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("waiting for the cell")
    }
}

impl Drop for CellProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn limit(
    name: &str,
    algorithm: Algorithm,
    requests: u32,
    period_ms: u64,
    burst: u32,
) -> EffectiveLimit {
    EffectiveLimit {
        name: name.into(),
        algorithm,
        requests,
        period_ms,
        burst,
        methods: vec![],
        path_prefix: None,
    }
}

pub fn policy(name: &str, fail_mode: FailMode, limits: Vec<EffectiveLimit>) -> EffectivePolicy {
    EffectivePolicy {
        policy: name.into(),
        fail_mode,
        shadow: false,
        limits,
        request_priority: Default::default(),
    }
}

/// Latency percentile (0.0-1.0) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or_default()
}
