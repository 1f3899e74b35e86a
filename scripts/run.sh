#!/usr/bin/env bash
# The main job. Sets up the cached environment, builds clipflow (release)
# and, without arguments, runs the embedded default, `clipflow quickstart`:
# renders a small image-caption dataset, trains a small CLIP on it on the
# CPU in a few minutes and prints its zero-shot accuracy on held-out images.
# With arguments, runs clipflow with them: `bash scripts/run.sh train ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
cargo build --release --quiet
clipflow="$CARGO_TARGET_DIR/release/clipflow"
if [ "$#" -gt 0 ]; then
    exec "$clipflow" "$@"
fi
exec "$clipflow" quickstart --dir "${CLIPFLOW_QUICKSTART_DIR:-quickstart}"
