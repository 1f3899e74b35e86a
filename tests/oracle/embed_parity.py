"""Oracle side of tests/embed_parity.rs.

usage: embed_parity.py MODEL OUT_DIR
Writes OUT_DIR/weights.safetensors (random weights), OUT_DIR/images/*.jpg
(photographs from scikit-learn's wheel at several sizes), OUT_DIR/texts.txt,
and OUT_DIR/expected.safetensors: what OpenCLIP's encode_image (after its
validation transform) and encode_text give for them, in fp32 and under
bf16 autocast ("amp_bf16." names) and with convert_weights_to_lp's bf16
weights and bf16 inputs, as --precision bf16 runs ("bf16." names).
"""
import pathlib
import sys

import open_clip
import sklearn
import torch
from PIL import Image
from safetensors.torch import save_file

model_name, out = sys.argv[1], pathlib.Path(sys.argv[2])
torch.manual_seed(2)
model, _, preprocess = open_clip.create_model_and_transforms(model_name)
model.eval()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "weights.safetensors")

photos = pathlib.Path(sklearn.__file__).parent / "datasets" / "images"
images_dir = out / "images"
images_dir.mkdir()
for i, (photo, size, quality) in enumerate(
    [("china.jpg", None, 95), ("flower.jpg", (300, 200), 80), ("china.jpg", (180, 400), 70), ("flower.jpg", (1000, 700), 90)]
):
    image = Image.open(photos / photo).convert("RGB")
    if size:
        image = image.resize(size, Image.BICUBIC)
    image.save(images_dir / f"{i:02d}-{photo}", quality=quality)

captions = ["a photo of a temple", "Red &amp; yellow flowers", "", "ÆSTHETIC “quotes” ﬁne"]
(out / "texts.txt").write_text("\n".join(captions) + "\n")

files = sorted(images_dir.iterdir(), key=lambda p: p.name)
pixels = torch.stack([preprocess(Image.open(f)) for f in files])
text = open_clip.get_tokenizer(model_name)(captions)
with torch.no_grad():
    expected = {"image_features": model.encode_image(pixels), "text_features": model.encode_text(text)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected["amp_bf16.image_features"] = model.encode_image(pixels).float()
        expected["amp_bf16.text_features"] = model.encode_text(text).float()
    open_clip.model.convert_weights_to_lp(model, torch.bfloat16)
    expected["bf16.image_features"] = model.encode_image(pixels.to(torch.bfloat16)).float()
    expected["bf16.text_features"] = model.encode_text(text).float()
    save_file(expected, out / "expected.safetensors")
