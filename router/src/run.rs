//! Startup and graceful shutdown of the router.
//!
//! Order matters for static stability: the last-known-good table is loaded from disk before
//! anything else, so the router serves even if no source ever answers; sources then run in the
//! background and only ever move the table forward.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use cellstack_runtime::{
    Shutdown,
    tls::{self, CertStore, TlsFiles},
};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    config::Config,
    freshness::{self, Freshness},
    jwt::{self, Verifier},
    lanes::{OutlierConfig, Outliers},
    metrics::{Metrics, ResultLabels, SourceLabels, count_reloads},
    proxy::{Proxy, ProxyConfig},
    serve, sources,
    table_store::TableStore,
};

#[derive(Clone)]
struct Admin {
    proxy: Arc<Proxy>,
    registry: Arc<Registry>,
    draining: Arc<AtomicBool>,
    freshness: Arc<Freshness>,
}

/// How often the staleness is checked for a transition to log.
const FRESHNESS_CHECK: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // The key set first: a router told to verify tokens does not start without keys.
    let jwt = match config.jwt().map_err(anyhow::Error::msg)? {
        Some(jwt) => {
            let verifier = Verifier::load(jwt).context("--tenant-from jwt")?;
            tracing::info!(keys = verifier.keys(), path = %verifier.config().jwks_file.display(), "tenant from verified tokens");
            Some(Arc::new(verifier))
        }
        None => {
            tracing::info!(tenant_from = %config.tenant_from, "tenant from the client's request, trusted as sent");
            None
        }
    };
    // So is one told to serve TLS without a usable certificate.
    let certificate = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            CertStore::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("--tls-cert-file")?,
        )),
        _ => None,
    };
    // And one told to speak TLS to lanes without a CA to verify them against.
    // And one told to present a client certificate without a usable one.
    let upstream_identity = match (
        &config.upstream_client_cert_file,
        &config.upstream_client_key_file,
    ) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::CertStore::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("--upstream-client-cert-file")?,
        )),
        _ => None,
    };
    let upstream_tls = match config.upstream_ca_file.clone() {
        Some(path) => {
            let alpn: &[&[u8]] = match config.upstream_protocol {
                crate::upstream::Protocol::Http1 => &[b"http/1.1"],
                crate::upstream::Protocol::H2 => &[b"h2"],
            };
            let trust = tls::TrustStore::load(path, alpn).context("--upstream-ca-file")?;
            let trust = match upstream_identity.clone() {
                Some(identity) => trust
                    .with_client_certificate(identity)
                    .context("--upstream-ca-file")?,
                None => trust,
            };
            Some(Arc::new(trust))
        }
        None => None,
    };
    let mut registry = Registry::default();
    let workers = match config.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let metrics = Arc::new(Metrics::new(&mut registry, workers));
    let tables = Arc::new(TableStore::new(Some(config.last_known_good.clone())));
    match tables.load_disk() {
        Ok(Some(version)) => {
            metrics.table_version.set(version as i64);
            tracing::info!(version, path = %config.last_known_good.display(), "serving the last-known-good routing table from disk");
        }
        Ok(None) => {
            tracing::info!(path = %config.last_known_good.display(), "no last-known-good routing table on disk yet")
        }
        Err(error) => {
            metrics
                .table_refused
                .get_or_create(&SourceLabels { source: "disk" })
                .inc();
            tracing::error!(%error, path = %config.last_known_good.display(), "the last-known-good routing table is refused; waiting for a source");
        }
    }
    let proxy = Arc::new(Proxy::new(
        ProxyConfig {
            tenant_from: config.tenant_from.clone(),
            jwt: jwt.clone(),
            try_timeout: Duration::from_millis(config.try_timeout_ms),
            deadline: Duration::from_millis(config.deadline_ms),
            max_in_flight: config.max_in_flight,
            upstream_protocol: config.upstream_protocol,
            upstream_tls: upstream_tls.clone(),
        },
        tables.clone(),
        Outliers::new(OutlierConfig::default()),
        metrics.clone(),
    ));

    // Nothing is confirmed yet: a table from disk may be anything but current.
    let freshness = Arc::new(Freshness::new(
        Duration::from_secs(config.table_stale_after.max(1)),
        Instant::now(),
    ));
    let shutdown = Shutdown::new().with_limits(cellstack_runtime::listener::Limits {
        header_read: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        ..Default::default()
    });
    tokio::spawn(freshness::monitor(
        freshness.clone(),
        FRESHNESS_CHECK,
        shutdown.subscribe(),
    ));
    let tls = match certificate {
        Some(store) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config(None)?);
            tokio::spawn(tls::watch_pair(
                store,
                Duration::from_millis(config.tls_poll_ms.max(100)),
                shutdown.subscribe(),
                count_reloads(&metrics.tls_reloads),
            ));
            Some(acceptor)
        }
        None => None,
    };
    if let Some(identity) = upstream_identity {
        tokio::spawn(tls::watch_pair(
            identity,
            Duration::from_millis(config.tls_poll_ms.max(100)),
            shutdown.subscribe(),
            count_reloads(&metrics.upstream_client_cert_reloads),
        ));
    }
    if let Some(trust) = upstream_tls {
        tokio::spawn(tls::watch_trust(
            trust,
            Duration::from_millis(config.tls_poll_ms.max(100)),
            shutdown.subscribe(),
            count_reloads(&metrics.upstream_ca_reloads),
        ));
    }
    if let Some(verifier) = jwt {
        metrics.jwks_keys.set(verifier.keys() as i64);
        let m = metrics.clone();
        tokio::spawn(jwt::watch(
            verifier,
            Duration::from_millis(config.jwt_jwks_poll_ms.max(100)),
            shutdown.subscribe(),
            move |reload, keys| {
                m.jwks_reloads
                    .get_or_create(&ResultLabels {
                        result: reload.as_str(),
                    })
                    .inc();
                m.jwks_keys.set(keys as i64);
            },
        ));
    }
    if let Some(path) = config.table_file.clone() {
        tokio::spawn(sources::watch_file(
            path,
            Duration::from_millis(config.table_poll_ms),
            tables.clone(),
            metrics.clone(),
            freshness.clone(),
            shutdown.subscribe(),
        ));
    }

    if config.kubernetes {
        // A client that cannot be built is a configuration error; an API server that does not
        // answer is not: the watches retry while the router serves what it has.
        sources::start_kubernetes(
            config.namespace.clone(),
            tables.clone(),
            metrics.clone(),
            freshness.clone(),
            shutdown.subscribe(),
        )
        .await?;
    }

    let admin = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(Admin {
            proxy: proxy.clone(),
            registry: Arc::new(registry),
            draining: shutdown.draining.clone(),
            freshness,
        });

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    tracing::info!(traffic = %listener.local_addr()?, admin = %admin_listener.local_addr()?, workers, tls = tls.is_some(), "router serving");
    let stop = shutdown.subscribe();
    let settings = serve::Settings {
        header_read: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        max_per_client: config.max_connections_per_client,
        tls,
    };
    let traffic = serve::Traffic::start(&proxy, workers, settings, &stop)
        .context("cannot start the traffic workers")?;
    let servers = vec![
        tokio::spawn(async move {
            traffic.serve(listener, stop).await;
            Ok(())
        }),
        shutdown.spawn(admin_listener, admin),
    ];
    shutdown
        .run(
            Duration::from_secs(config.drain_delay_secs),
            Duration::from_secs(config.shutdown_timeout_secs),
            servers,
        )
        .await;
    Ok(())
}

/// Ready once a table is loaded, and not draining. A stale table does not make the router
/// unready: the operator being down would then take every router out at once, while the table
/// they have still routes every tenant it routed a minute ago (`/status` reports staleness).
async fn readyz(State(admin): State<Admin>) -> Response {
    if admin.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match admin.proxy.tables.current() {
        Some(_) => "ok".into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no routing table loaded yet",
        )
            .into_response(),
    }
}

/// What the router serves from, how old it is (since the operator built it, since this router
/// received it) and how long ago it was last confirmed current, against the bound.
async fn status(State(admin): State<Admin>) -> Json<serde_json::Value> {
    let now = SystemTime::now();
    let instant = Instant::now();
    let f = &admin.freshness;
    let mut body = match admin.proxy.tables.current() {
        Some(s) => json!({
            "tableVersion": s.version(),
            "tenants": s.tenants(),
            "cells": s.table().cells().len(),
            "origin": format!("{:?}", s.origin),
            "tableAgeSeconds": s.age(now).as_secs_f64(),
            "receivedSecondsAgo": now.duration_since(s.received).unwrap_or_default().as_secs_f64(),
            "lanesEjected": admin.proxy.outliers.ejected(instant),
        }),
        None => json!({"tableVersion": null}),
    };
    body["confirmedSecondsAgo"] = json!(f.confirmed_age(instant).as_secs_f64());
    body["stale"] = json!(f.is_stale(instant));
    body["staleAfterSeconds"] = json!(f.bound().as_secs_f64());
    Json(body)
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    let m = &admin.proxy.metrics;
    if let Some(s) = admin.proxy.tables.current() {
        m.initialize_cells(s.table().cells().iter().map(|c| c.name.as_str()));
        m.table_version.set(s.version() as i64);
        m.table_age_seconds
            .set(s.age(SystemTime::now()).as_secs() as i64);
    }
    let now = Instant::now();
    m.table_confirmed_age_seconds
        .set(admin.freshness.confirmed_age(now).as_secs_f64());
    m.table_stale.set(i64::from(admin.freshness.is_stale(now)));
    m.lanes_ejected
        .set(admin.proxy.outliers.ejected(now) as i64);
    m.in_flight
        .set(i64::try_from(admin.proxy.in_flight.current()).unwrap_or(i64::MAX));
    cellstack_runtime::metrics::response(&admin.registry)
}
