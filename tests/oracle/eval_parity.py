"""Oracle side of tests/eval_parity.rs: OpenCLIP's evaluation on given inputs.

usage:
  eval_parity.py metadata
      prints {"class_names": [...], "templates": [...]} from
      open_clip.zero_shot_metadata, each template applied to "{}".
  eval_parity.py classifier OUT_DIR CONFIG FIRST COUNT
      builds the model of CONFIG (tiny) with random weights, writes
      weights.safetensors and classifier.safetensors: build_zero_shot_classifier
      over IMAGENET_CLASSNAMES[FIRST:FIRST+COUNT] and the 80 OpenAI templates.
  eval_parity.py evaluate OUT_DIR
      runs open_clip_train.train.evaluate (validation and zero-shot on
      imagenet-val and imagenet-v2) on random features through a model that
      returns its inputs as features; writes inputs.safetensors and prints
      the metrics in order as [[name, repr(value)], ...].
  eval_parity.py image_folder ROOT
      prints torchvision ImageFolder(ROOT)'s classes and samples (paths
      relative to ROOT).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def metadata():
    from open_clip import zero_shot_metadata

    print(json.dumps({
        "class_names": list(zero_shot_metadata.IMAGENET_CLASSNAMES),
        "templates": [t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES],
    }))


def classifier(out_dir, config, first, count):
    import open_clip
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

    open_clip.add_model_config(config)
    name = os.path.splitext(os.path.basename(config))[0]
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name, context_length=model.context_length)
    weights = build_zero_shot_classifier(
        model,
        tokenizer=tokenizer,
        classnames=IMAGENET_CLASSNAMES[first:first + count],
        templates=OPENAI_IMAGENET_TEMPLATES,
        num_classes_per_batch=10,
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/weights.safetensors")
    save_file({"classifier": weights.contiguous()}, f"{out_dir}/classifier.safetensors")


class FeatureModel(torch.nn.Module):
    """Returns its image and text inputs as the (already normalised) features."""

    def __init__(self, logit_scale):
        super().__init__()
        self.logit_scale = logit_scale

    def forward(self, image=None, text=None):
        return {"image_features": image, "text_features": text, "logit_scale": self.logit_scale}


class BatchList(list):
    """A list of batches standing in for a DataLoader."""

    def __init__(self, batches):
        super().__init__(batches)
        self.num_samples = sum(len(b[0]) for b in batches)


def split(tensors, sizes):
    return list(zip(*(t.split(sizes) for t in tensors)))


def evaluate(out_dir):
    import open_clip_train.zero_shot as zero_shot
    from open_clip_train.data import DataInfo
    from open_clip_train.train import evaluate as open_clip_evaluate

    torch.manual_seed(0)
    dim, num_classes = 32, 15
    val_sizes, zs_sizes = [7, 7, 5], [6, 6, 4]
    n = sum(val_sizes)
    images = F.normalize(torch.randn(n, dim), dim=-1)
    texts = F.normalize(images + 1.2 * torch.randn(n, dim), dim=-1)
    # repeated captions and images: rank ties in both directions
    texts[4] = texts[3]
    texts[12] = texts[2]
    images[9] = images[8]
    logit_scale = torch.tensor(1 / 0.07)

    classifier = F.normalize(torch.randn(dim, num_classes), dim=0)
    classifier[:, 9] = classifier[:, 8]  # two classes with the same prompt: logit ties
    zs = {}
    for key in ("imagenet_val", "imagenet_v2"):
        targets = torch.randint(num_classes, (sum(zs_sizes),))
        zs[f"{key}_targets"] = targets
        zs[f"{key}_features"] = F.normalize(classifier.T[targets] + 0.8 * torch.randn(len(targets), dim), dim=-1)
    zero_shot.build_zero_shot_classifier = lambda *args, **kwargs: classifier
    # OpenCLIP's `accuracy` converts a 1-element array with float(), which
    # numpy >= 2.4 refuses; this float accepts it, leaving the counting as is.
    zero_shot.float = lambda value: float(value.item() if hasattr(value, "item") else value)

    data = {
        "val": DataInfo(BatchList(split([images, texts], val_sizes))),
        "imagenet-val": DataInfo(BatchList(split([zs["imagenet_val_features"], zs["imagenet_val_targets"]], zs_sizes))),
        "imagenet-v2": DataInfo(BatchList(split([zs["imagenet_v2_features"], zs["imagenet_v2_targets"]], zs_sizes))),
    }
    args = argparse.Namespace(
        device="cpu", precision="fp32", val_frequency=1, zeroshot_frequency=1, epochs=2,
        distributed=False, horovod=False, save_logs=False, wandb=False, batch_size=7,
        rank=0, local_rank=0, model="unused",
    )
    metrics = open_clip_evaluate(FeatureModel(logit_scale), data, 2, args, tokenizer=object())

    save_file({
        "val_images": images, "val_texts": texts, "logit_scale": logit_scale,
        "val_batch_sizes": torch.tensor(val_sizes), "zero_shot_batch_sizes": torch.tensor(zs_sizes),
        "classifier": classifier.contiguous(), **zs,
    }, f"{out_dir}/inputs.safetensors")
    print(json.dumps([[name, repr(float(value))] for name, value in metrics.items()]))


def image_folder(root):
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(root)
    print(json.dumps({
        "classes": folder.classes,
        "samples": [[os.path.relpath(path, root), index] for path, index in folder.samples],
    }))


mode, rest = sys.argv[1], sys.argv[2:]
if mode == "metadata":
    metadata()
elif mode == "classifier":
    classifier(rest[0], rest[1], int(rest[2]), int(rest[3]))
elif mode == "evaluate":
    evaluate(rest[0])
elif mode == "image_folder":
    image_folder(rest[0])
else:
    sys.exit(f"unknown mode {mode}")
