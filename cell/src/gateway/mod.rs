//! The lane's gateway to the cell's own services (Cell `spec.services`, docs/services.md).
//!
//! Every request on the tenant port is admitted first (identity, tenant state, rate limits,
//! load shedding: [`crate::api`]'s phases); only then does it go, over the pod's loopback, to
//! the service whose routes take its path ([`routes::choose`]), with the `crds` header contract
//! set by the runtime (tenant, the epoch it was admitted at, request id, priority) whatever the
//! client sent. The answer comes back unchanged. A service that refuses the connection gives
//! 503 `unavailable` (nothing reached it: the router may retry elsewhere), one that does not
//! answer within its timeout 504 `timeout`, one that answers with something that is not HTTP
//! 502 `bad_gateway`; each is counted (`cellstack_cell_service_errors_total`) and, like the
//! service's own 5xx and latency, reaches the load shedder (the request holds its concurrency
//! slot until the answer is read), the router's outlier ejection and the rollout gate.
//!
//! Bodies are read whole both ways, bounded (`--service-max-body-bytes`,
//! `--service-max-answer-bytes`): a tenant API's requests and answers, not streams.

pub mod health;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, Uri},
    response::{IntoResponse, Response},
};
use cellstack_api::wire::{ErrorCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    api::{Admission, Admitted, serve},
    app::AppState,
    error::ApiError,
    metrics::{Metrics, ServiceErrorLabels, ServiceLabels},
};

use cellstack_api::services as routes;
pub use cellstack_api::services::ServiceSpec;

/// One service behind the runtime and what its health checks last found.
pub struct Upstream {
    pub spec: ServiceSpec,
    /// Its name as a metric label of the tenant port's figures (`route`).
    label: &'static str,
    addr: SocketAddr,
    up: AtomicBool,
    problem: Mutex<String>,
}

impl Upstream {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// What the last failed health check found.
    pub fn problem(&self) -> String {
        self.problem.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// The services of the lane and the client that reaches them.
pub struct Gateway {
    pub upstreams: Vec<Arc<Upstream>>,
    /// The services' specs, in the order of `upstreams`, for route choice.
    specs: Vec<ServiceSpec>,
    client: Client<HttpConnector, Full<Bytes>>,
    max_body: usize,
    max_answer: usize,
}

/// Request headers never passed on: hop-by-hop ones (RFC 9110 §7.6.1) and the contract's,
/// which the runtime sets itself.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

impl Gateway {
    /// The gateway to `services` on this pod's loopback; refuses a set that cannot share a lane.
    pub fn new(
        services: Vec<ServiceSpec>,
        max_body: usize,
        max_answer: usize,
    ) -> Result<Self, String> {
        routes::check(&services)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let specs = services.clone();
        let upstreams = services
            .into_iter()
            .map(|spec| {
                Arc::new(Upstream {
                    // At most 8 services per cell (the CRD's bound), named once at startup.
                    label: Box::leak(spec.name.clone().into_boxed_str()),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port)),
                    spec,
                    up: AtomicBool::new(false),
                    problem: Mutex::new("not checked yet".into()),
                })
            })
            .collect();
        Ok(Self {
            upstreams,
            specs,
            client,
            max_body,
            max_answer,
        })
    }

    /// The service that takes `path`, if any.
    pub fn pick(&self, path: &str) -> Option<&Arc<Upstream>> {
        routes::choose(&self.specs, path).and_then(|i| self.upstreams.get(i))
    }

    /// Checks `up` once: GET its health path (any 2xx) or, without one, a connection to its
    /// port; each within `timeout`. `Err` says what failed.
    pub async fn check(&self, up: &Upstream, timeout: std::time::Duration) -> Result<(), String> {
        let attempt = async {
            match &up.spec.health_path {
                None => tokio::net::TcpStream::connect(up.addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("port {} refuses connections: {e}", up.spec.port)),
                Some(path) => {
                    let uri: Uri = format!("http://{}{path}", up.addr)
                        .parse()
                        .map_err(|e| format!("health path {path}: {e}"))?;
                    let request = hyper::Request::get(uri)
                        .body(Full::new(Bytes::new()))
                        .map_err(|e| e.to_string())?;
                    let answer = self.client.request(request).await.map_err(|e| {
                        if e.is_connect() {
                            format!("port {} refuses connections: {}", up.spec.port, chain(&e))
                        } else {
                            format!("GET {path} failed: {}", chain(&e))
                        }
                    })?;
                    let status = answer.status();
                    // Read it (bounded) so the connection goes back to the pool.
                    let _ = Limited::new(answer.into_body(), 64 * 1024).collect().await;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("GET {path} answered {status}"))
                    }
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
    }

    /// Records the result of a health check of `up`; true when it changed.
    pub fn record(&self, up: &Upstream, result: &Result<(), String>) -> bool {
        if let (Err(problem), Ok(mut p)) = (result, up.problem.lock()) {
            p.clone_from(problem);
        }
        up.up.swap(result.is_ok(), Ordering::SeqCst) != result.is_ok()
    }

    /// Why the lane is not ready on the services' account: one line per failing service.
    pub fn unready(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .filter(|u| !u.is_up())
            .map(|u| format!("service {} on {}: {}", u.spec.name, u.addr, u.problem()))
            .collect()
    }

    /// Sends an admitted request to `up` and reads its answer whole, within its timeout.
    async fn forward(
        &self,
        up: &Upstream,
        admitted: &Admitted,
        parts: &axum::http::request::Parts,
        body: Bytes,
        metrics: &Metrics,
    ) -> Result<Response, ApiError> {
        let headers = &parts.headers;
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target: Uri = format!("http://{}{path_and_query}", up.addr)
            .parse()
            .map_err(|e| {
                ApiError::bad_request(format!("the request's path cannot be forwarded: {e}"))
            })?;
        let mut request = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(target);
        if let Some(out) = request.headers_mut() {
            for (name, value) in headers {
                if !NOT_FORWARDED.contains(&name.as_str()) && !is_contract(name) {
                    out.append(name.clone(), value.clone());
                }
            }
            contract_headers(out, admitted, headers);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ApiError::bad_request(format!("the request cannot be forwarded: {e}")))?;
        let started = Instant::now();
        let fail = |kind: &'static str, error: ApiError| {
            metrics
                .service_errors
                .get_or_create(&ServiceErrorLabels {
                    service: up.spec.name.clone(),
                    kind,
                })
                .inc();
            error
        };
        let exchange = async {
            let answer = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    fail(
                        "refused",
                        ApiError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "service {} on {} is not accepting connections: nothing reached it",
                                up.spec.name, up.addr
                            ),
                        )
                        .retry_after(1),
                    )
                } else {
                    fail(
                        "bad_answer",
                        ApiError::new(
                            ErrorCode::BadGateway,
                            format!(
                                "service {} did not answer with valid HTTP: {e}",
                                up.spec.name
                            ),
                        ),
                    )
                }
            })?;
            let (parts, incoming) = answer.into_parts();
            let bytes = Limited::new(incoming, self.max_answer)
                .collect()
                .await
                .map_err(|e| {
                    fail(
                        "bad_answer",
                        ApiError::new(
                            ErrorCode::BadGateway,
                            format!(
                                "service {} sent an answer body that could not be read or is larger than {} bytes: {e}",
                                up.spec.name, self.max_answer
                            ),
                        ),
                    )
                })?
                .to_bytes();
            Ok::<_, ApiError>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(up.spec.timeout, exchange)
            .await
            .map_err(|_| {
                fail(
                    "timeout",
                    ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "service {} did not answer within {} s; the request may or may not have taken effect",
                            up.spec.name,
                            up.spec.timeout.as_secs()
                        ),
                    ),
                )
            })??;
        metrics
            .service_duration
            .get_or_create(&ServiceLabels {
                service: up.spec.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !NOT_FORWARDED.contains(&name.as_str()) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        Ok(response)
    }
}

/// An error with its sources, `a: b: c` (hyper's own display is only the outermost).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn is_contract(name: &HeaderName) -> bool {
    [
        header::TENANT,
        header::EPOCH,
        header::PRIORITY,
        header::REQUEST_ID,
    ]
    .contains(&name.as_str())
}

/// The headers a service gets from the runtime (the `crds` contract): the tenant, the epoch it
/// was admitted at (what the state API checks a write against), the request id (the router's,
/// or a new one) and the priority class it runs at.
fn contract_headers(out: &mut HeaderMap, admitted: &Admitted, incoming: &HeaderMap) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert(HeaderName::from_static(name), v);
        }
    };
    set(header::TENANT, admitted.id.tenant.as_str().to_owned());
    set(header::EPOCH, admitted.epoch.to_string());
    set(header::PRIORITY, admitted.priority.as_str().to_owned());
    let request_id = incoming
        .get(header::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map_or_else(|| format!("{:032x}", rand::random::<u128>()), str::to_owned);
    set(header::REQUEST_ID, request_id);
    cellstack_runtime::telemetry::propagate(out);
}

/// The tenant port with services listed: every path goes, once admitted, to its service.
pub fn router(state: AppState, gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(forward).with_state((state, gateway))
}

async fn forward(
    State((state, gateway)): State<(AppState, Arc<Gateway>)>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let Some(up) = gateway.pick(&path).cloned() else {
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no service of this cell takes {path} (the Cell's spec.services[].routes)"),
        )
        .into_response();
    };
    let write = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let max_body = gateway.max_body;
    serve(
        state,
        Admission::Tenant,
        up.label,
        parts.headers.clone(),
        parts.method.clone(),
        path,
        write,
        move |state, admitted| async move {
            let body = crate::error::read_body(body, max_body, "the body").await?;
            gateway
                .forward(&up, &admitted, &parts, body, &state.metrics)
                .await
        },
    )
    .await
}
