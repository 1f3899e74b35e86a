#!/usr/bin/env bash
# One-time setup shared by every clone: a Python environment holding the
# libtorch that tch links against (PyPI's torch wheel) and OpenCLIP, the
# oracle the tests compare with. It lives in a versioned cache outside the
# work tree, so clones and CI reuse it; running it again is a no-op.
#
# Prints shell `export` lines for the build environment on stdout when called
# with --print-env; everything else goes to stderr: one line per step with
# how long it took, the installers' own output kept in
# $CLIPFLOW_CACHE/setup-logs/ and shown only when a step fails.
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
# so the shim builds the NCCL backend. timm is pinned to the release that
# core/src/model/timm_configs.json was read from, so OpenCLIP's timm towers
# in the oracle are the ones clipflow builds; transformers is what OpenCLIP's
# HFTokenizer loads HuggingFace tokenizers with.
# The stamp records this list, so changing it reinstalls.
REQUIREMENTS="torch==$TORCH_VERSION open_clip_torch==$OPENCLIP_VERSION timm==1.0.31 transformers==5.24.0 safetensors pillow scikit-learn scikit-image pandas webdataset==0.2.86 tensorboard wandb moto[server]==5.2.5 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"

log() { echo "[setup] $*" >&2; }

# step NAME HINT COMMAND...: runs COMMAND with its output kept in
# $CACHE/setup-logs/NAME.log, then prints one line with how long it took;
# when it fails, prints the end of that log and HINT (what to do), and stops.
LOGS="$CACHE/setup-logs"
step() {
    local name="$1" hint="$2"
    shift 2
    mkdir -p "$LOGS"
    local output="$LOGS/$name.log" started=$SECONDS
    log "$name ..."
    if "$@" >"$output" 2>&1; then
        log "$name: done in $((SECONDS - started)) s"
    else
        log "$name FAILED after $((SECONDS - started)) s; the end of $output:"
        tail -n 30 "$output" >&2
        log "$hint"
        exit 1
    fi
}

PIP_HINT="pip could not install the packages: check the network (or HTTPS_PROXY) and that this machine reaches the Python package index, then run this script again"

if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    log "preparing the Python environment $VENV (torch $TORCH_VERSION, open_clip_torch $OPENCLIP_VERSION and the test packages; a few minutes the first time)"
    mkdir -p "$CACHE"
    [ -x "$VENV/bin/python" ] || step python-venv \
        "python3 could not create a virtual environment: install python3-venv (apt-get install python3-venv) and run this script again" \
        python3 -m venv "$VENV"
    step pip-upgrade "$PIP_HINT" \
        "$VENV/bin/pip" install --disable-pip-version-check --upgrade pip
    # shellcheck disable=SC2086 # the list is split on purpose
    step pip-install "$PIP_HINT" \
        "$VENV/bin/pip" install --disable-pip-version-check $REQUIREMENTS
    echo "$REQUIREMENTS" > "$STAMP"
else
    log "python environment ready: $VENV"
fi

# The nasm assembler lets the JPEG decoder (mozjpeg-sys) build libjpeg-turbo's
# SIMD code, about twice as fast as its plain C code with the same pixels.
# Without nasm the build still works, with the C decoder.
if ! command -v nasm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        install_nasm() { apt-get install -y -qq nasm || { apt-get update -qq && apt-get install -y -qq nasm; }; }
        # A machine without nasm still builds (with libjpeg's C code), so a
        # failure here is reported, not fatal.
        (step nasm "could not install nasm; the build goes on with libjpeg's slower C code (install nasm and rebuild for SIMD JPEG decoding)" \
            install_nasm) || true
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
