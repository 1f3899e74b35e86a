"""Regenerates core/src/eval/imagenet_metadata.json from the installed open_clip_torch.

OpenAI's 1000 ImageNet class names (in class-index order) and its 80 prompt
templates are facts about the zero-shot ImageNet benchmark; clipflow embeds
them so `--imagenet-val` works without Python at run time. OpenCLIP keeps the
templates as functions of the class name; they are written here with `{}`
where the class name goes. Run after upgrading open_clip_torch:

    python scripts/gen_imagenet_metadata.py > core/src/eval/imagenet_metadata.json
"""
import json
import sys

from open_clip import zero_shot_metadata

PLACEHOLDER = "{}"

templates = [template(PLACEHOLDER) for template in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
for template in templates:
    if template.count("{") != 1 or template.count("}") != 1:
        sys.exit(f"template {template!r} does not hold exactly one {PLACEHOLDER}")

metadata = {
    "class_names": list(zero_shot_metadata.IMAGENET_CLASSNAMES),
    "templates": templates,
}
json.dump(metadata, sys.stdout, indent=1, ensure_ascii=False)
sys.stdout.write("\n")
