"""Oracle side of tests/train_schedule.rs.

usage: train_schedule.py CASES_JSON
CASES_JSON is a list of settings {scheduler, lr, warmup, epochs,
epochs_cooldown, accum_freq, num_batches, lr_cooldown_power, lr_cooldown_end}.
For each, builds OpenCLIP's scheduler the way open_clip_train.main does and
walks the batches the way train_one_epoch does, printing (as JSON) the list
of learning rates assigned before each batch; null where OpenCLIP's
scheduler raises ZeroDivisionError.
"""
import json
import sys
from types import SimpleNamespace

from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr


def learning_rates(case):
    optimizer = SimpleNamespace(param_groups=[{}])
    steps_per_epoch = case["num_batches"] // case["accum_freq"]
    total_steps = steps_per_epoch * case["epochs"]
    if case["scheduler"] == "cosine":
        scheduler = cosine_lr(optimizer, case["lr"], case["warmup"], total_steps)
    elif case["scheduler"] == "const":
        scheduler = const_lr(optimizer, case["lr"], case["warmup"], total_steps)
    else:
        cooldown_steps = steps_per_epoch * case["epochs_cooldown"]
        scheduler = const_lr_cooldown(
            optimizer, case["lr"], case["warmup"], total_steps,
            cooldown_steps, case["lr_cooldown_power"], case["lr_cooldown_end"])
    lrs = []
    for epoch in range(case["epochs"]):
        for i in range(case["num_batches"]):
            step = steps_per_epoch * epoch + i // case["accum_freq"]
            try:
                lrs.append(scheduler(step))
                assert optimizer.param_groups[0]["lr"] == lrs[-1]
            except ZeroDivisionError:
                lrs.append(None)
    return lrs


print(json.dumps([learning_rates(case) for case in json.loads(sys.argv[1])]))
