//! Helpers for suites that need a whole cluster (nodes, kube-proxy, DNS), not just an API server:
//! the local one from `e2e/cluster`, or any cluster in `KUBECONFIG` (kind, ...) with the images
//! loaded (see docs/local-cluster.md).
//!
//! A suite calls [`require_cluster`] first: with no cluster it fails with the command to run —
//! it never skips. Each test works in its own [`TestNamespace`] and, on failure, reports what
//! [`TestNamespace::dump`] saw before deleting it ([`TestNamespace::finish`]).

use std::{fmt::Write as _, future::Future, process::Command, time::Duration};

use anyhow::{Context, bail, ensure};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Event, Namespace, Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, PostParams},
    runtime::wait::await_condition,
};
use tokio::time::{Instant, sleep, timeout};

/// How long a cluster test waits for one condition (pods Ready, a Service answering, ...).
pub const CLUSTER_WAIT: Duration = Duration::from_secs(120);

/// How to get a cluster, printed when there is none.
pub const HOW: &str = "start the local cluster and export its environment: \
    `sudo e2e/cluster up && eval \"$(e2e/cluster env)\"` (or run e2e/test-all, which does both); \
    to use another cluster (kind, ...), see docs/local-cluster.md";

/// The variable `e2e/cluster env` sets; its presence says KUBECONFIG points at a full cluster.
pub const CLUSTER_VAR: &str = "CELLSTACK_E2E_CLUSTER";

/// A client for the cluster in `KUBECONFIG`, after checking that it is one: `CELLSTACK_E2E_CLUSTER`
/// is set, the API answers, and at least one node is Ready.
pub async fn require_cluster() -> anyhow::Result<Client> {
    let Ok(name) = std::env::var(CLUSTER_VAR) else {
        bail!("{CLUSTER_VAR} is not set, so there is no cluster to run this test on: {HOW}");
    };
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("{CLUSTER_VAR}={name} but KUBECONFIG is not set: {HOW}");
    }
    let client = Client::try_default()
        .await
        .with_context(|| format!("cannot build a client from KUBECONFIG: {HOW}"))?;
    let version = timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the API server in KUBECONFIG did not answer within 10s: {HOW}")
        })?
        .with_context(|| format!("the API server in KUBECONFIG is not reachable: {HOW}"))?;
    let mut nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    nodes.items.retain(|n| !is_test_node(n));
    let ready = nodes.items.iter().filter(|n| node_is_ready(n)).count();
    if ready == 0 {
        bail!(
            "cluster {name} (Kubernetes {}) has {} node(s), none Ready: check `e2e/cluster status`",
            version.git_version,
            nodes.items.len()
        );
    }
    // A node under pressure carries a NoSchedule taint and every pod a test creates stays
    // Pending: say so up front instead of timing out test by test.
    for node in &nodes.items {
        let pressured: Vec<String> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.type_.ends_with("Pressure") && c.status == "True")
            .map(|c| c.type_.clone())
            .collect();
        if !pressured.is_empty() {
            bail!(
                "node {} reports {}: the kubelet taints it and schedules no pods; free disk space \
                 (e.g. `cargo clean`, or remove target/debug/incremental) or memory and retry",
                node.name_any(),
                pressured.join(", ")
            );
        }
    }
    Ok(client)
}

/// The taint of a Node a test creates for a moment (with no kubelet behind it, unschedulable):
/// not part of the cluster's layout, so suites that check the layout leave it out.
pub const TEST_NODE_TAINT: &str = "cellstack.dev/test-node";

/// Whether `node` is one a test made ([`TEST_NODE_TAINT`]).
pub fn is_test_node(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TEST_NODE_TAINT))
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// An image reference from the environment variable `var` (set by `e2e/cluster env`).
pub fn image(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| {
        format!("{var} is not set: it names an image loaded into the cluster's runtime; {HOW}")
    })
}

/// Polls `check` until it returns `Ok(Some(v))`, or fails after `wait` with the last error.
pub async fn poll<T, F, Fut>(what: &str, wait: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + wait;
    let mut last = String::from("condition not met yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {wait:?} waiting for {what}; last: {last}");
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// A namespace of its own for one test, deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("cellstack.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            client: client.clone(),
            name,
        })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Ends a test: if `result` is an error, adds what the namespace looked like to it; deletes
    /// the namespace either way. Use as `let result = scenario(&ns).await; ns.finish(result).await`.
    pub async fn finish(self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let dump = self.dump().await;
                Err(e.context(format!("state of namespace {}:\n{dump}", self.name)))
            }
        };
        if let Err(e) = self.delete().await {
            eprintln!("warning: {e:#}");
        }
        result
    }

    /// Deletes the namespace and waits (up to [`CLUSTER_WAIT`]) until it is gone.
    pub async fn delete(&self) -> anyhow::Result<()> {
        let api = Api::<Namespace>::all(self.client.clone());
        let uid = match api.get_opt(&self.name).await? {
            Some(ns) => ns.uid().unwrap_or_default(),
            None => return Ok(()),
        };
        api.delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        timeout(
            CLUSTER_WAIT,
            await_condition(
                api,
                &self.name,
                kube::runtime::wait::conditions::is_deleted(&uid),
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("namespace {} still there after {CLUSTER_WAIT:?}", self.name))?
        .context("watching namespace deletion")?;
        Ok(())
    }

    /// Pods (phase, readiness, container states), recent events and the tail of each container's
    /// log: what to read when a test fails.
    pub async fn dump(&self) -> String {
        let mut out = String::new();
        match self.api::<Pod>().list(&ListParams::default()).await {
            Ok(pods) => {
                for pod in &pods.items {
                    let name = pod.name_any();
                    let status = pod.status.clone().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "pod {name}: phase={} ip={} node={}",
                        status.phase.unwrap_or_default(),
                        status.pod_ip.unwrap_or_default(),
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default(),
                    );
                    for c in status.conditions.unwrap_or_default() {
                        let _ = writeln!(
                            out,
                            "  condition {}={} {}",
                            c.type_,
                            c.status,
                            c.message.unwrap_or_default()
                        );
                    }
                    for cs in status.container_statuses.unwrap_or_default() {
                        let _ = writeln!(
                            out,
                            "  container {} ready={} restarts={} state={}",
                            cs.name,
                            cs.ready,
                            cs.restart_count,
                            serde_json::to_string(&cs.state).unwrap_or_default()
                        );
                        let lp = LogParams {
                            container: Some(cs.name.clone()),
                            tail_lines: Some(20),
                            ..LogParams::default()
                        };
                        match self.api::<Pod>().logs(&name, &lp).await {
                            Ok(log) if !log.is_empty() => {
                                let _ = writeln!(
                                    out,
                                    "  log of {}:\n    {}",
                                    cs.name,
                                    log.trim_end().replace('\n', "\n    ")
                                );
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = writeln!(out, "  (no log for {}: {e})", cs.name);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "listing pods failed: {e}");
            }
        }
        match self.api::<Event>().list(&ListParams::default()).await {
            Ok(events) => {
                let mut events = events.items;
                events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
                for e in events.iter().rev().take(30).rev() {
                    let _ = writeln!(
                        out,
                        "event {} {}/{}: {} {}",
                        e.type_.clone().unwrap_or_default(),
                        e.involved_object.kind.clone().unwrap_or_default(),
                        e.involved_object.name.clone().unwrap_or_default(),
                        e.reason.clone().unwrap_or_default(),
                        e.message.clone().unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "listing events failed: {e}");
            }
        }
        out
    }

    /// Waits until Deployment `name` has `replicas` updated, available replicas.
    pub async fn wait_deployment_available(&self, name: &str, replicas: i32) -> anyhow::Result<()> {
        let cond = move |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.available_replicas.unwrap_or(0) == replicas
                    && s.updated_replicas.unwrap_or(0) == replicas
                    && s.replicas.unwrap_or(0) == replicas
            })
        };
        timeout(
            CLUSTER_WAIT,
            await_condition(self.api::<Deployment>(), name, cond),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "deployment {name}: {replicas} replicas not available within {CLUSTER_WAIT:?}"
            )
        })?
        .with_context(|| format!("watching deployment {name}"))?;
        Ok(())
    }

    /// Names of the Ready pods matching `selector` (a label selector).
    pub async fn ready_pods(&self, selector: &str) -> anyhow::Result<Vec<String>> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_is_ready(p))
            .map(|p| p.name_any())
            .collect())
    }

    /// Runs `pod` (restartPolicy Never) to completion and returns its log. Fails if the pod
    /// fails or does not finish within [`CLUSTER_WAIT`].
    pub async fn run_to_completion(&self, pod: Pod) -> anyhow::Result<String> {
        let name = pod.name_any();
        let api = self.api::<Pod>();
        api.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        let done = |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        };
        let finished = timeout(CLUSTER_WAIT, await_condition(api.clone(), &name, done))
            .await
            .map_err(|_| anyhow::anyhow!("pod {name} did not finish within {CLUSTER_WAIT:?}"))?
            .with_context(|| format!("watching pod {name}"))?
            .with_context(|| format!("pod {name} disappeared"))?;
        let log = api
            .logs(&name, &LogParams::default())
            .await
            .with_context(|| format!("reading the log of pod {name}"))?;
        let phase = finished.status.and_then(|s| s.phase).unwrap_or_default();
        if phase != "Succeeded" {
            bail!("pod {name} ended {phase}; its log:\n{log}");
        }
        Ok(log)
    }
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A plain HTTP/1.0 GET of `path` from `host:port` (5 s timeouts); returns the status code and
/// body. Blocking std I/O on a blocking thread: the workspace's tokio has no `io-util`.
pub async fn http_get(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("http://{host}:{port}{path}");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let addr: std::net::SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("{url}: host must be an IP address"))?;
    let response = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::{Read, Write};
        let limit = Some(Duration::from_secs(5));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(limit)?;
        stream.set_write_timeout(limit)?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    })
    .await
    .context("joining the HTTP thread")?
    .with_context(|| format!("GET {url}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {url}: malformed response {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {url}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The host processes of one running container of `pod`: every pid whose cgroup names the
/// container's id. Works only where this process shares the node's pid namespace (the local
/// cluster, whose node is this machine); a fault injected this way (SIGKILL, SIGSTOP) is one
/// the kubelet does not cause and only sees through the container's state.
pub fn container_pids(pod: &Pod, container: &str) -> anyhow::Result<Vec<i32>> {
    let name = pod.name_any();
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.rsplit("://").next())
        .filter(|id| !id.is_empty())
        .with_context(|| format!("pod {name} has no running container {container}"))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A process may exit between the listing and the read.
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cg| cg.contains(id)) {
            pids.push(pid);
        }
    }
    ensure!(
        !pids.is_empty(),
        "no process of container {container} of pod {name} (id {id}) on this host: the suite \
         must run on the pod's node (the local cluster)"
    );
    Ok(pids)
}

/// Sends `signal` (a name `kill -s` knows: KILL, STOP, CONT) to `pids`.
pub fn signal(pids: &[i32], signal: &str) -> anyhow::Result<()> {
    let out = Command::new("kill")
        .args(["-s", signal])
        .args(pids.iter().map(i32::to_string))
        .output()
        .context("running kill")?;
    ensure!(
        out.status.success(),
        "kill -s {signal} {pids:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
