#!/usr/bin/env bash
# Builds clipflow (release) after setting up the cached environment, then
# runs it with the given arguments: `bash scripts/run.sh train ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
cargo build --release --quiet
exec "$CARGO_TARGET_DIR/release/clipflow" "$@"
