"""Oracle side of tests/model_parity.rs.

Builds an OpenCLIP model with random weights and writes, into OUT_DIR:
  weights.safetensors   the state_dict (OpenCLIP's names)
  inputs.safetensors    images [2, 3, H, W] and tokenized captions
  outputs.safetensors   encode_image / encode_text, the CLIP loss, and the
                        loss's gradient w.r.t. every parameter ("grad.NAME");
                        for a CoCa model, the loss is CoCaLoss (weights 1 and
                        2), summed, and its terms and the decoder's logits
                        are written too

usage: model_parity.py MODEL OUT_DIR [--config FILE] [--kwargs JSON] [--hf-cache DIR]
--config registers MODEL from that file first (for tiny test configs);
--kwargs are passed to open_clip.create_model (e.g. {"force_custom_text": true});
--hf-cache is the HuggingFace hub cache a HuggingFace text tower's config and
weights are read from, offline.
"""
import argparse
import json
import os
import sys

if "--hf-cache" in sys.argv:
    # Before transformers is imported, which reads them once.
    os.environ["HF_HUB_CACHE"] = sys.argv[sys.argv.index("--hf-cache") + 1]
    os.environ["HF_HUB_OFFLINE"] = "1"

import open_clip
import torch
from open_clip.loss import ClipLoss, CoCaLoss
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("out_dir")
parser.add_argument("--config")
parser.add_argument("--kwargs", default="{}")
parser.add_argument("--hf-cache")
args = parser.parse_args()
model_name, out_dir = args.model, args.out_dir
if args.config:
    open_clip.add_model_config(args.config)

torch.manual_seed(0)
model = open_clip.create_model(model_name, **json.loads(args.kwargs))
model.eval()
text_cfg = open_clip.get_model_config(model_name)["text_cfg"]
if text_cfg.get("hf_model_name"):
    # A HuggingFace text tower: random ids, the second caption padded after
    # 10 tokens with the model's pad_token_id, at the config's context
    # length (the tower's own is its max_position_embeddings).
    def tokenizer(captions):
        ids = torch.randint(3, text_cfg["vocab_size"], (len(captions), text_cfg["context_length"]))
        ids[1, 10:] = model.text.config.pad_token_id
        return ids
elif text_cfg.get("hf_tokenizer_name"):
    # A HuggingFace tokenizer is not what this compares (tests/tokenizer_parity.rs
    # does) and need not be in this machine's hub cache: random ids of the
    # model's vocabulary stand in for the two captions.
    def tokenizer(captions):
        return torch.randint(1, text_cfg["vocab_size"], (len(captions), model.context_length))
else:
    tokenizer = open_clip.get_tokenizer(model_name, context_length=model.context_length)

size = model.visual.image_size
height, width = (size, size) if isinstance(size, int) else tuple(size)
images = torch.randn(2, 3, height, width)
text = tokenizer(["a photo of a cat", "two dogs playing in the snow at night"])

extra = {}
if isinstance(model, open_clip.CoCa):
    # CoCa's encode_* normalise by default; CLIP's do not.
    image_features = model.encode_image(images, normalize=False)
    text_features = model.encode_text(text, normalize=False)
    out = model(images, text)
    terms = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(
        out["image_features"], out["text_features"], out["logits"], out["labels"],
        out["logit_scale"], output_dict=True)
    loss = terms["contrastive_loss"] + terms["caption_loss"]
    extra = {"logits": out["logits"].detach(), **{k: v.detach() for k, v in terms.items()}}
else:
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
    **extra,
}
for name, param in model.named_parameters():
    # parameters the CLIP loss does not reach (logit_bias) have zero gradient
    grad = param.grad if param.grad is not None else torch.zeros_like(param)
    outputs[f"grad.{name}"] = grad.contiguous()
save_file(outputs, f"{out_dir}/outputs.safetensors")
print(json.dumps({"params": sum(1 for _ in model.parameters())}))
