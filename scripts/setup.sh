#!/usr/bin/env bash
# One-time setup shared by every clone: a Python environment holding the
# libtorch that tch links against (PyPI's torch wheel) and OpenCLIP, the
# oracle the tests compare with. It lives in a versioned cache outside the
# work tree, so clones and CI reuse it; running it again is a no-op.
#
# Prints shell `export` lines for the build environment on stdout when called
# with --print-env; everything else goes to stderr.
set -euo pipefail

TORCH_VERSION=2.11.0
OPENCLIP_VERSION=3.3.0
CACHE="${CLIPFLOW_CACHE:-$HOME/.cache/clipflow}"
VENV="$CACHE/py311-torch${TORCH_VERSION}-openclip${OPENCLIP_VERSION}"
STAMP="$VENV/.clipflow-ready"
# What the environment holds besides torch and OpenCLIP: safetensors and
# pillow for the oracle scripts, scikit-learn and scikit-image for the
# photographs their wheels ship (test images), pandas and webdataset 0.2.86
# for open_clip_train.data (newer webdataset releases break OpenCLIP 3.3.0's
# loader), tensorboard (its event reader checks our event files) and wandb
# (the official SDK our --report-to wandb sidecar drives), moto's server (an
# S3 endpoint on localhost, which the object-store tests stream shards from),
# and the CUDA 13.0 runtime headers (nvidia-cuda-crt, nvidia-cuda-cccl) that
# libtorch's ProcessGroupNCCL header needs beside the nccl.h torch pulls in,
# so the shim builds the NCCL backend.
# The stamp records this list, so changing it reinstalls.
REQUIREMENTS="torch==$TORCH_VERSION open_clip_torch==$OPENCLIP_VERSION safetensors pillow scikit-learn scikit-image pandas webdataset==0.2.86 tensorboard wandb moto[server]==5.2.5 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"

log() { echo "[setup] $*" >&2; }

if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    log "preparing $VENV ($REQUIREMENTS)"
    mkdir -p "$CACHE"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
    # shellcheck disable=SC2086 # the list is split on purpose
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS >&2
    echo "$REQUIREMENTS" > "$STAMP"
else
    log "python environment ready: $VENV"
fi

# The nasm assembler lets the JPEG decoder (mozjpeg-sys) build libjpeg-turbo's
# SIMD code, about twice as fast as its plain C code with the same pixels.
# Without nasm the build still works, with the C decoder.
if ! command -v nasm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing nasm (SIMD JPEG decoding)"
        { apt-get install -y -qq nasm || { apt-get update -qq && apt-get install -y -qq nasm; }; } >&2 \
            || log "could not install nasm: JPEG decoding will use libjpeg's slower C code"
    else
        log "nasm not found: install it for SIMD JPEG decoding (the build falls back to C code)"
    fi
fi

if [ "${1:-}" = "--print-env" ]; then
    TORCH_LIB="$("$VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    echo "export CLIPFLOW_VENV='$VENV'"
    echo "export PATH='$VENV/bin':\"\$PATH\""
    echo "export LIBTORCH_USE_PYTORCH=1"
    echo "export CLIPFLOW_TORCH_LIB='$TORCH_LIB'"
    echo "export CARGO_TARGET_DIR=\"\${CARGO_TARGET_DIR:-$CACHE/target}\""
fi
