//! The Prometheus of the test command (`e2e/scripts/prometheus.sh`: a pinned build scraping
//! the cluster through Kubernetes service discovery): load rules into it, read its alerts, and
//! wait for one to fire or resolve.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

/// How to get one, printed when it is missing.
const HOW: &str = "run the README's test command (e2e/test-all), or `e2e/scripts/prometheus.sh up \
                   && eval \"$(e2e/scripts/prometheus.sh env)\"` with KUBECONFIG set";

/// Timeout of one call to Prometheus' API.
const CALL: Duration = Duration::from_secs(10);

/// An alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub labels: serde_json::Map<String, Value>,
    /// `pending` or `firing`.
    pub state: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.label("alertname").unwrap_or_default()
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }

    /// Whether the alert is `name` and carries every label of `labels`.
    pub fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name() == name && labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// The test command's Prometheus.
pub struct Prometheus {
    pub url: String,
    rules_dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// The one `CELLSTACK_PROMETHEUS_URL` and `CELLSTACK_PROMETHEUS_RULES_DIR` name.
    pub fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("CELLSTACK_PROMETHEUS_URL")
            .with_context(|| format!("CELLSTACK_PROMETHEUS_URL is not set: {HOW}"))?;
        let rules_dir = std::env::var_os("CELLSTACK_PROMETHEUS_RULES_DIR")
            .map(PathBuf::from)
            .with_context(|| format!("CELLSTACK_PROMETHEUS_RULES_DIR is not set: {HOW}"))?;
        Ok(Self {
            url,
            rules_dir,
            http: reqwest::Client::builder().timeout(CALL).build()?,
        })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {}{path}", self.url))?;
        let status = res.status();
        let body: Value = res.json().await.context("a Prometheus API answer")?;
        ensure!(
            status.is_success() && body["status"] == "success",
            "GET {path} {query:?}: {status} {body}"
        );
        Ok(body["data"].clone())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let res = self
            .http
            .post(format!("{}/-/reload", self.url))
            .send()
            .await
            .context("POST /-/reload")?;
        ensure!(
            res.status().is_success(),
            "Prometheus refused to reload its rules in {}: {} {}",
            self.rules_dir.display(),
            res.status(),
            res.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Removes the rules file `load_rules` wrote as `name` (if any) and reloads.
    pub async fn remove_rules(&self, name: &str) -> anyhow::Result<()> {
        let path = self.rules_dir.join(format!("{name}.yaml"));
        match std::fs::remove_file(&path) {
            Ok(()) => self.reload().await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Writes `rules` (a rules file) as `<name>.yaml` into the rules directory, reloads, and
    /// waits until Prometheus evaluates every group in it.
    pub async fn load_rules(&self, name: &str, rules: &str) -> anyhow::Result<()> {
        let groups: Value = serde_yaml::from_str(rules).context("the rules are not YAML")?;
        let wanted: Vec<String> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect();
        ensure!(!wanted.is_empty(), "the rules file has no group");
        let path = self.rules_dir.join(format!("{name}.yaml"));
        std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
        self.reload().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.get("/api/v1/rules", &[]).await?;
            let loaded: Vec<&str> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g["name"].as_str())
                .collect();
            if wanted.iter().all(|w| loaded.contains(&w.as_str())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus loaded groups {loaded:?}, not {wanted:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The metric families Prometheus has scraped metadata (`# TYPE`/`# HELP`) for: only those
    /// of targets it scrapes now.
    pub async fn metric_families(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let data = self.get("/api/v1/metadata", &[]).await?;
        Ok(data
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// The names of every series Prometheus holds (`foo_total`, `foo_bucket`, ...), those of
    /// targets gone since included.
    pub async fn series_names(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let data = self.get("/api/v1/label/__name__/values", &[]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Every pending or firing alert.
    pub async fn alerts(&self) -> anyhow::Result<Vec<Alert>> {
        let data = self.get("/api/v1/alerts", &[]).await?;
        serde_json::from_value(data["alerts"].clone()).context("the alerts list")
    }

    /// The samples of the instant query `query`: labels and value.
    pub async fn query(&self, query: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let data = self.get("/api/v1/query", &[("query", query)]).await?;
        Ok(data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect())
    }

    /// Waits up to `wait` until `name` with `labels` is firing; answers how long it took.
    pub async fn until_firing(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        wait: Duration,
    ) -> anyhow::Result<Duration> {
        self.until(name, labels, wait, true).await
    }

    /// Waits up to `wait` until `name` with `labels` is neither pending nor firing.
    pub async fn until_resolved(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        wait: Duration,
    ) -> anyhow::Result<Duration> {
        self.until(name, labels, wait, false).await
    }

    async fn until(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        wait: Duration,
        firing: bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let alerts = self.alerts().await?;
            let matching: Vec<&Alert> = alerts.iter().filter(|a| a.is(name, labels)).collect();
            let done = if firing {
                matching.iter().any(|a| a.state == "firing")
            } else {
                matching.is_empty()
            };
            if done {
                return Ok(started.elapsed());
            }
            if started.elapsed() > wait {
                let all: Vec<String> = alerts
                    .iter()
                    .map(|a| format!("{} {} {:?}", a.state, a.name(), a.labels))
                    .collect();
                bail!(
                    "{name} {labels:?} was not {} within {wait:?}; alerts: {all:?}",
                    if firing { "firing" } else { "resolved" }
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
