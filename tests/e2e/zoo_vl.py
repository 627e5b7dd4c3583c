"""zoo_vl.py -- the vision-language families (issue 12, zoo group d).

qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe (the Qwen2 / Qwen3 / Qwen3-MoE
decoders under a VLM prefix, beside a vision tower), mistral3 (Mistral or
Ministral 3 inside) and ministral3, written from docs/architectures.md
§vl and the transformers modeling files it cites -- not from src/arch.c or
src/forward*.c:

  * generators in both layouts (the Hub's and what transformers 5 writes),
    with vision towers that carry their own norms (LayerNorms with biases,
    RMSNorms), which must come out byte for byte;
  * the expected fold plan per layer (expect.EXTRA_LAYER_PLANS);
  * a reference forward pass (ref_forward.EXTRA_FORWARD) that does the
    multimodal RoPE literally -- three position streams and the section
    selection of apply_multimodal_rotary_pos_emb / apply_interleaved_mrope
    -- so that the C pass's plain RoPE is checked against it, plus
    Ministral 3's position-dependent query scale and Qwen3-VL-MoE's router
    (top-k always renormalised).

Options of build (fixtures.build_model(family, ..., **opt)):
  layout: "model" (model.layers + visual.*: the Qwen2/2.5-VL Hub layout,
    accepted for Qwen3-VL by its conversion mapping), "model.language_model"
    (Qwen3-VL's Hub layout, transformers 5's for all), "language_model.model"
    (Mistral3's original layout: language_model.lm_head, vision_tower.*).
  flat: Qwen2/2.5-VL config keys at the top level (the Hub's configs);
    default True for layout "model".
  experts (qwen3_vl_moe): "hub" ([E, H, 2I] / [E, I, H], the Hub's),
    "fused" ([E, 2I, H], save_original_format=False), "per_expert".
  v5_keys: num_local_experts for the expert count.
  tie_levels: where tie_word_embeddings is written: "both", "top", "text",
    "none" (default: "top" when flat, for mistral3 "none" untied and "top"
    tied, else "both").
  text_tie: a different value for text_config's key (True / False).
  text_type (mistral3): "mistral" (default) or "ministral3".
  rope: "v4" (rope_theta + rope_scaling) or "v5" (rope_parameters).
  top_text: the text type itself at the top, no wrapper (model.layers).
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, _Gen, build_model

QKV = expect.QKV
GATE_UP = expect.GATE_UP

# wrapper -> (text model_type, kind of decoder, the base fixture family)
WRAPPERS = {
    "qwen2_vl": ("qwen2_vl_text", "qwen2", "qwen2"),
    "qwen2_5_vl": ("qwen2_5_vl_text", "qwen2", "qwen2"),
    "qwen3_vl": ("qwen3_vl_text", "qwen3", "qwen3"),
    "qwen3_vl_moe": ("qwen3_vl_moe_text", "qwen3_moe", "qwen3_moe"),
    "mistral3": (None, None, "mistral"),
}
# text model_type -> kind
TEXT_KIND = {"qwen2_vl_text": "qwen2", "qwen2_5_vl_text": "qwen2", "qwen3_vl_text": "qwen3",
             "qwen3_vl_moe_text": "qwen3_moe", "mistral": "mistral", "ministral3": "ministral3"}
ARCH = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
        "mistral3": "Mistral3ForConditionalGeneration", "ministral3": "Ministral3ForCausalLM"}
# The config classes' defaults (docs/architectures.md §vl): rms_norm_eps
# and rope_theta when config.json has none.
EPS = {"qwen2": 1e-5, "qwen3": 1e-6, "qwen3_moe": 1e-6, "mistral": 1e-6, "ministral3": 1e-5}
THETA = {"qwen2": 1e6, "qwen3": 5e5, "qwen3_moe": 5e5, "mistral": 10000.0}
MINISTRAL3_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0,
                   "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                   "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}
SECTION = [2, 1, 1]      # mrope_section of the fixtures: 2 * sum = head_dim 8
HV = 16                  # vision width


# ---------------------------------------------------------------- generators

def _kind_of(family, opt):
    if family == "ministral3":
        return "ministral3"
    if family == "mistral3":
        return opt.get("text_type", "mistral")
    return WRAPPERS[family][1]


def _text_config(base, kind, text_type, opt):
    tc = {k: v for k, v in base.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    tc["model_type"] = text_type
    L = tc["num_hidden_layers"]
    v5 = opt.get("rope") == "v5"
    if kind == "qwen2":
        # Qwen2VLTextConfig has no head_dim (hidden / heads) and keeps
        # sliding windows off unless use_sliding_window
        del tc["head_dim"]
        tc.update(use_sliding_window=False, sliding_window=32768, max_window_layers=L, rope_theta=1e6,
                  rope_scaling={"type": "mrope", "mrope_section": SECTION})
    elif kind in ("qwen3", "qwen3_moe"):
        tc.pop("norm_topk_prob", None)     # Qwen3VLMoeTextConfig has none: always renormalised
        tc.update(rope_theta=5e6, rope_scaling={"rope_type": "default", "mrope_section": SECTION,
                                                "mrope_interleaved": True})
    elif kind == "mistral":
        tc.update(sliding_window=None, rope_theta=1e9)
    else:   # ministral3: YaRN, and a short original length so that the
        # query scale of positions >= 4 differs from 1
        tc.update(sliding_window=None, max_position_embeddings=64,
                  rope_parameters=dict(MINISTRAL3_ROPE, original_max_position_embeddings=4))
        tc.pop("rope_theta")
    if v5 and "rope_scaling" in tc:
        tc["rope_parameters"] = dict(tc.pop("rope_scaling"), rope_theta=tc.pop("rope_theta"))
        if tc["rope_parameters"].get("type") == "mrope":
            del tc["rope_parameters"]["type"]
            tc["rope_parameters"]["rope_type"] = "default"
    if opt.get("v5_keys") and "num_experts" in tc:
        tc["num_local_experts"] = tc.pop("num_experts")
    return tc


def _vision(g, family, vp, mp, H):
    """A one-block vision tower (and Mistral3's projector) with its own
    norms: never folded, copied byte for byte (docs/architectures.md §vl)."""
    Iv = 2 * HV

    def ln(name, n=HV, bias=True):
        g.vec(name + ".weight", n, 0.5, 2.5, g.norm_dtype)
        if bias:
            g.bias(name + ".bias", n)

    def lin(name, rows, cols, bias=True):
        g.mat(name + ".weight", (rows, cols))
        if bias:
            g.bias(name + ".bias", rows)
    if family == "mistral3":       # Pixtral: RMSNorms, unbiased linears
        g.mat(vp + "patch_conv.weight", (HV, 3, 4, 4))
        ln(vp + "ln_pre", bias=False)
        b = vp + "transformer.layers.0."
        ln(b + "attention_norm", bias=False)
        ln(b + "ffn_norm", bias=False)
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin(b + "attention." + n, HV, HV, bias=False)
        lin(b + "feed_forward.gate_proj", Iv, HV, bias=False)
        lin(b + "feed_forward.up_proj", Iv, HV, bias=False)
        lin(b + "feed_forward.down_proj", HV, Iv, bias=False)
        # Mistral3MultiModalProjector: an RMSNorm before the patch merger
        ln(mp + "norm", bias=False)
        lin(mp + "patch_merger.merging_layer", HV, 4 * HV, bias=False)
        lin(mp + "linear_1", H, HV, bias=False)
        lin(mp + "linear_2", H, H, bias=False)
        return
    rms = family == "qwen2_5_vl"   # Qwen2.5-VL's vision blocks use Qwen2RMSNorm
    b = vp + "blocks.0."
    ln(b + "norm1", bias=not rms)
    ln(b + "norm2", bias=not rms)
    lin(b + "attn.qkv", 3 * HV, HV)
    lin(b + "attn.proj", HV, HV)
    if family == "qwen2_vl":
        g.mat(vp + "patch_embed.proj.weight", (HV, 3, 2, 4, 4))
        lin(b + "mlp.fc1", Iv, HV)
        lin(b + "mlp.fc2", HV, Iv)
        ln(vp + "merger.ln_q")
        lin(vp + "merger.mlp.0", 4 * HV, 4 * HV)
        lin(vp + "merger.mlp.2", H, 4 * HV)
    elif rms:
        g.mat(vp + "patch_embed.proj.weight", (HV, 3, 2, 4, 4))
        for n in ("gate_proj", "up_proj"):
            lin(b + "mlp." + n, Iv, HV)
        lin(b + "mlp.down_proj", HV, Iv)
        ln(vp + "merger.ln_q", bias=False)
        lin(vp + "merger.mlp.0", 4 * HV, 4 * HV)
        lin(vp + "merger.mlp.2", H, 4 * HV)
    else:                          # Qwen3-VL: LayerNorms, deepstack mergers
        g.mat(vp + "patch_embed.proj.weight", (HV, 3, 2, 4, 4))
        g.bias(vp + "patch_embed.proj.bias", HV)
        g.mat(vp + "pos_embed.weight", (4, HV))
        lin(b + "mlp.linear_fc1", Iv, HV)
        lin(b + "mlp.linear_fc2", HV, Iv)
        for m in ("merger.", "deepstack_merger_list.0."):
            ln(vp + m + "norm", 4 * HV if "deepstack" in m else HV)
            lin(vp + m + "linear_fc1", 4 * HV, 4 * HV)
            lin(vp + m + "linear_fc2", H, 4 * HV)


def _vision_config(family, tc):
    """The vision config of the tower _vision writes (its class's keys, so
    that transformers could build it; flashify reads none of them)."""
    grid = {"in_channels": 3, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "num_heads": 2, "depth": 1}
    if family == "mistral3":
        return {"model_type": "pixtral", "hidden_size": HV, "intermediate_size": 2 * HV, "num_hidden_layers": 1,
                "num_attention_heads": 2, "head_dim": HV // 2, "patch_size": 4, "image_size": 16,
                "num_channels": 3, "rope_theta": 10000.0}
    if family == "qwen2_vl":       # Qwen2VLVisionConfig: embed_dim is the width
        return dict(grid, embed_dim=HV, hidden_size=tc["hidden_size"], mlp_ratio=2)
    out = dict(grid, hidden_size=HV, intermediate_size=2 * HV, out_hidden_size=tc["hidden_size"])
    if family == "qwen2_5_vl":
        out.update(window_size=8, fullatt_block_indexes=[0])
    else:
        out.update(num_position_embeddings=4, deepstack_visual_indexes=[0])
    return out


def _layout(family, opt):
    default = "model" if family in ("qwen2_vl", "qwen2_5_vl", "ministral3") else \
        "language_model.model" if family == "mistral3" else "model.language_model"
    layout = opt.get("layout", default)
    if family == "ministral3" or opt.get("top_text"):
        layout = "model"
    # (text prefix, head, vision prefix, projector prefix)
    return layout, {
        "model": ("model.", "lm_head.weight", "visual.", "multi_modal_projector."),
        "model.language_model": ("model.language_model.", "lm_head.weight",
                                 "model.vision_tower." if family == "mistral3" else "model.visual.",
                                 "model.multi_modal_projector."),
        "language_model.model": ("language_model.model.", "language_model.lm_head.weight",
                                 "vision_tower.", "multi_modal_projector."),
    }[layout]


def _experts_opt(family, opt):
    if family != "qwen3_vl_moe":
        return {}
    return {"experts": {"hub": "fused_t", "fused": "fused", "per_expert": None}[opt.get("experts", "hub")]}


def _ties(family, tied):
    """Where the family's real configs carry tie_word_embeddings: Qwen's at
    both levels, Mistral Small 3.1's (untied) nowhere; a tied mistral3 must
    say so (without a head and a key it has no single meaning)."""
    return ("top" if tied else "none") if family == "mistral3" else "both"


def _scale_fused(m):
    """fixtures.py draws U(-1, 1) weights and verify_fixtures.tame() scales
    only 2-D matrices towards 1/sqrt(fan_in): fused 3-D experts get that
    scale here (2^-k by the smaller trailing axis, their fan-in), so every
    expert layout is as tame as the per-expert one (untamed, they move the
    BF16 forward check by several times more)."""
    for name, t in list(m.tensors.items()):
        if len(t.shape) == 3 and t.dtype in ("F32", "F16", "BF16"):
            k = round(math.log2(min(t.shape[1:])) / 2)
            m.tensors[name] = fixtures.float_tensor(t.dtype, t.shape, [v * 2.0 ** -k for v in t.values()])


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    kind = _kind_of(family, opt)
    base_fam = "mistral" if kind in ("mistral", "ministral3") else WRAPPERS[family][2]
    base_opt = {k: v for k, v in opt.items() if k in ("mlp_only_layers", "decoder_sparse_step")}
    base_opt.update({k: v for k, v in _experts_opt(family, opt).items() if v})
    if kind == "qwen2" and hidden != 32:
        # Qwen2VLAttention: head_dim = hidden / heads, and the base
        # generator's attention is 4 heads of 8
        raise ValueError("qwen2_vl fixtures need hidden 32 (4 heads of 8)")
    base = build_model(base_fam, dtype=dtype, norm_dtype=norm_dtype, tied=tied, seed=seed, layers=layers,
                       hidden=hidden, vocab=vocab, **base_opt)
    _scale_fused(base)
    layout, (pre, head, vp, mp) = _layout(family, opt)
    text_type = family if family == "ministral3" else opt.get("text_type", "mistral") \
        if family == "mistral3" else WRAPPERS[family][0]
    tc = _text_config(base.config, kind, text_type, opt)
    flat = family in ("qwen2_vl", "qwen2_5_vl") and opt.get("flat", layout == "model")
    wrapped = family not in ("ministral3",) and not opt.get("top_text")
    m = Model(family, None)
    for k, t in base.tensors.items():
        name = head if k == "lm_head.weight" else pre + k[len("model."):]
        m.tensors[name] = t
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", head, pre
    common = {"torch_dtype": fixtures.TORCH_DTYPE[dtype],
              "transformers_version": "5.16.0" if opt.get("rope") == "v5" else "4.57.1"}
    if not wrapped:
        cfg = dict(tc, architectures=[ARCH.get(family, "AutoModel")], **common)
    elif flat:
        cfg = dict(tc, model_type=family, architectures=[ARCH[family]], vision_config=_vision_config(family, tc),
                   **common)
    else:
        cfg = {"architectures": [ARCH[family]], "model_type": family, "text_config": tc,
               "vision_config": _vision_config(family, tc)}
        cfg.update(common)
    if wrapped:
        cfg.update({"image_token_index": 10, "projector_hidden_act": "gelu", "spatial_merge_size": 2,
                    "multimodal_projector_bias": False, "vision_feature_layer": -1} if family == "mistral3"
                   else {"image_token_id": 90, "video_token_id": 91, "vision_start_token_id": 92,
                         "vision_end_token_id": 93})
    # tie_word_embeddings where the family's configs carry it
    cfg.pop("tie_word_embeddings", None)
    tc.pop("tie_word_embeddings", None)
    levels = opt.get("tie_levels", _ties(family, tied)) if wrapped and not flat else \
        "none" if opt.get("tie_levels") == "none" else "top"
    if levels in ("both", "top"):
        cfg["tie_word_embeddings"] = tied
    if levels in ("both", "text") and "text_config" in cfg:
        tc["tie_word_embeddings"] = opt.get("text_tie", tied)
    m.config = cfg
    if wrapped:
        _vision(_Gen(m, seed + 7919, dtype, norm_dtype, False), family, vp, mp, tc["hidden_size"])
    return m


# ---------------------------------------------------------------- expectation

def _experts(tc):
    return tc.get("num_experts", tc.get("num_local_experts", 0))


def _sparse(tc, i):
    # Qwen3VLMoeTextDecoderLayer: not in mlp_only_layers, experts > 0,
    # (i + 1) % decoder_sparse_step == 0
    return i not in (tc.get("mlp_only_layers") or []) and _experts(tc) > 0 \
        and (i + 1) % tc.get("decoder_sparse_step", 1) == 0


def _layer_plan(kind):
    def plan(tc, i, has):
        kept = ["self_attn.q_norm", "self_attn.k_norm"] if kind in ("qwen3", "qwen3_moe") else []
        mlp = GATE_UP
        if kind == "qwen3_moe" and _sparse(tc, i):
            mlp = ["mlp.gate"]
            if has("mlp.experts.gate_up_proj"):
                mlp.append(("mlp.experts.gate_up_proj", has("mlp.experts.gate_up_proj")))
            else:
                for j in range(_experts(tc)):
                    mlp += ["mlp.experts.%d.gate_proj" % j, "mlp.experts.%d.up_proj" % j]
        return [("input_layernorm", QKV), ("post_attention_layernorm", mlp)], kept
    return plan


def _plan_of_type(mt):
    """expect.py hands a wrapper its text_config (expect.COMPOSITE)."""
    def plan(tc, i, has):
        kind = TEXT_KIND[mt] if mt in TEXT_KIND else TEXT_KIND.get(tc.get("model_type")) or WRAPPERS[mt][1]
        return _layer_plan(kind)(tc, i, has)
    return plan


# ---------------------------------------------------------------- reference forward

def _kind_and_tc(cfg):
    mt = cfg["model_type"]
    if mt in WRAPPERS:
        tc = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
        inner = tc.get("model_type")
        return TEXT_KIND.get(inner) or WRAPPERS[mt][1] or "mistral", tc
    return TEXT_KIND[mt], cfg


def _rope_params(kind, tc):
    """(rope dict or None, theta) as the config class standardises them."""
    rp = tc.get("rope_parameters") or tc.get("rope_scaling")
    if rp is None and kind == "ministral3":
        rp = MINISTRAL3_ROPE
    theta = (rp or {}).get("rope_theta", tc.get("rope_theta", THETA.get(kind, 10000.0)))
    return rp, theta


# Qwen3VLMoeTextTopKRouter divides the top-k weights by their sum, always
# (a test turns it off to show the comparison would notice).
_renormalise = True


def _positions(pos):
    """Text-only position ids of the three M-RoPE streams (t, h, w):
    get_mrope_position_ids / get_rope_index give a text run arange,
    expanded to 3."""
    return [pos, pos, pos]


def _mrope_angles(kind, rp, inv, pos):
    """The rotation angle of every channel 0..hd-1 for position `pos`, as
    the modeling code selects it from the three streams."""
    half = len(inv)
    streams = _positions(pos)
    freqs = [[p * f for f in inv] for p in streams]           # (3, hd/2)
    sec = (rp or {}).get("mrope_section")
    if kind in ("qwen3", "qwen3_moe") and sec:
        # apply_interleaved_mrope: T everywhere, H at 1::3, W at 2::3
        ft = list(freqs[0])
        for dim, offset in ((1, 1), (2, 2)):
            for j in range(offset, sec[dim] * 3, 3):
                ft[j] = freqs[dim][j]
        return ft + ft
    emb = [f + f for f in freqs]                               # (3, hd)
    if kind == "qwen2" and sec:
        # apply_multimodal_rotary_pos_emb: chunks of mrope_section * 2,
        # chunk i from stream i % 3
        out, start = [], 0
        for i, n in enumerate(sec * 2):
            out += emb[i % 3][start:start + n]
            start += n
        return out
    return emb[0][:2 * half]


class _Ref:
    """The text model of one checkpoint, as its modeling classes compute it."""

    def __init__(self, ck):
        self.kind, tc = _kind_and_tc(ck.config)
        self.ck, self.tc, self.m = ck, tc, ref_forward._M(ck)
        self.H, self.nh = tc["hidden_size"], tc["num_attention_heads"]
        self.nkv = tc.get("num_key_value_heads") or self.nh
        # Qwen2VLAttention: head_dim = hidden / heads, whatever the config says
        self.hd = self.H // self.nh if self.kind == "qwen2" else (tc.get("head_dim") or self.H // self.nh)
        self.eps = tc.get("rms_norm_eps", EPS[self.kind])
        self.act = tc.get("hidden_act", "silu")
        self.pre = next(p for p in ("model.language_model.", "model.", "language_model.model.")
                        if self.m.has(p + "embed_tokens.weight"))
        self.rp, theta = _rope_params(self.kind, tc)
        scaled = (self.rp or {}).get("rope_type", (self.rp or {}).get("type")) not in ("mrope", "default", None)
        self.inv, self.af = ref_forward.rope_freqs(tc, theta, self.hd, self.rp if scaled else None)

    def window(self, layer):
        """Sliding window of a layer, or None (Qwen2VLTextConfig: only with
        use_sliding_window; Mistral / Ministral 3: sliding_window)."""
        tc = self.tc
        if self.kind == "qwen2":
            if not tc.get("use_sliding_window"):
                return None
            lt = tc.get("layer_types")
            slides = lt[layer] == "sliding_attention" if lt else layer >= tc.get("max_window_layers", 80)
            return tc.get("sliding_window") if slides else None
        return tc.get("sliding_window") if self.kind in ("mistral", "ministral3") else None

    def rope(self, v, pos):
        ang = _mrope_angles(self.kind, self.rp, self.inv, pos)
        half = self.hd // 2
        rh = [-x for x in v[half:]] + v[:half]                   # rotate_half
        return [x * math.cos(a) * self.af + r * math.sin(a) * self.af for x, r, a in zip(v, rh, ang)]

    def qk(self, p, h, pos):
        m, hd = self.m, self.hd
        q, k = m.linear(h, p + "self_attn.q_proj"), m.linear(h, p + "self_attn.k_proj")
        q, k = [q[j * hd:(j + 1) * hd] for j in range(self.nh)], [k[j * hd:(j + 1) * hd] for j in range(self.nkv)]
        if self.kind in ("qwen3", "qwen3_moe"):
            q = [m.norm(x, p + "self_attn.q_norm.weight", self.eps) for x in q]
            k = [m.norm(x, p + "self_attn.k_norm.weight", self.eps) for x in k]
        q, k = [self.rope(x, pos) for x in q], [self.rope(x, pos) for x in k]
        if self.kind == "ministral3":    # _get_llama_4_attn_scale
            s = 1 + self.rp["llama_4_scaling_beta"] * math.log(
                1 + math.floor(pos / self.rp["original_max_position_embeddings"]))
            q = [[v * s for v in x] for x in q]
        return q, k

    def attention(self, p, hs, layer):
        hd, w = self.hd, self.window(layer)
        qs, ks, vs = [], [], []
        for pos, h in enumerate(hs):
            q, k = self.qk(p, h, pos)
            v = self.m.linear(h, p + "self_attn.v_proj")
            qs.append(q)
            ks.append(k)
            vs.append([v[j * hd:(j + 1) * hd] for j in range(self.nkv)])
        outs = []
        for i in range(len(hs)):
            j0 = max(0, i - w + 1) if w else 0
            ctx = []
            for h in range(self.nh):
                kh = h // (self.nh // self.nkv)
                sc = [sum(a * b for a, b in zip(qs[i][h], ks[j][kh])) / math.sqrt(hd) for j in range(j0, i + 1)]
                mx = max(sc)
                e = [math.exp(v - mx) for v in sc]
                z = sum(e)
                ctx += [sum(e[j] / z * vs[j0 + j][kh][c] for j in range(len(e))) for c in range(hd)]
            outs.append(self.m.linear(ctx, p + "self_attn.o_proj"))
        return outs

    def gated(self, h, g, u, d):
        m = self.m
        return m.linear([ref_forward._act(self.act, a) * b for a, b in zip(m.linear(h, g), m.linear(h, u))], d)

    def expert(self, p, e, h):
        """Expert e: per-expert matrices, or a slab of the fused tensors in
        either layout (docs/architectures.md §vl-qwen3)."""
        m, H, fused = self.m, self.H, p + "mlp.experts.gate_up_proj"
        if not m.has(fused):
            b = p + "mlp.experts.%d." % e
            return self.gated(h, b + "gate_proj", b + "up_proj", b + "down_proj")
        (_, a, b), gu = self.ck.tensors[fused].shape, m.vals(fused)
        (_, c, d), dn = self.ck.tensors[p + "mlp.experts.down_proj"].shape, m.vals(p + "mlp.experts.down_proj")
        if b == H:      # [E, 2I, H]: nn.functional.linear per expert
            y = [sum(gu[(e * a + o) * b + i] * h[i] for i in range(H)) for o in range(a)]
        else:           # [E, H, 2I] on disk, transposed at load
            y = [sum(h[i] * gu[(e * a + i) * b + o] for i in range(H)) for o in range(b)]
        I = len(y) // 2
        z = [ref_forward._act(self.act, y[j]) * y[I + j] for j in range(I)]
        if c == H:      # [E, H, I]
            return [sum(dn[(e * c + o) * d + j] * z[j] for j in range(I)) for o in range(H)]
        return [sum(z[j] * dn[(e * c + j) * d + o] for j in range(I)) for o in range(H)]

    def mlp(self, p, h):
        if not self.m.has(p + "mlp.gate.weight"):
            return self.gated(h, p + "mlp.gate_proj", p + "mlp.up_proj", p + "mlp.down_proj")
        # Qwen3VLMoeTextTopKRouter: softmax, top-k, always renormalised
        lg = self.m.linear(h, p + "mlp.gate")
        mx = max(lg)
        pr = [math.exp(v - mx) for v in lg]
        top = sorted(range(len(pr)), key=lambda e: (-pr[e], e))[:self.tc["num_experts_per_tok"]]
        tot = sum(pr[e] for e in top) if _renormalise else sum(pr)
        out = [0.0] * self.H
        for e in top:
            out = [a + pr[e] / tot * b for a, b in zip(out, self.expert(p, e, h))]
        return out

    def head(self):
        """tie_word_embeddings at the top, then text_config's (§vl-tie); a
        head that is not stored is the embedding."""
        tie = self.ck.config.get("tie_word_embeddings", self.tc.get("tie_word_embeddings", False))
        hn = "language_model.lm_head.weight" if self.pre == "language_model.model." else "lm_head.weight"
        return self.m.vals(self.pre + "embed_tokens.weight" if tie or not self.m.has(hn) else hn)

    def logits(self, tokens):
        m, H, eps = self.m, self.H, self.eps
        E = m.vals(self.pre + "embed_tokens.weight")
        xs = [E[t * H:(t + 1) * H] for t in tokens]
        for layer in range(self.tc["num_hidden_layers"]):
            p = "%slayers.%d." % (self.pre, layer)
            a = self.attention(p, [m.norm(x, p + "input_layernorm.weight", eps) for x in xs], layer)
            xs = [[u + v for u, v in zip(x, y)] for x, y in zip(xs, a)]
            xs = [[u + v for u, v in zip(x, self.mlp(p, m.norm(x, p + "post_attention_layernorm.weight", eps)))]
                  for x in xs]
        W = self.head()
        V = len(W) // H
        out = []
        for x in xs:
            h = m.norm(x, self.pre + "norm.weight", eps)
            out.append([sum(W[v * H + i] * h[i] for i in range(H)) for v in range(V)])
        return out


def _forward(ck, tokens):
    return _Ref(ck).logits(tokens)


# ---------------------------------------------------------------- registration

for _fam in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "mistral3", "ministral3"):
    fixtures.register_family(_fam, build, ARCH[_fam], tied=False)
    if _fam not in expect.SUPPORTED:
        expect.SUPPORTED.append(_fam)
for _mt in list(WRAPPERS) + list(TEXT_KIND):
    if _mt != "mistral":
        expect.EXTRA_LAYER_PLANS[_mt] = _plan_of_type(_mt)
        ref_forward.EXTRA_FORWARD[_mt] = _forward
expect.COMPOSITE.update(WRAPPERS)
