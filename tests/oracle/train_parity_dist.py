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
the runs need: `--use-bn-sync`'s SyncBatchNorm runs on CPU (below), the
sample shuffle is seeded as train_parity.py seeds it (its
seed_sample_shuffle, read from train_parity.py beside this file), and the
process group OpenCLIP's first run creates serves the later runs (a second
init_process_group in one process is refused).

torch's SyncBatchNorm refuses CPU tensors, and DDP refuses it in a CPU
module, although its algorithm (torch.nn.modules._functions.SyncBatchNorm:
per-rank statistics all-gathered, combined, and the output gradient's sums
all-reduced in backward; gloo has its own branch there) needs nothing of a
GPU but five kernels that libtorch builds for CUDA only. Here those two
checks let CPU modules through, and the five kernels get CPU versions
written from what the CUDA ones compute, so OpenCLIP's own conversion and
torch's own SyncBatchNorm function run unchanged.
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


def sync_batch_norm_kernels_on_cpu():
    """CPU versions of the kernels torch's SyncBatchNorm function calls."""
    def reduced_dims(x):
        return [0] + list(range(2, x.dim()))

    def per_channel(t, x):
        return t.view([1, -1] + [1] * (x.dim() - 2))

    def stats(input, eps):
        var, mean = torch.var_mean(input, reduced_dims(input), correction=0)
        return mean, torch.rsqrt(var + eps)

    def gather_stats_with_counts(input, mean, invstd, running_mean, running_var,
                                 momentum, eps, counts):
        counts = counts.view(-1, 1)
        total = counts.sum()
        var = 1.0 / invstd.square() - eps
        pooled_mean = (mean * counts).sum(0) / total
        pooled_var = ((var + (mean - pooled_mean).square()) * counts).sum(0) / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(pooled_mean, alpha=momentum)
        if running_var is not None:
            unbiased = pooled_var * total / (total - 1)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return pooled_mean, torch.rsqrt(pooled_var + eps)

    def elemt(input, weight, bias, mean, invstd, eps):
        out = (input - per_channel(mean, input)) * per_channel(invstd, input)
        if weight is not None:
            out = out * per_channel(weight, input)
        if bias is not None:
            out = out + per_channel(bias, input)
        return out

    def backward_reduce(grad_out, input, mean, invstd, weight, input_g, weight_g, bias_g):
        dims = reduced_dims(input)
        sum_dy = grad_out.sum(dims)
        sum_dy_xmu = (grad_out * (input - per_channel(mean, input))).sum(dims)
        return sum_dy, sum_dy_xmu, sum_dy_xmu * invstd, sum_dy.clone()

    def backward_elemt(grad_out, input, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
        total = count.sum()
        grad_mean = per_channel(sum_dy / total, input)
        projection = per_channel(sum_dy_xmu / total * invstd.square(), input)
        scale = invstd if weight is None else invstd * weight
        centred = input - per_channel(mean, input)
        return (grad_out - grad_mean - centred * projection) * per_channel(scale, input)

    library = torch.library.Library("aten", "IMPL")
    for name, kernel in [
        ("batch_norm_stats", stats),
        ("batch_norm_gather_stats_with_counts", gather_stats_with_counts),
        ("batch_norm_elemt", elemt),
        ("batch_norm_backward_reduce", backward_reduce),
        ("batch_norm_backward_elemt", backward_elemt),
    ]:
        library.impl(name, kernel, "CPU")
    return library


def sync_batch_norm_accepts_cpu():
    """SyncBatchNorm.forward checks the input's device against the names of
    the GPU backends, the last of which it asks torch._C for at the call;
    during the call, that name is "cpu". DDP's check of the module is
    skipped for CPU modules."""
    forward = torch.nn.SyncBatchNorm.forward
    backend_name = torch._C._get_privateuse1_backend_name

    def forward_on_cpu(self, input):
        if input.device.type != "cpu":
            return forward(self, input)
        torch._C._get_privateuse1_backend_name = lambda: "cpu"
        try:
            return forward(self, input)
        finally:
            torch._C._get_privateuse1_backend_name = backend_name

    torch.nn.SyncBatchNorm.forward = forward_on_cpu
    ddp = torch.nn.parallel.DistributedDataParallel
    check = ddp._passing_sync_batchnorm_handle

    def check_gpu_modules(self, module):
        if self.device_type != "cpu":
            check(self, module)

    ddp._passing_sync_batchnorm_handle = check_gpu_modules


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
    kernels = sync_batch_norm_kernels_on_cpu()
    sync_batch_norm_accepts_cpu()
    keep_process_group()
    seed_sample_shuffle()
    model_name(config)
    for flags in json.loads(runs):
        open_clip_main.main(flags)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    del kernels


main(*sys.argv[1:])
