"""OpenCLIP's side of the data-loading benchmark (benches/data_loader.py).

Runs OpenCLIP's own training data pipeline, `open_clip_train.data.get_data`,
with the given training flags, and iterates one epoch of batches (or
--max-batches) without a model: shards to device-ready batches, as
`clipflow bench data` does. Prints one JSON line like clipflow's.

usage: python benches/openclip_data_loader.py [--max-batches N] -- TRAIN_FLAGS...
"""
import json
import sys
import time

import open_clip
from open_clip_train.data import get_data
from open_clip_train.params import parse_args

argv = sys.argv[1:]
max_batches = None
if argv[:1] == ["--max-batches"]:
    max_batches = int(argv[1])
    argv = argv[2:]
if argv[:1] == ["--"]:
    argv = argv[1:]

args = parse_args(argv)
# What open_clip_train.main sets up before get_data, for one process.
args.distributed = False
args.world_size = 1
args.rank = 0
args.local_rank = 0
args.device = "cpu"

# The model's preprocessing config without building the model itself, so the
# measured memory is the loader's only.
cfg = open_clip.get_model_config(args.model)
image_size = cfg["vision_cfg"]["image_size"]
preprocess_train = open_clip.image_transform(
    image_size,
    is_train=True,
    mean=args.image_mean,
    std=args.image_std,
    resize_mode=args.image_resize_mode,
    interpolation=args.image_interpolation,
    aug_cfg=args.aug_cfg,
)
preprocess_val = open_clip.image_transform(image_size, is_train=False)
tokenizer = open_clip.get_tokenizer(args.model)

start = time.perf_counter()
data = get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=tokenizer)
loader = data["train"].dataloader
images = 0
for i, (batch_images, batch_texts) in enumerate(loader):
    images += batch_images.shape[0]
    if max_batches is not None and i + 1 >= max_batches:
        break
seconds = time.perf_counter() - start
print(json.dumps({"images": images, "seconds": seconds, "images_per_second": images / seconds}))
