#!/usr/bin/env bash
# The latency the cell runtime adds as the gateway in front of a team's service: the Go example
# (examples/go-orders) called directly and through the runtime, interleaved rounds, p50/p99 and
# their ratios with the spread over rounds. Installs what it needs (redis-server; Go builds the
# example).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
e2e/scripts/install-deps.sh
exec cargo bench --locked -p cellstack-cell --bench gateway
