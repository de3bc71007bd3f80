//! An edge in front of the routers, as a production load balancer is: HAProxy (Debian's package)
//! on this host, balancing over the router pods by address, health-checking each router's
//! `/readyz` every 500 ms and sending a request that found no answer (refused, empty, or no
//! response within 6 s, above the router's own 5 s deadline) to another router. With it a
//! router that stops (its node frozen) is out of rotation within about a second, instead of
//! taking a share of every tenant's requests until Kubernetes calls its node NotReady.
//!
//! The chaos scenarios that stop a node drive their traffic through it (docs/e2e.md).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::ports::free_port;

/// A running HAProxy; killed when dropped.
pub struct Edge {
    /// `http://127.0.0.1:<port>`: where the tenants' requests go.
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl Edge {
    /// Starts HAProxy in front of `routers` (each router pod's tenant address), health-checking
    /// each on `admin_port` (`GET /readyz`), and waits until it answers.
    pub async fn start(routers: &[SocketAddr], admin_port: u16) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(crate::unique_name("cellstack-edge"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let servers: String = routers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                format!(
                    "  server router-{i} {addr} check port {admin_port} inter 500ms fall 2 rise 2\n"
                )
            })
            .collect();
        let config = format!(
            "global
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  # A request is retried on another router when the first found no answer: refused, closed
  # without one, or none within `timeout server` (above the router's 5 s deadline, so a slow
  # cell's own 504 still comes back as it is). The body is buffered so it can be sent again.
  option http-buffer-request
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
  timeout connect 1s
  timeout client 30s
  timeout server 6s
  timeout check 500ms
frontend edge
  bind 127.0.0.1:{port}
  default_backend routers
backend routers
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy (Debian package `haproxy`; e2e/scripts/install-deps.sh)")?;
        let mut edge = Self {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        };
        // Up once it answers anything through a router that passed its checks (503 until one has).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = edge.child.try_wait()? {
                bail!("haproxy exited ({status}) before serving");
            }
            let answer = http.get(format!("{}/livez", edge.url)).send().await;
            if answer.is_ok_and(|a| a.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE) {
                return Ok(edge);
            }
            if Instant::now() > deadline {
                bail!(
                    "the edge (haproxy on {}) did not reach a router within 30 s",
                    edge.url
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
