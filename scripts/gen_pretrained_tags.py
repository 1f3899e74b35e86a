"""Regenerates core/src/model/pretrained_tags.json from the installed open_clip_torch.

OpenCLIP's pretrained tags (`--pretrained laion2b_s34b_b79k`, `openai`,
`webli`, ...) name, for each architecture, where its published weights are
(a HuggingFace hub repo and file) and the image preprocessing they
were trained with (mean, std, interpolation, resize mode). These are facts
of OpenCLIP's table; clipflow embeds them to find the weights in the local
caches OpenCLIP downloads to, offline. Run after upgrading open_clip_torch:

    python scripts/gen_pretrained_tags.py > core/src/model/pretrained_tags.json
"""
import json
import sys

from open_clip import pretrained

KEYS = ("hf_hub", "mean", "std", "interpolation", "resize_mode", "quick_gelu")

table = {
    model: {
        tag: {key: cfg[key] for key in KEYS if key in cfg and cfg[key] not in ("", None)}
        for tag, cfg in tags.items()
    }
    for model, tags in pretrained._PRETRAINED.items()
}
json.dump(table, sys.stdout, indent=1, sort_keys=True)
sys.stdout.write("\n")
