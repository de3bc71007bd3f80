//! The local cluster (`e2e/cluster`) really runs workloads: images built from local binaries
//! start as non-root pods, Services route to them through kube-proxy from the host and from other
//! pods, cluster DNS resolves Service names, and a deleted pod is replaced while its Service keeps
//! answering.
//!
//! Needs a full cluster: `e2e/cluster up && eval "$(e2e/cluster env)"` (e2e/test-all does both).
//! Without one it fails, saying so.

use anyhow::{Context, bail, ensure};
use cellstack_e2e::cluster::{CLUSTER_WAIT, TestNamespace, http_get, image, poll, require_cluster};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

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
    let web = container(
        "web",
        &server.image,
        json!({
            "command": server.command,
            "ports": [{"containerPort": server.port}],
            "readinessProbe": {"httpGet": {"path": "/", "port": server.port}, "periodSeconds": 1},
        }),
    );
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
