"""expect.py -- a naive, independent expectation of what flashify writes.

The fold map below was written from docs/architectures.md (not from
src/arch.c).  Every folded element is computed exactly as a rational
(W[o,i] * g[i], g = w or 1 + w) and rounded once to nearest-even by
fixtures.round_ratio_bits -- our own rounding, not the converter's.

expected(src, keep_tied, keep_norms) -> Expectation: every output tensor's
exact bytes, the norms dropped and kept, what config.json must say.
"""

import math

from fixtures import (FLOAT_FORMATS, Tensor, decode_values, encode_bits,
                      encode_values, round_ratio_bits, numel)


def sign_bit(dtype):
    p, _, _, ebits = FLOAT_FORMATS[dtype]
    return 1 << (p + ebits - 1)

QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
GATE_UP = ["mlp.gate_proj", "mlp.up_proj"]

# model_type -> gain form and whether the loaders' marker may be written
# (flashnorm_folded makes the input, post-attention and final norms
# weightless: wrong where post_attention_layernorm is a kept sandwich norm)
GAIN = {"gemma": "1+w", "gemma2": "1+w", "gemma3_text": "1+w", "gemma3": "1+w"}
NO_MARKER = {"gemma2", "gemma3_text", "gemma3", "olmo2"}
SUPPORTED = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2",
             "gemma3_text", "gemma3", "olmo2", "granite", "smollm3", "mixtral",
             "qwen2_moe", "qwen3_moe", "deepseek_v3", "cohere"]


# Composite (wrapper) model types: only these read text_config.
COMPOSITE = {"gemma3"}

# The config class defaults of tie_word_embeddings (docs/architectures.md,
# each family's configuration_<type>.py); absent: False.  Families from the
# zoo modules add theirs.
TIE_CLASS_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True, "gemma3": True,
                     "smollm3": True, "cohere": True}


# model_type -> a config key that, when present, decides the tie instead of
# tie_word_embeddings (LFM2: Lfm2Config reads kwargs.get("tie_embedding",
# tie_word_embeddings)); a zoo module adds its own.
TIE_ALIAS = {}
# Composite types whose config class reads the flag its own way (zoo
# modules): model_type -> fn(cfg) -> bool.
TIE_RULES = {}


def config_ties(cfg):
    """What the loader reads: the top level's flag, then text_config's for a
    composite type, then the class default; null reads as not tied (Python
    tests `if config.tie_word_embeddings`)."""
    alias = TIE_ALIAS.get(cfg.get("model_type"))
    if alias and alias in cfg:
        return bool(cfg[alias])
    if cfg.get("model_type") in TIE_RULES:
        return TIE_RULES[cfg["model_type"]](cfg)
    for level in (cfg, cfg.get("text_config") if cfg.get("model_type") in COMPOSITE else None):
        if level and "tie_word_embeddings" in level:
            return bool(level["tie_word_embeddings"])
    return TIE_CLASS_DEFAULT.get(cfg.get("model_type"), False)

# Side tensors that mean a consumer is stored quantized (appended to its
# name without ".weight"): FP8 block scales, compressed-tensors, MXFP4,
# GPTQ/AWQ, bitsandbytes.
QUANT_SUFFIXES = (".weight_scale_inv", ".weight_packed", ".weight_scale", "_blocks", "_scales",
                  ".qweight", ".qzeros", ".scales", ".weight.absmax", ".absmax")


def _text_cfg(cfg):
    if cfg.get("model_type") in COMPOSITE and cfg.get("text_config"):
        return cfg["text_config"]
    return cfg


def _experts(tc, *keys):
    """The expert count: transformers 5 writes num_local_experts where v4
    wrote num_experts / n_routed_experts."""
    for k in keys + ("num_local_experts",):
        if k in tc:
            return tc[k]
    return 0


def _qwen_moe_sparse(tc, i):
    # Qwen2MoeDecoderLayer: (i not in mlp_only_layers) and num_experts > 0
    # and (i + 1) % decoder_sparse_step == 0
    return (i not in (tc.get("mlp_only_layers") or [])) and _experts(tc, "num_experts") > 0 \
        and (i + 1) % tc.get("decoder_sparse_step", 1) == 0


def _fused_axis(has, name):
    """transformers 5 fused experts: [E, 2I, H] reads along the last axis;
    the grouped-GEMM layout [E, H, 2I] along the middle one."""
    return (name, has(name))


# Layer plans of the families in tests/e2e/zoo_*.py: model_type ->
# fn(tc, i, has) returning what layer_plan returns.
EXTRA_LAYER_PLANS = {}


def layer_plan(mt, tc, i, has=lambda rel: None):
    """([(norm, [consumers])], [kept norms]) of layer i, names relative to
    the layer prefix without ".weight" (docs/architectures.md).  A consumer
    is a name (an nn.Linear) or (name, axis) for 3-D fused experts;
    has(rel) gives the input axis of a stored 3-D tensor, or None."""
    if mt in EXTRA_LAYER_PLANS:
        return EXTRA_LAYER_PLANS[mt](tc, i, has)
    if mt in ("llama", "mistral", "qwen2", "granite", "smollm3", "gemma"):
        return [("input_layernorm", QKV), ("post_attention_layernorm", GATE_UP)], []
    if mt == "qwen3":
        return [("input_layernorm", QKV), ("post_attention_layernorm", GATE_UP)], \
            ["self_attn.q_norm", "self_attn.k_norm"]
    if mt == "phi3":
        return [("input_layernorm", ["self_attn.qkv_proj"]),
                ("post_attention_layernorm", ["mlp.gate_up_proj"])], []
    if mt == "gemma2":
        return [("input_layernorm", QKV), ("pre_feedforward_layernorm", GATE_UP)], \
            ["post_attention_layernorm", "post_feedforward_layernorm"]
    if mt in ("gemma3_text", "gemma3"):
        return [("input_layernorm", QKV), ("pre_feedforward_layernorm", GATE_UP)], \
            ["post_attention_layernorm", "post_feedforward_layernorm",
             "self_attn.q_norm", "self_attn.k_norm"]
    if mt == "olmo2":
        return [], ["post_attention_layernorm", "post_feedforward_layernorm",
                    "self_attn.q_norm", "self_attn.k_norm"]
    if mt == "cohere":
        kept = ["self_attn.q_norm", "self_attn.k_norm"] if tc.get("use_qk_norm") else []
        return [("input_layernorm", QKV + GATE_UP)], kept
    if mt == "mixtral":
        E = tc["num_local_experts"]
        if has("mlp.experts.gate_up_proj"):
            return [("input_layernorm", QKV), ("post_attention_layernorm",
                     ["mlp.gate", _fused_axis(has, "mlp.experts.gate_up_proj")])], []
        moe = ["block_sparse_moe.gate"]
        for j in range(E):
            moe += ["block_sparse_moe.experts.%d.w1" % j, "block_sparse_moe.experts.%d.w3" % j]
        return [("input_layernorm", QKV), ("post_attention_layernorm", moe)], []
    if mt in ("qwen2_moe", "qwen3_moe"):
        kept = ["self_attn.q_norm", "self_attn.k_norm"] if mt == "qwen3_moe" else []
        if not _qwen_moe_sparse(tc, i):
            return [("input_layernorm", QKV), ("post_attention_layernorm", GATE_UP)], kept
        moe = ["mlp.gate"]
        if has("mlp.experts.gate_up_proj"):
            moe.append(_fused_axis(has, "mlp.experts.gate_up_proj"))
        else:
            for j in range(_experts(tc, "num_experts")):
                moe += ["mlp.experts.%d.gate_proj" % j, "mlp.experts.%d.up_proj" % j]
        if mt == "qwen2_moe":
            moe += ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                    "mlp.shared_expert_gate"]
        return [("input_layernorm", QKV), ("post_attention_layernorm", moe)], kept
    if mt == "deepseek_v3":
        groups = []
        if tc.get("q_lora_rank") is None:
            groups.append(("input_layernorm", ["self_attn.q_proj", "self_attn.kv_a_proj_with_mqa"]))
        else:
            groups.append(("input_layernorm", ["self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"]))
            groups.append(("self_attn.q_a_layernorm", ["self_attn.q_b_proj"]))
        groups.append(("self_attn.kv_a_layernorm", ["self_attn.kv_b_proj"]))
        if i < tc["first_k_dense_replace"]:
            groups.append(("post_attention_layernorm", GATE_UP))
        else:
            moe = ["mlp.gate"]   # the router; NOT mlp.gate.e_score_correction_bias
            if has("mlp.experts.gate_up_proj"):
                moe.append(_fused_axis(has, "mlp.experts.gate_up_proj"))
            else:
                for j in range(_experts(tc, "n_routed_experts")):
                    moe += ["mlp.experts.%d.gate_proj" % j, "mlp.experts.%d.up_proj" % j]
            moe += ["mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"]
            groups.append(("post_attention_layernorm", moe))
        return groups, []
    raise KeyError(mt)


def _expand_experts(consumers, lp, names):
    """A --plan consumer with "{e}" stands for experts 0, 1, ... as far as
    the checkpoint has them."""
    out = []
    for c in consumers:
        if "{e}" not in c:
            out.append(c)
            continue
        j = 0
        while lp + c.replace("{e}", str(j)) + ".weight" in names:
            out.append(c.replace("{e}", str(j)))
            j += 1
        if j == 0:
            raise AssertionError("fixture has no expert for " + c)
    return out


# Text-model layouts of zoo families with their own names (Nemotron-H
# backbone.embeddings / norm_f, Falcon-H1 final_layernorm, LFM2
# embedding_norm, InternLM2 tok_embeddings / output): model_type ->
# fn(cfg, names) returning what text_layout returns, or None for the defaults.
EXTRA_LAYOUTS = {}


def text_layout(cfg, names):
    """(layer prefix root, embedding, final norm, head) for the checkpoint."""
    if cfg.get("model_type") in EXTRA_LAYOUTS:
        got = EXTRA_LAYOUTS[cfg["model_type"]](cfg, names)
        if got:
            return got
    if cfg["model_type"] == "gemma3":
        if any(n.startswith("language_model.model.") for n in names):
            return "language_model.model.", "language_model.model.embed_tokens.weight", \
                "language_model.model.norm.weight", "language_model.lm_head.weight"
        return "model.language_model.", "model.language_model.embed_tokens.weight", \
            "model.language_model.norm.weight", "lm_head.weight"
    # SmolVLM / Idefics3: model.text_model.; original Llama 4 / LLaVA-era
    # composites: language_model.model. with language_model.lm_head;
    # transformers 5 VLMs: model.language_model.
    for root in ("model.", "model.text_model.", "language_model.model.", "model.language_model."):
        if root + "embed_tokens.weight" in names:
            head = "language_model.lm_head.weight" if root == "language_model.model." else "lm_head.weight"
            return root, root + "embed_tokens.weight", root + "norm.weight", head
    raise AssertionError("fixture has no embedding")


class Expectation:
    def __init__(self):
        self.tensors = {}       # output logical name -> Tensor (exact)
        self.optional = set()   # names that may be absent (aliases kept tied)
        self.groups = []        # (norm, [consumers]) full names, incl. final
        self.dropped = []       # norms folded: absent, or identity w/ keep_norms
        self.kept = []          # norms that must be byte-identical
        self.untie = False
        self.marker = False
        self.head = self.embed = self.final = None


def gain_ratios(norm, gain):
    """[(num, den)] exact gain per element: w, or 1 + w."""
    out = []
    for v in decode_values(norm.dtype, norm.data):
        n, d = v.as_integer_ratio()
        if gain == "1+w":
            out.append((n + d, d, (n + d) < 0))
        else:   # keep the sign of -0.0, which the ratio loses
            out.append((n, d, math.copysign(1.0, v) < 0))
    return out


def fold(t, g, axis="cols"):
    """The expected bytes of tensor t with gain g folded, exact, rounded once
    to t's dtype: W[o,i]*g[i] (axis "cols": nn.Linear [out, in]; "last":
    fused experts [E, out, in]), W[i,o]*g[i] (axis "rows": x @ W [in, out]),
    W[e,i,o]*g[i] (axis "middle": fused experts [E, in, out])."""
    shape = t.shape
    vals = decode_values(t.dtype, t.data)
    bits = []
    for idx, v in enumerate(vals):
        if axis in ("cols", "last"):
            i = idx % shape[-1]
        elif axis == "rows":
            i = idx // shape[1]
        else:
            i = idx // shape[2] % shape[1]
        gn, gd, gneg = g[i]
        n, d = v.as_integer_ratio()
        if n == 0 or gn == 0:
            # IEEE: the sign of a zero product is the xor of the signs
            neg = (math.copysign(1.0, v) < 0) != gneg
            bits.append(round_ratio_bits(0, 1, t.dtype) | (sign_bit(t.dtype) if neg else 0))
        else:
            bits.append(round_ratio_bits(n * gn, d * gd, t.dtype))
    return Tensor(t.dtype, t.shape, encode_bits(t.dtype, bits))


def identity(norm, gain):
    return Tensor(norm.dtype, norm.shape,
                  encode_values(norm.dtype, [0.0 if gain == "1+w" else 1.0] * numel(norm.shape)))


def _plan_when(when, tc, i, has_rel):
    """A --plan "when": every condition must hold for layer i."""
    L = tc["num_hidden_layers"]
    for k, v in (when or {}).items():
        if k == "layer_type":
            ok = (tc.get("layer_types") or [None] * L)[i] == v
        elif k in ("flag", "not_flag"):
            ok = bool(tc.get(v)) == (k == "flag")
        elif k in ("tail", "not_tail"):
            n = tc.get(v) or 0
            ok = (n > 0 and i >= L - n) == (k == "tail")
        elif k in ("has", "not_has"):
            ok = has_rel(v) == (k == "has")
        else:
            raise AssertionError("expect.py does not know condition " + k)
        if not ok:
            return False
    return True


_INPUT_AXIS = {"linear": "cols", "last": "last", "middle": "middle"}


def _plan_layer(plan, tc, i, lp, names):
    """(groups [(norm, consumers, gain)], kept) of layer i of a --plan file:
    the first variant per norm whose "when" holds."""
    groups, seen = [], set()
    for g in plan["layers"]:
        if g["norm"] in seen or not _plan_when(g.get("when"), tc, i, lambda r: lp + r in names):
            continue
        seen.add(g["norm"])
        cons = []
        for c in g["consumers"]:
            if isinstance(c, dict):
                cons.append((c["name"], _INPUT_AXIS[c.get("input", "linear")]))
            else:
                cons += _expand_experts([c], lp, names)
        groups.append((g["norm"], cons, g.get("gain", plan.get("gain", "w"))))
    kept = [k["norm"] for k in plan.get("keep", [])
            if _plan_when(k.get("when"), tc, i, lambda r: lp + r in names)]
    return groups, kept


def quantized(names, base):
    """The quantization side tensor of consumer `base`, or None."""
    for sfx in QUANT_SUFFIXES:
        if base + sfx in names:
            return base + sfx
    return None


def expected(src, keep_tied=False, keep_norms=False, extra_groups=(), plan=None, partial=False):
    """Expectation for source checkpoint `src` (fixtures.Checkpoint).
    extra_groups: more (norm, [consumers], axis) groups to fold (with the
    family's gain) -- e.g. Gemma3's mm_soft_emb_norm when the converter
    folds it.  partial: --partial, norms with a quantized consumer are kept
    (without it such a checkpoint is refused: AssertionError here)."""
    cfg = src.config
    mt = cfg["model_type"]
    tc = _text_cfg(cfg)
    # a composite's text model decides the gain and the marker (PaliGemma 2's gemma2)
    inner = tc.get("model_type", mt) if mt in COMPOSITE else mt
    gain = plan.get("gain", "w") if plan is not None else GAIN.get(inner, GAIN.get(mt, "w"))
    names = set(src.tensors)
    root, embed, final, head = text_layout(cfg, names)
    ex = Expectation()
    ex.head, ex.embed, ex.final = head, embed, final
    ex.kept_quantized = []
    folds = {}       # consumer -> (gain vector, axis)
    group_gain = {}  # norm -> its gain

    def add_group(norm, consumers, axis="cols", g_gain=None):
        if norm not in src.tensors:
            raise AssertionError("fixture lacks norm " + norm)
        g_gain = g_gain or gain
        g = gain_ratios(src.tensors[norm], g_gain)
        cons = [(c, axis) if isinstance(c, str) else c for c in consumers]
        for c, ax in cons:
            if c not in src.tensors:
                raise AssertionError("fixture lacks consumer " + c)
            t = src.tensors[c]
            want_dims = 3 if ax in ("last", "middle") else 2
            dim = {"cols": 1, "rows": 0, "last": 2, "middle": 1}[ax]
            if len(t.shape) != want_dims or t.shape[dim] != len(g):
                raise AssertionError("fixture: %s %s does not read %s" % (c, t.shape, norm))
            if c in folds:
                raise AssertionError("two norms fold into " + c)
            folds[c] = (g, ax)
        ex.groups.append((norm, [c for c, _ in cons]))
        ex.dropped.append(norm)
        group_gain[norm] = g_gain

    def layer_groups(i, lp):
        if plan is not None:
            return _plan_layer(plan, tc, i, lp, names)

        def has(rel):
            t = src.tensors.get(lp + rel)
            if t is None:   # stored quantized only (MXFP4 _blocks/_scales): kept anyway
                return "last" if quantized(names, lp + rel) else None
            return "last" if t.shape[-1] == tc["hidden_size"] else "middle"
        groups, kept = layer_plan(mt, tc, i, has)
        return [(n, c, None) for n, c in groups], kept

    for i in range(tc["num_hidden_layers"]):
        lp = "%slayers.%d." % (root, i)
        groups, kept = layer_groups(i, lp)
        for norm, cons, g_gain in groups:
            full = []
            for c in cons:
                name, ax = (c, "cols") if isinstance(c, str) else c
                full.append((lp + name + (".weight" if ax == "cols" else ""), ax))
            q = [quantized(names, n[:-len(".weight")] if ax == "cols" else n) for n, ax in full]
            q = [x for x in q if x]
            if q and not partial:
                raise AssertionError("refused: %s feeds quantized %s" % (norm, q[0]))
            if q:
                ex.kept.append(lp + norm + ".weight")
                ex.kept_quantized.append(lp + norm + ".weight")
                continue
            add_group(lp + norm + ".weight", full, g_gain=g_gain)
        ex.kept += [lp + k + ".weight" for k in kept if lp + k + ".weight" in names]
    for norm, cons, axis in extra_groups:
        add_group(norm, cons, axis)

    tied = head not in src.stored or embed not in src.stored or config_ties(src.config)
    ex.untie = tied and not keep_tied
    final_g = None
    if tied and keep_tied:
        ex.kept.append(final)
    else:
        final_g = gain_ratios(src.tensors[final], gain)
        ex.groups.append((final, [head]))
        ex.dropped.append(final)
        group_gain[final] = gain
    if plan is not None:
        # the loaders' marker makes input_layernorm and
        # post_attention_layernorm weightless: only when all are folded
        marker_ok = plan.get("flashnorm_marker", True) and not any(
            n.endswith((".input_layernorm.weight", ".post_attention_layernorm.weight")) and n not in ex.dropped
            for n in names if n.startswith(root + "layers."))
    else:
        marker_ok = mt not in NO_MARKER and inner not in NO_MARKER
    ex.marker = marker_ok and not (tied and keep_tied) and not ex.kept_quantized

    # every source tensor (logical) goes out: folded, identity, or verbatim
    for name, t in src.tensors.items():
        if name in folds:
            g, axis = folds[name]
            ex.tensors[name] = fold(t, g, axis)
        elif name in ex.dropped:
            if keep_norms:
                ex.tensors[name] = identity(t, group_gain[name])
        else:
            ex.tensors[name] = t
    if final_g is not None:
        # untied: fold the head; tied: materialise it from the embedding,
        # which itself stays unchanged
        e = src.tensors[embed]
        ex.tensors[head] = fold(src.tensors[head] if not tied else e, final_g)
        ex.tensors[embed] = e
    elif tied:
        # --keep-tied: the alias (or its absence) may stay as in the source
        ex.optional.update(src.aliases)
    for k in ex.kept:
        if k not in src.tensors:
            raise AssertionError("fixture lacks kept norm " + k)
    return ex


def expected_config(src_cfg, ex):
    """config.json as the converter must write it (minus extra keys named
    flash*, which the caller tolerates)."""
    import copy
    cfg = copy.deepcopy(src_cfg)
    if ex.untie:
        cfg["tie_word_embeddings"] = False
        alias = TIE_ALIAS.get(cfg.get("model_type"))
        if alias and alias in cfg:
            cfg[alias] = False
        if isinstance(cfg.get("text_config"), dict):
            cfg["text_config"]["tie_word_embeddings"] = False
    if ex.marker:
        cfg["flashnorm_folded"] = True
        cfg["flash_norm"] = True
    return cfg


def first_difference(exp, got):
    """Human-readable first differing element of two same-shaped tensors."""
    if exp.dtype != got.dtype or exp.shape != got.shape:
        return "dtype/shape %s %s != expected %s %s" % (got.dtype, list(got.shape), exp.dtype, list(exp.shape))
    try:
        ev, gv = decode_values(exp.dtype, exp.data), decode_values(got.dtype, got.data)
    except ValueError:
        ev, gv = list(exp.data), list(got.data)
    ndiff = sum(1 for a, b in zip(exp.data, got.data) if a != b)
    for i, (a, b) in enumerate(zip(ev, gv)):
        if repr(a) != repr(b):
            return "element %d: got %r expected %r (%d bytes differ)" % (i, b, a, ndiff)
    return "bytes differ"


import fixtures  # noqa: E402  (the zoo modules register once this module is complete)
fixtures.zoo_ready('expect')
