"""Oracle side of tests/model_parity.rs.

Builds an OpenCLIP model with random weights and writes, into OUT_DIR:
  weights.safetensors   the state_dict (OpenCLIP's names)
  inputs.safetensors    images [2, 3, H, W] and tokenized captions
  outputs.safetensors   encode_image / encode_text, the CLIP loss, and the
                        loss's gradient w.r.t. every parameter ("grad.NAME")

usage: model_parity.py MODEL OUT_DIR [CONFIG_JSON]
A CONFIG_JSON registers MODEL from that file first (for tiny test configs).
"""
import json
import sys

import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

model_name, out_dir = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    open_clip.add_model_config(sys.argv[3])

torch.manual_seed(0)
model = open_clip.create_model(model_name)
model.eval()
tokenizer = open_clip.get_tokenizer(model_name)

height, width = model.visual.image_size if isinstance(model.visual.image_size, tuple) else (model.visual.image_size,) * 2
images = torch.randn(2, 3, height, width)
text = tokenizer(["a photo of a cat", "two dogs playing in the snow at night"])

image_features = model.encode_image(images)
text_features = model.encode_text(text)
loss = ClipLoss()(
    torch.nn.functional.normalize(image_features, dim=-1),
    torch.nn.functional.normalize(text_features, dim=-1),
    model.logit_scale.exp(),
)
loss.backward()

save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/weights.safetensors")
save_file({"images": images, "text": text}, f"{out_dir}/inputs.safetensors")
outputs = {
    "image_features": image_features.detach(),
    "text_features": text_features.detach(),
    "loss": loss.detach(),
}
for name, param in model.named_parameters():
    outputs[f"grad.{name}"] = param.grad.contiguous()
save_file(outputs, f"{out_dir}/outputs.safetensors")
print(json.dumps({"params": sum(1 for _ in model.parameters())}))
