//! The local cluster (`e2e/cluster`) really runs workloads: images built from local binaries
//! start as non-root pods, Services route to them through kube-proxy from the host and from other
//! pods, cluster DNS resolves Service names, a deleted pod is replaced while its Service keeps
//! answering, and a claim without a class gets a volume from the default StorageClass that keeps
//! its data when its pod is deleted and re-created. Every node is Ready in a zone of its own
//! (up to three zones), and pods on different nodes reach each other and Services across nodes.
//!
//! Needs a full cluster: `e2e/cluster up && eval "$(e2e/cluster env)"` (e2e/test-all does both).
//! Without one it fails, saying so.

use anyhow::{Context, bail, ensure};
use cellstack_testkit::cluster::{
    CLUSTER_WAIT, TestNamespace, http_get, image, poll, require_cluster,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Service},
    storage::v1::StorageClass,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use serde_json::{Value, json};
use tokio::time::timeout;

/// The HTTP server under test: busybox's httpd serving the image's /www/index.html for now. To test
/// another server, change this one place (image, command, port, and what its `/` must contain).
struct HttpServer {
    image: String,
    command: Vec<&'static str>,
    port: u16,
    expect_in_body: &'static str,
}

fn http_server() -> anyhow::Result<HttpServer> {
    Ok(HttpServer {
        image: image("CELLSTACK_E2E_BUSYBOX_IMAGE")?,
        command: vec!["httpd", "-f", "-p", "8080", "-h", "/www"],
        port: 8080,
        expect_in_body: "cellstack busybox httpd",
    })
}

/// Pod settings every workload here shares: non-root, no privilege escalation, local images only,
/// quick termination (busybox as PID 1 ignores SIGTERM).
fn pod_spec(containers: Value, restart_policy: &str) -> Value {
    json!({
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
    })
}

fn container(name: &str, image: &str, extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn deployment(name: &str, replicas: i32, container: Value) -> anyhow::Result<Deployment> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec(json!([container]), "Always"),
            },
        },
    }))
    .context("building a Deployment")
}

fn service(name: &str, port: u16, target_port: u16) -> anyhow::Result<Service> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target_port}]},
    }))
    .context("building a Service")
}

/// The HTTP server's container, Ready once it answers `/`.
fn web_container(server: &HttpServer) -> Value {
    container(
        "web",
        &server.image,
        json!({
            "command": server.command,
            "ports": [{"containerPort": server.port}],
            "readinessProbe": {"httpGet": {"path": "/", "port": server.port}, "periodSeconds": 1},
        }),
    )
}

/// A one-shot busybox pod running `script` with sh.
fn client_pod(name: &str, busybox: &str, script: &str) -> anyhow::Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": pod_spec(json!([container(name, busybox, json!({"command": ["sh", "-c", script]}))]), "Never"),
    }))
    .context("building a Pod")
}

/// GET / on the `web` Service's ClusterIP from this process, until it answers with the expected
/// body (kube-proxy programs new endpoints within a sync period).
async fn get_from_host(ns: &TestNamespace, server: &HttpServer) -> anyhow::Result<()> {
    let svc = ns
        .api::<Service>()
        .get("web")
        .await
        .context("reading Service web")?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service web has no ClusterIP")?;
    let body = poll(
        &format!("http://{ip}:80/ from the host"),
        CLUSTER_WAIT,
        || {
            let ip = ip.clone();
            async move {
                let (status, body) = http_get(&ip, 80, "/").await?;
                ensure!(status == 200, "HTTP {status}: {body}");
                Ok(Some(body))
            }
        },
    )
    .await?;
    ensure!(
        body.contains(server.expect_in_body),
        "http://{ip}/ answered {body:?}, expected it to contain {:?}",
        server.expect_in_body
    );
    Ok(())
}

#[tokio::test]
async fn pods_services_dns_and_self_healing_work() -> anyhow::Result<()> {
    let client = require_cluster().await?;
    let ns = TestNamespace::create(&client, "smoke").await?;
    let result = scenario(&ns).await;
    ns.finish(result).await
}

async fn scenario(ns: &TestNamespace) -> anyhow::Result<()> {
    let server = http_server()?;
    let busybox = image("CELLSTACK_E2E_BUSYBOX_IMAGE")?;
    let redis = image("CELLSTACK_E2E_REDIS_IMAGE")?;
    let pp = PostParams::default();
    let probe = |port: u16| json!({"tcpSocket": {"port": port}, "periodSeconds": 1});

    // Two HTTP replicas and one Redis, each behind a Service.
    let web = web_container(&server);
    ns.api::<Deployment>()
        .create(&pp, &deployment("web", 2, web)?)
        .await?;
    ns.api::<Service>()
        .create(&pp, &service("web", 80, server.port)?)
        .await?;
    let redis = container(
        "redis",
        &redis,
        json!({"ports": [{"containerPort": 6379}], "readinessProbe": probe(6379)}),
    );
    ns.api::<Deployment>()
        .create(&pp, &deployment("redis", 1, redis)?)
        .await?;
    ns.api::<Service>()
        .create(&pp, &service("redis", 6379, 6379)?)
        .await?;
    ns.wait_deployment_available("web", 2).await?;
    ns.wait_deployment_available("redis", 1).await?;

    // The host reaches the HTTP pods through the Service's ClusterIP (kube-proxy's rules on
    // e2e/cluster, whose host routes the service range). A cluster whose Services the host cannot
    // reach fails here with the reason: the e2e suites drive traffic from the host.
    get_from_host(ns, &server).await.context(
        "this host cannot reach the cluster's Service addresses, which the e2e suites need \
         (e2e/cluster routes them)",
    )?;

    // Another pod reaches both Services by their DNS names (cluster DNS + kube-proxy); the pod's
    // phase says whether the script succeeded. (Debian's static busybox 1.35 wget segfaults with
    // its own -T timeout option, hence the timeout applet.)
    let svc = |name: &str| format!("{name}.{}.svc.cluster.local", ns.name);
    let http_client = client_pod(
        "http-client",
        &busybox,
        &format!("timeout 15 wget -q -O- http://{}/", svc("web")),
    )?;
    let redis_client = client_pod(
        "redis-client",
        &busybox,
        &format!("printf 'PING\\r\\n' | nc -w 5 {} 6379", svc("redis")),
    )?;
    let (http_log, redis_log) = tokio::try_join!(
        ns.run_to_completion(http_client),
        ns.run_to_completion(redis_client)
    )?;
    ensure!(
        http_log.contains(server.expect_in_body),
        "the http-client pod got {http_log:?} from Service web, expected {:?}",
        server.expect_in_body
    );
    ensure!(
        redis_log.contains("+PONG"),
        "the redis-client pod got {redis_log:?} from Service redis, expected +PONG"
    );

    // Self-healing: delete one web pod; a new one becomes Ready and the Service still answers.
    let before = ns.ready_pods("app=web").await?;
    ensure!(
        before.len() == 2,
        "expected 2 Ready web pods, found {before:?}"
    );
    let victim = before[0].clone();
    ns.api::<Pod>()
        .delete(&victim, &DeleteParams::default())
        .await?;
    let after = poll(
        "a replacement web pod to become Ready",
        CLUSTER_WAIT,
        || async {
            let ready = ns.ready_pods("app=web").await?;
            Ok((ready.len() == 2 && !ready.contains(&victim)).then_some(ready))
        },
    )
    .await?;
    if !after.iter().any(|p| !before.contains(p)) {
        bail!("no new web pod: before {before:?}, after {after:?}");
    }
    get_from_host(ns, &server).await?;
    let again = client_pod(
        "http-client-again",
        &busybox,
        &format!("timeout 15 wget -q -O- http://{}/", svc("web")),
    )?;
    let log = ns.run_to_completion(again).await?;
    ensure!(
        log.contains(server.expect_in_body),
        "after the replacement, Service web answered {log:?}"
    );
    Ok(())
}

/// The zone label every node of the local cluster carries.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Every node is Ready and names its zone, the nodes spread over up to three zones; a web pod
/// pinned to each node answers a client pod pinned to every node (by pod IP, so across the node
/// network, and through the Service), and this host reaches each of them by pod IP.
#[tokio::test]
async fn pods_on_every_node_reach_each_other_across_nodes_and_zones() -> anyhow::Result<()> {
    let client = require_cluster().await?;
    let ns = TestNamespace::create(&client, "nodes").await?;
    let result = spread_scenario(&client, &ns).await;
    ns.finish(result).await
}

async fn spread_scenario(client: &kube::Client, ns: &TestNamespace) -> anyhow::Result<()> {
    let server = http_server()?;
    let busybox = image("CELLSTACK_E2E_BUSYBOX_IMAGE")?;
    let mut nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?;
    // A node another test adds for a moment is not part of the layout.
    nodes
        .items
        .retain(|n| !cellstack_testkit::cluster::is_test_node(n));
    let mut zones = std::collections::BTreeMap::new();
    for node in &nodes {
        let name = node.name_any();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        ensure!(ready, "node {name} is not Ready");
        let zone = node
            .labels()
            .get(ZONE_LABEL)
            .with_context(|| format!("node {name} has no {ZONE_LABEL} label"))?;
        zones.insert(name, zone.clone());
    }
    let distinct: std::collections::BTreeSet<&String> = zones.values().collect();
    ensure!(
        nodes.items.len() >= 2,
        "the local cluster should have several nodes (e2e/cluster: CELLSTACK_NODES, default 3), has {zones:?}"
    );
    ensure!(
        distinct.len() == nodes.items.len().min(3),
        "{} nodes should spread over {} zones: {zones:?}",
        nodes.items.len(),
        nodes.items.len().min(3)
    );

    // A web pod on each node, all behind one Service.
    let pp = PostParams::default();
    let pinned = |node: &str, mut pod: Value| {
        pod["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        pod
    };
    for (i, node) in zones.keys().enumerate() {
        let web = web_container(&server);
        let pod = pinned(
            node,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
                "spec": pod_spec(json!([web]), "Always"),
            }),
        );
        ns.api::<Pod>()
            .create(&pp, &serde_json::from_value(pod)?)
            .await?;
    }
    ns.api::<Service>()
        .create(&pp, &service("web", 80, server.port)?)
        .await?;
    let web_ips = poll("a Ready web pod on every node", CLUSTER_WAIT, || async {
        let ready = ns.ready_pods("app=web").await?;
        if ready.len() < zones.len() {
            return Ok(None);
        }
        let mut ips = Vec::new();
        for name in &ready {
            let pod = ns.api::<Pod>().get(name).await?;
            let status = pod.status.unwrap_or_default();
            ips.push((
                status.host_ip.unwrap_or_default(),
                status.pod_ip.context("a Ready pod without an address")?,
            ));
        }
        Ok(Some(ips))
    })
    .await?;

    // This host reaches every node's pods (routed to each node over the node network).
    for (host, ip) in &web_ips {
        let (status, body) = http_get(ip, server.port, "/").await?;
        ensure!(
            status == 200 && body.contains(server.expect_in_body),
            "web pod {ip} on node {host} answered the host {status}: {body:?}"
        );
    }

    // A client on each node reaches the web pod on every node and the Service.
    let service = format!("web.{}.svc.cluster.local", ns.name);
    let mut script = String::from("set -e\n");
    for (_, ip) in &web_ips {
        script.push_str(&format!(
            "timeout 15 wget -q -O- http://{ip}:{}/ | grep -q '{}' && echo reached {ip}\n",
            server.port, server.expect_in_body
        ));
    }
    script.push_str(&format!(
        "timeout 15 wget -q -O- http://{service}/ | grep -q '{}' && echo reached the Service\n",
        server.expect_in_body
    ));
    let clients = zones.keys().enumerate().map(|(i, node)| {
        let pod: anyhow::Result<Pod> = client_pod(&format!("client-{i}"), &busybox, &script)
            .and_then(|p| {
                Ok(serde_json::from_value(pinned(
                    node,
                    serde_json::to_value(p)?,
                ))?)
            });
        async move {
            ns.run_to_completion(pod?)
                .await
                .map(|log| (node.clone(), log))
        }
    });
    for (node, log) in futures::future::try_join_all(clients).await? {
        let reached = log.lines().filter(|l| l.starts_with("reached ")).count();
        ensure!(
            reached == web_ips.len() + 1,
            "the client on {node} reached {reached} of {} web pods and the Service: {log:?}",
            web_ips.len()
        );
    }
    Ok(())
}

/// The annotation that makes a StorageClass the default for claims that name none.
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// A one-shot busybox pod running `script` with the claim `claim` mounted at /data.
fn volume_pod(name: &str, busybox: &str, script: &str, claim: &str) -> anyhow::Result<Pod> {
    let c = container(
        name,
        busybox,
        json!({
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }),
    );
    let mut spec = pod_spec(json!([c]), "Never");
    spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .context("building a Pod")
}

/// Deletes pod `name` and waits until it is gone (its volumes unmounted by the kubelet).
async fn delete_pod(ns: &TestNamespace, name: &str) -> anyhow::Result<()> {
    let api = ns.api::<Pod>();
    let uid = api
        .get(name)
        .await
        .with_context(|| format!("reading pod {name}"))?
        .uid()
        .with_context(|| format!("pod {name} has no uid"))?;
    api.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting pod {name}"))?;
    timeout(
        CLUSTER_WAIT,
        await_condition(api, name, conditions::is_deleted(&uid)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("pod {name} still there {CLUSTER_WAIT:?} after its deletion"))?
    .with_context(|| format!("watching the deletion of pod {name}"))?;
    Ok(())
}

async fn node_of(ns: &TestNamespace, pod: &str) -> anyhow::Result<String> {
    ns.api::<Pod>()
        .get(pod)
        .await
        .with_context(|| format!("reading pod {pod}"))?
        .spec
        .and_then(|s| s.node_name)
        .with_context(|| format!("pod {pod} ran on no node"))
}

/// The nodes a PersistentVolume's required node affinity allows, by `kubernetes.io/hostname`.
fn affinity_hostnames(pv: &PersistentVolume) -> Vec<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .into_iter()
        .flat_map(|r| &r.node_selector_terms)
        .flat_map(|t| t.match_expressions.iter().flatten())
        .filter(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
        .flat_map(|e| e.values.iter().flatten().cloned())
        .collect()
}

#[tokio::test]
async fn default_class_volume_outlives_its_pod_stays_on_its_node_and_goes_with_its_claim()
-> anyhow::Result<()> {
    let client = require_cluster().await?;
    let ns = TestNamespace::create(&client, "storage").await?;
    let result = volume_scenario(&ns).await;
    ns.finish(result).await
}

async fn volume_scenario(ns: &TestNamespace) -> anyhow::Result<()> {
    let busybox = image("CELLSTACK_E2E_BUSYBOX_IMAGE")?;
    let claims = ns.api::<PersistentVolumeClaim>();
    let volumes = Api::<PersistentVolume>::all(ns.client.clone());

    // A claim that names no class: the DefaultStorageClass admission plugin fills in the default.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}},
        },
    }))
    .context("building a PersistentVolumeClaim")?;
    let claim = claims
        .create(&PostParams::default(), &claim)
        .await
        .context("creating claim data")?;
    let class = claim
        .spec
        .and_then(|s| s.storage_class_name)
        .context("claim data got no storageClassName: the cluster has no default StorageClass")?;
    let class = Api::<StorageClass>::all(ns.client.clone())
        .get(&class)
        .await
        .with_context(|| format!("reading StorageClass {class}, given to claim data"))?;
    ensure!(
        class
            .annotations()
            .get(DEFAULT_CLASS_ANNOTATION)
            .map(String::as_str)
            == Some("true"),
        "claim data got StorageClass {}, which is not annotated {DEFAULT_CLASS_ANNOTATION}=true",
        class.name_any()
    );

    // The first pod writes a file unique to this run into the volume, then is deleted.
    let proof = format!("written by {} into its volume", ns.name);
    let writer = volume_pod(
        "writer",
        &busybox,
        &format!("printf '%s' '{proof}' >/data/proof && cat /data/proof"),
        "data",
    )?;
    let log = ns.run_to_completion(writer).await?;
    ensure!(
        log == proof,
        "the writer pod printed {log:?}, expected {proof:?}"
    );
    let node = node_of(ns, "writer").await?;

    // The claim is bound to a volume pinned to the node the writer ran on.
    let volume_name = claims
        .get("data")
        .await
        .context("reading claim data")?
        .spec
        .and_then(|s| s.volume_name)
        .context("claim data is not bound to a volume after its pod ran")?;
    let volume = volumes
        .get(&volume_name)
        .await
        .with_context(|| format!("reading PersistentVolume {volume_name}"))?;
    let pinned = affinity_hostnames(&volume);
    ensure!(
        pinned == [node.clone()],
        "volume {volume_name} allows nodes {pinned:?} by kubernetes.io/hostname; expected only \
         {node}, where the writer pod ran"
    );
    delete_pod(ns, "writer").await?;

    // A new pod on the same claim reads the file back, on the same node.
    let reader = volume_pod("reader", &busybox, "cat /data/proof", "data")?;
    let log = ns.run_to_completion(reader).await?;
    ensure!(
        log == proof,
        "the reader pod, created after the writer was deleted, read {log:?} from the volume; \
         expected {proof:?}"
    );
    let reader_node = node_of(ns, "reader").await?;
    ensure!(
        reader_node == node,
        "the reader pod ran on {reader_node}, not on {node} where the volume is"
    );

    // Deleting the claim deletes the volume (reclaimPolicy Delete): the provisioner removes its
    // directory and the PersistentVolume.
    delete_pod(ns, "reader").await?;
    claims
        .delete("data", &DeleteParams::default())
        .await
        .context("deleting claim data")?;
    poll(
        &format!("PersistentVolume {volume_name} to be deleted with its claim"),
        CLUSTER_WAIT,
        || async {
            Ok(volumes
                .get_opt(&volume_name)
                .await
                .with_context(|| format!("reading PersistentVolume {volume_name}"))?
                .is_none()
                .then_some(()))
        },
    )
    .await
}
