"""Oracle of distributed training: OpenCLIP's training entry point on several
CPU processes over gloo, one per rank, started by torchrun:

    torchrun --nproc_per_node 2 --master_port PORT train_parity_dist.py CONFIG RUNS_JSON

CONFIG
    a model config (a JSON file, or a folder of them), registered as
    train_parity.py's main registers it: the model name is the file stem.
RUNS_JSON
    a JSON list of flag lists; each rank runs open_clip_train.main.main(flags)
    for each of them, one after the other in this process.

OpenCLIP 3.3.0 wraps the model as DistributedDataParallel(model,
device_ids=[device]), which torch refuses for a CPU module (device_ids are
for GPU modules only); here a CPU module is wrapped without device ids, which
is what torch's DDP does for one anyway. Nothing else changes, except what
the runs need: the sample shuffle is seeded as train_parity.py seeds it (its
seed_sample_shuffle, read from train_parity.py beside this file), and the
process group OpenCLIP's first run creates serves the later runs (a second
init_process_group in one process is refused).
"""
import ast
import json
import os
import sys

import torch
import torch.distributed


def train_parity(*names):
    """The named functions of train_parity.py, with its imports; it runs its
    command line when imported, so only these are taken from its source."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_parity.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    body = [node for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            or (isinstance(node, ast.FunctionDef) and node.name in names)]
    namespace = {}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return [namespace[name] for name in names]


def wrap_cpu_modules_without_device_ids():
    """main.py looks DistributedDataParallel up as torch.nn.parallel's at the
    call; the subclass is still a DistributedDataParallel."""
    ddp = torch.nn.parallel.DistributedDataParallel

    class CpuDeviceIdsDropped(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if all(p.device.type == "cpu" for p in module.parameters()):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuDeviceIdsDropped


def keep_process_group():
    init = torch.distributed.init_process_group

    def init_once(*args, **kwargs):
        if not torch.distributed.is_initialized():
            init(*args, **kwargs)

    torch.distributed.init_process_group = init_once


def main(config, runs):
    import open_clip_train.main as open_clip_main
    model_name, seed_sample_shuffle = train_parity("model_name", "seed_sample_shuffle")
    wrap_cpu_modules_without_device_ids()
    keep_process_group()
    seed_sample_shuffle()
    model_name(config)
    for flags in json.loads(runs):
        open_clip_main.main(flags)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


main(*sys.argv[1:])
