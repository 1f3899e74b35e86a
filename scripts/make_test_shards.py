#!/usr/bin/env python3
"""Writes WebDataset shards of real photographs for clipflow's tests and benchmarks.

The photographs are the ones scikit-learn (sklearn/datasets/images) and
scikit-image (skimage/data) ship inside their packages. Each sample is a random
crop of one of them, maybe mirrored, rescaled so that its shorter side is 256 to
512 px (the sizes of web datasets such as LAION), saved as a JPEG at a random
quality, with a caption naming what the photograph shows. Some photographs are
greyscale and stay greyscale, as a few web images are.

Each shard `shard-NNNNN.tar` holds, per sample `KEY`, the members `KEY.jpg`,
`KEY.txt` (the caption) and `KEY.json` (where the crop came from), in that
order, as webdataset writers lay them out. `sizes.json` beside the shards maps
each shard's file name to its number of samples, as OpenCLIP's
get_dataset_size reads it.

The output depends only on the arguments and on the installed packages'
photographs: the same seed gives byte-identical shards.

Usage:
    make_test_shards.py OUT_DIR --shards 4 --samples-per-shard 100 [--seed 0]
"""

import argparse
import io
import json
import math
import os
import random
import sys
import tarfile

from PIL import Image

# (package, path inside the package, what the photograph shows, keep greyscale)
PHOTOGRAPHS = [
    ("sklearn", "datasets/images/china.jpg", "a Chinese temple among trees", False),
    ("sklearn", "datasets/images/flower.jpg", "a pink flower in a garden", False),
    ("skimage", "data/astronaut.png", "an astronaut in a spacesuit next to a flag", False),
    ("skimage", "data/chelsea.png", "a tabby cat", False),
    ("skimage", "data/coffee.png", "a cup of coffee on a saucer", False),
    ("skimage", "data/hubble_deep_field.jpg", "distant galaxies in deep space", False),
    ("skimage", "data/motorcycle_left.png", "a motorcycle parked in a room", False),
    ("skimage", "data/retina.jpg", "the retina of a human eye", False),
    ("skimage", "data/rocket.jpg", "a rocket on its launch pad", False),
    ("skimage", "data/camera.png", "a man with a camera on a tripod", True),
    ("skimage", "data/moon.png", "the cratered surface of the moon", True),
    ("skimage", "data/coins.png", "old coins on a table", True),
]

CAPTION_TEMPLATES = [
    "a photo of {}.",
    "{}",
    "a picture of {}.",
    "an image showing {}.",
    "{}, photographed.",
]

SHORTER_SIDE_RANGE = (256, 512)
JPEG_QUALITY_RANGE = (70, 95)
CROP_AREA_RANGE = (0.35, 1.0)
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
# A fixed modification time keeps the tar bytes independent of the clock.
MEMBER_MTIME = 1_700_000_000


def package_dir(name):
    try:
        module = __import__(name)
    except ImportError:
        pip_name = {"sklearn": "scikit-learn", "skimage": "scikit-image"}[name]
        sys.exit(
            f"make_test_shards.py: the photographs come from the {pip_name} package, "
            f"which is not installed: pip install {pip_name}"
        )
    return os.path.dirname(module.__file__)


def load_photographs():
    photographs = []
    for package, relative_path, subject, greyscale in PHOTOGRAPHS:
        path = os.path.join(package_dir(package), relative_path)
        with Image.open(path) as image:
            pixels = image.convert("L" if greyscale else "RGB")
        photographs.append((relative_path, subject, pixels))
    return photographs


def random_crop_box(rng, width, height):
    """A box covering a random share of the photograph with a random aspect ratio."""
    area = width * height * rng.uniform(*CROP_AREA_RANGE)
    log_low, log_high = (math.log(r) for r in CROP_ASPECT_RANGE)
    aspect = math.exp(rng.uniform(log_low, log_high))
    crop_width = min(width, max(1, round(math.sqrt(area * aspect))))
    crop_height = min(height, max(1, round(math.sqrt(area / aspect))))
    left = rng.randint(0, width - crop_width)
    top = rng.randint(0, height - crop_height)
    return left, top, left + crop_width, top + crop_height


def make_sample(rng, photographs):
    """One (jpeg bytes, caption, metadata) triple derived from a random photograph."""
    source, subject, photograph = photographs[rng.randrange(len(photographs))]
    box = random_crop_box(rng, *photograph.size)
    image = photograph.crop(box)
    mirrored = rng.random() < 0.5
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shorter_side = rng.randint(*SHORTER_SIDE_RANGE)
    scale = shorter_side / min(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    quality = rng.randint(*JPEG_QUALITY_RANGE)
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=quality)
    caption = rng.choice(CAPTION_TEMPLATES).format(subject)
    metadata = {
        "source": source,
        "crop_box": list(box),
        "mirrored": mirrored,
        "width": size[0],
        "height": size[1],
        "jpeg_quality": quality,
    }
    return encoded.getvalue(), caption, metadata


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MEMBER_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir, num_shards, samples_per_shard, seed):
    os.makedirs(out_dir, exist_ok=True)
    photographs = load_photographs()
    rng = random.Random(seed)
    sizes = {}
    for shard in range(num_shards):
        shard_name = f"shard-{shard:05d}.tar"
        with tarfile.open(os.path.join(out_dir, shard_name), "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(samples_per_shard):
                key = f"{shard * samples_per_shard + index:09d}"
                jpeg, caption, metadata = make_sample(rng, photographs)
                add_member(tar, f"{key}.jpg", jpeg)
                add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                add_member(tar, f"{key}.json", json.dumps(metadata).encode("utf-8"))
        sizes[shard_name] = samples_per_shard
    with open(os.path.join(out_dir, "sizes.json"), "w") as f:
        json.dump(sizes, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write the shards and sizes.json into")
    parser.add_argument("--shards", type=int, required=True, help="number of tar shards")
    parser.add_argument("--samples-per-shard", type=int, required=True, help="samples in each shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops, sizes and captions")
    args = parser.parse_args()
    if args.shards < 1 or args.samples_per_shard < 1:
        parser.error("--shards and --samples-per-shard must be at least 1")
    write_shards(args.out_dir, args.shards, args.samples_per_shard, args.seed)


if __name__ == "__main__":
    main()
