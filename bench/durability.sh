#!/usr/bin/env bash
# The cost of durability per write through one cell: Ephemeral (one Redis, AOF everysec),
# appendfsync always, and replica acknowledgement (the default: WAIT 1 on a primary with two
# replicas), side by side in interleaved rounds. Installs what it needs (redis-server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
e2e/scripts/install-deps.sh
exec cargo bench --locked -p cellstack-cell --bench durability
