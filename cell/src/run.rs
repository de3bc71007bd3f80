//! Startup and graceful shutdown.
//!
//! On SIGTERM (or Ctrl-C) the shared sequence of `cellstack_runtime::Shutdown` runs: readiness
//! fails at once, the process keeps serving for the drain delay so load balancers stop sending,
//! then stops accepting and gives in-flight requests the shutdown timeout to finish.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use cellstack_api::policy::CellPolicies;
use cellstack_runtime::{Shutdown, tls};
use dashmap::DashMap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    app::{AppState, Simulation},
    breaker::Breaker,
    config::Config,
    limit_batch::{BatchSettings, LimitBatcher},
    limiter::Limiter,
    metrics::{Metrics, count_reloads},
    policy_file,
    shed::{ShedConfig, Shedder},
    store::{Store, StoreOptions, Target},
};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let admin_token = std::fs::read_to_string(&config.admin_token_file)
        .with_context(|| {
            format!(
                "cannot read the admin token file {}",
                config.admin_token_file.display()
            )
        })?
        .trim()
        .to_owned();
    anyhow::ensure!(
        admin_token.len() >= 16,
        "the admin token in {} is shorter than 16 characters; generate a longer one",
        config.admin_token_file.display()
    );
    let policies = match &config.policy_file {
        Some(path) => policy_file::load(path)?,
        None => CellPolicies::default(),
    };
    // A cell told to serve TLS does not start without a usable certificate.
    let certificate = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::CertStore::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("--tls-cert-file")?,
        )),
        _ => None,
    };
    let client_cas = match &config.client_ca_file {
        Some(path) => Some(Arc::new(
            tls::ClientCas::load(path.clone()).context("--client-ca-file")?,
        )),
        None => None,
    };
    // The metrics port never asks for a client certificate; the tenant port insists on one,
    // the admin port asks and leaves the refusal to its handlers (the kubelet's probes have
    // none).
    let acceptors = |mandatory: bool| {
        certificate
            .as_ref()
            .map(|store| store.acceptor(client_cas.as_ref().map(|c| c.verifier(mandatory))))
            .transpose()
    };
    let (acceptor, api_acceptor, admin_acceptor) = match &certificate {
        Some(store) => (
            store.acceptor(None).map(Some)?,
            acceptors(true)?,
            acceptors(false)?,
        ),
        None => (None, None, None),
    };
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let tenant_metrics = Arc::new(crate::tenant_metrics::TenantMetrics::new(
        config.tenant_metrics_max as usize,
        &mut registry,
    ));
    // Failed calls must span --breaker-min-span-ms, and two call timeouts, to open it: calls in
    // flight through one stall of the host time out together although Redis answered
    // (crate::breaker).
    let breaker = Breaker::new(
        config.breaker_failures,
        Duration::from_millis(config.breaker_cooldown_ms),
    )
    .with_min_span(Duration::from_millis(
        config
            .breaker_min_span_ms
            .max(config.redis_timeout_ms.saturating_mul(2)),
    ));
    // Both ports first: while the store connects (a new cell's datastore can take a minute),
    // the admin port answers `/livez`, so the kubelet waits instead of restarting the lane.
    let api_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let state_listener = match config.state_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--state-listen)"))?,
        ),
        None => None,
    };
    let gateway = if config.services.is_empty() {
        None
    } else {
        Some(Arc::new(
            crate::gateway::Gateway::new(
                config.services.clone(),
                config.service_max_body_bytes,
                config.service_max_answer_bytes,
            )
            .map_err(|e| anyhow::anyhow!("--service: {e}"))?,
        ))
    };
    let shutdown = Shutdown::new()
        .with_limits(cellstack_runtime::listener::Limits {
            header_read: Duration::from_millis(config.header_read_timeout_ms.max(1)),
            body_read: Duration::from_millis(config.body_read_timeout_ms.max(1)),
        })
        .with_tls(acceptor);
    if let Some(store) = certificate {
        tokio::spawn(tls::watch_pair(
            store,
            Duration::from_millis(config.tls_poll_ms.max(100)),
            shutdown.subscribe(),
            count_reloads(&metrics.tls_reloads),
        ));
    }
    if let Some(store) = client_cas.clone() {
        tokio::spawn(tls::watch_client_cas(
            store,
            Duration::from_millis(config.tls_poll_ms.max(100)),
            shutdown.subscribe(),
            count_reloads(&metrics.client_ca_reloads),
        ));
    }
    let admin_ready = Arc::new(std::sync::OnceLock::new());
    let admin_server = shutdown.spawn_with(
        admin_listener,
        admin_router(admin_ready.clone()),
        admin_acceptor,
    );
    let metrics_ready = Arc::new(std::sync::OnceLock::new());
    let metrics_server = metrics_listener
        .map(|listener| shutdown.spawn(listener, admin_router(metrics_ready.clone())));
    let store = connect_store(&config, breaker, metrics.clone()).await?;
    let simulation = (config.simulate_workers > 0).then(|| Simulation {
        capacity: config.simulate_workers,
        active: Arc::default(),
        work: Duration::from_millis(config.simulate_work_ms),
    });
    let store = Arc::new(store);
    let redis_timeout = Duration::from_millis(config.redis_timeout_ms);
    let authority = LimitBatcher::spawn(
        store.clone(),
        BatchSettings {
            max_batch: config.limit_batch_max as usize,
            in_flight: config.limit_calls_in_flight as usize,
            // A check may wait for a call out before its own: two calls' timeouts.
            deadline: redis_timeout * 2,
            ..BatchSettings::default()
        },
        metrics.clone(),
    );
    let state = AppState {
        cell: config.cell.clone().into(),
        store,
        policies: Arc::new(policy_file::PolicySet::new(policies)),
        limiter: Arc::new(Limiter::new(authority, metrics.clone())),
        shedder: Arc::new(Mutex::new(Shedder::new(ShedConfig {
            initial_limit: config.shed_initial_limit,
            max_limit: config.shed_max_limit,
            ..Default::default()
        }))),
        metrics: metrics.clone(),
        tenant_metrics,
        registry: Arc::new(registry),
        admin_token: admin_token.into(),
        client_certificates: client_cas.is_some(),
        max_body_bytes: config.max_body_bytes,
        draining: shutdown.draining.clone(),
        remembered: Arc::new(DashMap::new()),
        simulation,
        failure_ratio: config.simulate_failure_ratio,
        gateway: gateway.clone(),
    };
    if let Some(gateway) = gateway {
        tokio::spawn(crate::gateway::health::watch(
            gateway,
            metrics.clone(),
            shutdown.subscribe(),
        ));
    }

    if let Some(path) = config.policy_file.clone() {
        tokio::spawn(policy_file::watch(
            path,
            Duration::from_millis(config.policy_poll_ms),
            state.policies.clone(),
            metrics,
            shutdown.subscribe(),
        ));
    }

    let (api, admin) = crate::app::routers(state.clone());
    let api_addr = api_listener.local_addr()?;
    let _ = admin_ready.set(admin);
    let _ = metrics_ready.set(crate::admin::metrics_router(state.clone()));
    let api_server = shutdown.spawn_with(api_listener, api, api_acceptor);
    let mut servers = vec![api_server, admin_server];
    servers.extend(metrics_server);
    if let Some(listener) = state_listener {
        let addr = listener.local_addr()?;
        tracing::info!(state_api = %addr, "tenant state API serving on loopback");
        servers.push(shutdown.spawn_plain(listener, crate::api::state_router(state.clone())));
    }
    tracing::info!(cell = %config.cell, api = %api_addr, admin = %admin_addr, services = config.services.len(), "cell runtime serving");
    shutdown
        .run(
            Duration::from_secs(config.drain_delay_secs),
            Duration::from_secs(config.shutdown_timeout_secs),
            servers,
        )
        .await;
    Ok(())
}

/// The admin (and metrics) port's router: the real one once the store is connected; until then `/livez`
/// answers (alive, and working on reaching Redis) and everything else is 503. One server
/// serves the port throughout, so no connection is dropped when the real router takes over.
fn admin_router(ready: Arc<std::sync::OnceLock<axum::Router>>) -> axum::Router {
    let starting = axum::Router::new()
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .fallback(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "starting: waiting for the cell's redis",
            )
        });
    axum::Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let router = ready.get().cloned().unwrap_or_else(|| starting.clone());
        tower::ServiceExt::oneshot(router, req)
    }))
}

/// How the store reaches Redis, from the flags (reads the password file).
pub fn store_options(config: &Config) -> anyhow::Result<StoreOptions> {
    let password = match &config.redis_password_file {
        None => None,
        Some(path) => {
            let p = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the redis password file {}", path.display()))?
                .trim()
                .to_owned();
            anyhow::ensure!(
                !p.is_empty(),
                "the redis password file {} is empty",
                path.display()
            );
            Some(p)
        }
    };
    let target = if config.redis_sentinels.is_empty() {
        Target::Url(config.redis_url.clone())
    } else {
        Target::Sentinels {
            sentinels: config.redis_sentinels.clone(),
            master_name: config.redis_master_name.clone(),
        }
    };
    Ok(StoreOptions {
        target,
        password,
        timeout: Duration::from_millis(config.redis_timeout_ms),
        write_acks: config.redis_write_acks,
        ack_timeout: Duration::from_millis(config.redis_ack_timeout_ms),
    })
}

/// Connects to the cell's Redis, retrying with jittered, doubling delays (100 ms to 2 s) for
/// up to `--redis-connect-wait-secs` (0: for as long as it takes): Redis and the lanes start
/// together, and a lane that exits on the first refusal sits out a crash-loop back-off it did
/// not need.
async fn connect_store(
    config: &Config,
    breaker: Breaker,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Store> {
    let options = store_options(config)?;
    let redis = match &options.target {
        Target::Url(url) => url.clone(),
        Target::Sentinels {
            sentinels,
            master_name,
        } => format!(
            "{master_name:?} named by the sentinels {}",
            sentinels
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    let deadline = (config.redis_connect_wait_secs > 0)
        .then(|| std::time::Instant::now() + Duration::from_secs(config.redis_connect_wait_secs));
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match Store::connect(&options, breaker.clone(), metrics.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if deadline.is_none_or(|d| std::time::Instant::now() + delay < d) => {
                tracing::warn!(%redis, attempt, error = %e, "redis not reachable yet; retrying");
                let jittered = delay.mul_f64(rand::random_range(0.5..1.0));
                tokio::time::sleep(jittered).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot reach the cell's redis ({redis}) after {attempt} attempts")
                });
            }
        }
    }
}
