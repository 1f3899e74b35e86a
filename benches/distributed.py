"""Data-parallel training step benchmark on CPU: `clipflow train` and
OpenCLIP's `open_clip_train.main` on one rank (one core) and on two ranks
(one core each, gloo, launched with torchrun), on the same synthetic batches.

A step of ViT-B-32 at batch size B per rank (fp32, `--dataset-type
synthetic`, so loading costs nothing): the steady `Batch (t)` of rank 0's
`Train Epoch` lines (the first K steps are warm-up and left out), medians
over the runs. Every process runs with OMP_NUM_THREADS=1 under
`taskset -c 0` (one rank) or `taskset -c 0,1` (two ranks).

How much of the gradient all-reduce hides behind the backward pass: the
all-reduce alone is timed on two ranks over the same gloo (torch.distributed
in the oracle environment: the buckets DDP makes of ViT-B-32's parameters,
25 MiB each, all-reduced one after another, as a reduction after the
backward pass would run them). The part of it a two-rank step shows is its
time minus the one-rank step's; the rest was hidden behind the backward pass
by the bucketed reduction that overlaps it.

Prints one JSON line per measurement and a table.

usage: python benches/distributed.py CLIPFLOW_BIN [--batch-size B] [--steps S]
       [--warmup-steps K] [--repeats R]
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

ROOT = pathlib.Path(__file__).resolve().parent.parent
ORACLE = ROOT / "tests" / "oracle" / "train_parity_dist.py"
BATCH_TIME = re.compile(r"Train Epoch: \d+ \[.*\] Data \(t\): [0-9.]+ Batch \(t\): ([0-9.]+),")
MODEL = "ViT-B-32"

# All-reduces DDP's 25 MiB buckets of ViT-B-32's parameters on each rank and
# prints the median time of a full pass over them (rank 0).
ALLREDUCE = r"""
import json, os, statistics, sys, time
import torch, torch.distributed as dist
import open_clip
dist.init_process_group("gloo")
model = open_clip.create_model(sys.argv[1])
numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
bucket = 25 * 1024 * 1024 // 4
sizes = [bucket] * (numel // bucket) + ([numel % bucket] if numel % bucket else [])
tensors = [torch.randn(n) for n in sizes]
times = []
for i in range(int(sys.argv[2])):
    dist.barrier()
    start = time.perf_counter()
    for t in tensors:
        dist.all_reduce(t)
    times.append(time.perf_counter() - start)
if dist.get_rank() == 0:
    print(json.dumps({"parameters": numel, "buckets": len(sizes),
                      "seconds": statistics.median(times[1:])}))
dist.destroy_process_group()
"""


def venv_bin(name):
    return pathlib.Path(sys.executable).with_name(name)


def steady_step(out_log, warmup):
    times = [float(m.group(1)) for m in BATCH_TIME.finditer(out_log.read_text())]
    steady = times[warmup:]
    if not steady:
        raise SystemExit(f"{out_log}: no steps after the {warmup} warm-up steps")
    return statistics.median(steady)


def run(command, cwd, env):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[:6]} failed:\n{result.stderr[-4000:]}")


def train_step(tool, clipflow, ranks, args, scratch, name):
    folder = scratch / name
    folder.mkdir()
    samples = args.batch_size * args.steps * ranks
    flags = ["--dataset-type", "synthetic", "--train-num-samples", str(samples),
             "--batch-size", str(args.batch_size), "--model", MODEL, "--device", "cpu",
             "--precision", "fp32", "--workers", "1", "--epochs", "1",
             "--log-every-n-steps", "1", "--lr", "1e-4", "--name", name, "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cores = "0" if ranks == 1 else "0,1"
    torchrun = [str(venv_bin("torchrun")), "--nproc_per_node", str(ranks),
                "--master_port", str(29600 + len(name))]
    if tool == "clipflow":
        command = ["taskset", "-c", cores] + torchrun + ["--no-python", clipflow, "train"] + flags
    else:
        # OpenCLIP through the oracle: the same main, CPU modules wrapped
        # in DDP without device ids.
        config = scratch / f"{MODEL}.json"
        import open_clip
        config.write_text(json.dumps(open_clip.get_model_config(MODEL)))
        command = (["taskset", "-c", cores] + torchrun
                   + [str(ORACLE), str(config), json.dumps([flags])])
    run(command, folder, env)
    return steady_step(folder / "logs" / name / "out.log", args.warmup_steps)


def allreduce_time(scratch, repeats):
    script = scratch / "allreduce.py"
    script.write_text(ALLREDUCE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = ["taskset", "-c", "0,1", str(venv_bin("torchrun")), "--nproc_per_node", "2",
               "--master_port", "29599", str(script), MODEL, str(repeats + 1)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("clipflow")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        for repeat in range(args.repeats):
            for tool in ("openclip", "clipflow"):
                for ranks in (1, 2):
                    name = f"{tool}-{ranks}-{repeat}"
                    seconds = train_step(tool, args.clipflow, ranks, args, scratch, name)
                    results.setdefault((tool, ranks), []).append(seconds)
                    print(json.dumps({"tool": tool, "ranks": ranks, "repeat": repeat,
                                      "step_seconds": seconds}), flush=True)
        reduce = allreduce_time(scratch, 5)
        print(json.dumps({"allreduce": reduce}), flush=True)
    step = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nViT-B-32, batch {args.batch_size} per rank, fp32, one core per rank; "
          f"all-reduce of {reduce['parameters']:,} gradients in {reduce['buckets']} "
          f"buckets alone: {reduce['seconds']:.3f} s")
    print("| tool | 1 rank step (s) | 2 ranks step (s) | all-reduce shown (s) | hidden behind backward |")
    print("|---|---|---|---|---|")
    for tool in ("openclip", "clipflow"):
        one, two = step[(tool, 1)], step[(tool, 2)]
        shown = max(0.0, two - one)
        hidden = 1 - min(1.0, shown / reduce["seconds"])
        print(f"| {tool} | {one:.3f} | {two:.3f} | {shown:.3f} | {hidden:.0%} |")
    print(f"\nclipflow / OpenCLIP samples/s on 2 ranks: "
          f"{step[('openclip', 2)] / step[('clipflow', 2)]:.2f}x")


if __name__ == "__main__":
    main()
