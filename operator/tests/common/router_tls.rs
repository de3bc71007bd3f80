//! The release's trust bundle and lanes' client certificate as files, the way a router pod
//! mounts them (`--upstream-ca-file`, `--upstream-client-cert-file`), for the routers the tests
//! run on the host.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use cellstack_api::v1alpha1::{INTERNAL_CA_BUNDLE, INTERNAL_CA_BUNDLE_KEY, LANE_CLIENT_SECRET};
use cellstack_testkit::cluster::poll;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use super::WAIT;

/// How often [`RouterTls::follow`] copies the objects again (a kubelet takes up to a minute).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The files of the release's trust bundle and client certificate in a directory.
pub struct RouterTls {
    pub dir: PathBuf,
}

/// The bundle's PEM and the client certificate's and key's, as the objects in `namespace` hold
/// them now.
async fn contents(client: &Client, namespace: &str) -> anyhow::Result<[(&'static str, String); 3]> {
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(INTERNAL_CA_BUNDLE)
        .await
        .with_context(|| format!("reading ConfigMap {namespace}/{INTERNAL_CA_BUNDLE}"))?
        .data
        .and_then(|d| d.get(INTERNAL_CA_BUNDLE_KEY).cloned())
        .context("the trust bundle has no ca.crt")?;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(LANE_CLIENT_SECRET)
        .await
        .with_context(|| format!("reading Secret {namespace}/{LANE_CLIENT_SECRET}"))?;
    let key = |name: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .with_context(|| format!("Secret {LANE_CLIENT_SECRET} has no {name}"))
    };
    Ok([
        ("ca.crt", bundle),
        ("tls.crt", key("tls.crt")?),
        ("tls.key", key("tls.key")?),
    ])
}

/// Writes `content` to `path` whole (a rename), unless it holds it already.
fn replace(path: &Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

impl RouterTls {
    /// Copies the objects of `namespace` into a directory named after `name`, once both exist.
    pub async fn read(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{name}-router-tls"));
        std::fs::create_dir_all(&dir)?;
        let files = poll(
            "the trust bundle and the lanes' client certificate",
            WAIT,
            || {
                let (client, namespace) = (client.clone(), namespace.to_owned());
                async move { Ok(contents(&client, &namespace).await.ok()) }
            },
        )
        .await?;
        for (file, content) in &files {
            replace(&dir.join(file), content)?;
        }
        Ok(Self { dir })
    }

    /// The router's flags naming the files.
    pub fn args(&self) -> Vec<String> {
        let path = |file: &str| self.dir.join(file).display().to_string();
        vec![
            "--upstream-ca-file".into(),
            path("ca.crt"),
            "--upstream-client-cert-file".into(),
            path("tls.crt"),
            "--upstream-client-key-file".into(),
            path("tls.key"),
        ]
    }

    /// Keeps the files in step with the objects of `namespace` (every [`FOLLOW_EVERY`], as a
    /// kubelet keeps a mounted copy) until `stop`.
    pub fn follow(
        &self,
        client: &Client,
        namespace: &str,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let (client, namespace, dir) = (client.clone(), namespace.to_owned(), self.dir.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(files) = contents(&client, &namespace).await {
                    for (file, content) in &files {
                        let _ = replace(&dir.join(file), content);
                    }
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        })
    }
}
