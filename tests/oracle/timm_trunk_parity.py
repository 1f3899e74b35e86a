"""Oracle side of the timm trunk tests in tests/model_parity.rs.

Creates timm model NAME with the keyword arguments KWARGS (OpenCLIP's
`global_pool` and `num_classes`, and smaller widths, depth and image size so
every architecture of a family runs in seconds), perturbs every parameter so
no bias, norm or layer scale keeps its initial value, and writes, into
OUT_DIR:
  facts.json            what scripts/gen_timm_configs.py says of the model
  weights.safetensors   its state_dict (timm's names)
  inputs.safetensors    images [2, 3, H, W] and the loss weights
  outputs.safetensors   features in eval mode ("eval") and in training mode
                        after torch.manual_seed(TRAIN_SEED) ("train", with
                        patch dropout where KWARGS ask for it), and the
                        gradient of sum(train * weights) w.r.t. every
                        parameter ("grad.NAME")

usage: timm_trunk_parity.py NAME OUT_DIR GEN_SCRIPT KWARGS TRAIN_SEED
"""
import importlib.util
import json
import sys

import timm
import torch
from safetensors.torch import save_file

name, out_dir, gen_script, kwargs, train_seed = sys.argv[1:]
spec = importlib.util.spec_from_file_location("gen_timm_configs", gen_script)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

torch.manual_seed(0)
model = timm.create_model(name, pretrained=False, **json.loads(kwargs))
with torch.no_grad():
    for param in model.parameters():
        param.add_(torch.randn_like(param) * 0.05)
facts = gen.vision_transformer(model) or gen.vision_transformer_relpos(model) or gen.eva(model)
assert facts is not None, f"{name} with {kwargs}: not a model clipflow builds"
with open(f"{out_dir}/facts.json", "w") as f:
    json.dump(facts, f)

height, width = model.patch_embed.img_size
images = torch.randn(2, 3, height, width)
model.eval()
with torch.no_grad():
    eval_features = model(images)
model.train()
torch.manual_seed(int(train_seed))
train_features = model(images)
weights = torch.randn_like(train_features)
(train_features * weights).sum().backward()

save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/weights.safetensors")
save_file({"images": images, "weights": weights}, f"{out_dir}/inputs.safetensors")
outputs = {"eval": eval_features, "train": train_features.detach()}
for param_name, param in model.named_parameters():
    outputs[f"grad.{param_name}"] = param.grad
save_file(outputs, f"{out_dir}/outputs.safetensors")
