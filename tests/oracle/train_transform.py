"""Oracle for tests/train_transform_parity.rs: OpenCLIP's training transform
(open_clip.image_transform(..., is_train=True)) and torchvision's
RandomResizedCrop sampling, run in the project's Python environment.

Usage:
  train_transform.py pipeline OUT   OpenCLIP's transform on real photographs,
                                    recording its random choices; prints cases
  train_transform.py colours OUT    colour steps and grey-scale on an image
                                    holding many colours; prints cases
  train_transform.py crops N        N boxes from RandomResizedCrop.get_params
                                    per (image size, scale); prints them
"""

import importlib.util
import json
import os
import random
import sys

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import ColorJitter, Grayscale, RandomResizedCrop

import open_clip.transform as oc_transform


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"{name} is not installed in the oracle environment: its sample "
                 "photographs are the test images")
    return spec.submodule_search_locations[0]


def photographs(out):
    """Real photographs shipped by scikit-learn and scikit-image, decoded by
    PIL and written as PNG so the Rust side reads the very same pixels."""
    sources = [
        os.path.join(package_dir("sklearn"), "datasets", "images", "china.jpg"),
        os.path.join(package_dir("sklearn"), "datasets", "images", "flower.jpg"),
        os.path.join(package_dir("skimage"), "data", "astronaut.png"),
        os.path.join(package_dir("skimage"), "data", "coffee.png"),
        os.path.join(package_dir("skimage"), "data", "chelsea.png"),
    ]
    paths = []
    for source in sources:
        img = Image.open(source).convert("RGB")
        stem = os.path.splitext(os.path.basename(source))[0]
        path = os.path.join(out, stem + ".png")
        img.save(path)
        paths.append(path)
    # A portrait photo, and one far wider than the aspect-ratio range, where
    # RandomResizedCrop often falls back to its centred crop.
    china = Image.open(paths[0])
    china.transpose(Image.Transpose.TRANSPOSE).save(os.path.join(out, "china-portrait.png"))
    china.crop((0, 150, 640, 290)).save(os.path.join(out, "china-strip.png"))
    paths += [os.path.join(out, "china-portrait.png"), os.path.join(out, "china-strip.png")]
    return paths


class Recorder:
    """Records the random choices OpenCLIP's transform makes for one image."""

    def __init__(self):
        self.reset()
        crop_params = RandomResizedCrop.get_params
        jitter_params = ColorJitter.get_params
        recorder = self

        def record_crop(img, scale, ratio):
            box = crop_params(img, scale, ratio)
            recorder.crop = [int(v) for v in box]
            return box

        def record_jitter(brightness, contrast, saturation, hue):
            params = jitter_params(brightness, contrast, saturation, hue)
            recorder.jitter = params
            return params

        RandomResizedCrop.get_params = staticmethod(record_crop)
        ColorJitter.get_params = staticmethod(record_jitter)

    def reset(self):
        self.crop = None
        self.jitter = None

    def color_adjustments(self):
        """The jitter steps that ran, in order, as [name, factor] pairs."""
        if self.jitter is None:
            return []
        order, *factors = self.jitter
        names = ["brightness", "contrast", "saturation", "hue"]
        return [[names[i], factors[i]] for i in order.tolist() if factors[i] is not None]


def grey_applied(pixels):
    return bool(np.all(pixels[..., 0] == pixels[..., 1]) and np.all(pixels[..., 1] == pixels[..., 2]))


def pipeline(out):
    recorder = Recorder()
    configs = [
        {"size": [224, 224], "aug_cfg": {}},
        {"size": [192, 256], "aug_cfg": {"scale": [0.08, 1.0]}},
        {"size": [224, 224], "aug_cfg": {"color_jitter": [0.4, 0.4, 0.4, 0.1],
                                         "color_jitter_prob": 0.8, "gray_scale_prob": 0.3}},
        {"size": [160, 160], "aug_cfg": {"scale": [0.3, 1.0], "color_jitter": [0.8, 0.8, 0.8, 0.5],
                                         "color_jitter_prob": 1.0}},
    ]
    torch.manual_seed(0)
    random.seed(0)
    cases = []
    for photo in photographs(out):
        for index, config in enumerate(configs):
            size = config["size"]
            aug_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config["aug_cfg"].items()}
            transform = oc_transform.image_transform(
                size[0] if size[0] == size[1] else tuple(size), is_train=True, aug_cfg=aug_cfg)
            # The gray_scale step draws its coin from Python's random; wrap it
            # to learn whether it fired.
            for repeat in range(3):
                recorder.reset()
                img = Image.open(photo).convert("RGB")
                grayscale = False
                for step in transform.transforms[:-2]:
                    before = img
                    img = step(img)
                    if isinstance(step, oc_transform.gray_scale):
                        grayscale = img is not before
                pixels = np.asarray(img, dtype=np.uint8)
                assert pixels.shape == (size[0], size[1], 3), pixels.shape
                tensor = transform.transforms[-1](transform.transforms[-2](img))
                stem = os.path.join(out, f"{os.path.basename(photo)}.{index}.{repeat}")
                pixels.tofile(stem + ".pixels")
                tensor.numpy().astype("<f4").tofile(stem + ".tensor")
                cases.append({
                    "photo": photo, "size": size, "aug_cfg": config["aug_cfg"],
                    "crop": recorder.crop, "color_adjustments": recorder.color_adjustments(),
                    "grayscale": grayscale,
                    "pixels": stem + ".pixels", "tensor": stem + ".tensor",
                })
            # Boxes the sampler rarely draws: whole image, one-pixel strips,
            # a small box enlarged, the bottom-right corner.
            img = Image.open(photo).convert("RGB")
            width, height = img.size
            edge_boxes = [
                [0, 0, height, width], [0, 0, height, 1], [height - 1, 0, 1, width],
                [height // 3, width // 4, 37, 23], [height - 100, width - 90, 100, 90],
            ]
            for box_index, box in enumerate(edge_boxes):
                pixels = np.asarray(F.resized_crop(img, *box, size, F.InterpolationMode.BICUBIC))
                stem = os.path.join(out, f"{os.path.basename(photo)}.{index}.box{box_index}")
                pixels.tofile(stem + ".pixels")
                cases.append({"photo": photo, "size": size, "aug_cfg": {}, "crop": box,
                              "color_adjustments": [], "grayscale": False,
                              "pixels": stem + ".pixels", "tensor": None})
    print(json.dumps(cases))


def colours(out):
    """Every (red, green) pair with 16 blue levels, then a photograph, each
    through single colour steps (torchvision's adjust_* on PIL) and
    Grayscale(3)."""
    index = np.arange(1024 * 1024)
    red, green, blue = index % 256, (index // 256) % 256, (index // 65536) * 16 + (index // 256) % 16
    cube = np.stack([red, green, blue], axis=-1).astype(np.uint8).reshape(1024, 1024, 3)
    images = {"cube": Image.fromarray(cube, "RGB"),
              "astronaut": Image.open(os.path.join(package_dir("skimage"), "data", "astronaut.png")).convert("RGB")}
    steps = [
        ["brightness", 0.6], ["brightness", 1.37], ["contrast", 0.55], ["contrast", 1.4],
        ["saturation", 0.0], ["saturation", 0.63], ["saturation", 1.71],
        ["hue", 0.1], ["hue", -0.23], ["hue", 0.5], ["hue", -0.5], ["hue", 0.004],
    ]
    adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
              "saturation": F.adjust_saturation, "hue": F.adjust_hue}
    cases = []
    for name, img in images.items():
        source = os.path.join(out, name + ".rgb")
        np.asarray(img).tofile(source)
        outputs = [(step, adjust[step[0]](img, step[1])) for step in steps]
        outputs.append((["grayscale", None], Grayscale(num_output_channels=3)(img)))
        for number, (step, result) in enumerate(outputs):
            path = os.path.join(out, f"{name}.{number}.rgb")
            np.asarray(result, dtype=np.uint8).tofile(path)
            cases.append({"image": name, "source": source, "width": img.size[0], "height": img.size[1],
                          "step": step[0], "factor": step[1], "expected": path})
    print(json.dumps(cases))


def crops(count):
    """Boxes (top, left, height, width) from torchvision's sampler, seeded."""
    torch.manual_seed(1234)
    ratio = (3.0 / 4.0, 4.0 / 3.0)
    result = []
    for width, height in [(640, 427), (300, 451), (500, 500), (1000, 200)]:
        img = Image.new("RGB", (width, height))
        for scale in [(0.9, 1.0), (0.08, 1.0)]:
            boxes = [list(RandomResizedCrop.get_params(img, scale, ratio)) for _ in range(count)]
            result.append({"width": width, "height": height, "scale": scale, "boxes": boxes})
    print(json.dumps(result))


if __name__ == "__main__":
    mode, argument = sys.argv[1], sys.argv[2]
    {"pipeline": pipeline, "colours": colours, "crops": lambda n: crops(int(n))}[mode](argument)
