#!/usr/bin/env bash
# The main job. With arguments, builds clipflow (release) after setting up
# the cached environment and runs it: `bash scripts/run.sh train ...`.
# Without arguments, runs the embedded default: until the training quickstart
# lands, it embeds the photographs scikit-learn ships and a few captions with
# a ViT-B-32 and prints the image-text cosine similarities.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
cargo build --release --quiet
clipflow="$CARGO_TARGET_DIR/release/clipflow"
if [ "$#" -gt 0 ]; then
    exec "$clipflow" "$@"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
photos="$("$CLIPFLOW_VENV/bin/python" -c 'import os, sklearn; print(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images"))')"
printf 'a photo of a temple in china\na photo of a flower\na diagram of a circuit\n' > "$work/captions.txt"
"$clipflow" embed --model ViT-B-32 --device cpu --images "$photos" --texts "$work/captions.txt" \
    --output "$work/features.safetensors"
"$CLIPFLOW_VENV/bin/python" - "$work/features.safetensors" "$work/captions.txt" <<'PY'
import sys
from safetensors.torch import load_file
features = load_file(sys.argv[1])
image = features["image_features"] / features["image_features"].norm(dim=-1, keepdim=True)
text = features["text_features"] / features["text_features"].norm(dim=-1, keepdim=True)
captions = open(sys.argv[2]).read().splitlines()
print(f"image_features {tuple(image.shape)}, text_features {tuple(text.shape)} (random weights: similarities are not meaningful yet)")
for row, name in zip((image @ text.T).tolist(), ["china.jpg", "flower.jpg"]):
    print(name, " ".join(f"{c!r}: {s:+.3f}" for c, s in zip(captions, row)))
PY
