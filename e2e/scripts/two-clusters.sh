#!/usr/bin/env bash
# A second cluster beside the running one (docs/local-cluster.md, "A second cluster"): boots
# member1 (index 1, one node) next to the cluster of CELLSTACK_CLUSTER_DIR (or the default one),
# peers them, checks what the peering must provide and nothing more, and tears member1 down
# again, checking that it left nothing behind and that the first cluster stayed healthy.
#
#   - each side's nodes reach the other's node addresses (a kubelet's /healthz), and a pod of
#     the first cluster reaches a member node (masqueraded to its node on the way out);
#   - the member's pod and service ranges are not routed from the first cluster;
#   - `partition` cuts the link and `heal` restores it;
#   - after member1's `down`: no network namespace, interface, iptables chain, cgroup, mount or
#     state of it, and the first cluster still healthy.
#
# Usage: e2e/scripts/two-clusters.sh   (root; the first cluster up; KUBECONFIG its own)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
log_prefix=two-clusters
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

first_dir="$(realpath -m "${CELLSTACK_CLUSTER_DIR:-/tmp/cellstack-cluster}")"
member_dir="$(realpath -m "${CELLSTACK_MEMBER_CLUSTER_DIR:-$(dirname "$first_dir")/$(basename "$first_dir")-member1}")"
first() { CELLSTACK_CLUSTER_DIR="$first_dir" "$repo/e2e/cluster" "$@"; }
member() {
  CELLSTACK_CLUSTER_DIR="$member_dir" CELLSTACK_CLUSTER_NAME=member1 CELLSTACK_CLUSTER_INDEX=1 \
    CELLSTACK_NODES=1 "$repo/e2e/cluster" "$@"
}
kubectl=("$K8S_BIN_DIR/kubectl" --kubeconfig "$first_dir/control-plane/kubeconfig")

[ "$(id -u)" = 0 ] || die "needs root (it boots a cluster)"
first status >/dev/null || die "the first cluster ($first_dir) is not up and healthy"

# What the machine looks like without member1: compared after its down.
snapshot() {
  {
    ip netns list | awk '{ print "netns", $1 }'
    ip -o link | awk -F': ' '{ print "link", $2 }' | cut -d@ -f1
    iptables -S | awk '$1 == "-N" { print "chain", $2 }'
    ls -d /sys/fs/cgroup/*/cellstack* 2>/dev/null | sed 's/^/cgroup /'
    awk '{ print "mount", $5 }' /proc/self/mountinfo | grep -F -- "$member_dir" || true
    if [ -e "$member_dir" ]; then echo "state $member_dir"; fi
  } | sort
}
before="$(snapshot)"

cleanup() {
  local rc=$?
  trap - EXIT
  member down >/dev/null 2>&1 || log "warning: member1's down failed (run: CELLSTACK_CLUSTER_DIR=$member_dir CELLSTACK_CLUSTER_NAME=member1 CELLSTACK_CLUSTER_INDEX=1 e2e/cluster down)"
  exit "$rc"
}
trap cleanup EXIT

started=$SECONDS
member up 2>&1 | sed -u 's/^/  /' >&2
[ "${PIPESTATUS[0]}" = 0 ] || die "member1 did not come up (logs in $member_dir/logs)"
log "member1 is up beside the first cluster in $((SECONDS - started))s"
member peer "$first_dir"

read -r first_node _ first_ip _ < <(first nodes | head -n1)
read -r member_node _ member_ip member_pods _ < <(member nodes | head -n1)
healthz() { ip netns exec "$1" curl --silent --fail --max-time 3 "http://$2:10248/healthz"; }
[ "$(healthz "$member_node" "$first_ip")" = ok ] || die "$member_node does not reach $first_node ($first_ip)"
[ "$(healthz "$first_node" "$member_ip")" = ok ] || die "$first_node does not reach $member_node ($member_ip)"
log "the nodes reach each other's node addresses across the peering"

# A pod of the first cluster: out through its node (masqueraded), to the member node's kubelet.
probe="two-clusters-probe-$$"
eval "$("$here/images.sh" tags | grep BUSYBOX)"   # CELLSTACK_E2E_BUSYBOX_IMAGE
"${kubectl[@]}" run "$probe" --image="$CELLSTACK_E2E_BUSYBOX_IMAGE" --restart=Never \
  --image-pull-policy=Never --labels=app=two-clusters-probe -- \
  sh -c "printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -w 3 $member_ip 10248" >/dev/null
phase=""
for _ in $(seq 1 60); do
  phase="$("${kubectl[@]}" get pod "$probe" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  case "$phase" in Succeeded | Failed) break ;; esac
  sleep 1
done
answer="$("${kubectl[@]}" logs "$probe" 2>/dev/null | tail -n1 || true)"
"${kubectl[@]}" delete pod "$probe" --now --wait=false >/dev/null 2>&1 || true
[ "$phase" = Succeeded ] && [ "$answer" = ok ] ||
  die "a pod of the first cluster did not reach $member_ip:10248 (phase '$phase', answer '$answer')"
log "a pod of the first cluster reaches the member's node address"

# Only node networks are routed: not the member's pod range.
if ip netns exec "$first_node" ip route get "${member_pods%/*}" 2>/dev/null | grep -q 'via'; then
  die "$first_node routes the member's pod range $member_pods: only node networks may be"
fi

member partition
if healthz "$first_node" "$member_ip" >/dev/null; then die "the partition let $first_node reach $member_ip"; fi
member heal
[ "$(healthz "$first_node" "$member_ip")" = ok ] || die "after heal, $first_node does not reach $member_ip"
log "partition cuts the link, heal restores it"

trap - EXIT
member down 2>&1 | sed -u 's/^/  /' >&2
after="$(snapshot)"
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") >&2 || true
  die "member1 left something behind (above: < before it came up, > after its down)"
fi
first status >/dev/null || die "the first cluster is not healthy after member1 came and went"
log "member1 is gone without a trace; the first cluster is healthy ($((SECONDS - started))s in all)"
