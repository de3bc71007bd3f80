//! The chart's alerts, for real: the release's own rules (its `<fullname>-prometheus-rules`
//! ConfigMap, rendered with `monitoring.alerts.for=5s` for this run) loaded into the test
//! command's Prometheus (scraping the cluster through Kubernetes service discovery),
//! and faults that make alerts fire and then resolve.

use cellstack_api::v1alpha1::{MemberCluster, member_condition};
use cellstack_testkit::prometheus::Prometheus;

use super::*;

/// How long an alert may take to fire once its cause is there, or to resolve once it is gone:
/// the scrape and evaluation intervals (2 s each), the run's `for:` (5 s), the routers'
/// staleness bound (20 s in this run), an operator's start and its first heartbeat.
const ALERT_WAIT: Duration = Duration::from_secs(90);

/// The test command's Prometheus with this release's rules loaded.
pub(super) async fn prometheus_with_the_release_rules(env: &Env) -> anyhow::Result<Prometheus> {
    let (prometheus, _) = prometheus_and_rules(env).await?;
    Ok(prometheus)
}

/// The same, and the rules file.
async fn prometheus_and_rules(env: &Env) -> anyhow::Result<(Prometheus, String)> {
    let prometheus = Prometheus::from_env()?;
    let maps: Api<ConfigMap> = env.ns.api();
    let name = format!("{RELEASE}-cellstack-prometheus-rules");
    let rules = maps
        .get(&name)
        .await
        .with_context(|| format!("the release's rules ConfigMap {name}"))?
        .data
        .and_then(|d| d.get("cellstack.rules.yaml").cloned())
        .with_context(|| format!("ConfigMap {name} has no cellstack.rules.yaml"))?;
    prometheus.load_rules(&env.id, &rules).await?;
    Ok((prometheus, rules))
}

/// The metric names `text` mentions: words starting with one of the components' prefixes. A word
/// is made of ASCII letters, digits and `_`, so Grafana's variables (`$cell`, `${datasource}`,
/// `$__rate_interval`), recording rules (`cellstack:router_requests:rate5m`) and label values
/// are not taken for metric names.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIXES: [&str; 3] = [
        "cellstack_operator_",
        "cellstack_router_",
        "cellstack_cell_",
    ];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            PREFIXES
                .iter()
                .any(|p| w.starts_with(p) && w.len() > p.len())
        })
        .map(str::to_owned)
        .collect()
}

/// Whether `name` (as a rule or a doc writes it: a sample name) is a family Prometheus knows:
/// itself, or without the suffix a counter's or a histogram's samples carry.
/// Whether `name` (a family, or one of its series: `_total`, `_bucket`, `_sum`, `_count`) is
/// among `scraped`, which holds family names (metadata) and series names alike.
fn known(name: &str, scraped: &BTreeSet<String>) -> bool {
    const SUFFIXES: [&str; 4] = ["_total", "_bucket", "_sum", "_count"];
    scraped.contains(name)
        || SUFFIXES.iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| scraped.contains(base))
                || scraped.contains(&format!("{name}{s}"))
        })
}

/// Every metric the release's alert and recording rules, the chart's Grafana dashboards
/// (`charts/cellstack/dashboards/*.json`: every panel's, annotation's and variable's expression)
/// and the docs name is one the live Prometheus scraped from the release (its metadata API, and
/// the names of the series it holds, which keep those of targets gone since: the Go example's
/// cells, a finished rollout's), so none of them can name a metric that does not exist.
pub(super) async fn every_metric_the_rules_dashboards_and_docs_name_is_scraped(
    env: &Env,
) -> anyhow::Result<()> {
    let (prometheus, rules) = prometheus_and_rules(env).await?;
    let mut named: BTreeMap<String, String> = metric_names(&rules)
        .into_iter()
        .map(|m| (m, "the chart's rules".to_owned()))
        .collect();
    let dashboards = cellstack_testkit::dashboards::files()?;
    for (file, text) in &dashboards {
        let dashboard: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("dashboard {file} is not JSON"))?;
        for expr in cellstack_testkit::dashboards::exprs(&dashboard) {
            for m in metric_names(&expr) {
                named
                    .entry(m)
                    .or_insert_with(|| format!("dashboard {file}"));
            }
        }
    }
    let dashboard_count = dashboards.len();
    let docs = cellstack_testkit::repo_root().join("docs");
    for entry in std::fs::read_dir(&docs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path)?;
            for m in metric_names(&text) {
                named.entry(m).or_insert_with(|| path.display().to_string());
            }
        }
    }
    // A MemberCluster the release has judged (its Secret does not exist), so the member
    // reachability gauge has a series to scrape; deleted whatever the outcome.
    let members: Api<MemberCluster> = Api::all(env.client.clone());
    let member = format!("scrape-{}", env.id);
    let result = async {
        judged_member(env, &members, &member).await?;
        every_named_metric_scraped(&prometheus, &named).await
    }
    .await;
    let _ = members.delete(&member, &DeleteParams::default()).await;
    result?;
    eprintln!(
        "    {} metric names in the chart's rules, its {dashboard_count} dashboards and docs/, \
         every one scraped",
        named.len()
    );
    Ok(())
}

/// Creates MemberCluster `name` (this run's label, a Secret that does not exist) and waits until
/// the release's operator has judged it.
async fn judged_member(env: &Env, members: &Api<MemberCluster>, name: &str) -> anyhow::Result<()> {
    let member: MemberCluster = serde_json::from_value(json!({
        "apiVersion": "cellstack.dev/v1alpha1",
        "kind": "MemberCluster",
        "metadata": { "name": name, "labels": { RUN_LABEL: env.id } },
        "spec": { "kubeconfigSecretRef": { "name": format!("{name}-absent") } },
    }))
    .context("building the MemberCluster")?;
    members.create(&PostParams::default(), &member).await?;
    poll("the MemberCluster to be judged", WAIT, || async {
        let judged = members.get(name).await?.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == member_condition::CREDENTIALS_VALID)
        });
        Ok(judged.then_some(()))
    })
    .await
}

/// Waits until every metric of `named` (name → where it is named) is among those `prometheus`
/// scraped: the release's pods and the cells' lanes are scraped by now.
async fn every_named_metric_scraped(
    prometheus: &Prometheus,
    named: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    poll("every named metric scraped", WAIT, || async {
        let mut scraped = prometheus.metric_families().await?;
        scraped.extend(prometheus.series_names().await?);
        let missing: Vec<String> = named
            .iter()
            .filter(|(m, _)| !known(m, &scraped))
            .map(|(m, from)| format!("{m} (named in {from})"))
            .collect();
        ensure!(missing.is_empty(), "not scraped: {missing:?}");
        Ok(Some(()))
    })
    .await
}

/// The release's operator stopped: `CellstackOperatorDown` fires (no operator scraped), and so
/// does `CellstackRouterTableStale` for the release's routers once their table goes unconfirmed
/// past the staleness bound; both resolve once the operator runs again. Nothing else about the
/// release fires meanwhile but those two (the alerts on a cell's traffic aside: the scenarios
/// before fail and refuse requests on purpose).
pub(super) async fn stopping_the_operator_fires_its_alerts_and_starting_it_again_resolves_them(
    env: &Env,
) -> anyhow::Result<()> {
    let prometheus = prometheus_with_the_release_rules(env).await?;
    let ns = env.ns.name.as_str();
    let release = [("namespace", ns)];
    // Scraped before the fault: the operator and every router, and nothing firing.
    poll("the operator and the routers scraped", WAIT, || async {
        let up = prometheus
            .query(&format!("sum by (component) (up{{namespace=\"{ns}\"}})"))
            .await?;
        let count = |component: &str| {
            up.iter()
                .find(|(labels, _)| labels["component"] == component)
                .map_or(0.0, |(_, v)| *v)
        };
        Ok((count("operator") >= 1.0 && count("router") >= super::ROUTERS as f64).then_some(()))
    })
    .await?;
    // The alerts on a cell's traffic (its 5xx and 429 shares over 5 minutes) are left out: the
    // scenarios before this one refuse and fail requests on purpose (a noisy tenant, a bad
    // rollout), and those alerts firing for them is right; they say nothing about the operator.
    const TRAFFIC: [&str; 2] = ["CellstackCellErrorRateHigh", "CellstackCellRateLimitedHigh"];
    let firing = |alerts: &[cellstack_testkit::prometheus::Alert]| -> Vec<String> {
        alerts
            .iter()
            .filter(|a| a.label("namespace") == Some(ns) || a.name() == "CellstackOperatorDown")
            .filter(|a| !TRAFFIC.contains(&a.name()))
            .map(|a| format!("{} {}", a.state, a.name()))
            .collect()
    };
    // The scenario before may have left an alert of its own to resolve.
    poll(
        "no alert of the release pending or firing",
        WAIT,
        || async {
            let before = firing(&prometheus.alerts().await?);
            ensure!(before.is_empty(), "alerts before the fault: {before:?}");
            Ok(Some(()))
        },
    )
    .await?;

    let (down, stale, during) = durability::with_operator_stopped(env, async {
        let stopped = Instant::now();
        prometheus
            .until_firing("CellstackOperatorDown", &[], ALERT_WAIT)
            .await?;
        let down = stopped.elapsed();
        prometheus
            .until_firing("CellstackRouterTableStale", &release, ALERT_WAIT)
            .await?;
        let stale = stopped.elapsed();
        let during = firing(&prometheus.alerts().await?);
        Ok((down, stale, during))
    })
    .await?;
    let started = Instant::now();
    prometheus
        .until_resolved("CellstackOperatorDown", &[], ALERT_WAIT)
        .await?;
    let down_resolved = started.elapsed();
    prometheus
        .until_resolved("CellstackRouterTableStale", &release, ALERT_WAIT)
        .await?;
    let stale_resolved = started.elapsed();
    eprintln!(
        "    operator stopped: CellstackOperatorDown firing after {down:.1?}, \
         CellstackRouterTableStale after {stale:.1?}; operator started again: resolved after \
         {down_resolved:.1?} and {stale_resolved:.1?}; firing meanwhile: {during:?}"
    );
    let unexpected: Vec<&String> = during
        .iter()
        .filter(|a| {
            !a.ends_with("CellstackOperatorDown") && !a.ends_with("CellstackRouterTableStale")
        })
        .collect();
    ensure!(
        unexpected.is_empty(),
        "other alerts of the release fired while the operator was stopped: {unexpected:?}"
    );
    Ok(())
}
