# Oracle for tests/report_text_logs.rs: runs OpenCLIP's own train_one_epoch
# and evaluate on a tiny model and synthetic batches, and records every line
# they log together with the numbers that went into it (read from the
# logging function's frame at the moment it logs), plus the scalars they hand
# to the TensorBoard writer. The clock train.py reads is replaced by a fake
# one, so the timings are irregular but known.
#
# Prints JSON: {"train": [{"line", "inputs"}], "eval_progress": [...],
#               "eval": [{"line", "epoch", "metrics"}], "tensorboard": [[tag, value, step]]}
import argparse
import itertools
import json
import logging
import sys
import types

import torch
import torch.nn.functional as F

import open_clip_train.train as train
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr

torch.manual_seed(0)

# Irregular time steps so averages and rates have many digits.
ticks = itertools.cycle([0.0137, 0.2468, 0.0051, 0.3919, 0.0203, 0.1777, 0.0009, 0.5321])
now = [1000.0]


def fake_time():
    now[0] += next(ticks)
    return now[0]


train.time = types.SimpleNamespace(time=fake_time)


class TinyClip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(3 * 4 * 4, 8)
        self.text = torch.nn.Embedding(50, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.6592))

    def forward(self, images, texts):
        return {
            "image_features": F.normalize(self.image(images.flatten(1)), dim=-1),
            "text_features": F.normalize(self.text(texts).mean(1), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


class Loader:
    def __init__(self, sizes):
        self.batches = [(torch.randn(n, 3, 4, 4), torch.randint(0, 50, (n, 5))) for n in sizes]
        self.num_batches = len(sizes)
        self.num_samples = sum(sizes)

    def __iter__(self):
        return iter(self.batches)


class Data:
    def __init__(self, sizes):
        self.dataloader = Loader(sizes)

    def set_epoch(self, epoch):
        pass


def frame_of(name):
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != name:
        frame = frame.f_back
    return frame.f_locals


def meter(m):
    return {"last": m.val, "sum": m.sum, "count": m.count}


records = {"train": [], "eval_progress": [], "eval": []}


class Capture(logging.Handler):
    def emit(self, record):
        line = record.getMessage()
        if line.startswith("Train Epoch"):
            f = frame_of("train_one_epoch")
            args = f["args"]
            inputs = {
                "epoch": f["epoch"],
                "step": f["step"],
                "batch_count": f["batch_count"],
                "num_batches_per_epoch": f["num_batches_per_epoch"],
                "samples_per_epoch": f["dataloader"].num_samples,
                "last_batch_size": f["batch_size"],
                "batch_size": args.batch_size,
                "accum_freq": args.accum_freq,
                "world_size": args.world_size,
                "data_time": meter(f["data_time_m"]),
                "batch_time": meter(f["batch_time_m"]),
                "lr": f["optimizer"].param_groups[0]["lr"],
                "logit_scale": f["logit_scale_scalar"],
                "losses": [[k, m.val, m.avg] for k, m in f["losses_m"].items()],
            }
            records["train"].append({"line": line, "inputs": inputs})
        elif line.startswith("Eval Epoch") and "Clip Loss" in line:
            f = frame_of("evaluate")
            records["eval_progress"].append({
                "line": line,
                "epoch": f["epoch"],
                "num_samples": f["num_samples"],
                "samples_per_val": f["samples_per_val"],
                "clip_loss": float(f["cumulative_loss"] / f["num_samples"]),
            })
        elif line.startswith("Eval Epoch"):
            f = frame_of("evaluate")
            records["eval"].append({"line": line, "epoch": f["epoch"]})


logging.root.setLevel(logging.INFO)
logging.root.addHandler(Capture())


class Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append([tag, float(value), step])


writer = Writer()
# accum_freq 1 over two epochs (the last batch short), then accum_freq 2.
for accum_freq, epochs, sizes in [(1, 2, [6, 6, 6, 6, 4]), (2, 1, [6, 6, 6, 6, 6, 6])]:
    model = TinyClip()
    args = argparse.Namespace(
        device="cpu", precision="fp32", distill=False, accum_freq=accum_freq,
        skip_scheduler=False, horovod=False, grad_clip_norm=None, log_every_n_steps=2,
        world_size=1, rank=0, local_rank=0, batch_size=6, wandb=False, distributed=False,
        val_frequency=1, epochs=epochs, zeroshot_frequency=0, save_logs=True,
        checkpoint_path=sys.argv[1],
    )
    data = {"train": Data(sizes), "val": Data([5, 5])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    steps = data["train"].dataloader.num_batches // accum_freq * epochs
    scheduler = cosine_lr(optimizer, 5e-4, 3, steps)
    for epoch in range(epochs):
        train.train_one_epoch(model, data, ClipLoss(), epoch, optimizer, None, scheduler, None, args,
                              tb_writer=writer)
        metrics = train.evaluate(model, data, epoch + 1, args, tb_writer=writer)
        records["eval"][-1]["metrics"] = [[k, float(v)] for k, v in metrics.items()]

records["tensorboard"] = writer.scalars
print(json.dumps(records))
