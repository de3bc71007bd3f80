//! Where other clusters reach a cell's lanes (docs/multicluster.md, D7): with `--multicluster`
//! each lane Service is a `NodePort` (`externalTrafficPolicy: Cluster`, so any live node forwards
//! to the lane wherever it runs), and the cell publishes one `node:nodePort` per lane.
//!
//! The node is chosen to stay put: a routing table that cannot be republished (the management
//! cluster down) keeps naming it, so lane *i* keeps its previous node while that node is
//! [eligible](NodeAddress::eligible); else it takes the node its pod runs on; else (the pod not
//! placed) the eligible node at index *i* modulo their number, sorted by name. Pure: the
//! controller reads the Nodes, Pods and Services and passes what matters here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use cellstack_api::v1alpha1::{Cell, NodeAddressType};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::names::{ADMIN_PORT, HTTP_PORT};

/// One Node as the choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub name: String,
    /// Its address of the configured type; `None`: it has none (never chosen).
    pub address: Option<IpAddr>,
    /// `Ready=True` and not cordoned: it can be chosen. A cordoned node forwards too, but is on
    /// its way out (a drain, an upgrade), so lanes leave it while the table can still change.
    pub eligible: bool,
}

/// One lane as the choice sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanePorts {
    /// The node its pod runs on, if placed.
    pub node: Option<String>,
    /// The node port of its tenant port, once allocated.
    pub http: Option<u16>,
    /// The node port of its admin port, once allocated.
    pub admin: Option<u16>,
}

/// The addresses a cell publishes for other clusters, by lane number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneAddresses {
    /// `node:nodePort` of each lane's tenant port (`status.crossClusterEndpoints`).
    pub tenant: Vec<String>,
    /// `node:nodePort` of each lane's admin port (`status.crossClusterAdminEndpoints`).
    pub admin: Vec<String>,
}

/// Chooses a node for every lane of `lanes` (in lane order), sticking to the node each had in
/// `previous` (the cell's last `crossClusterEndpoints`) while it is eligible. While no node at
/// all is eligible (the whole cluster briefly not Ready), a lane keeps its previous address:
/// better one that may work than taking the cell out of other clusters' tables. All or nothing:
/// `None` while any lane has no node port or no address, so a partial list (which would shift
/// lane numbers) is never published.
pub fn lane_addresses(
    previous: &[String],
    lanes: &[LanePorts],
    nodes: &[NodeAddress],
) -> Option<LaneAddresses> {
    let mut usable: Vec<(&str, IpAddr)> = nodes
        .iter()
        .filter(|n| n.eligible)
        .filter_map(|n| Some((n.name.as_str(), n.address?)))
        .collect();
    usable.sort();
    let by_name: BTreeMap<&str, IpAddr> = usable.iter().copied().collect();
    let previous_ip = |i: usize| Some(previous.get(i)?.parse::<SocketAddr>().ok()?.ip());
    let choose = |i: usize, lane: &LanePorts| -> Option<IpAddr> {
        if usable.is_empty() {
            return previous_ip(i);
        }
        let sticky = previous_ip(i).filter(|ip| usable.iter().any(|(_, a)| a == ip));
        Some(
            sticky
                .or_else(|| lane.node.as_deref().and_then(|n| by_name.get(n).copied()))
                .unwrap_or(usable[i % usable.len()].1),
        )
    };
    let mut out = LaneAddresses::default();
    for (i, lane) in lanes.iter().enumerate() {
        let (http, admin) = (lane.http?, lane.admin?);
        let ip = choose(i, lane)?;
        out.tenant.push(SocketAddr::new(ip, http).to_string());
        out.admin.push(SocketAddr::new(ip, admin).to_string());
    }
    Some(out)
}

/// Where the operator — in the management cluster — reaches the admin port of each of `cell`'s
/// lanes, `host:port` in lane order: a cell in the operator's own cluster at its lane Services'
/// ClusterIPs (`status.endpoints`, at the admin port), one in a member cluster at its node ports
/// (`status.crossClusterAdminEndpoints`, published with `--multicluster`). Empty while there are
/// none: a member's ClusterIPs mean nothing here.
pub fn admin_addresses(cell: &Cell) -> Vec<String> {
    let Some(status) = cell.status.as_ref() else {
        return Vec::new();
    };
    if cell.spec.cluster.is_some() {
        return status.cross_cluster_admin_endpoints.clone();
    }
    // `status.endpoints` is written as a socket address (`apply::endpoints`); anything else
    // could not be called correctly and is left out.
    let admin_port = u16::try_from(ADMIN_PORT).unwrap_or_default();
    status
        .endpoints
        .iter()
        .filter_map(|e| e.parse::<SocketAddr>().ok())
        .map(|a| SocketAddr::new(a.ip(), admin_port).to_string())
        .collect()
}

/// Whether lanes' cross-cluster addresses may name `node`: `Ready=True`, not cordoned and not
/// being deleted (a cordoned node forwards too, but is on its way out: a drain, an upgrade).
pub fn eligible(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    ready && !cordoned && node.metadata.deletion_timestamp.is_none()
}

/// `node`'s addresses of type `kind`, in its order.
fn addresses_of(node: &Node, kind: NodeAddressType) -> impl Iterator<Item = IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(move |a| a.type_ == kind.as_str())
        .filter_map(|a| a.address.parse().ok())
}

/// What [`lane_addresses`] needs of each Node: its first address of type `kind`, and whether
/// it may be chosen.
pub fn nodes_of(nodes: &[Node], kind: NodeAddressType) -> Vec<NodeAddress> {
    nodes
        .iter()
        .filter_map(|node| {
            Some(NodeAddress {
                name: node.metadata.name.clone()?,
                address: addresses_of(node, kind).next(),
                eligible: eligible(node),
            })
        })
        .collect()
}

/// What [`lane_addresses`] needs of each lane: the node ports of `services` (the lane Services
/// in lane order, named as `lane_pods`' pods are) and the node each pod runs on.
pub fn lanes_of(services: &[Service], lane_pods: &[Pod]) -> Vec<LanePorts> {
    services
        .iter()
        .map(|svc| {
            let node_port = |port: i32| {
                svc.spec
                    .as_ref()?
                    .ports
                    .as_ref()?
                    .iter()
                    .find(|p| p.port == port)?
                    .node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            };
            let node = lane_pods
                .iter()
                .find(|p| p.metadata.name == svc.metadata.name)
                .and_then(|p| p.spec.as_ref()?.node_name.clone());
            LanePorts {
                node,
                http: node_port(HTTP_PORT),
                admin: node_port(ADMIN_PORT),
            }
        })
        .collect()
}

/// The blocks the cell's NetworkPolicy admits on the lanes' two ports: every node's
/// `InternalIP`, whatever its readiness, as a host block (kube-proxy SNATs node-port traffic one
/// node forwards to a lane on another to the forwarding node's address), and the `configured`
/// sources of other clusters' traffic (a lane on the node it arrives at sees the client's own
/// address), host bits dropped (`10.0.0.5/24` is `10.0.0.0/24`: the API server may refuse the
/// former under strict CIDR validation); sorted, without duplicates.
pub fn policy_sources(nodes: &[Node], configured: &[IpNet]) -> Vec<IpNet> {
    let mut sources: Vec<IpNet> = nodes
        .iter()
        .flat_map(|n| addresses_of(n, NodeAddressType::InternalIP))
        .map(IpNet::from)
        .chain(configured.iter().map(IpNet::trunc))
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u8, eligible: bool) -> NodeAddress {
        NodeAddress {
            name: format!("node-{i}"),
            address: Some(IpAddr::from([10, 0, 0, i])),
            eligible,
        }
    }

    fn lane(node: Option<u8>, port: u16) -> LanePorts {
        LanePorts {
            node: node.map(|n| format!("node-{n}")),
            http: Some(port),
            admin: Some(port + 1),
        }
    }

    #[test]
    fn a_lane_takes_its_pods_node_then_keeps_it_after_the_pod_moves() {
        let nodes = [node(1, true), node(2, true), node(3, true)];
        let first = lane_addresses(&[], &[lane(Some(2), 30000)], &nodes).expect("addresses");
        assert_eq!(first.tenant, ["10.0.0.2:30000"]);
        assert_eq!(first.admin, ["10.0.0.2:30001"]);
        let moved = lane_addresses(&first.tenant, &[lane(Some(3), 30000)], &nodes);
        assert_eq!(moved.expect("addresses").tenant, ["10.0.0.2:30000"]);
    }

    #[test]
    fn a_lane_leaves_a_node_no_longer_eligible_or_gone() {
        let previous = ["10.0.0.1:30000".to_owned()];
        let lanes = [lane(Some(3), 30000)];
        let not_ready = [node(1, false), node(2, true), node(3, true)];
        assert_eq!(
            lane_addresses(&previous, &lanes, &not_ready)
                .expect("addresses")
                .tenant,
            ["10.0.0.3:30000"]
        );
        let gone = [node(2, true), node(3, true)];
        assert_eq!(
            lane_addresses(&previous, &lanes, &gone)
                .expect("addresses")
                .tenant,
            ["10.0.0.3:30000"]
        );
    }

    #[test]
    fn a_node_is_eligible_only_ready_uncordoned_and_staying_and_offers_its_address_of_the_type() {
        let node = |name: &str, ready: &str, cordoned: bool, leaving: bool| -> Node {
            let mut node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"unschedulable": cordoned},
                "status": {
                    "conditions": [{"type": "Ready", "status": ready}],
                    "addresses": [
                        {"type": "Hostname", "address": name},
                        {"type": "InternalIP", "address": "10.0.0.1"},
                        {"type": "ExternalIP", "address": "203.0.113.1"},
                    ],
                },
            }))
            .expect("a Node");
            if leaving {
                node.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ));
            }
            node
        };
        let nodes = [
            node("ready", "True", false, false),
            node("not-ready", "False", false, false),
            node("unknown", "Unknown", false, false),
            node("cordoned", "True", true, false),
            node("leaving", "True", false, true),
        ];
        let internal = nodes_of(&nodes, NodeAddressType::InternalIP);
        let eligible: Vec<&str> = internal
            .iter()
            .filter(|n| n.eligible)
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(eligible, ["ready"]);
        assert!(
            internal
                .iter()
                .all(|n| n.address == Some(IpAddr::from([10, 0, 0, 1])))
        );
        let external = nodes_of(&nodes[..1], NodeAddressType::ExternalIP);
        assert_eq!(external[0].address, Some(IpAddr::from([203, 0, 113, 1])));
        // Every node forwards, whatever its state: all are sources; configured blocks join,
        // host bits dropped, without duplicates.
        let configured: Vec<IpNet> = vec![
            "192.168.7.9/16".parse().expect("net"),
            "10.0.0.1/32".parse().expect("net"),
        ];
        assert_eq!(
            policy_sources(&nodes, &configured)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.1/32", "192.168.0.0/16"]
        );
    }

    #[test]
    fn an_unplaced_lane_takes_the_eligible_node_at_its_index() {
        let nodes = [node(3, true), node(1, true), node(2, false)];
        let lanes = [lane(None, 30000), lane(None, 30010), lane(None, 30020)];
        let out = lane_addresses(&[], &lanes, &nodes).expect("addresses");
        // Eligible, by name: node-1, node-3.
        assert_eq!(
            out.tenant,
            ["10.0.0.1:30000", "10.0.0.3:30010", "10.0.0.1:30020"]
        );
    }

    #[test]
    fn nothing_is_published_until_every_lane_has_its_node_ports_and_a_node_exists() {
        let nodes = [node(1, true)];
        let unallocated = LanePorts {
            http: None,
            ..lane(Some(1), 30000)
        };
        assert_eq!(
            lane_addresses(&[], &[lane(Some(1), 30000), unallocated], &nodes),
            None
        );
        assert_eq!(
            lane_addresses(&[], &[lane(Some(1), 30000)], &[node(1, false)]),
            None
        );
        let no_address = NodeAddress {
            address: None,
            ..node(1, true)
        };
        assert_eq!(
            lane_addresses(&[], &[lane(Some(1), 30000)], &[no_address]),
            None
        );
    }

    #[test]
    fn while_no_node_is_eligible_each_lane_keeps_its_previous_node_with_its_current_ports() {
        let previous = ["10.0.0.1:30000".to_owned(), "10.0.0.2:30010".to_owned()];
        let nodes = [node(1, false), node(2, false)];
        let lanes = [lane(Some(1), 30000), lane(Some(2), 30020)];
        let out = lane_addresses(&previous, &lanes, &nodes).expect("addresses");
        assert_eq!(out.tenant, ["10.0.0.1:30000", "10.0.0.2:30020"]);
        // A lane that had none gets none, and so the cell publishes none.
        let three = [lanes[0].clone(), lanes[1].clone(), lane(None, 30040)];
        assert_eq!(lane_addresses(&previous, &three, &nodes), None);
    }

    #[test]
    fn an_ipv6_node_address_is_bracketed() {
        let v6 = NodeAddress {
            name: "n".into(),
            address: Some("fd00::7".parse().expect("ip")),
            eligible: true,
        };
        let out = lane_addresses(&[], &[lane(None, 30000)], std::slice::from_ref(&v6))
            .expect("addresses");
        assert_eq!(out.tenant, ["[fd00::7]:30000"]);
        // And it is recognised as the previous node next time.
        assert_eq!(
            lane_addresses(&out.tenant, &[lane(None, 30000)], &[v6]),
            Some(out)
        );
    }

    #[test]
    fn the_operator_calls_its_own_clusters_lanes_at_their_cluster_ips_and_a_members_at_node_ports()
    {
        use crate::fixtures::CellFixture;
        let local = Cell::test("alpha")
            .serving(&["10.96.0.1:8080", "[fd00::1]:8080"])
            .reachable_across_clusters_at(&["192.168.1.1:30001", "192.168.1.2:30003"]);
        let mut local_status = local.status.clone().expect("status");
        local_status.cross_cluster_admin_endpoints =
            vec!["192.168.1.1:30002".into(), "192.168.1.2:30004".into()];
        let local = Cell {
            status: Some(local_status.clone()),
            ..local
        };
        assert_eq!(
            admin_addresses(&local),
            ["10.96.0.1:9090", "[fd00::1]:9090"]
        );
        let member = Cell {
            status: Some(local_status),
            ..Cell::test("delta").in_cluster("east")
        };
        assert_eq!(
            admin_addresses(&member),
            ["192.168.1.1:30002", "192.168.1.2:30004"]
        );
        // A member cell without node ports (no `--multicluster`): nothing to call.
        let unexposed = Cell::test("echo")
            .in_cluster("east")
            .serving(&["10.97.0.1:8080"]);
        assert!(admin_addresses(&unexposed).is_empty());
        assert!(admin_addresses(&Cell::test("new")).is_empty());
    }

    fn nodes_strategy() -> impl Strategy<Value = Vec<NodeAddress>> {
        proptest::collection::btree_map(0u8..12, (any::<bool>(), any::<bool>()), 0..8).prop_map(
            |m| {
                m.into_iter()
                    .map(|(i, (eligible, has_address))| NodeAddress {
                        address: has_address.then(|| IpAddr::from([10, 0, 0, i])),
                        ..node(i, eligible)
                    })
                    .collect()
            },
        )
    }

    fn lanes_strategy() -> impl Strategy<Value = Vec<LanePorts>> {
        proptest::collection::vec(proptest::option::of(0u8..12), 0..6).prop_map(|nodes| {
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| lane(n, 30000 + 2 * i as u16))
                .collect()
        })
    }

    proptest! {
        /// Every address names an eligible node with an address (or, with none eligible, the
        /// lane's previous one) and the lane's own node ports; the list is complete or absent.
        #[test]
        fn every_address_is_an_eligible_node_and_the_lanes_ports(
            nodes in nodes_strategy(),
            lanes in lanes_strategy(),
            previous in proptest::collection::vec("10\\.0\\.0\\.[0-9]{1,2}:3[0-9]{4}", 0..6),
        ) {
            let usable: Vec<IpAddr> = nodes
                .iter()
                .filter(|n| n.eligible)
                .filter_map(|n| n.address)
                .collect();
            let previous_ip = |i: usize| -> Option<IpAddr> {
                Some(previous.get(i)?.parse::<SocketAddr>().ok()?.ip())
            };
            match lane_addresses(&previous, &lanes, &nodes) {
                None => prop_assert!(
                    usable.is_empty() && (0..lanes.len()).any(|i| previous_ip(i).is_none())
                ),
                Some(out) => {
                    prop_assert_eq!(out.tenant.len(), lanes.len());
                    prop_assert_eq!(out.admin.len(), lanes.len());
                    for (i, lane) in lanes.iter().enumerate() {
                        let tenant: SocketAddr = out.tenant[i].parse().expect("socket address");
                        let admin: SocketAddr = out.admin[i].parse().expect("socket address");
                        if usable.is_empty() {
                            prop_assert_eq!(Some(tenant.ip()), previous_ip(i));
                        } else {
                            prop_assert!(usable.contains(&tenant.ip()));
                        }
                        prop_assert_eq!(tenant.ip(), admin.ip());
                        prop_assert_eq!(Some(tenant.port()), lane.http);
                        prop_assert_eq!(Some(admin.port()), lane.admin);
                    }
                }
            }
        }

        /// Sticky: fed its own answer back, with the lanes' pods moved anywhere and nodes
        /// added, the choice does not change while every chosen node stays eligible.
        #[test]
        fn a_lane_keeps_its_node_while_that_node_stays_eligible(
            nodes in nodes_strategy(),
            lanes in lanes_strategy(),
            moved in lanes_strategy(),
            extra in nodes_strategy(),
        ) {
            let Some(first) = lane_addresses(&[], &lanes, &nodes) else {
                return Ok(());
            };
            // The same lanes (same ports), their pods now on other nodes.
            let relocated: Vec<LanePorts> = lanes
                .iter()
                .enumerate()
                .map(|(i, l)| LanePorts {
                    node: moved.get(i).and_then(|m| m.node.clone()),
                    ..l.clone()
                })
                .collect();
            let mut more = nodes.clone();
            more.extend(extra.into_iter().map(|n| NodeAddress {
                name: format!("extra-{}", n.name),
                address: n.address.map(|_| IpAddr::from([10, 1, 0, 1])),
                ..n
            }));
            let again = lane_addresses(&first.tenant, &relocated, &more);
            prop_assert_eq!(again, Some(first));
        }
    }
}
