"""Oracle side of tests/train_lock.rs: which parameters OpenCLIP leaves
trainable after `lock_image_tower` / `lock_text_tower`.

usage: train_lock.py CONFIG_JSON CASES_JSON [HF_CACHE]
CASES_JSON is a list of [lock_image_groups or null, lock_text_layers or null,
force_custom_text, freeze_layer_norm (optional, default true)]; prints one
JSON list of trainable parameter names per case. HF_CACHE is the hub cache
holding a HuggingFace text tower's config.json (its weights stay random).
"""
import contextlib
import json
import os
import sys

if len(sys.argv) > 3:
    # Before transformers is imported, which reads them once.
    os.environ["HF_HUB_CACHE"] = sys.argv[3]
    os.environ["HF_HUB_OFFLINE"] = "1"

import open_clip

config, cases = sys.argv[1], json.loads(sys.argv[2])
open_clip.add_model_config(config)
name = os.path.splitext(os.path.basename(config))[0]
for image_groups, text_layers, custom_text, *freeze in cases:
    model = open_clip.create_model(name, force_custom_text=custom_text, pretrained_hf=False)
    if image_groups is not None:
        model.lock_image_tower(unlocked_groups=image_groups)
    if text_layers is not None:
        # HFTextEncoder.lock prints what it unlocks; stdout is the answer.
        with contextlib.redirect_stdout(sys.stderr):
            model.lock_text_tower(unlocked_layers=text_layers, freeze_layer_norm=freeze[0] if freeze else True)
    print(json.dumps(sorted(n for n, p in model.named_parameters() if p.requires_grad)))
