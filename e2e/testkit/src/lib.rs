//! The shared harness for the suites that talk to real infrastructure: the API server from
//! `e2e/control-plane` (or any cluster in `KUBECONFIG`), a Redis from `e2e/scripts/redis.sh`, and
//! the whole cluster from `e2e/cluster` ([`cluster`]). The end-to-end suites in `e2e/` use it, and
//! so do the other crates' integration tests and benches (as a dev-dependency), so none of them
//! depends on the end-to-end crate itself.
//!
//! A suite that needs one of them gets it from the test command; when it is missing the test
//! fails with the command to run — it never skips.
#![forbid(unsafe_code)]

pub mod browser;
pub mod cluster;
pub mod control_plane;
pub mod dashboards;
pub mod edge;
pub mod fuzz;
pub mod ids;
pub mod otelcol;
pub mod pki;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod raw_http;
pub mod reach;
pub mod traffic;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail, ensure};
use cellstack_api::v1alpha1::{
    Cell, CellRollout, MemberCluster, RateLimitPolicy, ShuffleShardPool, TenantAssignment,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::wait::{await_condition, conditions},
};
use serde::Deserialize as _;
use tokio::sync::OnceCell;

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "cellstack-tests";

/// How long a test waits for a condition before it fails and dumps what it saw.
pub const WAIT: Duration = Duration::from_secs(60);

/// How to get the infrastructure a test needs, printed when it is missing.
const HOW: &str = "run the README's test command (e2e/test-all), or start the pieces yourself: \
                   `e2e/control-plane up && eval \"$(e2e/control-plane env)\"` for the API server, \
                   `e2e/scripts/redis.sh up && eval \"$(e2e/scripts/redis.sh env)\"` for Redis";

/// A client for the API server in `KUBECONFIG`.
pub async fn client() -> anyhow::Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("KUBECONFIG is not set, so there is no API server to test against: {HOW}");
    }
    Client::try_default()
        .await
        .with_context(|| format!("cannot build a client from KUBECONFIG: {HOW}"))
}

/// The URL of the test Redis.
pub fn redis_url() -> anyhow::Result<String> {
    std::env::var("CELLSTACK_TEST_REDIS_URL").with_context(|| {
        format!("CELLSTACK_TEST_REDIS_URL is not set, so there is no Redis to test against: {HOW}")
    })
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Installs (server-side apply) the generated CRDs once per test binary and waits until the API
/// server serves them.
pub async fn ensure_crds(client: &Client) -> anyhow::Result<()> {
    CRDS.get_or_try_init(|| install_crds(client))
        .await
        .map(|_| ())
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in cellstack_api::crd::all() {
        let name = crd
            .metadata
            .name
            .clone()
            .context("generated CRD has no name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| anyhow::anyhow!("applying CRD {name}: {e:?}"))?;
        tokio::time::timeout(
            WAIT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established within {WAIT:?}"))?
        .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(())
}

/// The dynamic API resource of a cellstack kind (`Cell`, `TenantAssignment`, ...).
pub fn api_resource(kind: &str) -> anyhow::Result<ApiResource> {
    Ok(match kind {
        "Cell" => ApiResource::erase::<Cell>(&()),
        "TenantAssignment" => ApiResource::erase::<TenantAssignment>(&()),
        "RateLimitPolicy" => ApiResource::erase::<RateLimitPolicy>(&()),
        "ShuffleShardPool" => ApiResource::erase::<ShuffleShardPool>(&()),
        "CellRollout" => ApiResource::erase::<CellRollout>(&()),
        "MemberCluster" => ApiResource::erase::<MemberCluster>(&()),
        other => bail!("{other} is not a cellstack kind"),
    })
}

/// A dynamic API for a cellstack kind (all of them are cluster-scoped).
pub fn dynamic_api(client: &Client, kind: &str) -> anyhow::Result<Api<DynamicObject>> {
    Ok(Api::all_with(client.clone(), &api_resource(kind)?))
}

/// A name no other test (or earlier run) uses: `<prefix>-<pid><time><counter>`, a DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{:x}{:x}{n}",
        std::process::id() % 0xfff,
        nanos % 0xfffff
    )
}

/// The repository root (this crate lives in `e2e/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Every YAML document in `examples/` (what the demo applies), with the file it came from.
pub fn example_documents() -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    documents_in("examples")
}

/// Every YAML document directly in `dir` (relative to the repository), with its file.
pub fn documents_in(dir: &str) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let dir = repo_root().join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = vec![];
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)
                .with_context(|| format!("parsing {}", path.display()))?;
            if !value.is_null() {
                docs.push((path.display().to_string(), value));
            }
        }
    }
    Ok(docs)
}

/// The Go example service (examples/go-orders), built by `e2e/scripts/build-go-example.sh`
/// (Go's build cache makes a rebuild cost about a second).
pub fn go_orders() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = BUILT.get() {
        return Ok(path.clone());
    }
    let script = repo_root().join("e2e/scripts/build-go-example.sh");
    let out = std::process::Command::new(&script)
        .arg("--print-path")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): is Go on PATH?",
        script.display(),
        out.status
    );
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(BUILT.get_or_init(|| path).clone())
}

/// The Helm binary: `CELLSTACK_HELM`, else the pinned build in the cache
/// (`$CELLSTACK_CACHE/helm/$HELM_VERSION/bin/helm`, as `e2e/scripts/versions.sh` names it).
pub fn helm() -> anyhow::Result<PathBuf> {
    cached_tool(
        "Helm",
        "CELLSTACK_HELM",
        "HELM_VERSION",
        "helm",
        "helm",
        "run `e2e/scripts/build-helm.sh` (it builds Helm through the Go module proxy into the \
         cache), or set CELLSTACK_HELM to a Helm 3 binary",
    )
}

/// krew and krew's manifest validator (`krew`, `validate-krew-manifest`): `CELLSTACK_KREW` and
/// `CELLSTACK_KREW_VALIDATE`, else the pinned build in the cache.
pub fn krew() -> anyhow::Result<(PathBuf, PathBuf)> {
    let how = "run `e2e/scripts/build-krew.sh` (it builds krew through the Go module proxy into \
               the cache)";
    Ok((
        cached_tool(
            "krew",
            "CELLSTACK_KREW",
            "KREW_VERSION",
            "krew",
            "krew",
            how,
        )?,
        cached_tool(
            "krew's validate-krew-manifest",
            "CELLSTACK_KREW_VALIDATE",
            "KREW_VERSION",
            "krew",
            "validate-krew-manifest",
            how,
        )?,
    ))
}

/// Prometheus' `promtool`: `CELLSTACK_PROMTOOL`, else the pinned build in the cache
/// (`$CELLSTACK_CACHE/prometheus/$PROMETHEUS_VERSION/bin/promtool`), the same build as the
/// Prometheus the test command runs.
pub fn promtool() -> anyhow::Result<PathBuf> {
    cached_tool(
        "promtool",
        "CELLSTACK_PROMTOOL",
        "PROMETHEUS_VERSION",
        "prometheus",
        "promtool",
        "run `e2e/scripts/build-prometheus.sh` (it builds Prometheus and promtool through the Go \
         module proxy into the cache), or set CELLSTACK_PROMTOOL to a promtool binary",
    )
}

/// A binary the scripts build into the cache: the file `override_var` names, else
/// `$CELLSTACK_CACHE/<dir>/<version>/bin/<binary>` with the version `version_var` pins in
/// `e2e/scripts/versions.sh` (or its value in the environment).
pub(crate) fn cached_tool(
    what: &str,
    override_var: &str,
    version_var: &str,
    dir: &str,
    binary: &str,
    build: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "{override_var}={} does not exist: {build}",
            path.display()
        );
        return Ok(path);
    }
    let version = match std::env::var(version_var) {
        Ok(v) if !v.is_empty() => v,
        _ => pinned(version_var)?,
    };
    let cache = match std::env::var_os("CELLSTACK_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .context("neither CELLSTACK_CACHE, XDG_CACHE_HOME nor HOME is set")?
            .join("cellstack"),
    };
    let path = cache.join(dir).join(&version).join("bin").join(binary);
    ensure!(
        path.is_file(),
        "{what} {version} is not built ({} is missing): {build}",
        path.display()
    );
    Ok(path)
}

/// The default of `NAME="${NAME:-default}"` in `e2e/scripts/versions.sh`.
fn pinned(name: &str) -> anyhow::Result<String> {
    let path = repo_root().join("e2e/scripts/versions.sh");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix(name)?.strip_prefix('=')?;
            let (_, default) = rest.split_once(":-")?;
            Some(default.split_once('}')?.0.to_owned())
        })
        .with_context(|| format!("{} pins no {name}", path.display()))
}

/// `kubectl`, from `KUBECTL` (set by the test command to the pinned build) or `PATH`.
pub fn kubectl() -> std::process::Command {
    std::process::Command::new(std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts and files the harness names by path ([`control_plane`], [`example_documents`])
    /// resolve from the repository root, whatever directory this crate sits in.
    #[test]
    fn repo_root_is_the_workspace_root() {
        let root = repo_root();
        for path in [
            "e2e/control-plane",
            "e2e/cluster",
            "examples",
            "charts/cellstack",
        ] {
            assert!(
                root.join(path).exists(),
                "{path} not found under {}",
                root.display()
            );
        }
    }
}
