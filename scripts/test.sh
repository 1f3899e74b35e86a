#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up the cached Python
# environment (libtorch + the OpenCLIP oracle) if needed, then runs every
# Rust test (unit, integration and oracle-parity tests).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
cargo test --workspace --no-fail-fast "$@"
