//! `cellstack-cell datastore-init`: the init container of every pod of a cell's managed Redis.
//! It decides whether this pod starts as the primary or as a replica of whom, and writes
//! `redis.conf` (every boot) and `sentinel.conf` (first boot only: Sentinel rewrites its own
//! file afterwards, so it keeps the last known primary across restarts).
//!
//! The decision, in order:
//! 1. Every peer sentinel is asked `SENTINEL get-master-addr-by-name <master>` (bounded timeout
//!    each, rounds for `--discovery-secs`). An address most of them give that is not this pod →
//!    `replicaof` it.
//! 2. They name this pod: its Redis is not running (this is its init container), so they are
//!    about to fail over; wait (up to `--failover-wait-secs`) for them to name another pod. A pod
//!    that comes back, possibly with an empty volume, never starts as the primary the others
//!    replicate from while a replica holds the acknowledged writes. If a peer's Redis answers
//!    `ROLE` as a primary meanwhile (the sentinels that name this pod are behind), it replicates
//!    that peer; and it starts as the primary after the wait only if no peer is one: two
//!    primaries taking writes is how acknowledged writes get lost.
//! 3. No sentinel answers: the last primary this pod's own `sentinel.conf` knew, if it exists
//!    (a restart of the whole datastore).
//! 4. Nothing known: pod ordinal 0 starts as the primary, the others `replicaof` pod 0.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;

/// Writes the configuration of one pod of a cell's managed Redis (primary or replica, and its
/// sentinel), deciding the role from what the peer sentinels say.
#[derive(Debug, Clone, Parser)]
#[command(name = "cellstack-cell datastore-init")]
pub struct Args {
    /// This pod's name (`<statefulset>-<ordinal>`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Pods in the datastore.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// The password of Redis and the sentinels.
    #[arg(long, default_value = "/etc/cellstack/redis/password")]
    pub password_file: PathBuf,
    /// Where `redis.conf` and `sentinel.conf` go.
    #[arg(long, default_value = "/data/conf")]
    pub out: PathBuf,
    /// Redis's data directory (`dir`).
    #[arg(long, default_value = "/data/redis")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 6379)]
    pub redis_port: u16,
    #[arg(long, default_value_t = 26379)]
    pub sentinel_port: u16,
    /// The name the sentinels monitor the primary under.
    #[arg(long, default_value = "cellstack")]
    pub master_name: String,
    /// `min-replicas-to-write` of the primary (with `min-replicas-max-lag 10`). Default: 1 with
    /// two or more pods (an isolated primary stops taking writes), else 0.
    #[arg(long)]
    pub min_replicas_to_write: Option<u32>,
    /// The cluster's DNS domain, for the pods' names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Every pod's address by ordinal, `host:redis-port:sentinel-port`, comma-separated.
    /// Default: `<statefulset>-<i>.<namespace>.svc.<domain>` (each pod's own Service, as the
    /// operator creates them) with the ports above.
    #[arg(long, value_delimiter = ',', value_parser = node)]
    pub nodes: Vec<Node>,
    /// Addresses Redis and Sentinel listen on.
    #[arg(long, default_value = "* -::*")]
    pub bind: String,
    #[arg(long, default_value_t = 5000)]
    pub down_after_ms: u64,
    /// Sentinel's `failover-timeout`. It also bounds a failed election (aborted after
    /// min(10 s, this)) and delays the next attempt to twice this after the first: when the
    /// primary's pod dies with its sentinel, the two sentinels left often vote for themselves at
    /// once, and at 20 s that split alone cost 40 s. At 5 s a split costs 10 s, so writes still
    /// resume within ~16 s of the loss.
    #[arg(long, default_value_t = 5000)]
    pub failover_timeout_ms: u64,
    /// How long to keep asking the peer sentinels when none answers.
    #[arg(long, default_value_t = 10)]
    pub discovery_secs: u64,
    /// How long to wait for the sentinels to fail over when they name this pod as the primary.
    #[arg(long, default_value_t = 60)]
    pub failover_wait_secs: u64,
}

/// One pod's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub redis_port: u16,
    pub sentinel_port: u16,
}

fn node(s: &str) -> Result<Node, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let [host, redis, sentinel] = parts.as_slice() else {
        return Err(format!(
            "'{s}' is not host:redis-port:sentinel-port, such as 127.0.0.1:6379:26379"
        ));
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' in '{s}' is not a port number"))
    };
    Ok(Node {
        host: (*host).to_owned(),
        redis_port: port(redis)?,
        sentinel_port: port(sentinel)?,
    })
}

/// What this pod starts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    ReplicaOf { host: String, port: u16 },
}

/// The decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub role: Role,
    pub reason: String,
}

/// What one peer sentinel said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It names this primary.
    Primary(String, u16),
    /// It answered, and knows no primary of that name.
    Unknown,
    /// It did not answer (with why).
    Unreachable(String),
}

/// The address most answering sentinels name (ties: the first named), with how many named it.
pub fn majority(answers: &[Answer]) -> Option<((String, u16), usize)> {
    let mut counts: Vec<((String, u16), usize)> = Vec::new();
    for a in answers {
        if let Answer::Primary(h, p) = a {
            match counts
                .iter_mut()
                .find(|(addr, _)| addr.0 == *h && addr.1 == *p)
            {
                Some((_, n)) => *n += 1,
                None => counts.push(((h.clone(), *p), 1)),
            }
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best)
}

/// Steps 3 and 4 of the module's rule: no sentinel named a primary.
pub fn fallback(ordinal: u32, nodes: &[Node], last_known: Option<(String, u16)>) -> Decision {
    let me = &nodes[ordinal as usize];
    if let Some((host, port)) = last_known {
        if same_host(&host, &me.host) && port == me.redis_port {
            return Decision {
                role: Role::Primary,
                reason: format!(
                    "no peer sentinel answered; this pod's sentinel.conf names this pod ({host}:{port}) as the last known primary"
                ),
            };
        }
        return Decision {
            reason: format!(
                "no peer sentinel answered; this pod's sentinel.conf names {host}:{port} as the last known primary"
            ),
            role: Role::ReplicaOf { host, port },
        };
    }
    if ordinal == 0 {
        return Decision {
            role: Role::Primary,
            reason: "no sentinel knows a primary and this pod has no sentinel.conf yet: pod 0 starts as the primary".into(),
        };
    }
    let zero = &nodes[0];
    Decision {
        role: Role::ReplicaOf {
            host: zero.host.clone(),
            port: zero.redis_port,
        },
        reason: format!(
            "no sentinel knows a primary and this pod has no sentinel.conf yet: pod {ordinal} starts as a replica of pod 0"
        ),
    }
}

fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// What `redis.conf` says.
#[derive(Debug, Clone)]
pub struct RedisConf<'a> {
    pub bind: &'a str,
    pub port: u16,
    pub password: &'a str,
    pub data_dir: &'a Path,
    pub announce_host: &'a str,
    pub min_replicas_to_write: u32,
    pub decision: &'a Decision,
}

/// Renders `redis.conf`.
pub fn render_redis_conf(c: &RedisConf<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by cellstack-cell datastore-init at every start."
    );
    for line in c.decision.reason.lines() {
        let _ = writeln!(s, "# {line}");
    }
    let _ = writeln!(s, "bind {}", c.bind);
    let _ = writeln!(s, "port {}", c.port);
    let _ = writeln!(s, "protected-mode no");
    let _ = writeln!(s, "requirepass {}", c.password);
    let _ = writeln!(s, "masterauth {}", c.password);
    let _ = writeln!(s, "dir {}", c.data_dir.display());
    let _ = writeln!(s, "appendonly yes");
    let _ = writeln!(s, "appendfsync everysec");
    let _ = writeln!(s, "replica-announce-ip {}", c.announce_host);
    let _ = writeln!(s, "replica-announce-port {}", c.port);
    if c.min_replicas_to_write > 0 {
        let _ = writeln!(s, "min-replicas-to-write {}", c.min_replicas_to_write);
        let _ = writeln!(s, "min-replicas-max-lag 10");
    }
    if let Role::ReplicaOf { host, port } = &c.decision.role {
        let _ = writeln!(s, "replicaof {host} {port}");
    }
    s
}

/// What `sentinel.conf` says.
#[derive(Debug, Clone)]
pub struct SentinelConf<'a> {
    pub bind: &'a str,
    pub port: u16,
    pub password: &'a str,
    pub dir: &'a Path,
    pub announce_host: &'a str,
    pub master_name: &'a str,
    pub primary: (&'a str, u16),
    pub quorum: u32,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    /// The sentinel's ID to keep (`sentinel myid`); `None`: Sentinel makes one.
    pub id: Option<&'a str>,
}

/// Renders the first `sentinel.conf` (Sentinel rewrites it afterwards).
pub fn render_sentinel_conf(c: &SentinelConf<'_>) -> String {
    let m = c.master_name;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written once by cellstack-cell datastore-init; Sentinel rewrites it from then on."
    );
    let _ = writeln!(s, "bind {}", c.bind);
    let _ = writeln!(s, "port {}", c.port);
    let _ = writeln!(s, "protected-mode no");
    let _ = writeln!(s, "dir {}", c.dir.display());
    let _ = writeln!(s, "requirepass {}", c.password);
    let _ = writeln!(s, "sentinel resolve-hostnames yes");
    let _ = writeln!(s, "sentinel announce-hostnames yes");
    let _ = writeln!(s, "sentinel announce-ip {}", c.announce_host);
    let _ = writeln!(s, "sentinel announce-port {}", c.port);
    let _ = writeln!(s, "sentinel sentinel-pass {}", c.password);
    let _ = writeln!(
        s,
        "sentinel monitor {m} {} {} {}",
        c.primary.0, c.primary.1, c.quorum
    );
    let _ = writeln!(s, "sentinel auth-pass {m} {}", c.password);
    let _ = writeln!(
        s,
        "sentinel down-after-milliseconds {m} {}",
        c.down_after_ms
    );
    let _ = writeln!(s, "sentinel failover-timeout {m} {}", c.failover_timeout_ms);
    let _ = writeln!(s, "sentinel parallel-syncs {m} 1");
    if let Some(id) = c.id {
        let _ = writeln!(s, "sentinel myid {id}");
    }
    s
}

/// The name a `sentinel.conf` announces (`sentinel announce-ip`).
pub fn announced_host(conf: &str) -> Option<String> {
    conf.lines().find_map(
        |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["sentinel", "announce-ip", host] => Some(host.trim_matches('"').to_owned()),
            _ => None,
        },
    )
}

/// The sentinel's ID in a `sentinel.conf` (`sentinel myid`).
pub fn sentinel_id(conf: &str) -> Option<String> {
    conf.lines().find_map(
        |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["sentinel", "myid", id] => Some((*id).to_owned()),
            _ => None,
        },
    )
}

/// The primary a `sentinel.conf` monitors under `master_name` (Sentinel keeps this line current).
pub fn monitored_primary(conf: &str, master_name: &str) -> Option<(String, u16)> {
    conf.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["sentinel", "monitor", name, host, port, _quorum] if *name == master_name => {
                Some(((*host).to_owned(), port.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// The ordinal in `<statefulset>-<ordinal>`.
pub fn ordinal(pod_name: &str) -> anyhow::Result<(String, u32)> {
    let (set, n) = pod_name
        .rsplit_once('-')
        .with_context(|| format!("pod name {pod_name:?} is not <statefulset>-<ordinal>"))?;
    let n = n
        .parse()
        .with_context(|| format!("pod name {pod_name:?} does not end in an ordinal"))?;
    Ok((set.to_owned(), n))
}

impl Args {
    /// Every pod's addresses, by ordinal.
    pub fn node_list(&self) -> anyhow::Result<Vec<Node>> {
        let (set, _) = ordinal(&self.pod_name)?;
        if !self.nodes.is_empty() {
            anyhow::ensure!(
                self.nodes.len() == self.replicas as usize,
                "--nodes lists {} pods but --replicas is {}",
                self.nodes.len(),
                self.replicas
            );
            return Ok(self.nodes.clone());
        }
        Ok((0..self.replicas)
            .map(|i| Node {
                host: format!("{set}-{i}.{}.svc.{}", self.namespace, self.cluster_domain),
                redis_port: self.redis_port,
                sentinel_port: self.sentinel_port,
            })
            .collect())
    }
}

/// A connection to the Redis or sentinel at `host:port` with `password`, connecting and
/// answering within `timeout`.
async fn connect(
    host: &str,
    port: u16,
    password: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(format!("redis://{host}:{port}"))?;
    let settings = info.redis_settings().clone().set_password(password);
    info = info.set_redis_settings(settings);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Asks one sentinel for the primary, within `timeout`.
async fn ask(node: &Node, password: &str, master: &str, timeout: Duration) -> Answer {
    let asked = async {
        let mut c = connect(&node.host, node.sentinel_port, password, timeout).await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async::<Option<(String, u16)>>(&mut c)
            .await
    };
    match tokio::time::timeout(timeout * 2, asked).await {
        Ok(Ok(Some((h, p)))) => Answer::Primary(h, p),
        Ok(Ok(None)) => Answer::Unknown,
        Ok(Err(e)) => Answer::Unreachable(e.to_string()),
        Err(_) => Answer::Unreachable(format!("no answer within {:?}", timeout * 2)),
    }
}

/// The role one peer's Redis answers to `ROLE` (`master`, `slave`), within `timeout`; `None`
/// when it does not answer.
async fn role(node: &Node, password: &str, timeout: Duration) -> Option<String> {
    let asked = async {
        let mut c = connect(&node.host, node.redis_port, password, timeout).await?;
        let reply: redis::Value = redis::cmd("ROLE").query_async(&mut c).await?;
        Ok::<_, redis::RedisError>(reply)
    };
    match tokio::time::timeout(timeout * 2, asked).await {
        Ok(Ok(redis::Value::Array(items))) => match items.first() {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The first peer (not `me`) whose Redis answers `ROLE` as a primary.
async fn peer_primary(nodes: &[Node], me: usize, password: &str) -> Option<Node> {
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != me) {
        let (n, password) = (n.clone(), password.to_owned());
        set.spawn(async move {
            let r = role(&n, &password, Duration::from_millis(1000)).await;
            (i, n, r)
        });
    }
    let mut primaries = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok((i, n, Some(r))) = done
            && r == "master"
        {
            primaries.push((i, n));
        }
    }
    primaries.sort_by_key(|(i, _)| *i);
    primaries.into_iter().next().map(|(_, n)| n)
}

/// Asks every sentinel at once; the answers in the order of `nodes`.
async fn ask_all(nodes: &[Node], password: &str, master: &str) -> Vec<Answer> {
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let (n, password, master) = (n.clone(), password.to_owned(), master.to_owned());
        set.spawn(async move {
            let a = ask(&n, &password, &master, Duration::from_millis(1000)).await;
            (i, a)
        });
    }
    let mut answers: Vec<Answer> = nodes
        .iter()
        .map(|_| Answer::Unreachable("not asked".into()))
        .collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, a)) = done {
            answers[i] = a;
        }
    }
    answers
}

/// Whether `host` (as a sentinel names it) is this pod.
async fn is_me(host: &str, port: u16, me: &Node) -> bool {
    if port != me.redis_port {
        return false;
    }
    if same_host(host, &me.host) {
        return true;
    }
    // A sentinel may give an IP where the pod is known by name (or the reverse).
    let resolve = |h: String| async move {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((h.as_str(), port)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
        .unwrap_or_default()
    };
    let (a, b) = (
        resolve(host.to_owned()).await,
        resolve(me.host.clone()).await,
    );
    a.iter().any(|ip| b.contains(ip))
}

fn summary(nodes: &[Node], answers: &[Answer]) -> String {
    let mut by: BTreeMap<String, String> = BTreeMap::new();
    for (n, a) in nodes.iter().zip(answers) {
        let said = match a {
            Answer::Primary(h, p) => format!("{h}:{p}"),
            Answer::Unknown => "no such primary".into(),
            Answer::Unreachable(e) => format!("unreachable ({e})"),
        };
        by.insert(format!("{}:{}", n.host, n.sentinel_port), said);
    }
    by.into_iter()
        .map(|(k, v)| format!("{k} → {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Decides and writes the configuration. Prints what it decided and why.
pub async fn run(args: Args) -> anyhow::Result<Decision> {
    let (_, me) = ordinal(&args.pod_name)?;
    let nodes = args.node_list()?;
    anyhow::ensure!(
        (me as usize) < nodes.len(),
        "pod {} has ordinal {me}, but the datastore has {} pods (--replicas)",
        args.pod_name,
        nodes.len()
    );
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| {
            format!(
                "cannot read the redis password file {}",
                args.password_file.display()
            )
        })?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "the redis password file {} is empty",
        args.password_file.display()
    );
    let this = &nodes[me as usize];
    let sentinel_path = args.out.join("sentinel.conf");
    let existing_sentinel = std::fs::read_to_string(&sentinel_path).ok();

    // Steps 1 and 2.
    let discovery_end = Instant::now() + Duration::from_secs(args.discovery_secs);
    let mut failover_end: Option<Instant> = None;
    let decision = if nodes.len() == 1 {
        // No peer can answer (this pod's own sentinel starts after this init): nothing to ask.
        Decision {
            role: Role::Primary,
            reason: "a datastore of one pod is its own primary (no replica, no failover)".into(),
        }
    } else {
        loop {
            let answers = ask_all(&nodes, &password, &args.master_name).await;
            let named = majority(&answers);
            let round = summary(&nodes, &answers);
            match named {
                Some(((host, port), n)) if !is_me(&host, port, this).await => {
                    break Decision {
                        reason: format!(
                            "{n} sentinel(s) name {host}:{port} as the primary of {:?} ({round})",
                            args.master_name
                        ),
                        role: Role::ReplicaOf { host, port },
                    };
                }
                Some(((host, port), _)) => {
                    // The sentinels that name this pod may be behind a failover they missed
                    // (one that could not resolve the new primary's name drops the switch):
                    // a peer that is a primary now is the one to follow.
                    if let Some(peer) = peer_primary(&nodes, me as usize, &password).await {
                        break Decision {
                            reason: format!(
                                "the sentinels name this pod ({host}:{port}) as the primary, but {}:{} answers ROLE as the primary ({round})",
                                peer.host, peer.redis_port
                            ),
                            role: Role::ReplicaOf {
                                host: peer.host,
                                port: peer.redis_port,
                            },
                        };
                    }
                    let end = *failover_end.get_or_insert_with(|| {
                    println!(
                        "datastore-init: the sentinels name this pod ({host}:{port}) as the primary while its Redis is down; waiting up to {}s for them to fail over ({round})",
                        args.failover_wait_secs
                    );
                    Instant::now() + Duration::from_secs(args.failover_wait_secs)
                });
                    if Instant::now() >= end {
                        break Decision {
                            role: Role::Primary,
                            reason: format!(
                                "the sentinels still name this pod ({host}:{port}) as the primary after {}s and no peer answers ROLE as a primary: no replica could take over ({round})",
                                args.failover_wait_secs
                            ),
                        };
                    }
                }
                None if Instant::now() >= discovery_end => {
                    let last_known = existing_sentinel
                        .as_deref()
                        .and_then(|c| monitored_primary(c, &args.master_name));
                    let mut d = fallback(me, &nodes, last_known);
                    d.reason = format!("{} ({round})", d.reason);
                    break d;
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let min_replicas = args
        .min_replicas_to_write
        .unwrap_or(if args.replicas >= 2 { 1 } else { 0 });
    let redis_conf = render_redis_conf(&RedisConf {
        bind: &args.bind,
        port: this.redis_port,
        password: &password,
        data_dir: &args.data_dir,
        announce_host: &this.host,
        min_replicas_to_write: min_replicas,
        decision: &decision,
    });
    write_file(&args.out.join("redis.conf"), &redis_conf)?;
    let role = match &decision.role {
        Role::Primary => "primary".to_owned(),
        Role::ReplicaOf { host, port } => format!("replica of {host}:{port}"),
    };
    println!(
        "datastore-init: pod {} starts as {role}: {}",
        args.pod_name, decision.reason
    );
    // A sentinel.conf that announces another name than this pod's (the names changed, e.g. on
    // an upgrade from the headless Service's) is written anew, keeping the sentinel's ID: its
    // peers then move that ID to the new name instead of counting a ghost sentinel that would
    // raise the votes a failover needs.
    let stale = existing_sentinel.as_deref().and_then(|c| {
        let announced = announced_host(c)?;
        (!same_host(&announced, &this.host)).then(|| (announced, sentinel_id(c)))
    });
    if existing_sentinel.is_some() && stale.is_none() {
        println!(
            "datastore-init: kept {} (Sentinel maintains it)",
            sentinel_path.display()
        );
    } else {
        if let Some((announced, _)) = &stale {
            println!(
                "datastore-init: {} announces {announced}, not {}: writing it anew",
                sentinel_path.display(),
                this.host
            );
        }
        let primary = match &decision.role {
            Role::Primary => (this.host.as_str(), this.redis_port),
            Role::ReplicaOf { host, port } => (host.as_str(), *port),
        };
        let conf = render_sentinel_conf(&SentinelConf {
            bind: &args.bind,
            port: this.sentinel_port,
            password: &password,
            dir: &args.out,
            announce_host: &this.host,
            master_name: &args.master_name,
            primary,
            quorum: args.replicas / 2 + 1,
            down_after_ms: args.down_after_ms,
            failover_timeout_ms: args.failover_timeout_ms,
            id: stale.as_ref().and_then(|(_, id)| id.as_deref()),
        });
        write_file(&sentinel_path, &conf)?;
        println!(
            "datastore-init: wrote {} monitoring {}:{} (quorum {})",
            sentinel_path.display(),
            primary.0,
            primary.1,
            args.replicas / 2 + 1
        );
    }
    Ok(decision)
}

/// Writes `path` whole or not at all (a crash leaves the old file).
fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<Node> {
        (0..3)
            .map(|i| Node {
                host: format!("redis-{i}.ns.svc.cluster.local"),
                redis_port: 6379,
                sentinel_port: 26379,
            })
            .collect()
    }

    #[test]
    fn without_sentinels_pod_zero_is_primary_and_the_others_replicate_it() {
        assert_eq!(fallback(0, &nodes(), None).role, Role::Primary);
        assert_eq!(
            fallback(2, &nodes(), None).role,
            Role::ReplicaOf {
                host: "redis-0.ns.svc.cluster.local".into(),
                port: 6379
            }
        );
    }

    #[test]
    fn without_sentinels_the_last_known_primary_of_the_pods_sentinel_conf_wins() {
        let last = Some(("redis-2.ns.svc.cluster.local".to_owned(), 6379));
        assert_eq!(
            fallback(0, &nodes(), last.clone()).role,
            Role::ReplicaOf {
                host: "redis-2.ns.svc.cluster.local".into(),
                port: 6379
            }
        );
        assert_eq!(fallback(2, &nodes(), last).role, Role::Primary);
    }

    #[test]
    fn the_address_most_sentinels_name_wins() {
        let a = |h: &str| Answer::Primary(h.into(), 6379);
        let answers = [
            a("old"),
            a("new"),
            Answer::Unreachable("refused".into()),
            a("new"),
        ];
        assert_eq!(majority(&answers), Some((("new".into(), 6379), 2)));
        assert_eq!(
            majority(&[Answer::Unknown, Answer::Unreachable("x".into())]),
            None
        );
    }

    #[test]
    fn the_monitored_primary_is_read_back_from_a_rewritten_sentinel_conf() {
        let conf = "port 26379\nsentinel monitor other 10.0.0.1 6379 2\nsentinel monitor cellstack redis-1.ns.svc.cluster.local 6379 2\n";
        assert_eq!(
            monitored_primary(conf, "cellstack"),
            Some(("redis-1.ns.svc.cluster.local".into(), 6379))
        );
        assert_eq!(monitored_primary("port 1\n", "cellstack"), None);
    }

    #[test]
    fn pod_names_give_the_ordinal() {
        assert_eq!(ordinal("redis-12").unwrap(), ("redis".into(), 12));
        assert!(ordinal("redis").is_err());
        assert!(ordinal("redis-x").is_err());
    }

    #[test]
    fn default_nodes_are_the_pods_own_services() {
        let args = Args::try_parse_from([
            "datastore-init",
            "--pod-name",
            "redis-1",
            "--namespace",
            "cell-a",
            "--replicas",
            "2",
        ])
        .unwrap();
        assert_eq!(
            args.node_list().unwrap(),
            vec![
                Node {
                    host: "redis-0.cell-a.svc.cluster.local".into(),
                    redis_port: 6379,
                    sentinel_port: 26379
                },
                Node {
                    host: "redis-1.cell-a.svc.cluster.local".into(),
                    redis_port: 6379,
                    sentinel_port: 26379
                },
            ]
        );
    }

    #[test]
    fn redis_conf_of_a_replica() {
        let decision = Decision {
            role: Role::ReplicaOf {
                host: "redis-0.ns.svc.cluster.local".into(),
                port: 6379,
            },
            reason: "2 sentinel(s) name redis-0.ns.svc.cluster.local:6379".into(),
        };
        let conf = render_redis_conf(&RedisConf {
            bind: "* -::*",
            port: 6379,
            password: "s3cret",
            data_dir: Path::new("/data/redis"),
            announce_host: "redis-1.ns.svc.cluster.local",
            min_replicas_to_write: 1,
            decision: &decision,
        });
        assert_eq!(
            conf,
            "# Written by cellstack-cell datastore-init at every start.
# 2 sentinel(s) name redis-0.ns.svc.cluster.local:6379
bind * -::*
port 6379
protected-mode no
requirepass s3cret
masterauth s3cret
dir /data/redis
appendonly yes
appendfsync everysec
replica-announce-ip redis-1.ns.svc.cluster.local
replica-announce-port 6379
min-replicas-to-write 1
min-replicas-max-lag 10
replicaof redis-0.ns.svc.cluster.local 6379
"
        );
    }

    #[test]
    fn redis_conf_of_a_lone_primary_has_no_replica_requirements() {
        let decision = Decision {
            role: Role::Primary,
            reason: "pod 0".into(),
        };
        let conf = render_redis_conf(&RedisConf {
            bind: "127.0.0.1",
            port: 7000,
            password: "p",
            data_dir: Path::new("/d"),
            announce_host: "127.0.0.1",
            min_replicas_to_write: 0,
            decision: &decision,
        });
        assert!(!conf.contains("min-replicas"), "{conf}");
        assert!(!conf.contains("replicaof"), "{conf}");
        assert!(conf.contains("port 7000\n"), "{conf}");
    }

    #[test]
    fn a_sentinel_conf_says_what_it_announces_and_a_rewrite_keeps_the_sentinels_id() {
        let old = "port 26379\nsentinel myid 0123abcd\nsentinel announce-ip \"redis-1.redis.ns.svc.cluster.local\"\n";
        assert_eq!(
            announced_host(old).as_deref(),
            Some("redis-1.redis.ns.svc.cluster.local")
        );
        assert_eq!(sentinel_id(old).as_deref(), Some("0123abcd"));
        assert_eq!(announced_host("port 26379\n"), None);
        let conf = render_sentinel_conf(&SentinelConf {
            bind: "*",
            port: 26379,
            password: "p",
            dir: Path::new("/data/conf"),
            announce_host: "redis-1.ns.svc.cluster.local",
            master_name: "cellstack",
            primary: ("redis-0.ns.svc.cluster.local", 6379),
            quorum: 2,
            down_after_ms: 5000,
            failover_timeout_ms: 20000,
            id: Some("0123abcd"),
        });
        assert_eq!(sentinel_id(&conf).as_deref(), Some("0123abcd"));
        assert_eq!(
            announced_host(&conf).as_deref(),
            Some("redis-1.ns.svc.cluster.local")
        );
    }

    #[test]
    fn sentinel_conf_monitors_the_primary_with_the_password_and_hostnames() {
        let conf = render_sentinel_conf(&SentinelConf {
            bind: "* -::*",
            port: 26379,
            password: "s3cret",
            dir: Path::new("/data/conf"),
            announce_host: "redis-1.ns.svc.cluster.local",
            master_name: "cellstack",
            primary: ("redis-0.ns.svc.cluster.local", 6379),
            quorum: 2,
            down_after_ms: 5000,
            failover_timeout_ms: 20000,
            id: None,
        });
        assert_eq!(
            conf,
            "# Written once by cellstack-cell datastore-init; Sentinel rewrites it from then on.
bind * -::*
port 26379
protected-mode no
dir /data/conf
requirepass s3cret
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip redis-1.ns.svc.cluster.local
sentinel announce-port 26379
sentinel sentinel-pass s3cret
sentinel monitor cellstack redis-0.ns.svc.cluster.local 6379 2
sentinel auth-pass cellstack s3cret
sentinel down-after-milliseconds cellstack 5000
sentinel failover-timeout cellstack 20000
sentinel parallel-syncs cellstack 1
"
        );
        assert_eq!(
            monitored_primary(&conf, "cellstack"),
            Some(("redis-0.ns.svc.cluster.local".into(), 6379))
        );
    }
}
