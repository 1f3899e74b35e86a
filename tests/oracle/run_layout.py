"""Oracle side of tests/run_layout.rs: OpenCLIP's own run-folder logic.

usage: run_layout.py natural-sort JSON_LIST
    prints the strings sorted by open_clip_train.main.natural_key.
usage: run_layout.py latest DIR...
    prints get_latest_checkpoint(DIR, remote=False) for each DIR.
usage: run_layout.py float-repr BITS...
    prints str() of each float given by its IEEE-754 bits (an integer).
usage: run_layout.py main CONFIG SCENARIOS_JSON
    registers the model config CONFIG, then for each scenario
    {"logs": DIR, "flags": [...], "resume": bool} runs
    open_clip_train.main.main(flags) with the clock fixed at
    2024-05-01 13:45:07, synthetic data and a training step that does
    nothing, recording the run name and paths, the checkpoints folder before
    every epoch and at the end, each checkpoint file written, replaced and
    removed, and the keys of the checkpoint dict. With "resume", main runs
    again with "--resume latest" and one more epoch, recording the checkpoint
    it resumed from. Prints the records as JSON.
"""
import datetime
import json
import os
import struct
import sys

import open_clip
import open_clip_train.main as open_clip_main
import torch

mode, *rest = sys.argv[1:]
if mode == "natural-sort":
    print(json.dumps(sorted(json.loads(rest[0]), key=open_clip_main.natural_key)))
elif mode == "latest":
    print(json.dumps([open_clip_main.get_latest_checkpoint(d, remote=False) for d in rest]))
elif mode == "float-repr":
    print(json.dumps([str(struct.unpack("<d", struct.pack("<Q", int(b)))[0]) for b in rest]))
elif mode == "main":
    config, scenarios = rest
    open_clip.add_model_config(config)

    class FixedClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 1, 13, 45, 7)

    open_clip_main.datetime = FixedClock
    record = {}

    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        record["listings"].append(sorted(os.listdir(args.checkpoint_path)))
        record["resumed_from"] = args.resume
        for key in ("name", "log_path", "checkpoint_path", "tensorboard_path"):
            record[key] = getattr(args, key)

    def in_checkpoints(path):
        return os.path.basename(os.path.dirname(path)) == "checkpoints"

    def traced(name, original, paths):
        def call(*args, **kwargs):
            if in_checkpoints(args[paths[0]]):
                record["events"].append([name] + [os.path.basename(args[i]) for i in paths])
                if name == "save":
                    record["keys"] = list(args[0].keys())
                    record["state_dict_type"] = type(args[0]["state_dict"]).__name__
            return original(*args, **kwargs)
        return call

    open_clip_main.train_one_epoch = train_one_epoch
    torch.save = traced("save", torch.save, [1])
    os.remove = traced("remove", os.remove, [0])
    os.replace = traced("replace", os.replace, [0, 1])

    common = ["--model", "tiny-vit", "--dataset-type", "synthetic", "--train-num-samples", "4",
              "--batch-size", "2", "--workers", "0", "--lr", "1e-05", "--report-to", "tensorboard"]
    records = []
    for scenario in json.loads(scenarios):
        flags = common + ["--logs", scenario["logs"]] + scenario["flags"]
        record.clear()
        record.update(listings=[], events=[])
        open_clip_main.main(flags)
        record["listings"].append(sorted(os.listdir(record["checkpoint_path"])))
        result = json.loads(json.dumps(record))  # a copy the resumed run leaves alone
        if scenario["resume"]:
            epochs = int(flags[flags.index("--epochs") + 1])
            open_clip_main.main(flags + ["--resume", "latest", "--epochs", str(epochs + 1)])
            result["resumed_from"] = record["resumed_from"]
        records.append(result)
    print(json.dumps(records))
