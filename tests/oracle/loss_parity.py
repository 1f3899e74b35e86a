"""Oracle side of tests/loss_parity.rs: OpenCLIP's losses on WORLD_SIZE ranks.

usage: loss_parity.py WORLD_SIZE DIR
    DIR/inputs_rank{r}.safetensors  rank r's image_features, text_features,
                                    logit_scale, logit_bias
    DIR/cases.json                  [{"name", "loss": "clip" | "siglip",
                                      "local_loss", "gather_with_grad",
                                      "bias", "dist_impl"}]
writes DIR/{name}_rank{r}.safetensors: the loss and its gradients w.r.t. the
inputs ("grad.image_features", ...). With WORLD_SIZE > 1 the ranks are
processes in a gloo group (file rendezvous in DIR).
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss, SigLipLoss
from safetensors.torch import load_file, save_file


def run(rank, world_size, work_dir):
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{work_dir}/rendezvous",
            rank=rank,
            world_size=world_size,
        )
    inputs = load_file(f"{work_dir}/inputs_rank{rank}.safetensors")
    with open(f"{work_dir}/cases.json") as f:
        cases = json.load(f)
    for case in cases:
        x = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        if case["loss"] == "clip":
            loss_fn = ClipLoss(
                local_loss=case["local_loss"],
                gather_with_grad=case["gather_with_grad"],
                cache_labels=True,
                rank=rank,
                world_size=world_size,
            )
        else:
            loss_fn = SigLipLoss(rank=rank, world_size=world_size, dist_impl=case["dist_impl"])
        bias = x["logit_bias"] if case["bias"] else None
        losses = loss_fn(
            x["image_features"], x["text_features"], x["logit_scale"], bias, output_dict=True
        )
        loss = losses["contrastive_loss"]
        loss.backward()
        out = {"loss": loss.detach()}
        for name in ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if case["bias"] else []):
            out[f"grad.{name}"] = x[name].grad
        save_file(out, f"{work_dir}/{case['name']}_rank{rank}.safetensors")
    if world_size > 1:
        dist.destroy_process_group()


world_size, work_dir = int(sys.argv[1]), sys.argv[2]
if world_size == 1:
    run(0, 1, work_dir)
else:
    # fork: the script runs from `python -c`, which spawned children cannot re-import.
    mp.start_processes(run, args=(world_size, work_dir), nprocs=world_size, start_method="fork")
