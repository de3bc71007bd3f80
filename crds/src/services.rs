//! The cell's own services behind the cell runtime (Cell `spec.services`, docs/services.md):
//! how the operator passes each to the runtime (`--service`, [`ServiceSpec`]) and which one
//! takes a request ([`choose`]: the longest route prefix that matches its path).

use std::{fmt, str::FromStr, time::Duration};

use crate::v1alpha1::CellService;

/// The lane container that runs the cell runtime in front of the services; no service may be
/// named so.
pub const RUNTIME_CONTAINER: &str = "cell";
/// Where the runtime serves the tenant state API in a lane (loopback only).
pub const STATE_LISTEN: &str = "127.0.0.1:7070";
/// Separates [`ServiceSpec`]s in the runtime's `CELLSTACK_SERVICES` variable.
pub const SPEC_SEPARATOR: char = ';';

/// One service behind the runtime, from a `--service` value:
/// `name=orders,port=8081,routes=/orders|/jobs,health=/healthz,timeout=10` (`routes`, `health`
/// and `timeout` optional; `timeout` in seconds, default 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    /// Path prefixes it takes; empty: every path no other service claims.
    pub routes: Vec<String>,
    pub health_path: Option<String>,
    pub timeout: Duration,
}

/// A `--service` value the runtime cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--service {value:?}: {reason} (expected name=<name>,port=<port>[,routes=/a|/b][,health=/healthz][,timeout=<seconds>])"
)]
pub struct SpecError {
    pub value: String,
    pub reason: String,
}

impl FromStr for ServiceSpec {
    type Err = SpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SpecError {
            value: value.to_owned(),
            reason,
        };
        let (mut name, mut port, mut routes, mut health, mut timeout) =
            (None, None, vec![], None, Duration::from_secs(10));
        for field in value.split(',').filter(|f| !f.is_empty()) {
            let (key, v) = field
                .split_once('=')
                .ok_or_else(|| fail(format!("{field:?} is not key=value")))?;
            match key {
                "name" if !v.is_empty() => name = Some(v.to_owned()),
                "port" => {
                    port = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| fail(format!("port {v:?} is not 1-65535")))?,
                    );
                }
                "routes" => {
                    routes = v
                        .split('|')
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            if r.starts_with('/') {
                                Ok(r.to_owned())
                            } else {
                                Err(fail(format!("route {r:?} does not start with '/'")))
                            }
                        })
                        .collect::<Result<_, _>>()?;
                }
                "health" if v.starts_with('/') => health = Some(v.to_owned()),
                "health" => return Err(fail(format!("health {v:?} does not start with '/'"))),
                "timeout" => {
                    let secs: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| (1..=300).contains(s))
                        .ok_or_else(|| fail(format!("timeout {v:?} is not 1-300 seconds")))?;
                    timeout = Duration::from_secs(secs);
                }
                other => return Err(fail(format!("unknown or empty field {other:?}"))),
            }
        }
        Ok(Self {
            name: name.ok_or_else(|| fail("no name".into()))?,
            port: port.ok_or_else(|| fail("no port".into()))?,
            routes,
            health_path: health,
            timeout,
        })
    }
}

impl From<&CellService> for ServiceSpec {
    fn from(s: &CellService) -> Self {
        Self {
            name: s.name.clone(),
            port: u16::try_from(s.port).unwrap_or(u16::MAX),
            routes: s.routes.clone(),
            health_path: s.health_path.clone(),
            timeout: Duration::from_secs(u64::from(s.timeout_seconds)),
        }
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name={},port={}", self.name, self.port)?;
        if !self.routes.is_empty() {
            write!(f, ",routes={}", self.routes.join("|"))?;
        }
        if let Some(h) = &self.health_path {
            write!(f, ",health={h}")?;
        }
        write!(f, ",timeout={}", self.timeout.as_secs())
    }
}

/// Why a set of services cannot run together.
pub fn check(services: &[ServiceSpec]) -> Result<(), String> {
    for (i, s) in services.iter().enumerate() {
        if services[..i].iter().any(|t| t.name == s.name) {
            return Err(format!("two services are named {:?}", s.name));
        }
        if services[..i].iter().any(|t| t.port == s.port) {
            return Err(format!("two services listen on port {}", s.port));
        }
        for r in &s.routes {
            if let Some(t) = services[..i].iter().find(|t| t.routes.contains(r)) {
                return Err(format!(
                    "route {r:?} belongs to both {:?} and {:?}",
                    t.name, s.name
                ));
            }
        }
    }
    if services.iter().filter(|s| s.routes.is_empty()).count() > 1 {
        return Err(
            "more than one service has no routes (only one may take every other path)".into(),
        );
    }
    Ok(())
}

/// Whether route prefix `prefix` takes `path`: whole segments only (`/orders` takes `/orders`
/// and `/orders/7`, not `/ordersx`); `/` takes everything.
pub fn takes(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Index of the service that takes `path`: the longest matching route prefix, else the
/// service without routes, else none.
pub fn choose(services: &[ServiceSpec], path: &str) -> Option<usize> {
    services
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.routes.iter().map(move |r| (i, r)))
        .filter(|(_, r)| takes(r, path))
        .max_by_key(|(_, r)| r.trim_end_matches('/').len())
        .map(|(i, _)| i)
        .or_else(|| services.iter().position(|s| s.routes.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(v: &str) -> ServiceSpec {
        v.parse().unwrap()
    }

    #[test]
    fn a_service_value_parses_with_its_defaults_and_prints_back() {
        let s = spec("name=orders,port=8081");
        assert_eq!(
            (s.routes.len(), s.health_path.clone(), s.timeout.as_secs()),
            (0, None, 10)
        );
        let full =
            spec("name=reports,port=8082,routes=/reports|/exports,health=/healthz,timeout=30");
        assert_eq!(full.routes, ["/reports", "/exports"]);
        assert_eq!(spec(&full.to_string()), full);
    }

    #[test]
    fn a_bad_service_value_is_refused_with_the_reason() {
        for (value, reason) in [
            ("port=8081", "no name"),
            ("name=a", "no port"),
            ("name=a,port=0", "not 1-65535"),
            ("name=a,port=8081,routes=orders", "does not start with '/'"),
            ("name=a,port=8081,timeout=0", "not 1-300"),
            ("name=a,port=8081,colour=blue", "unknown"),
            ("name=a,port=8081,health=healthz", "does not start"),
        ] {
            let err = value.parse::<ServiceSpec>().unwrap_err().to_string();
            assert!(err.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn services_that_cannot_share_a_lane_are_named() {
        let a = spec("name=a,port=8081");
        assert!(
            check(&[a.clone(), spec("name=a,port=8082,routes=/x")])
                .unwrap_err()
                .contains("named")
        );
        assert!(
            check(&[a.clone(), spec("name=b,port=8081,routes=/x")])
                .unwrap_err()
                .contains("port")
        );
        assert!(
            check(&[a.clone(), spec("name=b,port=8082")])
                .unwrap_err()
                .contains("no routes")
        );
        let x = spec("name=b,port=8082,routes=/x");
        assert!(
            check(&[x.clone(), spec("name=c,port=8083,routes=/x")])
                .unwrap_err()
                .contains("both")
        );
        assert!(check(&[a, x]).is_ok());
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins_and_the_service_without_routes_takes_the_rest() {
        let services = [
            spec("name=main,port=8081"),
            spec("name=orders,port=8082,routes=/orders"),
            spec("name=audit,port=8083,routes=/orders/audit/"),
        ];
        assert_eq!(choose(&services, "/orders"), Some(1));
        assert_eq!(choose(&services, "/orders/7"), Some(1));
        assert_eq!(choose(&services, "/orders/audit"), Some(2));
        assert_eq!(choose(&services, "/orders/audit/3"), Some(2));
        assert_eq!(choose(&services, "/ordersx"), Some(0));
        assert_eq!(choose(&services, "/"), Some(0));
        assert_eq!(choose(&services[1..], "/elsewhere"), None);
    }

    proptest! {
        /// Whatever the path, the chosen service has a route that takes it or has none.
        #[test]
        fn the_chosen_service_takes_the_path(path in "(/[a-z]{0,3}){0,4}") {
            let services = [
                spec("name=orders,port=8082,routes=/a|/a/b"),
                spec("name=rest,port=8081"),
                spec("name=c,port=8083,routes=/c/"),
            ];
            let i = choose(&services, &path).unwrap();
            let s = &services[i];
            prop_assert!(s.routes.is_empty() || s.routes.iter().any(|r| takes(r, &path)));
            if s.routes.is_empty() {
                prop_assert!(services.iter().all(|t| t.routes.iter().all(|r| !takes(r, &path))));
            }
        }
    }
}
