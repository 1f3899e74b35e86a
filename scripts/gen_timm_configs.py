"""Regenerates core/src/model/timm_configs.json from the installed timm.

OpenCLIP's configs name their timm image towers (`timm_model_name`); the
architecture behind each name (widths, depth, heads, tokens, norms, the
pooling head) is a fact of timm's model registry. This script builds every
such model on the meta device as OpenCLIP's configs create it (no
weights, no downloads) and writes what
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
from timm.layers import AttentionRope, GluMlp, RotaryEmbeddingCat, SwiGLU
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.layers.pos_embed_rel import RelPosMlp
from timm.models.eva import Eva, EvaAttention, EvaBlock, EvaBlockPostNorm
from timm.models.vision_transformer_relpos import RelPosAttention, RelPosBlock, VisionTransformerRelPos
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn


def identity(module):
    return isinstance(module, nn.Identity)


def activation(module):
    """gelu, gelu_tanh or None (another activation)."""
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if type(module) is nn.SiLU:
        return "silu"
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


def block_facts(model, blocks, eps, act):
    """What a VisionTransformer and a VisionTransformerRelPos say alike of
    their patch embedding, blocks, final norms and pooling."""
    first = blocks[0]
    return {
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
        "norm": not identity(model.norm),
        "fc_norm": not identity(model.fc_norm),
        "norm_eps": eps,
        "act": act,
        "global_pool": model.global_pool,
        "attn_pool": None,
    }


def vision_transformer(model):
    """The facts of a timm VisionTransformer built of plain layers, or None."""
    if type(model) is not VisionTransformer or type(model.patch_embed) is not PatchEmbed:
        return None
    if not identity(model.patch_embed.norm) or model.pool_include_prefix:
        return None
    if model.pos_embed is None or model.dynamic_img_size:
        return None
    blocks = list(model.blocks)
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
        **block_facts(model, blocks, eps.pop(), acts.pop()),
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "pre_norm": not identity(model.norm_pre),
    }
    if model.attn_pool is not None:
        facts["attn_pool"] = attention_pool(model.attn_pool, model.embed_dim, facts["norm_eps"])
        if facts["attn_pool"] is None:
            return None
    return facts


def vision_transformer_relpos(model):
    """The facts of a timm VisionTransformerRelPos whose blocks each have
    their own log-coordinate relative position MLP (timm's 'cr' mode), in
    the VisionTransformer's terms plus `rel_pos`, or None."""
    if type(model) is not VisionTransformerRelPos or type(model.patch_embed) is not PatchEmbed:
        return None
    if not identity(model.patch_embed.norm) or model.shared_rel_pos is not None:
        return None
    blocks = list(model.blocks)
    rel_pos = []
    for block in blocks:
        attn = block.attn
        if type(block) is not RelPosBlock or type(attn) is not RelPosAttention or not plain_mlp(block.mlp):
            return None
        if not identity(attn.q_norm) or not identity(attn.k_norm):
            return None
        if layer_norm_eps(block.norm1) is None or layer_norm_eps(block.norm2) is None:
            return None
        for scale in (block.ls1, block.ls2):
            if not identity(scale) and type(scale) is not LayerScale:
                return None
        pos = attn.rel_pos
        if type(pos) is not RelPosMlp or pos.mode != "cr" or tuple(pos.pretrained_window_size) != (0, 0):
            return None
        if pos.prefix_tokens != model.num_prefix_tokens or list(pos.window_size) != list(model.patch_embed.grid_size):
            return None
        mlp = pos.mlp
        if type(mlp.act) is not nn.ReLU or not identity(mlp.norm) or mlp.fc1.bias is None or mlp.fc2.bias is None:
            return None
        rel_pos.append({"hidden": mlp.fc1.out_features, "dropout": mlp.drop1.p})
    if any(r != rel_pos[0] for r in rel_pos):
        return None
    norms = [block.norm1 for block in blocks] + [block.norm2 for block in blocks]
    norms += [m for m in (model.norm, model.fc_norm) if not identity(m)]
    eps = {layer_norm_eps(m) for m in norms}
    acts = {activation(block.mlp.act) for block in blocks}
    if len(eps) != 1 or None in eps or len(acts) != 1:
        return None
    return {
        "class": "VisionTransformerRelPos",
        **block_facts(model, blocks, eps.pop(), acts.pop()),
        "reg_tokens": 0,
        "no_embed_class": False,
        "pre_norm": False,
        "pos_embed": False,
        "rel_pos": rel_pos[0],
    }


def attention_pool(pool, dim, eps):
    """The facts of a MAP head (`AttentionPoolLatent`) of plain layers, or None."""
    if type(pool) is not AttentionPoolLatent or pool.pos_embed is not None:
        return None
    if identity(pool.q) or not identity(pool.q_norm) or pool.mlp is None or not plain_mlp(pool.mlp):
        return None
    if layer_norm_eps(pool.norm) != eps or pool.latent_dim != dim or pool.out_features != dim:
        return None
    return {
        "num_heads": pool.num_heads,
        "latent_len": pool.latent_len,
        "mlp_hidden": pool.mlp.fc1.out_features,
        "qkv_bias": pool.kv.bias is not None,
        "act": activation(pool.mlp.act),
        "pool": pool.pool,
    }


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


def eva_attention(attn, dim):
    """The parameter layout of an Eva block's attention, or None."""
    if type(attn) not in (EvaAttention, AttentionRope) or getattr(attn, "gate", None) is not None:
        return None
    if not identity(attn.q_norm) or not identity(attn.k_norm):
        return None
    if getattr(attn, "num_kv_groups", 1) != 1 or attn.head_dim * attn.num_heads != dim:
        return None
    if not identity(attn.norm) and layer_norm_eps(attn.norm) is None:
        return None
    if attn.proj.bias is None:
        return None
    layout = {"norm": not identity(attn.norm)}
    if attn.qkv is not None:
        # EvaAttention keeps the q and v biases beside a bias-free qkv
        # (the k bias is a zero buffer); AttentionRope biases qkv itself.
        layout["qkv"] = "packed"
        layout["qkv_bias"] = attn.qkv.bias is not None
        layout["q_v_bias"] = getattr(attn, "q_bias", None) is not None
        layout["split_bias"] = [False, False, False]
    else:
        layout["qkv"] = "split"
        layout["qkv_bias"] = False
        layout["q_v_bias"] = False
        layout["split_bias"] = [m.bias is not None for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    return layout


def eva_mlp(mlp):
    """The kind and sizes of an Eva block's MLP, or None."""
    norm = not identity(mlp.norm)
    if norm and layer_norm_eps(mlp.norm) is None:
        return None
    if type(mlp) is SwiGLU:
        if type(mlp.act) is not nn.SiLU or mlp.fc1_g.bias is None or mlp.fc2.bias is None:
            return None
        return {"kind": "swiglu", "hidden": mlp.fc1_x.out_features, "norm": norm, "act": "silu"}
    if type(mlp) is GluMlp:
        if mlp.gate_last or activation(mlp.act) is None or mlp.fc1.bias is None or mlp.fc2.bias is None:
            return None
        return {"kind": "glu", "hidden": mlp.fc1.out_features // 2, "norm": norm, "act": activation(mlp.act)}
    if type(mlp) is Mlp and activation(mlp.act) is not None and mlp.fc1.bias is not None and mlp.fc2.bias is not None:
        return {"kind": "mlp", "hidden": mlp.fc1.out_features, "norm": norm, "act": activation(mlp.act)}
    return None


def eva_rope(rope, grid):
    """The settings of an Eva's axial rotary embedding, or None."""
    if type(rope) is not RotaryEmbeddingCat or rope.in_pixels or rope.grid_type != "index":
        return None
    if rope.aug_active or rope.dim % 4 or list(rope.feat_shape) != list(grid):
        return None
    return {
        "temperature": float(rope.temperature),
        "grid_offset": float(rope.grid_offset),
        "grid_indexing": rope.grid_indexing,
        "ref_feat_shape": list(rope.ref_feat_shape) if rope.ref_feat_shape is not None else None,
        "rotate_half": bool(rope.rotate_half),
    }


def eva(model):
    """The facts of a timm Eva (EVA, EVA02, PE) built of the layers clipflow
    builds: fused or split attention with the q/v bias layout, inner norms,
    GELU, SwiGLU or packed-GLU MLPs, pre- or post-norm blocks, absolute and
    axial rotary position embeddings, or None."""
    if type(model) is not Eva or type(model.patch_embed) is not PatchEmbed or model.dynamic_img_size:
        return None
    if not identity(model.patch_embed.norm) or getattr(model, "rope_mixed", False):
        return None
    blocks = list(model.blocks)
    kinds = {type(block) for block in blocks}
    if kinds not in ({EvaBlock}, {EvaBlockPostNorm}):
        return None
    post_norm = kinds == {EvaBlockPostNorm}
    first = blocks[0]
    attn = [eva_attention(block.attn, model.embed_dim) for block in blocks]
    mlp = [eva_mlp(block.mlp) for block in blocks]
    if None in attn or None in mlp or any(a != attn[0] for a in attn) or any(m != mlp[0] for m in mlp):
        return None
    gammas = {
        (getattr(b, "gamma_1", None) is not None, getattr(b, "gamma_2", None) is not None) for b in blocks
    }
    if len(gammas) != 1:
        return None
    gamma_1, gamma_2 = gammas.pop()
    norms = [block.norm1 for block in blocks] + [block.norm2 for block in blocks]
    norms += [m for m in (model.norm_pre, model.norm, model.fc_norm) if not identity(m)]
    norms += [m for block in blocks for m in (block.attn.norm, block.mlp.norm) if not identity(m)]
    eps = {layer_norm_eps(m) for m in norms}
    if len(eps) != 1 or None in eps:
        return None
    grid = list(model.patch_embed.grid_size)
    rope = None
    if model.rope is not None:
        rope = eva_rope(model.rope, grid)
        if rope is None:
            return None
    facts = {
        "class": "Eva",
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "patch_bias": model.patch_embed.proj.bias is not None,
        "embed_dim": model.embed_dim,
        "depth": len(blocks),
        "num_heads": first.attn.num_heads,
        "class_token": model.cls_token is not None,
        "reg_tokens": model.reg_token.shape[1] if model.reg_token is not None else 0,
        "no_embed_class": model.no_embed_class,
        "pos_embed": model.pos_embed is not None,
        "rope": rope,
        "post_norm": post_norm,
        "attn": attn[0],
        "mlp": mlp[0],
        "gamma_1": gamma_1,
        "gamma_2": gamma_2,
        "pre_norm": not identity(model.norm_pre),
        "norm": not identity(model.norm),
        "fc_norm": not identity(model.fc_norm),
        "norm_eps": eps.pop(),
        "global_pool": model.global_pool,
        "attn_pool": None,
    }
    if model.attn_pool is not None:
        facts["attn_pool"] = attention_pool(model.attn_pool, model.embed_dim, facts["norm_eps"])
        if facts["attn_pool"] is None:
            return None
    return facts



def main():
    config_dir = pathlib.Path(open_clip.__file__).parent / "model_configs"
    # OpenCLIP creates a tower whose own head projects (timm_proj none or
    # empty) with the config's pooling, which can move timm's norms (an Eva
    # or ViT puts `fc_norm` after an average pool only); the others it
    # creates as timm's defaults, then resets their pooling. Each timm model
    # the configs name is built one way only.
    created_with = {name: {} for name in EXTRA}
    for cfg in (json.loads(p.read_text()) for p in config_dir.glob("*.json")):
        vision = cfg.get("vision_cfg", {})
        name = vision.get("timm_model_name")
        if not name:
            continue
        kwargs = {}
        pool = vision.get("timm_pool", "avg")
        if vision.get("timm_proj", "linear") in (None, "", "none") and pool not in ("abs_attn", "rot_attn"):
            kwargs["global_pool"] = pool
        if created_with.setdefault(name, kwargs) != kwargs:
            raise SystemExit(f"{name}: OpenCLIP's configs create it in two ways")
    towers = {}
    for name, kwargs in sorted(created_with.items()):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
        towers[name] = (
            vision_transformer(model) or vision_transformer_relpos(model) or convnext(model) or eva(model)
            or {"class": type(model).__name__}
        )
    json.dump({"timm_version": timm.__version__, "towers": towers}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
