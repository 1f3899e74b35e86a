"""Oracle side of tests/train_optimizer.rs: the optimizer open_clip_train.main
builds from its flags, caught as main creates it (main itself runs up to
there, then stops).

usage: train_optimizer.py groups RUNS_JSON
    RUNS_JSON: a list of {"config": FILE, "args": [main's flags]}. Prints, as
    JSON, for each run the optimizer's param groups:
    [{"weight_decay": wd, "lr": lr, "names": [param names in order]}].
usage: train_optimizer.py steps CONFIG TENSORS OUT_DIR LRS_JSON ARGS_JSON
    Loads "param.NAME" from TENSORS into the model, then for each learning
    rate k in LRS_JSON sets every group's lr and each parameter's grad to
    "grad.k.NAME" and steps. Writes OUT_DIR/groups.json (as above),
    OUT_DIR/before_last.pt (an OpenCLIP training checkpoint holding the model
    and optimizer state before the last step) and OUT_DIR/final.safetensors
    (the parameters after all steps).
"""
import json
import os
import sys
import tempfile

import open_clip
import open_clip_train.main as train_main
import timm.optim
import torch
from safetensors.torch import load_file, save_file


class OptimizerBuilt(Exception):
    pass


caught = {}
real_create_model = train_main.create_model_and_transforms
real_adamw = torch.optim.AdamW
real_timm_create = timm.optim.create_optimizer_v2


def create_model_spy(*args, **kwargs):
    made = real_create_model(*args, **kwargs)
    caught["model"] = made[0]
    return made


def stop_once_built(make):
    def spy(*args, **kwargs):
        caught["optimizer"] = make(*args, **kwargs)
        raise OptimizerBuilt()
    return spy


train_main.create_model_and_transforms = create_model_spy
torch.optim.AdamW = stop_once_built(real_adamw)
timm.optim.create_optimizer_v2 = stop_once_built(real_timm_create)


def build(config, args):
    open_clip.add_model_config(config)
    model_name = os.path.splitext(os.path.basename(config))[0]
    logs = tempfile.mkdtemp()
    try:
        train_main.main([
            "--model", model_name, "--dataset-type", "synthetic", "--device", "cpu",
            "--logs", logs, "--name", "optimizer", *args,
        ])
    except OptimizerBuilt:
        return caught["model"], caught["optimizer"]
    raise RuntimeError("open_clip_train.main did not build an optimizer")


def describe_groups(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        {"weight_decay": g["weight_decay"], "lr": g["lr"], "names": [names[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]


if sys.argv[1] == "groups":
    runs = json.loads(sys.argv[2])
    print(json.dumps([describe_groups(*build(run["config"], run["args"])) for run in runs]))
else:
    config, tensors_path, out_dir, lrs, args = sys.argv[2:]
    model, optimizer = build(config, json.loads(args))
    tensors = load_file(tensors_path)
    missing, unexpected = model.load_state_dict(
        {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}, strict=False)
    params = dict(model.named_parameters())
    assert not unexpected and not any(k in params for k in missing), (missing, unexpected)
    lrs = json.loads(lrs)
    for k, lr in enumerate(lrs):
        if k == len(lrs) - 1:
            torch.save({"epoch": 1, "name": "optimizer", "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict()}, f"{out_dir}/before_last.pt")
        for group in optimizer.param_groups:
            group["lr"] = lr
        for name, p in params.items():
            if p.requires_grad:
                p.grad = tensors[f"grad.{k}.{name}"].clone()
        optimizer.step()
    save_file({n: p.detach().contiguous() for n, p in params.items()}, f"{out_dir}/final.safetensors")
    with open(f"{out_dir}/groups.json", "w") as f:
        json.dump(describe_groups(model, optimizer), f)
