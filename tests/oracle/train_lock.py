"""Oracle side of tests/train_lock.rs: which parameters OpenCLIP leaves
trainable after `lock_image_tower` / `lock_text_tower`.

usage: train_lock.py CONFIG_JSON CASES_JSON
CASES_JSON is a list of [lock_image_groups or null, lock_text_layers or null,
force_custom_text]; prints one JSON list of trainable parameter names per case.
"""
import json
import os
import sys

import open_clip

config, cases = sys.argv[1], json.loads(sys.argv[2])
open_clip.add_model_config(config)
name = os.path.splitext(os.path.basename(config))[0]
for image_groups, text_layers, custom_text in cases:
    model = open_clip.create_model(name, force_custom_text=custom_text)
    if image_groups is not None:
        model.lock_image_tower(unlocked_groups=image_groups)
    if text_layers is not None:
        model.lock_text_tower(unlocked_layers=text_layers)
    print(json.dumps(sorted(n for n, p in model.named_parameters() if p.requires_grad)))
