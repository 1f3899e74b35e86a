"""Regenerates core/src/model/timm_configs.json from the installed timm.

OpenCLIP's configs name their timm image towers (`timm_model_name`); the
architecture behind each name (widths, depth, heads, tokens, norms, the
pooling head) is a fact of timm's model registry. This script builds every
such model on the meta device (no weights, no downloads) and writes what
clipflow needs to build the same module tree natively. A model whose class
or layers clipflow does not build is listed with its class only, so
`--model` can say why it refuses it. Run after upgrading timm or
open_clip_torch:

    python scripts/gen_timm_configs.py > core/src/model/timm_configs.json
"""
import json
import pathlib
import sys

import open_clip
import timm
import torch
from timm.layers import (
    Attention, AttentionPoolLatent, LayerNorm, LayerNorm2d, LayerScale, Mlp, NormMlpClassifierHead,
    PatchEmbed,
)
from timm.layers.activations import GELU, GELUTanh
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn


def identity(module):
    return isinstance(module, nn.Identity)


def activation(module):
    """gelu, gelu_tanh or None (another activation)."""
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    return {GELU: "gelu", GELUTanh: "gelu_tanh"}.get(type(module))


def layer_norm_eps(module, kinds=(LayerNorm, nn.LayerNorm)):
    if type(module) not in kinds or not module.elementwise_affine:
        return None
    return module.eps


def plain_mlp(mlp):
    return (
        type(mlp) is Mlp
        and activation(mlp.act) is not None
        and identity(mlp.norm)
        and mlp.fc1.bias is not None
        and mlp.fc2.bias is not None
    )


def vision_transformer(model):
    """The facts of a timm VisionTransformer built of plain layers, or None."""
    if type(model) is not VisionTransformer or type(model.patch_embed) is not PatchEmbed:
        return None
    if not identity(model.patch_embed.norm) or model.pool_include_prefix:
        return None
    if model.pos_embed is None or model.dynamic_img_size:
        return None
    blocks = list(model.blocks)
    first = blocks[0]
    for block in blocks:
        attn = block.attn
        if type(block) is not Block or type(attn) is not Attention:
            return None
        if getattr(attn, "gate", None) is not None or not identity(getattr(attn, "norm", nn.Identity())):
            return None
        if not identity(attn.q_norm) or not identity(attn.k_norm):
            return None
        if attn.attn_dim != model.embed_dim or not plain_mlp(block.mlp):
            return None
        if layer_norm_eps(block.norm1) is None or layer_norm_eps(block.norm2) is None:
            return None
        for scale in (block.ls1, block.ls2):
            if not identity(scale) and type(scale) is not LayerScale:
                return None
    norms = [block.norm1 for block in blocks] + [block.norm2 for block in blocks]
    norms += [m for m in (model.norm_pre, model.norm, model.fc_norm) if not identity(m)]
    eps = {layer_norm_eps(m) for m in norms}
    if len(eps) != 1 or None in eps:
        return None
    acts = {activation(block.mlp.act) for block in blocks}
    if len(acts) != 1:
        return None
    facts = {
        "class": "VisionTransformer",
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "patch_bias": model.patch_embed.proj.bias is not None,
        "embed_dim": model.embed_dim,
        "depth": len(blocks),
        "num_heads": first.attn.num_heads,
        "mlp_hidden": first.mlp.fc1.out_features,
        "qkv_bias": first.attn.qkv.bias is not None,
        "proj_bias": first.attn.proj.bias is not None,
        "layer_scale": not identity(first.ls1),
        "class_token": model.cls_token is not None,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "pre_norm": not identity(model.norm_pre),
        "norm": not identity(model.norm),
        "fc_norm": not identity(model.fc_norm),
        "norm_eps": eps.pop(),
        "act": acts.pop(),
        "global_pool": model.global_pool,
        "attn_pool": None,
    }
    pool = model.attn_pool
    if pool is not None:
        if type(pool) is not AttentionPoolLatent or pool.pos_embed is not None:
            return None
        if identity(pool.q) or not identity(pool.q_norm) or pool.mlp is None or not plain_mlp(pool.mlp):
            return None
        if layer_norm_eps(pool.norm) != facts["norm_eps"] or activation(pool.mlp.act) != facts["act"]:
            return None
        if pool.latent_dim != model.embed_dim or pool.out_features != model.embed_dim:
            return None
        facts["attn_pool"] = {
            "num_heads": pool.num_heads,
            "latent_len": pool.latent_len,
            "mlp_hidden": pool.mlp.fc1.out_features,
            "qkv_bias": pool.kv.bias is not None,
            "pool": pool.pool,
        }
    return facts


# Beside the towers OpenCLIP's configs name: a CLIP-style timm ViT (class
# token, pre-norm, no patch bias) that clipflow's parity tests build in a
# config of their own.
EXTRA = ["vit_base_patch32_clip_224"]

def convnext(model):
    """The facts of a timm ConvNeXt built of plain layers (a patch stem,
    channels-last LayerNorm MLP blocks, pool-then-norm head), or None."""
    if type(model) is not ConvNeXt or not identity(model.norm_pre):
        return None
    stem = list(model.stem)
    if len(stem) != 2 or type(stem[0]) is not nn.Conv2d or layer_norm_eps(stem[1], (LayerNorm2d,)) is None:
        return None
    conv = stem[0]
    if conv.kernel_size != conv.stride or conv.padding != (0, 0):
        return None
    head = model.head
    if type(head) is not NormMlpClassifierHead or not identity(head.pre_logits):
        return None
    if head.global_pool.pool_type != "avg" or layer_norm_eps(head.norm, (LayerNorm2d,)) is None:
        return None
    eps = {layer_norm_eps(stem[1], (LayerNorm2d,)), layer_norm_eps(head.norm, (LayerNorm2d,))}
    stages, acts, kernels = [], set(), set()
    for index, stage in enumerate(model.stages):
        downsample = list(stage.downsample) if not identity(stage.downsample) else []
        if index == 0 and downsample:
            return None
        if index > 0:
            if len(downsample) != 2 or layer_norm_eps(downsample[0], (LayerNorm2d,)) is None:
                return None
            conv = downsample[1]
            if type(conv) is not nn.Conv2d or conv.kernel_size != (2, 2) or conv.stride != (2, 2):
                return None
            eps.add(layer_norm_eps(downsample[0], (LayerNorm2d,)))
        blocks = list(stage.blocks)
        for block in blocks:
            if type(block) is not ConvNeXtBlock or block.use_conv_mlp or not identity(block.shortcut):
                return None
            if not plain_mlp(block.mlp) or block.gamma is None:
                return None
            dw = block.conv_dw
            if type(dw) is not nn.Conv2d or dw.groups != dw.in_channels or dw.stride != (1, 1):
                return None
            if dw.dilation != (1, 1) or dw.bias is None or dw.padding != (dw.kernel_size[0] // 2,) * 2:
                return None
            eps.add(layer_norm_eps(block.norm))
            acts.add(activation(block.mlp.act))
            kernels.add(dw.kernel_size[0])
        stages.append({
            "dim": blocks[0].conv_dw.out_channels,
            "depth": len(blocks),
            "mlp_hidden": blocks[0].mlp.fc1.out_features,
        })
    if len(eps) != 1 or None in eps or len(acts) != 1 or None in acts or len(kernels) != 1:
        return None
    return {
        "class": "ConvNeXt",
        "patch_size": stem[0].kernel_size[0],
        "conv_bias": stem[0].bias is not None,
        "kernel_size": kernels.pop(),
        "norm_eps": eps.pop(),
        "act": acts.pop(),
        "stages": stages,
    }


config_dir = pathlib.Path(open_clip.__file__).parent / "model_configs"
names = sorted(
    {
        cfg["vision_cfg"]["timm_model_name"]
        for cfg in (json.loads(p.read_text()) for p in config_dir.glob("*.json"))
        if cfg.get("vision_cfg", {}).get("timm_model_name")
    }
    | set(EXTRA)
)
towers = {}
for name in names:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    towers[name] = vision_transformer(model) or convnext(model) or {"class": type(model).__name__}
json.dump({"timm_version": timm.__version__, "towers": towers}, sys.stdout, indent=1, sort_keys=True)
sys.stdout.write("\n")
