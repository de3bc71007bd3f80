//! A control plane of a test's own (`e2e/control-plane` with its own state directory): for tests
//! that need an API server in a particular state (stopped, or without cellstack's CRDs) that the
//! shared cluster must not be put in.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, ensure};

/// A running control plane, stopped (`e2e/control-plane down`) on drop.
pub struct ControlPlane {
    dir: PathBuf,
    stopped: bool,
}

impl ControlPlane {
    /// Starts one whose state lives in `dir`.
    pub fn up(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        run("up", &dir)?;
        Ok(Self {
            dir,
            stopped: false,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A client of its API server, from its admin kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let path = self.kubeconfig();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("loading {}", path.display()))?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A self-contained kubeconfig for its API server (its CA inline) authenticating with
    /// `token`: what a MemberCluster's Secret holds.
    pub fn token_kubeconfig(&self, token: &str) -> anyhow::Result<String> {
        token_kubeconfig(&self.kubeconfig(), token)
    }

    /// The pid of its `kube-apiserver` (to stop and continue it).
    pub fn apiserver_pid(&self) -> anyhow::Result<i32> {
        let path = self.dir.join("run/kube-apiserver.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no pid: {text:?}", path.display()))
    }

    /// Stops it (the API server goes away; state is removed, and the script's lock file beside
    /// it: the directory is this test's own, so nobody else waits on that lock).
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.stopped = true;
        run("down", &self.dir)?;
        let mut lock = self.dir.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.down();
        }
    }
}

fn script() -> PathBuf {
    crate::repo_root().join("e2e/control-plane")
}

fn run(verb: &str, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(script())
        .arg(verb)
        .env("CELLSTACK_CP_DIR", dir)
        .output()
        .with_context(|| format!("running e2e/control-plane {verb}"))?;
    ensure!(
        out.status.success(),
        "e2e/control-plane {verb} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A self-contained kubeconfig for the API server of the admin kubeconfig at `path` (its server
/// and CA, inline) authenticating with `token`: what a MemberCluster's Secret holds.
pub fn token_kubeconfig(path: &Path, token: &str) -> anyhow::Result<String> {
    let admin = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("{} names no cluster", path.display()))?;
    let server = cluster
        .server
        .clone()
        .with_context(|| format!("{} names no server", path.display()))?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(file)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(file).with_context(|| format!("reading {file}"))?)
        }
        (None, None) => anyhow::bail!("{} names no CA", path.display()),
    };
    Ok(serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "member",
        "clusters": [{ "name": "member", "cluster": {
            "server": server,
            "certificate-authority-data": ca,
        }}],
        "users": [{ "name": "member", "user": { "token": token } }],
        "contexts": [{ "name": "member", "context": { "cluster": "member", "user": "member" } }],
    }))?)
}
