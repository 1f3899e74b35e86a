"""Oracle side of tests/pretrained_tags.rs.

usage: pretrained_tags.py HUB OUT_DIR
Lays out a HuggingFace hub cache under HUB as huggingface_hub does, holding
weights OpenCLIP saved for two pretrained tags: ViT-B-32 `laion2b_s34b_b79k`
(a torch.save state_dict as open_clip_pytorch_model.bin) and
ViT-B-16-SigLIP `webli` (open_clip_model.safetensors), each random. Then,
offline on that cache, writes OUT_DIR/images/*.jpg, OUT_DIR/texts.txt and
OUT_DIR/expected.safetensors: what create_model_and_transforms(name,
pretrained=TAG) and its validation transform give for them
("NAME.image_features", "ViT-B-32.text_features").
"""
import os
import pathlib
import sys

hub, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(hub)

import open_clip  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REVISION = "89abcdef0123456789abcdef0123456789abcdef"


def snapshot(repo):
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    path = repo_dir / "snapshots" / REVISION
    path.mkdir(parents=True)
    return path


torch.manual_seed(3)
clip = open_clip.create_model("ViT-B-32")
torch.save(clip.state_dict(), snapshot("laion/CLIP-ViT-B-32-laion2B-s34B-b79K") / "open_clip_pytorch_model.bin")
siglip = open_clip.create_model("ViT-B-16-SigLIP")
save_file({k: v.contiguous() for k, v in siglip.state_dict().items()},
          snapshot("timm/ViT-B-16-SigLIP") / "open_clip_model.safetensors")

photos = pathlib.Path(sklearn.__file__).parent / "datasets" / "images"
images_dir = out / "images"
images_dir.mkdir()
for i, (photo, size) in enumerate([("china.jpg", (300, 200)), ("flower.jpg", (180, 400))]):
    Image.open(photos / photo).convert("RGB").resize(size, Image.BICUBIC).save(images_dir / f"{i:02d}-{photo}")
captions = ["a photo of a temple", "red and yellow flowers"]
(out / "texts.txt").write_text("\n".join(captions) + "\n")
files = sorted(images_dir.iterdir(), key=lambda p: p.name)

expected = {}
for name, tag in [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16-SigLIP", "webli")]:
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
    model.eval()
    pixels = torch.stack([preprocess(Image.open(f)) for f in files])
    with torch.no_grad():
        expected[f"{name}.image_features"] = model.encode_image(pixels)
        if name == "ViT-B-32":
            text = open_clip.get_tokenizer(name)(captions)
            expected[f"{name}.text_features"] = model.encode_text(text)
save_file(expected, out / "expected.safetensors")
