//! `kubectl cellstack dashboard`: a local, read-only web page of the installation, through the
//! user's own kubeconfig (like `kubectl argo rollouts dashboard`). Cells, tenants and rollouts
//! are kept by reflectors (one LIST each, then a WATCH) and the routing table by a watch of its
//! pointer; the page gets every change pushed over Server-Sent Events, so nothing polls the API
//! server while it is open.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use cellstack_api::{
    routing::{RoutingTable, publication::POINTER_NAME},
    v1alpha1::{Cell, CellRollout, TenantAssignment},
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::status::StatusReport;
use crate::logic::blast_radius::{self, PoolTenant};

/// The page, served as is.
const PAGE: &str = include_str!("dashboard.html");
/// Changes arriving closer together than this reach the page as one update.
const COALESCE: Duration = Duration::from_millis(100);

/// What the page shows, pushed on every change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardState {
    pub report: StatusReport,
    /// The TenantAssignments each cell serves, by cell name.
    pub tenants_by_cell: BTreeMap<String, Vec<String>>,
    /// The routing table the blast radius is computed from.
    pub table_version: Option<u64>,
    /// Counts the updates the page got (shown on it, for people and tests).
    pub generation: u64,
}

/// Who a failure of a cell or one of its lanes touches.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blast {
    pub cell: String,
    pub lane: Option<u32>,
    pub table_version: u64,
    /// Tenants with at least one lane there.
    pub touched: Vec<String>,
    /// Tenants that lose every lane they have.
    pub lose_everything: Vec<String>,
}

struct Shared {
    cells: reflector::Store<Cell>,
    tenants: reflector::Store<TenantAssignment>,
    rollouts: reflector::Store<CellRollout>,
    table: ArcSwapOption<RoutingTable>,
    changes: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn state(&self) -> DashboardState {
        let cells: Vec<Cell> = self.cells.state().iter().map(|c| (**c).clone()).collect();
        let tenants: Vec<TenantAssignment> =
            self.tenants.state().iter().map(|t| (**t).clone()).collect();
        let rollouts: Vec<CellRollout> = self
            .rollouts
            .state()
            .iter()
            .map(|r| (**r).clone())
            .collect();
        let mut tenants_by_cell: BTreeMap<String, Vec<String>> =
            cells.iter().map(|c| (c.name_any(), Vec::new())).collect();
        for ta in &tenants {
            if let Some(cell) = ta.status.as_ref().and_then(|s| s.cell.clone()) {
                tenants_by_cell.entry(cell).or_default().push(ta.name_any());
            }
        }
        for names in tenants_by_cell.values_mut() {
            names.sort();
        }
        DashboardState {
            report: StatusReport::build(&cells, &tenants, &rollouts),
            tenants_by_cell,
            table_version: self.table.load().as_ref().map(|t| t.version),
            generation: *self.changes.borrow(),
        }
    }

    fn blast(&self, cell: &str, lane: Option<u32>) -> Result<Blast, (StatusCode, String)> {
        let table = self.table.load_full().ok_or((
            StatusCode::SERVICE_UNAVAILABLE,
            "no routing table is published yet: the blast radius comes from it".to_owned(),
        ))?;
        let route = table.cells.iter().find(|c| c.name == cell).ok_or((
            StatusCode::NOT_FOUND,
            format!(
                "cell {cell} is not in routing table version {}",
                table.version
            ),
        ))?;
        let params = route.shard_params().map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cell {cell} has invalid sharding: {e}"),
            )
        })?;
        let failed: Vec<u32> = match lane {
            Some(l) if l < params.lanes => vec![l],
            Some(l) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("cell {cell} has no lane {l}"),
                ));
            }
            None => (0..params.lanes).collect(),
        };
        let tenants = table.tenants.iter().map(|t| PoolTenant {
            id: t.id.as_str(),
            cell: table.cell(t).name.as_str(),
            shard_variant: t.shard_variant,
        });
        let (touched, lose) = blast_radius::tenants_losing(params, cell, &failed, tenants);
        Ok(Blast {
            cell: cell.to_owned(),
            lane,
            table_version: table.version,
            touched: touched.into_iter().map(str::to_owned).collect(),
            lose_everything: lose.into_iter().map(str::to_owned).collect(),
        })
    }
}

/// Keeps `store` current from a watch of `api` (objects matching `selector`), signalling each
/// change through `shared`.
fn keep<K>(
    api: Api<K>,
    selector: &str,
    writer: reflector::store::Writer<K>,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let config = if selector.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(selector)
    };
    reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .for_each(move |_| {
            shared.bump();
            async {}
        })
}

#[derive(Debug, Deserialize)]
struct BlastQuery {
    cell: String,
    lane: Option<u32>,
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<DashboardState> {
    Json(shared.state())
}

async fn blast(State(shared): State<Arc<Shared>>, Query(q): Query<BlastQuery>) -> Response {
    match shared.blast(&q.cell, q.lane) {
        Ok(b) => Json(b).into_response(),
        Err((status, reason)) => (status, reason).into_response(),
    }
}

async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = shared.changes.subscribe();
    let stream = futures::stream::unfold((rx, true), move |(mut rx, first)| {
        let shared = shared.clone();
        async move {
            if !first {
                rx.changed().await.ok()?;
                tokio::time::sleep(COALESCE).await;
                rx.borrow_and_update();
            }
            let event = Event::default()
                .event("state")
                .json_data(shared.state())
                .ok()?;
            Some((Ok(event), (rx, false)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Serves the dashboard on `listen` until Ctrl-C: the objects matching `selector` (all with an
/// empty one) and the routing table published in `namespace`.
pub async fn serve(
    client: &Client,
    listen: SocketAddr,
    namespace: &str,
    selector: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (cells, cells_w) = reflector::store();
    let (tenants, tenants_w) = reflector::store();
    let (rollouts, rollouts_w) = reflector::store();
    let shared = Arc::new(Shared {
        cells,
        tenants,
        rollouts,
        table: ArcSwapOption::empty(),
        changes: watch::channel(0).0,
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(keep(
        Api::<Cell>::all(client.clone()),
        selector,
        cells_w,
        shared.clone(),
    ));
    tasks.spawn(keep(
        Api::<TenantAssignment>::all(client.clone()),
        selector,
        tenants_w,
        shared.clone(),
    ));
    tasks.spawn(keep(
        Api::<CellRollout>::all(client.clone()),
        selector,
        rollouts_w,
        shared.clone(),
    ));
    // The routing table: its pointer watched, the table read again when it moves.
    {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let shared = shared.clone();
        tasks.spawn(async move {
            let pointer = watcher::watch_object(maps.clone(), POINTER_NAME);
            let mut pointer = Box::pin(pointer);
            while let Some(event) = pointer.next().await {
                if !matches!(event, Ok(Some(_))) {
                    continue;
                }
                match crate::controllers::publish::read_published(&maps, timeout).await {
                    Ok(Some(table)) => {
                        shared.table.store(Some(Arc::new(table)));
                        shared.bump();
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the routing table"),
                }
            }
        });
    }
    let app = Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/blast", get(blast))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let local = listener.local_addr()?;
    println!("cellstack dashboard on http://{local}/ (read-only; Ctrl-C stops it)");
    // Pages hold their event streams open, so a graceful drain would wait for them forever:
    // Ctrl-C closes them.
    tokio::select! {
        served = axum::serve(listener, app) => served.context("serving the dashboard")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    tasks.abort_all();
    Ok(())
}
