"""Data-loading benchmark: `clipflow bench data` beside OpenCLIP's own loader
(benches/openclip_data_loader.py) on the same shards, flags and cores.

Each side runs as its own process tree; peak memory is the largest sum of
PSS over the tree (OpenCLIP's DataLoader workers are processes, clipflow's
workers are threads), sampled every 50 ms. Prints one JSON line per side and
a final line with the ratios (clipflow / OpenCLIP).

usage: python benches/data_loader.py CLIPFLOW_BIN [--shards N] [--samples-per-shard M]
       [--workers W] [--batch-size B] [--repeats R]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tree_pss_bytes(pid):
    """Sum of PSS over `pid` and its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def peak_tree_pss_until_exit(proc):
    """Samples the PSS of proc's process tree every 50 ms until it exits;
    returns the largest sum."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss_bytes(proc.pid))
        time.sleep(0.05)
    return peak


def measure(cmd):
    """Runs cmd, returns (its last JSON line as a dict, peak tree PSS)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = peak_tree_pss_until_exit(proc)
    out = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed with {proc.returncode}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("clipflow")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, ROOT / "scripts" / "make_test_shards.py", tmp,
             "--shards", str(opts.shards), "--samples-per-shard", str(opts.samples_per_shard)],
            check=True, stdout=subprocess.DEVNULL,
        )
        last = opts.shards - 1
        flags = [
            "--train-data", f"{tmp}/shard-{{00000..{last:05d}}}.tar",
            "--train-num-samples", str(opts.shards * opts.samples_per_shard),
            "--dataset-type", "webdataset",
            "--batch-size", str(opts.batch_size),
            "--workers", str(opts.workers),
            "--model", "ViT-B-32",
        ]
        sides = {
            "openclip": [sys.executable, ROOT / "benches" / "openclip_data_loader.py", "--", *flags],
            "clipflow": [opts.clipflow, "bench", "data", *flags],
        }
        best = {}
        for _ in range(opts.repeats):
            for name, cmd in sides.items():
                result, peak = measure([str(c) for c in cmd])
                result["peak_pss_bytes"] = peak
                if name not in best or result["images_per_second"] > best[name]["images_per_second"]:
                    best[name] = result
        for name, result in best.items():
            print(json.dumps({"side": name, "cores": os.cpu_count(), **result}))
        print(json.dumps({
            "speed_ratio": best["clipflow"]["images_per_second"] / best["openclip"]["images_per_second"],
            "memory_ratio": best["clipflow"]["peak_pss_bytes"] / best["openclip"]["peak_pss_bytes"],
        }))


if __name__ == "__main__":
    main()
