"""Oracle side of tests/weights_roundtrip.rs.

usage: weights_roundtrip.py load MODEL WEIGHTS OUT_DIR [--config FILE]
    open_clip.create_model(MODEL, pretrained=WEIGHTS) (strict key matching),
    then writes OUT_DIR/features.safetensors: encode_image / encode_text of
    fixed inputs, with the inputs.
usage: weights_roundtrip.py save MODEL OUT_DIR [--config FILE]
    builds MODEL with random weights and writes OUT_DIR/checkpoint.pt, an
    OpenCLIP training checkpoint (DDP "module." names), plus features as above.
"""
import argparse

import open_clip
import torch
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["load", "save"])
parser.add_argument("model")
parser.add_argument("paths", nargs="+")
parser.add_argument("--config")
args = parser.parse_args()
if args.config:
    open_clip.add_model_config(args.config)

torch.manual_seed(1)
if args.mode == "load":
    weights, out_dir = args.paths
    model = open_clip.create_model(args.model, pretrained=weights)
else:
    (out_dir,) = args.paths
    model = open_clip.create_model(args.model)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "name": "roundtrip", "state_dict": state}, f"{out_dir}/checkpoint.pt")
model.eval()

size = model.visual.image_size
height, width = (size, size) if isinstance(size, int) else tuple(size)
images = torch.randn(2, 3, height, width)
text = open_clip.get_tokenizer(args.model)(["a diagram", "a dog on a skateboard"])
with torch.no_grad():
    save_file(
        {
            "images": images,
            "text": text,
            "image_features": model.encode_image(images),
            "text_features": model.encode_text(text),
        },
        f"{out_dir}/features.safetensors",
    )
