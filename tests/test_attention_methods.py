"""Attention methods: the recorded attention is the model's own, rollout, the gradient-weighted
attention (and the raw-attention and attention Grad-CAM baselines) equal the reference
repositories' code to 1e-5 on the same weights, closed forms, and the method contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.methods import METHODS
from harness.methods._core import _hook_counts
from harness.methods.attention import recorded_attention, self_attention
from tests.conftest import TinyCNN, state_hash
from tests.tiny_transformers import images, tiny_swin, tiny_timm_vit, tiny_vit

timm = pytest.importorskip("timm")

ATTENTION = [name for name, method in METHODS.items()
             if method.fn.__module__ == "harness.methods.attention"]
TARGET = torch.tensor([0, 3, 1])


# ----------------------------------------------------------------------------- the oracle
# Ported from hila-chefer/Transformer-Explainability (commit c3e578f), only what these tests need:
# baselines/ViT/ViT_new.py (Mlp, Attention, Block, VisionTransformer.forward: the attention
# map is saved after attn_drop and its gradient by a tensor hook; einops.rearrange written as
# reshape/permute), baselines/ViT/ViT_explanation_generator.py (compute_rollout_attention,
# Baselines.generate_rollout, Baselines.generate_cam_attn), baselines/ViT/ViT_LRP.py
# (relprop "last_layer_attn"), and from hila-chefer/Transformer-MM-Explainability (commit
# 58eaea8) Transformer_MM_explainability_ViT.ipynb (avg_heads, apply_self_attention_rules,
# generate_relevance). Changes: no .cuda(), the class index is given, the 14 x 14 grid is the
# tiny model's, maps are not min-max scaled.


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.attn_gradients = None
        self.attention_map = None

    def save_attn_gradients(self, attn_gradients):
        self.attn_gradients = attn_gradients

    def forward(self, x, register_hook=False):
        b, n, _, h = *x.shape, self.num_heads
        qkv = self.qkv(x)
        # rearrange(qkv, 'b n (qkv h d) -> qkv b h n d', qkv=3, h=h)
        q, k, v = qkv.reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        attn = dots.softmax(dim=-1)
        attn = self.attn_drop(attn)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        self.attention_map = attn
        if register_hook:
            attn.register_hook(self.save_attn_gradients)
        out = out.permute(0, 2, 1, 3).reshape(b, n, -1)  # 'b h n d -> b n (h d)'
        return self.proj(out)


class RefBlock(nn.Module):
    def __init__(self, dim, num_heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, hidden)

    def forward(self, x, register_hook=False):
        x = x + self.attn(self.norm1(x), register_hook=register_hook)
        return x + self.mlp(self.norm2(x))


class RefViT(nn.Module):
    def __init__(self, dim=32, depth=2, num_heads=2, hidden=64, patch=8, tokens=17, classes=5):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList([RefBlock(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x, register_hook=False):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x, register_hook=register_hook)
        return self.head(self.norm(x)[:, 0])


def compute_rollout_attention(all_layer_matrices, start_layer=0):
    num_tokens = all_layer_matrices[0].shape[1]
    batch_size = all_layer_matrices[0].shape[0]
    eye = torch.eye(num_tokens).expand(batch_size, num_tokens, num_tokens)
    all_layer_matrices = [all_layer_matrices[i] + eye for i in range(len(all_layer_matrices))]
    matrices_aug = [all_layer_matrices[i] / all_layer_matrices[i].sum(dim=-1, keepdim=True)
                    for i in range(len(all_layer_matrices))]
    joint_attention = matrices_aug[start_layer]
    for i in range(start_layer + 1, len(matrices_aug)):
        joint_attention = matrices_aug[i].bmm(joint_attention)
    return joint_attention


def generate_rollout(model, input, start_layer=0):
    model(input)
    all_layer_attentions = []
    for blk in model.blocks:
        attn_heads = blk.attn.attention_map
        avg_heads = (attn_heads.sum(dim=1) / attn_heads.shape[1]).detach()
        all_layer_attentions.append(avg_heads)
    rollout = compute_rollout_attention(all_layer_attentions, start_layer=start_layer)
    return rollout[:, 0, 1:]


def one_hot_backward(model, input, index):
    output = model(input, register_hook=True)
    one_hot = torch.zeros((1, output.size()[-1]), dtype=torch.float32)
    one_hot[0, index] = 1
    one_hot = torch.sum(one_hot.requires_grad_(True) * output)
    model.zero_grad()
    one_hot.backward(retain_graph=True)


def avg_heads(cam, grad):  # rule 5
    cam = cam.reshape(-1, cam.shape[-2], cam.shape[-1])
    grad = grad.reshape(-1, grad.shape[-2], grad.shape[-1])
    cam = grad * cam
    return cam.clamp(min=0).mean(dim=0)


def generate_relevance(model, input, index):
    one_hot_backward(model, input, index)
    num_tokens = model.blocks[0].attn.attention_map.shape[-1]
    R = torch.eye(num_tokens, num_tokens)  # noqa: N806 - the reference's name
    for blk in model.blocks:
        cam = avg_heads(blk.attn.attention_map, blk.attn.attn_gradients)
        R += torch.matmul(cam, R)  # rule 6: apply_self_attention_rules
    return R[0, 1:]


def generate_cam_attn(model, input, index, grid=(4, 4)):
    one_hot_backward(model, input, index)
    grad = model.blocks[-1].attn.attn_gradients
    cam = model.blocks[-1].attn.attention_map
    cam = cam[0, :, 0, 1:].reshape(-1, *grid)
    grad = grad[0, :, 0, 1:].reshape(-1, *grid)
    grad = grad.mean(dim=[1, 2], keepdim=True)
    return (cam * grad).mean(0).clamp(min=0)


def last_layer_attn(model, input):
    model(input)
    cam = model.blocks[-1].attn.attention_map
    cam = cam[0].reshape(-1, cam.shape[-1], cam.shape[-1])
    return cam.clamp(min=0).mean(dim=0)[0, 1:]


def upsample(token_map, patch=8, grid=(4, 4)):
    """The reference notebooks' interpolate(scale_factor=16, mode='bilinear'), patch 8 here."""
    grid_map = token_map.reshape(1, 1, *grid)
    return F.interpolate(grid_map, scale_factor=patch, mode="bilinear")[0, 0]


def reference_from_torchvision(vit: nn.Module) -> RefViT:
    """The reference ViT with the weights of a torchvision ViT (the same network)."""
    depth = len(vit.encoder.layers)
    reference = RefViT(depth=depth)
    state = {"patch_embed.proj.weight": vit.conv_proj.weight,
             "patch_embed.proj.bias": vit.conv_proj.bias, "cls_token": vit.class_token,
             "pos_embed": vit.encoder.pos_embedding, "norm.weight": vit.encoder.ln.weight,
             "norm.bias": vit.encoder.ln.bias, "head.weight": vit.heads.head.weight,
             "head.bias": vit.heads.head.bias}
    for i, layer in enumerate(vit.encoder.layers):
        pairs = {"norm1": layer.ln_1, "norm2": layer.ln_2, "mlp.fc1": layer.mlp[0],
                 "mlp.fc2": layer.mlp[3], "attn.proj": layer.self_attention.out_proj}
        for name, module in pairs.items():
            state[f"blocks.{i}.{name}.weight"] = module.weight
            state[f"blocks.{i}.{name}.bias"] = module.bias
        state[f"blocks.{i}.attn.qkv.weight"] = layer.self_attention.in_proj_weight
        state[f"blocks.{i}.attn.qkv.bias"] = layer.self_attention.in_proj_bias
    reference.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return reference.eval()


def reference_from_timm(model: nn.Module) -> RefViT:
    reference = RefViT(depth=len(model.blocks))
    reference.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()},
                              strict=True)
    return reference.eval()


@pytest.mark.parametrize("build, to_reference", [(lambda: tiny_vit(layers=3),
                                                   reference_from_torchvision),
                                                  (lambda: tiny_timm_vit(layers=3),
                                                   reference_from_timm)],
                         ids=["torchvision", "timm"])
def test_methods_equal_the_reference_code_on_the_same_weights(build, to_reference):
    model = build()
    reference = to_reference(model)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model(x), rtol=1e-5, atol=1e-5)
    ours = {name: harness.saliency(name, model, x, TARGET) for name in ATTENTION}
    ours["rollout_start1"] = harness.saliency("rollout", model, x, TARGET, start_layer=1)
    for i in range(x.shape[0]):
        image, index = x[i:i + 1], int(TARGET[i])
        expected = {
            "rollout": generate_rollout(reference, image)[0],
            "rollout_start1": generate_rollout(reference, image, start_layer=1)[0],
            "generic_attention": generate_relevance(reference, image, index),
            "attention_gradcam": generate_cam_attn(reference, image, index),
            "raw_attention": last_layer_attn(reference, image),
        }
        assert set(expected) == set(ours)
        for name, token_map in expected.items():
            torch.testing.assert_close(ours[name][i], upsample(token_map.detach()),
                                       rtol=1e-5, atol=1e-5, msg=f"{name}, image {i}")
    assert float(ours["generic_attention"].std()) > 0  # a non-degenerate case


def test_deit_maps_skip_the_class_and_distillation_tokens():
    """On DeiT (class + distillation token) the maps are the class token's row over the patch
    columns 2..: the reference's formulas on attention read by hand through timm's explicit
    path."""
    model = tiny_timm_vit(distilled=True, layers=3)
    x = images(3)
    kept = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda module, inputs, output: kept.append(output)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle, block in zip(handles, model.blocks, strict=True):
            handle.remove()
            block.attn.fused_attn = True
    averaged = [k.sum(dim=1) / k.shape[1] for k in kept]
    rollout = compute_rollout_attention(averaged)[:, 0, 2:]
    raw = averaged[-1][:, 0, 2:]
    for name, token_map in (("rollout", rollout), ("raw_attention", raw)):
        expected = torch.stack([upsample(m) for m in token_map])
        torch.testing.assert_close(harness.saliency(name, model, x, TARGET), expected,
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- recording


def test_recorded_torchvision_attention_is_the_modules_own():
    vit = tiny_vit(layers=3)
    x = images(2)
    inputs = []
    handles = [layer.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o))
               for layer in vit.encoder.layers]
    with torch.no_grad():
        plain = vit(x)
        for handle in handles:
            handle.remove()
        with recorded_attention(vit, vit.harness_info.attention_layers) as probs:
            hooked = vit(x)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    for tokens, layer, recorded in zip(inputs, vit.encoder.layers, probs, strict=True):
        attention = layer.self_attention
        output, weights = attention(tokens, tokens, tokens, need_weights=True,
                                    average_attn_weights=False)
        ours_output, ours_weights = self_attention(tokens, attention)
        torch.testing.assert_close(ours_output, output, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_weights, weights, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recorded, weights, rtol=1e-5, atol=1e-7)
    assert _hook_counts(vit) == _hook_counts(tiny_vit(layers=3))


def test_recorded_timm_attention_is_the_softmax_of_its_own_projections():
    model = tiny_timm_vit()
    x = images(2)
    inputs = []
    handles = [block.norm1.register_forward_hook(lambda m, i, o: inputs.append(o))
               for block in model.blocks]
    with torch.no_grad():
        plain = model(x)  # fused attention
        for handle in handles:
            handle.remove()
        with recorded_attention(model, model.harness_info.attention_layers) as probs:
            hooked = model(x)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    assert all(block.attn.fused_attn for block in model.blocks)  # restored
    for tokens, block, recorded in zip(inputs, model.blocks, probs, strict=True):
        attention = block.attn
        qkv = attention.qkv(tokens).reshape(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
        expected = ((qkv[0] * attention.scale) @ qkv[1].transpose(-2, -1)).softmax(dim=-1)
        torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- closed forms


def test_uniform_attention_gives_the_closed_form_raw_attention_and_rollout():
    """Zero query and key projections: every head attends uniformly, A = U (all 1/T). Raw
    attention is 1/T at every patch; rollout with B = (U + I) / 2 and U^2 = U is
    B^L = (I + (2^L - 1) U) / 2^L, so its class-token row is (2^L - 1) / (2^L T) on the patches."""
    layers, tokens = 3, 17
    vit = tiny_vit(layers=layers)
    with torch.no_grad():
        for layer in vit.encoder.layers:
            layer.self_attention.in_proj_weight[:64].zero_()
            layer.self_attention.in_proj_bias[:64].zero_()
    x = images(2)
    raw = harness.saliency("raw_attention", vit, x, [0, 1])
    torch.testing.assert_close(raw, torch.full_like(raw, 1 / tokens))
    rolled = harness.saliency("rollout", vit, x, [0, 1])
    expected = (2**layers - 1) / (2**layers * tokens)
    torch.testing.assert_close(rolled, torch.full_like(rolled, expected))


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("build", [tiny_vit, lambda: tiny_timm_vit(distilled=True)],
                         ids=["torchvision_vit", "timm_deit"])
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_method_contract(name, build):
    model = build()
    model.train()  # the guard must restore this
    before = (state_hash(model), [m.training for m in model.modules()],
              [p.requires_grad for p in model.parameters()], _hook_counts(model))
    x = images(3)
    x_copy = x.clone()
    maps = harness.saliency(name, model, x, TARGET)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert torch.equal(harness.saliency(name, model, x, TARGET), maps), "deterministic"
    assert torch.equal(x, x_copy)
    after = (state_hash(model), [m.training for m in model.modules()],
             [p.requires_grad for p in model.parameters()], _hook_counts(model))
    assert after == before
    assert all(getattr(m, "fused_attn", True) for m in model.modules())
    alone = torch.cat([harness.saliency(name, model, x[i:i + 1], TARGET[i:i + 1])
                       for i in range(3)])
    torch.testing.assert_close(alone, maps, rtol=1e-5, atol=1e-6)  # batch independent
    if METHODS[name].signed is not None:
        signed = harness.saliency(name, model, x, TARGET, signed=True)
        assert signed.shape == maps.shape and torch.isfinite(signed).all()
        assert (signed < 0).any()  # the ReLU (before upsampling) is left out


def test_attention_methods_refuse_models_without_a_class_token_sequence():
    x = images(2)
    cnn = harness.models.prepare(harness.models.attach_info(TinyCNN(), num_classes=5,
                                                            input_size=32))
    for model in (cnn, tiny_swin()):
        for name in ATTENTION:
            with pytest.raises(ValueError, match="attention methods need a vision transformer "
                                                 "that classifies from a class token"):
                harness.saliency(name, model, x, [0, 1])
    with pytest.raises(ValueError, match="target 7 of image #1 is out of range"):
        harness.saliency("rollout", tiny_vit(), x, [0, 7])
    with pytest.raises(ValueError, match=r"start_layer must be an integer in \[-2, 1\]"):
        harness.saliency("rollout", tiny_vit(), x, [0, 1], start_layer=2)
    wrong = harness.models.with_info(tiny_vit(), attention_layers=("encoder.ln",))
    with pytest.raises(ValueError, match="attention layer 'encoder.ln' is a LayerNorm; supported"):
        harness.saliency("rollout", wrong, x, [0, 1])
    assert _hook_counts(wrong) == _hook_counts(tiny_vit())
