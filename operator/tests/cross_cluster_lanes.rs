//! Cross-cluster lane addresses against a real cluster (`--multicluster`, with internal TLS;
//! docs/multicluster.md, D7 and D8): the lanes' Services become NodePorts, the Cell publishes one
//! `node:nodePort` per lane (tenant and admin port) on an eligible node, the lanes' certificate
//! names those node addresses, the cell's NetworkPolicy admits NodePort traffic forwarded by any
//! node, the lanes' tenant port takes only clients presenting the release's client certificate
//! (which the `cellstack` CLI's lane client finds and presents), and a Node added to or deleted
//! from the cluster reaches the policy through the node watch.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{INTERNAL_CA_BUNDLE, INTERNAL_CA_BUNDLE_KEY};
use cellstack_testkit::cluster::{TEST_NODE_TAINT, is_test_node, poll};
use common::{WAIT, World, is_ready, router_tls::RouterTls};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Node, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The nodes' `InternalIP`s.
#[derive(Debug, Default)]
struct NodeIps {
    /// Every node's, a node a test made included (the operator admits those too).
    every: BTreeSet<IpAddr>,
    /// The cluster's own nodes' (no test node: one left by a killed run has no kubelet).
    layout: BTreeSet<IpAddr>,
    /// Those a lane may be published on (Ready, not cordoned).
    eligible: BTreeSet<IpAddr>,
}

async fn node_addresses(client: &Client) -> anyhow::Result<NodeIps> {
    let mut ips = NodeIps::default();
    for node in Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?
    {
        let test_node = is_test_node(&node);
        let status = node.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let cordoned = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        for address in status.addresses.iter().flatten() {
            if address.type_ == "InternalIP" {
                let ip: IpAddr = address.address.parse()?;
                ips.every.insert(ip);
                if !test_node {
                    ips.layout.insert(ip);
                }
                if ready && !cordoned {
                    ips.eligible.insert(ip);
                }
            }
        }
    }
    Ok(ips)
}

/// The `/32` (`/128`) blocks the cell's NetworkPolicy admits.
async fn admitted_blocks(client: &Client, namespace: &str) -> anyhow::Result<BTreeSet<String>> {
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), namespace)
        .get("cell-isolation")
        .await
        .with_context(|| format!("reading NetworkPolicy {namespace}/cell-isolation"))?;
    Ok(policy
        .spec
        .into_iter()
        .flat_map(|s| s.ingress.unwrap_or_default())
        .flat_map(|rule| rule.from.unwrap_or_default())
        .filter_map(|peer| peer.ip_block.map(|b| b.cidr))
        .collect())
}

/// The address this machine reaches `node` from: what a lane on the node it dials sees as the
/// client (no datagram is sent; the kernel only picks the route).
fn source_towards(node: IpAddr) -> anyhow::Result<IpAddr> {
    let socket = std::net::UdpSocket::bind((
        if node.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    ))?;
    socket.connect((node, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// Waits until the cell's policy in `namespace` admits `block` (or, `admitted` false, no longer
/// does) and returns the time since `since`, which must be short: the change came through the
/// node watch (the cell is otherwise quiet, and its resync is 300 s away).
async fn policy_follows(
    client: &Client,
    namespace: &str,
    block: &str,
    admitted: bool,
    since: Instant,
) -> anyhow::Result<Duration> {
    let what = if admitted { "in" } else { "out of" };
    poll(&format!("{block} {what} the policy"), WAIT, || async move {
        let blocks = admitted_blocks(client, namespace).await?;
        ensure!(blocks.contains(block) == admitted, "admitted {blocks:?}");
        Ok(Some(()))
    })
    .await?;
    let took = since.elapsed();
    ensure!(
        took < Duration::from_secs(20),
        "{block} went {what} the policy only after {took:?}: not through the node watch"
    );
    Ok(took)
}

fn block_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_multicluster_each_lane_is_reached_over_tls_through_any_nodes_port_and_nodes_join_the_policy()
 {
    let mut world = World::new("op-xc").await.expect("test world");
    // This machine stands for another cluster's routers: its address on the node network is
    // the one cross-cluster source admitted.
    let first = *node_addresses(&world.client)
        .await
        .expect("nodes")
        .layout
        .first()
        .expect("the cluster has nodes");
    let host = source_towards(first).expect("a route to the nodes");
    world
        .operator_env
        .push(("CELLSTACK_MULTICLUSTER".into(), "true".into()));
    world.operator_env.push((
        "CELLSTACK_CROSS_CLUSTER_SOURCES".into(),
        format!("{host}/32"),
    ));
    world
        .operator_env
        .push(("CELLSTACK_INTERNAL_TLS".into(), "true".into()));
    let fake_node = format!("fake-{}", world.id);
    let result = async {
        world.start_operator("a").await?;
        let client = world.client.clone();
        let cell = world
            .create_cell(
                "xc",
                json!({ "lanes": 2, "datastore": { "managed": { "storage": "Ephemeral" } } }),
            )
            .await?
            .name_any();
        let namespace = format!("cell-{cell}");
        let ready = world
            .wait_cell(
                &cell,
                "Ready with two cross-cluster addresses of each kind",
                |c| {
                    is_ready(c)
                        && c.status.as_ref().is_some_and(|s| {
                            s.cross_cluster_endpoints.len() == 2
                                && s.cross_cluster_admin_endpoints.len() == 2
                        })
                },
            )
            .await?;
        let status = ready.status.clone().context("status")?;
        let NodeIps {
            every,
            layout: all_nodes,
            eligible,
        } = node_addresses(&client).await?;
        let lane_nodes: BTreeSet<String> = status
            .cross_cluster_endpoints
            .iter()
            .filter_map(|e| e.parse::<SocketAddr>().ok())
            .map(|a| a.ip().to_string())
            .collect();
        println!("lanes published on {lane_nodes:?} of nodes {all_nodes:?}");

        // Each lane: a NodePort Service whose ports are the published ones, on an eligible
        // node, the same node for both ports.
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let mut published = Vec::new();
        for i in 0..2 {
            let svc = services.get(&format!("lane-{i}")).await?;
            let spec = svc.spec.context("lane Service spec")?;
            ensure!(
                spec.type_.as_deref() == Some("NodePort"),
                "lane-{i}: {spec:?}"
            );
            let node_port = |port: i32| {
                spec.ports
                    .iter()
                    .flatten()
                    .find(|p| p.port == port)
                    .and_then(|p| p.node_port)
                    .with_context(|| format!("lane-{i} has no node port for {port}"))
            };
            let tenant: SocketAddr = status.cross_cluster_endpoints[i].parse()?;
            let admin: SocketAddr = status.cross_cluster_admin_endpoints[i].parse()?;
            ensure!(
                i32::from(tenant.port()) == node_port(8080)?
                    && i32::from(admin.port()) == node_port(9090)?,
                "lane-{i}: published {tenant} and {admin}, Service {:?}",
                spec.ports
            );
            ensure!(tenant.ip() == admin.ip(), "lane-{i}: {tenant} vs {admin}");
            ensure!(
                eligible.contains(&tenant.ip()),
                "lane-{i} published on {}, not a Ready node's InternalIP ({eligible:?})",
                tenant.ip()
            );
            published.push(admin);
        }
        // The ClusterIP path stays for traffic inside the cluster.
        ensure!(
            status.endpoints.len() == 2,
            "endpoints: {:?}",
            status.endpoints
        );

        // The policy admits every node's address and the configured source, and nothing else by
        // address.
        let blocks = admitted_blocks(&client, &namespace).await?;
        let expected: BTreeSet<String> =
            every.iter().copied().chain([host]).map(block_of).collect();
        ensure!(
            blocks == expected,
            "admitted {blocks:?}, expected {expected:?}"
        );

        // Each lane answers at its published address, and its certificate names that node
        // address (reqwest checks IP SANs). Published on the lane's own node (the usual case:
        // its pod was placed when the node was picked), the request is delivered there and the
        // policy sees this machine's address, the configured source. Every node forwards to each
        // lane too (externalTrafficPolicy: Cluster): what it forwards to a lane on another node
        // arrives SNATed to its own address, which the policy admits.
        let system = world.system.name.clone();
        let pem = Api::<ConfigMap>::namespaced(client.clone(), &system)
            .get(INTERNAL_CA_BUNDLE)
            .await?
            .data
            .and_then(|d| d.get(INTERNAL_CA_BUNDLE_KEY).cloned())
            .context("the bundle has no ca.crt")?;
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(5));
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            builder = builder.add_root_certificate(cert);
        }
        let https = builder.build()?;
        // What the routers present (docs/security.md "Client certificates").
        let tls = RouterTls::read(&client, &system, &world.id).await?;
        let identity = format!(
            "{}{}",
            std::fs::read_to_string(tls.dir.join("tls.crt"))?,
            std::fs::read_to_string(tls.dir.join("tls.key"))?
        );
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(5))
            .identity(reqwest::Identity::from_pem(identity.as_bytes())?);
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            builder = builder.add_root_certificate(cert);
        }
        let presenting = builder.build()?;
        // Through a node other than the published one the certificate does not name the
        // address dialled: there only the forwarding is checked, so without verification.
        let unverified = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        for (i, address) in published.iter().enumerate() {
            let url = format!("https://{address}/readyz");
            // kube-proxy may program a new node port a moment after the lane turned ready.
            poll(&format!("lane-{i} at {url}"), WAIT, || {
                let (https, url) = (https.clone(), url.clone());
                async move {
                    let answer = https.get(&url).send().await?;
                    ensure!(answer.status().is_success(), "{url}: {}", answer.status());
                    Ok(Some(()))
                }
            })
            .await?;
            // The tenant port at its node port: a handshake only with the client certificate
            // (any HTTP answer will do: the request names no tenant).
            let tenant = &status.cross_cluster_endpoints[i];
            let without = https.get(format!("https://{tenant}/v1/whoami")).send().await;
            ensure!(
                without.is_err(),
                "lane-{i}'s tenant port at {tenant} answered a client without a certificate: {without:?}"
            );
            presenting
                .get(format!("https://{tenant}/v1/whoami"))
                .send()
                .await
                .with_context(|| format!("lane-{i}'s tenant port at {tenant} with the release's client certificate"))?;
            // Each node's kube-proxy programs the node port on its own schedule: awaited per
            // node (one run found a node refusing it a moment after the published one answered).
            for node in &all_nodes {
                let via = SocketAddr::new(*node, address.port());
                poll(&format!("lane-{i} through node {node}'s port {via}"), WAIT, || {
                    let (unverified, url) = (unverified.clone(), format!("https://{via}/readyz"));
                    async move {
                        let forwarded = unverified.get(&url).send().await?;
                        ensure!(
                            forwarded.status().is_success(),
                            "{url}: {}",
                            forwarded.status()
                        );
                        Ok(Some(()))
                    }
                })
                .await?;
            }
        }

        // The `cellstack` CLI's admin calls (backup, restore, tenant data) present the release's
        // client certificate too: its lane client finds the Secret whose CA the lanes trust.
        let cell_object = world.cells_api().get(&cell).await?;
        let timeout = Duration::from_secs(10);
        let lanes = cellstack_operator::cell_admin::lanes_of(&client, &cell_object, timeout).await?;
        let admin = cellstack_operator::cell_admin::CellAdmin::with_client(
            &client,
            &lanes,
            &cell_object,
            timeout,
        )
        .await?;
        admin
            .confirmation()
            .await
            .context("an admin call the way the cellstack CLI makes it")?;

        // A Node that joins the cluster joins the policy (the node watch brings the cell back);
        // one that leaves, leaves it. Unschedulable and tainted, so no pod goes there; its
        // address is from TEST-NET-3 and is never published (it is not Ready).
        let nodes: Api<Node> = Api::all(client.clone());
        let octet = 1 + world.id.bytes().fold(0u8, |a, b| a.wrapping_add(b)) % 250;
        let fake_ip: IpAddr = format!("203.0.113.{octet}").parse()?;
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": fake_node, "labels": { common::TEST_LABEL: world.id } },
            "spec": {
                "unschedulable": true,
                "taints": [{ "key": TEST_NODE_TAINT, "effect": "NoSchedule" }],
            },
        }))?;
        let started = Instant::now();
        nodes.create(&PostParams::default(), &node).await?;
        nodes
            .patch_status(
                &fake_node,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "addresses": [
                    { "type": "InternalIP", "address": fake_ip.to_string() },
                ] } })),
            )
            .await?;
        let fake_block = block_of(fake_ip);
        let admitted = policy_follows(&client, &namespace, &fake_block, true, started).await?;
        println!(
            "node {fake_node} ({fake_ip}) admitted after {:.1} s",
            admitted.as_secs_f64()
        );
        let removed = Instant::now();
        nodes.delete(&fake_node, &DeleteParams::default()).await?;
        let gone = policy_follows(&client, &namespace, &fake_block, false, removed).await?;
        println!(
            "node {fake_node} gone from the policy after {:.1} s",
            gone.as_secs_f64()
        );
        let after = world
            .cells_api()
            .get(&cell)
            .await?
            .status
            .context("status")?;
        ensure!(
            after.cross_cluster_endpoints == status.cross_cluster_endpoints,
            "the lanes moved: {:?} then {:?}",
            status.cross_cluster_endpoints,
            after.cross_cluster_endpoints
        );
        Ok(())
    }
    .await;
    let _ = Api::<Node>::all(world.client.clone())
        .delete(&fake_node, &DeleteParams::default())
        .await;
    world.finish(result).await.expect("cross-cluster lanes");
}
