//! A real OpenTelemetry Collector for the tests that check traces: the distribution
//! `e2e/scripts/build-otelcol.sh` builds through the Go module proxy (OTLP receiver, file
//! exporter), one process per test on its own loopback port, writing every span it receives as
//! OTLP/JSON lines that [`Collector::spans`] reads back.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::ports::free_port;

/// The collector binary: `CELLSTACK_OTELCOL`, else the pinned build in the cache
/// (`$CELLSTACK_CACHE/otelcol/$OTELCOL_VERSION/bin/cellstack-otelcol`).
pub fn otelcol() -> anyhow::Result<PathBuf> {
    crate::cached_tool(
        "the OpenTelemetry Collector",
        "CELLSTACK_OTELCOL",
        "OTELCOL_VERSION",
        "otelcol",
        "cellstack-otelcol",
        "run `e2e/scripts/build-otelcol.sh` (it builds the collector with its builder through the \
         Go module proxy into the cache), or set CELLSTACK_OTELCOL to a collector binary with the \
         otlp receiver and the file exporter",
    )
}

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root span.
    pub parent_span_id: String,
    pub name: String,
    /// The `service.name` of the process that sent it.
    pub service: String,
    /// OTLP's span kind: 1 internal, 2 server, 3 client.
    pub kind: u64,
    /// String, integer and boolean attributes, as strings.
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running collector, killed when dropped.
pub struct Collector {
    child: Child,
    port: u16,
    file: PathBuf,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    /// Starts a collector that receives OTLP/HTTP on a free loopback port and writes spans into
    /// `dir/traces.jsonl`; returns once the port accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = otelcol()?;
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let file = dir.join("traces.jsonl");
        let config = dir.join("otelcol.yaml");
        // No telemetry of its own: its default metrics port (8888) would collide between tests.
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
                 exporters:\n  file:\n    path: {file}\n    flush_interval: 100ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
                 \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                file = file.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("otelcol.log"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut collector = Self { child, port, file };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(collector);
            }
            if let Some(status) = collector.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("otelcol.log")).unwrap_or_default();
                bail!("the collector exited ({status}) before listening:\n{log}");
            }
            ensure!(
                Instant::now() < until,
                "the collector did not listen on 127.0.0.1:{port} within 20 s (log in {})",
                dir.join("otelcol.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that makes a cellstack binary export its spans here at once (a short
    /// batch delay).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> anyhow::Result<Vec<Span>> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).context(format!("reading {}", self.file.display())),
        };
        let mut spans = vec![];
        // The last line may be half written: only complete lines are read.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let doc: Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {} is not JSON", self.file.display()))?;
            spans.extend(parse(&doc));
        }
        Ok(spans)
    }

    /// The spans of trace `trace_id` once `complete` says they are all there, within `within`.
    pub async fn until_trace(
        &self,
        trace_id: &str,
        within: Duration,
        complete: impl Fn(&[Span]) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let until = Instant::now() + within;
        loop {
            let spans: Vec<Span> = self
                .spans()?
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if complete(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= until {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{}:{}", s.service, s.name))
                    .collect();
                bail!("trace {trace_id} incomplete after {within:?}: received {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The spans of one OTLP/JSON `TracesData` document.
fn parse(doc: &Value) -> Vec<Span> {
    let mut out = vec![];
    let empty = vec![];
    for rs in doc["resourceSpans"].as_array().unwrap_or(&empty) {
        let resource = attributes(&rs["resource"]["attributes"]);
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().unwrap_or(&empty) {
            for s in ss["spans"].as_array().unwrap_or(&empty) {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                out.push(Span {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    service: service.clone(),
                    kind: s["kind"].as_u64().unwrap_or(0),
                    attributes: attributes(&s["attributes"]),
                });
            }
        }
    }
    out
}

fn attributes(list: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(key) = kv["key"].as_str() else {
            continue;
        };
        let v = &kv["value"];
        let value = if let Some(s) = v["stringValue"].as_str() {
            s.to_owned()
        } else if let Some(i) = v.get("intValue") {
            // OTLP/JSON writes 64-bit integers as strings.
            i.as_str().map_or_else(|| i.to_string(), str::to_owned)
        } else if let Some(b) = v["boolValue"].as_bool() {
            b.to_string()
        } else {
            v.to_string()
        };
        out.insert(key.to_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_json_lines_become_spans_with_their_service_and_parent() {
        let doc: Value = serde_json::from_str(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cellstack-router"}}]},
                "scopeSpans":[{"scope":{"name":"x"},"spans":[
                  {"traceId":"aa","spanId":"01","parentSpanId":"","name":"request","kind":2,
                   "attributes":[{"key":"lane","value":{"intValue":"3"}},{"key":"tenant","value":{"stringValue":"acme"}}]},
                  {"traceId":"aa","spanId":"02","parentSpanId":"01","name":"upstream try","kind":3}]}]}]}"#,
        )
        .unwrap();
        let spans = parse(&doc);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].service, "cellstack-router");
        assert_eq!(spans[0].attribute("lane"), Some("3"));
        assert_eq!(spans[0].attribute("tenant"), Some("acme"));
        assert_eq!((spans[1].parent_span_id.as_str(), spans[1].kind), ("01", 3));
    }
}
