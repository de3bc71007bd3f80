//! Logs and traces, set up the same way in every binary.
//!
//! - **Logs** go to stdout, filtered by `CELLSTACK_LOG` (default `info`; rustls only from
//!   `error` unless the filter names it), as JSON lines when
//!   asked. A line written inside a request carries the request's span and its fields (the
//!   request id among them), so every line of one request can be found by its id.
//! - **Traces** are exported over OTLP (HTTP/protobuf) when the standard `OTEL_*` variables ask
//!   for it, and are off otherwise (docs/tracing.md):
//!   - on when `OTEL_TRACES_EXPORTER=otlp`, or when it is unset and
//!     `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//!   - off when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, whatever else is set;
//!   - the SDK reads the rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!     `OTEL_TRACES_SAMPLER`/`_ARG` (default `parentbased_always_on`), `OTEL_BSP_*` (the export
//!     queue, bounded: 2048 spans by default, dropped beyond it without a count we see), and the
//!     exporter's endpoint, headers and timeout (`OTEL_EXPORTER_OTLP_*`).
//!
//!   Which spans are exported is `CELLSTACK_TRACE` (an `EnvFilter`, default
//!   [`DEFAULT_TRACE_FILTER`]): cellstack's own phase and Redis spans are `debug` spans, so the
//!   log filter (`info`) does not pay for them when traces are off.
//!
//! W3C trace context (`traceparent`, `tracestate`) is read from a request with [`continue_trace`]
//! and written onto an outgoing one with [`propagate`]; both do nothing while traces are off.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The spans exported when `CELLSTACK_TRACE` is unset: cellstack's own at `debug` (the phases
/// of a request, each upstream try and each Redis call), everything else at `info`.
pub const DEFAULT_TRACE_FILTER: &str = "info,cellstack_router=debug,cellstack_cell=debug,cellstack_operator=debug,cellstack_runtime=debug";

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by [`init`]).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Keeps the trace exporter; [`Telemetry::shutdown`] sends what is still queued.
#[must_use = "dropping it stops nothing, but call shutdown() before exiting so queued spans are sent"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by the exporter's timeout) and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "could not send the last spans to the OTLP endpoint");
        }
    }
}

/// Whether the `OTEL_*` variables in `env` ask for traces (see the module docs).
pub fn traces_requested(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match env("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if !v.is_empty() => v.split(',').any(|e| e.trim() == "otlp"),
        _ => set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"),
    }
}

/// rustls warns through `log` about what a peer sends, once per handshake (say, an IP address as
/// SNI, which wrk and many clients send): at a busy TLS port that floods the log with lines nobody
/// acts on. Its warnings are dropped unless the filter names rustls itself.
const QUIET_RUSTLS: &str = "rustls=error";

/// The log filter of `CELLSTACK_LOG` (`info` when unset or invalid), with [`QUIET_RUSTLS`]
/// unless it mentions rustls.
fn log_filter(spec: Option<&str>) -> EnvFilter {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let with_rustls = if spec.contains("rustls") {
        spec.to_owned()
    } else {
        format!("{spec},{QUIET_RUSTLS}")
    };
    EnvFilter::try_new(&with_rustls)
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET_RUSTLS}")))
}

/// Sets up logging and, when the environment asks for it, trace export for the binary
/// `service` (the default `service.name`; `OTEL_SERVICE_NAME` overrides it).
pub fn init(json: bool, service: &'static str) -> Telemetry {
    let log_filter = log_filter(std::env::var("CELLSTACK_LOG").ok().as_deref());
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_filter(log_filter)
            .boxed()
    };
    let env = |name: &str| std::env::var(name).ok();
    let (provider, setup_error) = if traces_requested(env) {
        match provider(service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let traces = provider.as_ref().map(|p| {
        let filter = EnvFilter::try_from_env("CELLSTACK_TRACE")
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_TRACE_FILTER));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(filter)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(error) = setup_error {
        tracing::error!(%error, "traces are off: the OTLP exporter could not be set up");
    }
    if provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "http://localhost:4318".to_owned());
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    if let Some(protocol) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .ok()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok())
        && protocol.trim() != "http/protobuf"
    {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: cellstack exports \
             http/protobuf (a collector's OTLP receiver takes it on port 4318)"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` continue the trace whose W3C context `headers` carry (a new trace when they
/// carry none or a malformed one). Nothing while traces are off.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only for a span the trace layer does not know (filtered out): nothing to continue.
    let _ = span.set_parent(parent);
}

/// Writes the current span's W3C context into `headers` (`traceparent`, and `tracestate` when
/// there is one), replacing what the client sent, so the next hop's spans are its children.
/// Nothing while traces are off (not even a look at the current span: this is on the router's
/// request path); the client's own trace context then passes unchanged.
pub fn propagate(headers: &mut http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    #[test]
    fn rustls_warnings_are_dropped_unless_the_filter_names_rustls() {
        assert_eq!(super::log_filter(None).to_string(), "rustls=error,info");
        assert_eq!(
            super::log_filter(Some("debug,cellstack_router=trace")).to_string(),
            "cellstack_router=trace,rustls=error,debug"
        );
        assert_eq!(
            super::log_filter(Some("info,rustls=debug")).to_string(),
            "rustls=debug,info"
        );
    }

    use std::collections::HashMap;

    use super::traces_requested;

    fn with(vars: &[(&str, &str)]) -> bool {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        traces_requested(|name| vars.get(name).cloned())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_or_the_exporter_is_named() {
        assert!(!with(&[]));
        assert!(!with(&[("OTEL_SERVICE_NAME", "x")]));
        assert!(!with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]));
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )]));
        assert!(with(&[("OTEL_TRACES_EXPORTER", "otlp")]));
        assert!(with(&[("OTEL_TRACES_EXPORTER", "console, otlp")]));
    }

    #[test]
    fn disabling_wins_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(!with(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]));
        assert!(!with(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(with(&[endpoint, ("OTEL_SDK_DISABLED", "false")]));
    }
}
