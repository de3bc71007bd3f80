//! A real browser for tests: Debian's chromium, headless, driven over the Chrome DevTools
//! Protocol (a WebSocket): evaluate JavaScript in the page it opened and take screenshots.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{net::TcpStream, process::Child};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// Time for one DevTools call.
const CALL: Duration = Duration::from_secs(20);

/// A headless chromium showing one page; killed on drop.
pub struct Browser {
    _child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: std::path::PathBuf,
}

/// The chromium binary: `CELLSTACK_CHROMIUM`, else `chromium` on the PATH (Debian's package,
/// which `e2e/scripts/install-deps.sh` installs).
fn chromium() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("CELLSTACK_CHROMIUM") {
        return Ok(path.into());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("chromium");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "chromium is not installed: apt-get install chromium (e2e/scripts/install-deps.sh does), or set CELLSTACK_CHROMIUM"
    )
}

impl Browser {
    /// Opens `url` in a new headless chromium, `width`×`height` pixels.
    pub async fn open(url: &str, width: u32, height: u32) -> anyhow::Result<Self> {
        let port = crate::ports::free_port();
        let profile = std::env::temp_dir().join(crate::unique_name("chromium"));
        let child = tokio::process::Command::new(chromium()?)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromium")?;
        let http = reqwest::Client::new();
        let list = format!("http://127.0.0.1:{port}/json/list");
        let socket =
            crate::cluster::poll("chromium to open the page", Duration::from_secs(60), || {
                let (http, list) = (http.clone(), list.clone());
                async move {
                    let targets: Vec<Value> = http.get(&list).send().await?.json().await?;
                    Ok(targets
                        .iter()
                        .find(|t| {
                            t["type"] == "page"
                                && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                        })
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned)))
                }
            })
            .await?;
        let (ws, _) = tokio_tungstenite::connect_async(socket.as_str())
            .await
            .context("connecting to chromium's DevTools socket")?;
        Ok(Self {
            _child: child,
            ws,
            next_id: 0,
            profile,
        })
    }

    /// Calls DevTools method `method` and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await?;
        let answer = tokio::time::timeout(CALL, async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text)?;
                if value["id"] == id {
                    return Ok(value);
                }
            }
            bail!("chromium closed the DevTools socket")
        })
        .await
        .with_context(|| format!("{method} took longer than {CALL:?}"))??;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// The value of JavaScript `expression` in the page.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy in the page, showing its last value on timeout.
    pub async fn until(
        &mut self,
        what: &str,
        expression: &str,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let value = self.eval(expression).await?;
            if value.as_bool() == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what}: {expression} is still {value} after {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG of the page as it is.
    pub async fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let result = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = result["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
