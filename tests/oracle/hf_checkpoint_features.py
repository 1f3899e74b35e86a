"""Oracle side of tests/train_cli.rs's HuggingFace text tower run: OpenCLIP
loads a checkpoint clipflow wrote (strictly) and encodes captions with the
model's own tokenizer, everything read offline from a hub cache.

usage: hf_checkpoint_features.py CONFIG HF_CACHE CHECKPOINT TEXTS OUT
Writes OUT (safetensors): text_features, one row per line of TEXTS.
"""
import os
import pathlib
import sys

config, cache, checkpoint, texts, out = sys.argv[1:]
# Before transformers is imported, which reads them once.
os.environ["HF_HUB_CACHE"] = cache
os.environ["HF_HUB_OFFLINE"] = "1"

import open_clip  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

open_clip.add_model_config(config)
name = pathlib.Path(config).stem
model = open_clip.create_model(name, pretrained=checkpoint)
model.eval()
tokenizer = open_clip.get_tokenizer(name)
captions = pathlib.Path(texts).read_text().splitlines()
with torch.no_grad():
    features = model.encode_text(tokenizer(captions))
save_file({"text_features": features.contiguous()}, out)
