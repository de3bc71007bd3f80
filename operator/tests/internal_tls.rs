//! Internal TLS against a real cluster (`--internal-tls`, with `--multicluster`, so the lanes
//! ask for client certificates): the operator makes the release's CA and trust bundle, issues a
//! cell's lanes a certificate and the release a client certificate, reaches the lanes' admin
//! API over mutual TLS only, and rotates the CA while a router (a real `cellstack-router`
//! following the published bundle and client certificate, as mounted objects would) writes
//! through the cell without one failed request: the client certificate moves to the new CA
//! once every lane trusts it, and the old CA leaves the bundle only after that.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, ensure};
use cellstack_api::v1alpha1::{
    INTERNAL_CA_BUNDLE, INTERNAL_CA_BUNDLE_KEY, INTERNAL_CA_SECRET, LANE_CLIENT_SECRET,
    LANE_TLS_SECRET, TenantAssignment,
};
use cellstack_testkit::{cluster::poll, pki::TestCa};
use common::{
    TEST_LABEL, WAIT, World, is_ready,
    router_tls::RouterTls,
    traffic::{Checker, Router, first_write},
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The trust bundle the operator published in `namespace`.
async fn bundle(client: &Client, namespace: &str) -> anyhow::Result<String> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(INTERNAL_CA_BUNDLE)
        .await
        .with_context(|| format!("reading ConfigMap {namespace}/{INTERNAL_CA_BUNDLE}"))?
        .data
        .and_then(|d| d.get(INTERNAL_CA_BUNDLE_KEY).cloned())
        .context("the bundle ConfigMap has no ca.crt")
}

fn certificates_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

fn client_trusting(pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(builder_trusting(pem)?.build()?)
}

fn builder_trusting(pem: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5));
    for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// A client trusting `pem` and presenting the release's client certificate in `tls`.
fn client_presenting(pem: &str, tls: &RouterTls) -> anyhow::Result<reqwest::Client> {
    let identity = format!(
        "{}{}",
        std::fs::read_to_string(tls.dir.join("tls.crt"))?,
        std::fs::read_to_string(tls.dir.join("tls.key"))?
    );
    Ok(builder_trusting(pem)?
        .identity(reqwest::Identity::from_pem(identity.as_bytes())?)
        .build()?)
}

fn annotation(secret: &Secret, key: &str) -> String {
    secret.annotations().get(key).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_speak_only_mutual_tls_with_the_release_ca_and_a_ca_rotation_drops_no_request() {
    let mut world = World::new("op-tls").await.expect("test world");
    world
        .operator_env
        .push(("CELLSTACK_INTERNAL_TLS".into(), "true".into()));
    world
        .operator_env
        .push(("CELLSTACK_MULTICLUSTER".into(), "true".into()));
    world
        .operator_env
        .push(("CELLSTACK_INTERNAL_CA_PROPAGATION_SECS".into(), "6".into()));
    let stop_sync = Arc::new(AtomicBool::new(false));
    let result = async {
        world.start_operator("a").await?;
        let system = world.system.name.clone();
        let client = world.client.clone();
        let cell = world
            .create_cell(
                "tls",
                json!({ "lanes": 2, "datastore": { "managed": { "storage": "Ephemeral" } } }),
            )
            .await?
            .name_any();
        // Ready means the kubelet's HTTPS probes passed: the lanes serve TLS.
        let ready = world.wait_cell(&cell, "Ready", is_ready).await?;
        let namespace = format!("cell-{cell}");
        let first_bundle = bundle(&client, &system).await?;
        ensure!(
            certificates_in(&first_bundle) == 1,
            "a new release trusts one CA: {first_bundle}"
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let lane_secret = secrets.get(LANE_TLS_SECRET).await?;
        ensure!(lane_secret.type_.as_deref() == Some("kubernetes.io/tls"));
        let first_issuer = annotation(&lane_secret, "cellstack.dev/issuer");
        let client_secrets: Api<Secret> = Api::namespaced(client.clone(), &system);
        let first_client = client_secrets.get(LANE_CLIENT_SECRET).await?;
        ensure!(
            annotation(&first_client, "cellstack.dev/issuer") == first_issuer,
            "the client certificate is issued by the CA that issued the lanes'"
        );
        // What a router mounts, kept in step with the objects as a kubelet would.
        let tls = RouterTls::read(&client, &system, &world.id).await?;
        let presenting = client_presenting(&first_bundle, &tls)?;

        let endpoints = ready.status.clone().context("status")?.endpoints;
        ensure!(endpoints.len() == 2, "endpoints: {endpoints:?}");
        let trusting = client_trusting(&first_bundle)?;
        let foreign = client_trusting(&TestCa::new("not the release CA")?.pem())?;
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        for endpoint in &endpoints {
            let host = endpoint.rsplit_once(':').map_or(endpoint.as_str(), |(h, _)| h);
            // kube-proxy may route a new Service a moment after its lane turned ready.
            poll(
                &format!("lane {host} over TLS, trusting the release CA"),
                WAIT,
                || {
                    let (trusting, host) = (trusting.clone(), host.to_owned());
                    async move {
                        let ok = trusting
                            .get(format!("https://{host}:9090/readyz"))
                            .send()
                            .await?;
                        ensure!(ok.status().is_success(), "lane {host}: {}", ok.status());
                        Ok(Some(()))
                    }
                },
            )
            .await?;
            // The certificate names the lane's Service address, and only the release CA signs.
            let refused = foreign.get(format!("https://{host}:9090/readyz")).send().await;
            ensure!(
                refused.is_err(),
                "lane {host} passed a client trusting another CA: {refused:?}"
            );
            // Neither port speaks plain HTTP: no token or tenant data can travel in clear.
            for port in [9090, 8080] {
                let clear = plain.get(format!("http://{host}:{port}/readyz")).send().await;
                ensure!(
                    clear.as_ref().map_or(true, |r| !r.status().is_success()),
                    "lane {host}:{port} answered plain HTTP: {clear:?}"
                );
            }
            // The admin port: without a client certificate only the probes; with the release's
            // and no token, still nothing of the admin API.
            for path in ["/metrics", "/admin/v1/tenants/nobody"] {
                let anonymous = trusting.get(format!("https://{host}:9090{path}")).send().await?;
                ensure!(
                    anonymous.status() == reqwest::StatusCode::UNAUTHORIZED
                        && anonymous.text().await?.contains("no_client_certificate"),
                    "{path} without a client certificate was not refused as such"
                );
            }
            let metrics = presenting.get(format!("https://{host}:9090/metrics")).send().await?;
            ensure!(metrics.status().is_success(), "/metrics with the client certificate: {}", metrics.status());
            let no_token = presenting
                .get(format!("https://{host}:9090/admin/v1/tenants/nobody"))
                .send()
                .await?;
            ensure!(
                no_token.status() == reqwest::StatusCode::UNAUTHORIZED,
                "an admin call without the token got {}",
                no_token.status()
            );
            // The tenant port refuses the handshake itself without a client certificate.
            let tenant_port = trusting.get(format!("https://{host}:8080/v1/whoami")).send().await;
            ensure!(tenant_port.is_err(), "lane {host}'s tenant port answered a client without a certificate: {tenant_port:?}");
        }

        // A router on those files (re-read every 300 ms).
        let sync = tls.follow(&client, &system, stop_sync.clone());
        let mut args = tls.args();
        args.extend(["--tls-poll-ms".into(), "300".into()]);
        let router = Router::start_with(&world, &args).await?;
        // A tenant provisioned in the cell: the operator called its admin API over TLS.
        let tenant = format!("{}-t", world.id);
        let ta: TenantAssignment = serde_json::from_value(json!({
            "apiVersion": "cellstack.dev/v1alpha1", "kind": "TenantAssignment",
            "metadata": {"name": tenant, "labels": {TEST_LABEL: world.id}},
            "spec": {"tenantId": tenant, "cell": cell},
        }))?;
        Api::<TenantAssignment>::all(client.clone())
            .create(&PostParams::default(), &ta)
            .await?;
        // Provisioned and routed over TLS.
        first_write(&router, &tenant).await?;

        // Rotate under traffic.
        let checker = Checker::start(&router.url, &tenant, "rot", 2, Duration::from_millis(20));
        let cas: Api<Secret> = Api::namespaced(client.clone(), &system);
        let rotation_started = std::time::Instant::now();
        cas.patch(
            INTERNAL_CA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"cellstack.dev/rotate": "now"}}})),
        )
        .await?;
        let widened = poll("the bundle to hold the old and the new CA", WAIT, || {
            let (client, system) = (client.clone(), system.clone());
            async move {
                let pem = bundle(&client, &system).await?;
                Ok((certificates_in(&pem) == 2).then_some(pem))
            }
        })
        .await?;
        ensure!(
            widened.contains(first_bundle.trim()),
            "the widened bundle keeps the old CA"
        );
        let last_bundle = poll("the rotation to finish with one new CA", WAIT, || {
            let (client, system, cas, first) = (
                client.clone(),
                system.clone(),
                cas.clone(),
                first_bundle.clone(),
            );
            async move {
                let pem = bundle(&client, &system).await?;
                let step = annotation(&cas.get(INTERNAL_CA_SECRET).await?, "cellstack.dev/rotation-step");
                Ok((certificates_in(&pem) == 1 && pem != first && step == "Steady").then_some(pem))
            }
        })
        .await
        .map_err(|e| e.context(router.log_tail()))?;
        let rotation_took = rotation_started.elapsed();
        // Traffic for a moment after the old CA left every bundle.
        let acked_before = checker.acked();
        poll("writes after the rotation", WAIT, || {
            let done = checker.acked() > acked_before + 20;
            async move { Ok(done.then_some(())) }
        })
        .await?;
        let (acks, refused) = checker.finish().await;
        ensure!(
            refused.is_empty(),
            "requests failed during the CA rotation (status: count, 0 = no answer): {refused:?}\n{}",
            router.log_tail()
        );
        ensure!(acks.len() > 40, "too few writes to judge: {}", acks.len());
        eprintln!(
            "CA rotation under traffic: rotate annotation to narrowed bundle in {:.1} s \
             (propagation wait 6 s), {} writes acknowledged through the router, 0 refused",
            rotation_took.as_secs_f64(),
            acks.len()
        );

        let reissued = secrets.get(LANE_TLS_SECRET).await?;
        let new_issuer = annotation(&reissued, "cellstack.dev/issuer");
        ensure!(
            new_issuer != first_issuer && !new_issuer.is_empty(),
            "the lanes' certificate was not reissued by the new CA ({first_issuer} → {new_issuer})"
        );
        // The client certificate moved to the new CA before the old one left the bundle, and
        // the router took it up while requests ran.
        let new_client = client_secrets.get(LANE_CLIENT_SECRET).await?;
        ensure!(
            annotation(&new_client, "cellstack.dev/issuer") == new_issuer,
            "the client certificate was not reissued by the new CA"
        );
        let router_metrics = reqwest::get(format!("{}/metrics", router.admin)).await?.text().await?;
        ensure!(
            router_metrics.lines().any(|l| l.starts_with("cellstack_router_upstream_client_cert_reloads_total{result=\"loaded\"}") && !l.ends_with(" 0")),
            "the router never loaded a new client certificate:\n{router_metrics}"
        );
        // Every lane now presents a certificate of the new CA, which the old bundle does not trust.
        let new_only = client_trusting(&last_bundle)?;
        for endpoint in &endpoints {
            let host = endpoint.rsplit_once(':').map_or(endpoint.as_str(), |(h, _)| h);
            new_only
                .get(format!("https://{host}:9090/readyz"))
                .send()
                .await
                .with_context(|| format!("lane {host} trusting only the new CA"))?;
            // A new client: a pooled connection would still hold the old handshake.
            let old_only = client_trusting(&first_bundle)?;
            ensure!(
                old_only.get(format!("https://{host}:9090/readyz")).send().await.is_err(),
                "lane {host} still presents a certificate of the old CA"
            );
        }
        let _ = std::fs::remove_dir_all(&tls.dir);
        stop_sync.store(true, Ordering::Relaxed);
        let _ = sync.await;
        Api::<TenantAssignment>::all(client.clone())
            .delete(&tenant, &Default::default())
            .await?;
        anyhow::Ok(())
    }
    .await;
    stop_sync.store(true, Ordering::Relaxed);
    world.finish(result).await.expect("internal TLS");
}
