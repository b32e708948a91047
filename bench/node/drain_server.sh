#!/bin/sh
# Runs drain_server.js with node, for `loadgen --server` (which runs one executable).
exec node "$(dirname "$0")/drain_server.js" "$@"
