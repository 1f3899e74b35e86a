"""Oracle side of tests/train_parity.rs and tests/train_resume.rs: OpenCLIP's
training entry point, and readers for what a run leaves behind.

Arguments are one or more commands separated by "+"; each prints one JSON
line (or nothing). Commands:

init CONFIG OUT [siglip]
    registers the model config CONFIG and saves the state_dict of a fresh
    OpenCLIP model (seed 0; with "siglip", made as --siglip makes it, with
    init_logit_bias=-10) to OUT with torch.save.
main CONFIG RUNS_JSON
    registers CONFIG, then runs open_clip_train.main.main(flags) for each
    flag list of RUNS_JSON, one after the other in this process.
scalars PREFIX DIR...
    for each TensorBoard folder DIR, {tag: [[step, value], ...]} of the
    scalars whose tag starts with PREFIX, read with TensorBoard's
    EventAccumulator (values are float32, widened exactly).
compare INITIAL OURS THEIRS
    loads the three files with torch.load (a training checkpoint's
    "state_dict", else the file itself); per tensor of THEIRS, the largest
    |OURS - THEIRS|, its element count and how many elements differ by
    more than 1e-5, the largest |THEIRS - INITIAL| (how far training moved
    it), and whether the key sets are equal. Attention input
    projection biases are split in thirds (KEY[q], KEY[k], KEY[v]): the key
    bias has no effect on attention, so its gradient is rounding noise.
features CONFIG OURS THEIRS
    registers CONFIG; creates the model with open_clip.create_model(name,
    pretrained=...) from each checkpoint (a strict load); the largest
    differences of their image and text features on a fixed input.
load FILE...
    torch.load's each FILE (weights_only=False, as OpenCLIP's --resume
    does); its "epoch" and whether it has a state_dict and an optimizer.
"""
import json
import os
import sys

import torch


def model_name(config):
    import open_clip
    open_clip.add_model_config(config)
    return os.path.splitext(os.path.basename(config))[0]


def state_dict_of(path):
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    state = loaded.get("state_dict", loaded)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def init(config, out, *siglip):
    import open_clip
    name = model_name(config)
    torch.manual_seed(0)
    kwargs = {"init_logit_bias": -10.0} if siglip else {}
    torch.save(open_clip.create_model(name, **kwargs).state_dict(), out)


def seed_sample_shuffle():
    """webdataset 0.2.86 seeds OpenCLIP's sample shuffle from the clock, so
    each run would put the samples of a step in another order; the loss does
    not depend on it, but its float32 rounding does, and Adam magnifies that
    in weights whose gradient is near zero. A fixed seed gives every run the
    same order."""
    import random

    import webdataset

    clock_seeded = webdataset.shuffle

    def shuffle(*args, **kwargs):
        return clock_seeded(*args, rng=random.Random(0), **kwargs)

    webdataset.shuffle = shuffle


def main(config, runs):
    import open_clip_train.main as open_clip_main
    seed_sample_shuffle()
    model_name(config)
    for flags in json.loads(runs):
        open_clip_main.main(flags)


def scalars(prefix, *dirs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = []
    for d in dirs:
        acc = EventAccumulator(d)
        acc.Reload()
        result.append({tag: [[e.step, e.value] for e in acc.Scalars(tag)]
                       for tag in acc.Tags()["scalars"] if tag.startswith(prefix)})
    return result


def compare(initial, ours, theirs):
    initial, ours, theirs = (state_dict_of(p) for p in (initial, ours, theirs))
    result = {"same_keys": sorted(ours) == sorted(theirs), "tensors": {}}
    for key, value in theirs.items():
        if key not in ours:
            continue
        parts = [(key, ...)]
        if key.endswith("attn.in_proj_bias"):
            third = value.shape[0] // 3
            parts = [(f"{key}[{name}]", slice(i * third, (i + 1) * third))
                     for i, name in enumerate("qkv")]
        for part, where in parts:
            diff = (ours[key][where].double() - value[where].double()).abs()
            result["tensors"][part] = {
                "diff": diff.max().item(),
                "numel": diff.numel(),
                "over_1e-5": (diff > 1e-5).sum().item(),
                "moved": (value[where].double() - initial[key][where].double()).abs().max().item(),
            }
    return result


def features(config, ours, theirs):
    import open_clip
    name = model_name(config)
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    texts = open_clip.get_tokenizer(name)(["a red circle", "two blue squares", "a photo", "green"])
    encoded = []
    for path in (ours, theirs):
        model = open_clip.create_model(name, pretrained=path).eval()
        with torch.no_grad():
            encoded.append((model.encode_image(images), model.encode_text(texts)))
    (our_image, our_text), (their_image, their_text) = encoded
    return {
        "image": (our_image - their_image).abs().max().item(),
        "text": (our_text - their_text).abs().max().item(),
        "image_scale": their_image.abs().max().item(),
        "text_scale": their_text.abs().max().item(),
    }


def load(*paths):
    result = []
    for path in paths:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        result.append({"epoch": loaded["epoch"], "state_dict": "state_dict" in loaded,
                       "optimizer": "optimizer" in loaded})
    return result


COMMANDS = {"init": init, "main": main, "scalars": scalars, "compare": compare,
            "features": features, "load": load}

command = []
for arg in sys.argv[1:] + ["+"]:
    if arg != "+":
        command.append(arg)
        continue
    name, *args = command
    result = COMMANDS[name](*args)
    if result is not None:
        print(json.dumps(result), flush=True)
    command = []
