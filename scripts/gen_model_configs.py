"""Regenerates core/src/model/configs.json from the installed open_clip_torch.

The model config numbers (widths, layers, heads, image sizes, ...) are facts
about each published architecture; clipflow embeds them so `--model NAME`
works without Python at run time. Run after upgrading open_clip_torch:

    python scripts/gen_model_configs.py > core/src/model/configs.json
"""
import json
import pathlib
import sys

import open_clip

config_dir = pathlib.Path(open_clip.__file__).parent / "model_configs"
configs = {p.stem: json.loads(p.read_text()) for p in sorted(config_dir.glob("*.json"))}
json.dump(configs, sys.stdout, indent=1, sort_keys=True)
sys.stdout.write("\n")
