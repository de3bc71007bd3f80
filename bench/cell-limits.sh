#!/usr/bin/env bash
# Rate-limit checks/s of the cell next to redis-benchmark's own figures on the same machine,
# and the admission path's p50/p99. Installs what it needs (redis-server, redis-benchmark).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
e2e/scripts/install-deps.sh
exec cargo bench --locked -p cellstack-cell --bench limits
