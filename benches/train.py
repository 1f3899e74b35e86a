"""End-to-end training benchmark: `clipflow train` beside OpenCLIP's
`python -m open_clip_train.main` with the same flags, shards and cores.

Both sides train one epoch of fp32 CLIP on CPU from webdataset shards of real
photographs (scripts/make_test_shards.py), with the same batch size, loader
workers, learning rate and number of samples, logging every step. Speed is
read from each run's out.log: the `Batch (t)` of every `Train Epoch` line is
the wall time of one step, data loading included, as both tools measure it.
The first steps are warm-up (loader start, first allocations) and are left
out of the steady-state rate; process start-up and the model build come before
the first step and are never counted. Peak memory is the largest PSS summed
over the process tree (OpenCLIP's loader workers are processes, clipflow's are
threads), sampled every 50 ms.

The models are (a) a small ViT, written here as an OpenCLIP model config
(OpenCLIP registers it with `add_model_config`; clipflow reads the same JSON
file), (b) ViT-B-32, and (c) timm image towers beside a 4-layer text tower,
also configs written here: the SigLIP ViT-B/16 tower with its MAP head
(`timm`), EVA02-B-16's Eva tower (`eva`) and convnext_tiny (`convnext`);
clipflow builds the timm trunk natively, OpenCLIP through timm. The tools run interleaved (OpenCLIP, clipflow,
OpenCLIP, clipflow, ...) so that a change in the machine's load hits both.

Prints one JSON line per run, then one JSON line per model with each side's
median and spread and the ratio clipflow / OpenCLIP, then a table.

usage: python benches/train.py CLIPFLOW_BIN [--models tiny,ViT-B-32,timm,eva,convnext] [--repeats R]
       [--workers W] [--tiny-batch-size B] [--tiny-steps S] [--b32-batch-size B]
       [--b32-steps S] [--timm-batch-size B] [--timm-steps S] [--warmup-steps K]
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from data_loader import peak_tree_pss_until_exit

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The small ViT: OpenCLIP's config format, registered under the file's stem.
TINY_NAME = "bench-vit-tiny"
TINY_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}

# timm image towers as OpenCLIP's TimmModel wraps them, each with a small
# text tower (names not *siglip*: OpenCLIP would give such a name its SigLIP
# tokenizer): --models key -> (config name, embed_dim, vision_cfg).
SMALL_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 4}
TIMM_TOWERS = {
    # The SigLIP B/16 tower with its MAP head, as ViT-B-16-SigLIP has it.
    "timm": ("bench-timm-map", 768, {
        "image_size": 224, "timm_model_name": "vit_base_patch16_siglip_224",
        "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
    }),
    # EVA02-B-16's Eva tower (rotary embedding, SwiGLU), its own head projecting.
    "eva": ("bench-timm-eva", 512, {
        "image_size": 224, "timm_model_name": "eva02_base_patch16_clip_224",
        "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None,
    }),
    # convnext_tiny's ConvNeXt tower with OpenCLIP's linear head.
    "convnext": ("bench-timm-convnext", 1024, {
        "image_size": 224, "timm_model_name": "convnext_tiny",
        "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
    }),
}

# Runs open_clip_train.main after registering the model configs of the
# folder given first.
OPENCLIP_MAIN = (
    "import sys, open_clip; from open_clip_train.main import main; "
    "open_clip.add_model_config(sys.argv[1]); main(sys.argv[2:])"
)

BATCH_TIME = re.compile(r"Train Epoch: \d+ \[.*\] Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+),")


def step_times(out_log):
    """(data time, batch time) in seconds of every logged step of out.log."""
    with open(out_log) as f:
        return [(float(m[1]), float(m[2])) for m in map(BATCH_TIME.search, f) if m]


def run_once(side, cmd, logs, name, batch_size, steps, warmup_steps):
    """Runs one training epoch; returns its measurements."""
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = peak_tree_pss_until_exit(proc)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{side} failed with {proc.returncode}:\n{proc.stderr.read()[-4000:]}")
    times = step_times(logs / name / "out.log")
    if len(times) != steps:
        sys.exit(f"{side}: expected {steps} logged steps in {logs / name / 'out.log'}, found {len(times)}")
    steady = times[warmup_steps:]
    steady_seconds = sum(batch for _, batch in steady)
    epoch_seconds = sum(batch for _, batch in times)
    return {
        "side": side,
        "steps": steps,
        "batch_size": batch_size,
        "samples_per_second": len(steady) * batch_size / steady_seconds,
        "epoch_samples_per_second": steps * batch_size / epoch_seconds,
        "data_wait_fraction": sum(data for data, _ in steady) / steady_seconds,
        "first_step_seconds": times[0][1],
        "process_wall_seconds": wall,
        "peak_pss_bytes": peak,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def summary(runs):
    rates = [r["samples_per_second"] for r in runs]
    return {
        "samples_per_second": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "peak_pss_bytes": max(r["peak_pss_bytes"] for r in runs),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("clipflow")
    parser.add_argument("--models", default="tiny,ViT-B-32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny-batch-size", type=int, default=64)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--b32-batch-size", type=int, default=32)
    parser.add_argument("--b32-steps", type=int, default=10)
    parser.add_argument("--timm-batch-size", type=int, default=16)
    parser.add_argument("--timm-steps", type=int, default=6)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--lr", default="1e-4")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        configs = tmp / "configs"
        configs.mkdir()
        tiny_config = configs / f"{TINY_NAME}.json"
        tiny_config.write_text(json.dumps(TINY_CONFIG))
        plans = {
            "tiny": (TINY_NAME, str(tiny_config), opts.tiny_batch_size, opts.tiny_steps),
            "ViT-B-32": ("ViT-B-32", "ViT-B-32", opts.b32_batch_size, opts.b32_steps),
        }
        for key, (name, embed_dim, vision_cfg) in TIMM_TOWERS.items():
            config = configs / f"{name}.json"
            config.write_text(json.dumps(
                {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": SMALL_TEXT}))
            plans[key] = (name, str(config), opts.timm_batch_size, opts.timm_steps)
        models = opts.models.split(",")
        for model in models:
            if model not in plans:
                sys.exit(f"--models: unknown model {model!r}; choose from {', '.join(plans)}")
            if plans[model][3] <= opts.warmup_steps:
                sys.exit(f"{model}: needs more steps than --warmup-steps {opts.warmup_steps}")

        # Every loader worker needs its own shards holding its share of the
        # largest epoch; OpenCLIP splits shards, not samples, across workers.
        shards = 4 * opts.workers
        most_samples = max(plans[m][2] * plans[m][3] for m in models)
        per_shard = -(-most_samples // shards) + opts.workers * max(plans[m][2] for m in models)
        subprocess.run(
            [sys.executable, ROOT / "scripts" / "make_test_shards.py", tmp / "shards",
             "--shards", str(shards), "--samples-per-shard", str(per_shard)],
            check=True, stdout=subprocess.DEVNULL,
        )
        train_data = str(tmp / "shards" / f"shard-{{00000..{shards - 1:05d}}}.tar")

        results = {}
        for model in models:
            openclip_name, clipflow_model, batch_size, steps = plans[model]
            for repeat in range(opts.repeats):
                for side in ("openclip", "clipflow"):
                    logs = tmp / f"logs-{model}-{side}-{repeat}"
                    name = "run"
                    flags = [
                        "--train-data", train_data,
                        "--dataset-type", "webdataset",
                        "--train-num-samples", str(batch_size * steps),
                        "--batch-size", str(batch_size),
                        "--workers", str(opts.workers),
                        "--epochs", "1",
                        "--precision", "fp32",
                        "--lr", opts.lr,
                        "--warmup", "0",
                        "--log-every-n-steps", "1",
                        "--save-frequency", "0",
                        "--logs", logs,
                        "--name", name,
                    ]
                    if side == "openclip":
                        cmd = [sys.executable, "-c", OPENCLIP_MAIN, configs,
                               "--model", openclip_name, *flags]
                    else:
                        cmd = [opts.clipflow, "train", "--model", clipflow_model, *flags]
                    result = run_once(side, cmd, logs, name, batch_size, steps, opts.warmup_steps)
                    result = {"model": model, "repeat": repeat, "cores": os.cpu_count(), **result}
                    print(json.dumps(result), flush=True)
                    results.setdefault(model, {}).setdefault(side, []).append(result)

        summaries = []
        for model, sides in results.items():
            openclip, clipflow = summary(sides["openclip"]), summary(sides["clipflow"])
            summaries.append({
                "model": model,
                "openclip": openclip,
                "clipflow": clipflow,
                "speed_ratio": clipflow["samples_per_second"] / openclip["samples_per_second"],
                "memory_ratio": clipflow["peak_pss_bytes"] / openclip["peak_pss_bytes"],
            })
            print(json.dumps(summaries[-1]))
        print()
        print("| model | OpenCLIP samples/s | clipflow samples/s | ratio | OpenCLIP peak | clipflow peak | ratio |")
        print("|---|---|---|---|---|---|---|")
        for ratio in summaries:
            openclip, clipflow = ratio["openclip"], ratio["clipflow"]
            print(
                f"| {ratio['model']} "
                f"| {openclip['samples_per_second']:.1f} ({openclip['min']:.1f}-{openclip['max']:.1f}) "
                f"| {clipflow['samples_per_second']:.1f} ({clipflow['min']:.1f}-{clipflow['max']:.1f}) "
                f"| {ratio['speed_ratio']:.2f}x "
                f"| {openclip['peak_pss_bytes'] / 1e9:.2f} GB | {clipflow['peak_pss_bytes'] / 1e9:.2f} GB "
                f"| {ratio['memory_ratio']:.2f}x |"
            )


if __name__ == "__main__":
    main()
