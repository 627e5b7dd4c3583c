"""zoo_gemma4.py -- Gemma 4 (gemma4_text, and the gemma4 multimodal wrapper)
for the e2e suites: a fixture generator, the expected fold plan and a plain
reference forward pass, all written from docs/architectures.md §gemma4 and
transformers' gemma4/modeling_gemma4.py -- independently of src/arch.c and
src/forward_gemma4.c.

Fixtures (build_model("gemma4_text" | "gemma4", **opt)):
  layout: gemma4_text is Gemma4ForCausalLM (model.layers.N, what
    save_pretrained and convert_gemma4_weights.py --text_only write);
    gemma4 is Gemma4ForConditionalGeneration (model.language_model.layers.N,
    plus model.vision_tower / audio_tower / embed_vision / embed_audio, the
    layout Google's checkpoints ship; transformers 5 has no conversion
    mapping for it, so its default save writes the same).
  moe (True): enable_moe_block, experts.gate_up_proj [E, 2I, H] and
    down_proj [E, H, I], router.proj / scale / per_expert_scale.
  kv_shared (2): num_kv_shared_layers.  k_eq_v (True): attention_k_eq_v.
  ple (4): hidden_size_per_layer_input (0: none).  double_wide (True).
  window (3): sliding_window.  softcap (30.0): final_logit_softcapping.
  layer_types: a list, default [s, s, f] repeated (last layer full).
  towers (True): the wrapper's vision/audio tensors.
Norm gains are drawn around 1 (the w class), never all ones.
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, _Gen

GEMMA4 = ("gemma4_text", "gemma4")
QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
SLIDING, FULL = "sliding_attention", "full_attention"


def text_config(cfg):
    return cfg["text_config"] if cfg.get("model_type") == "gemma4" else cfg


def layer_info(tc, i):
    """(type, head dim, kv heads, kv_from) of layer i, as
    Gemma4TextAttention.__init__ sets them."""
    L = tc["num_hidden_layers"]
    types = tc.get("layer_types") or [SLIDING if (j + 1) % 6 else FULL for j in range(L)]
    types = list(types[:L - 1]) + [FULL]
    t = types[i]
    hd = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    if t == FULL and tc.get("global_head_dim"):
        hd = tc["global_head_dim"]
    alt = bool(tc.get("attention_k_eq_v")) and t == FULL
    nkv = tc["num_global_key_value_heads"] if alt else tc["num_key_value_heads"]
    first = L - (tc.get("num_kv_shared_layers") or 0)
    kv_from = None
    if first > 0 and i >= first:
        kv_from = max(j for j in range(first) if types[j] == t)
    return t, hd, nkv, kv_from


# ---------------------------------------------------------------- generator

def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    H, V = hidden, vocab
    L = layers or 6
    nh, nkv, hd, ghd, gkv = 4, 2, 8, 16, 1
    I, Im, E, P = 24, 12, 3, opt.get("ple", 4)
    moe = opt.get("moe", True)
    types = opt.get("layer_types") or [FULL if (i + 1) % 3 == 0 else SLIDING for i in range(L)]
    types = list(types[:L - 1]) + [FULL]
    tc = {
        "model_type": "gemma4_text",
        "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": hd,
        "global_head_dim": ghd, "num_global_key_value_heads": gkv,
        "attention_k_eq_v": opt.get("k_eq_v", True),
        "num_kv_shared_layers": opt.get("kv_shared", 2),
        "use_double_wide_mlp": opt.get("double_wide", True),
        "hidden_size_per_layer_input": P, "vocab_size_per_layer_input": V,
        "enable_moe_block": moe,
        "num_experts": E if moe else None, "top_k_experts": 2 if moe else None,
        "moe_intermediate_size": Im if moe else None,
        "layer_types": types, "sliding_window": opt.get("window", 3),
        "rope_parameters": {
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        "final_logit_softcapping": opt.get("softcap", 30.0),
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "attention_bias": False, "attention_dropout": 0.0,
        "use_bidirectional_attention": None, "max_position_embeddings": 256,
        "vocab_size": V, "tie_word_embeddings": tied,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    wrapper = family == "gemma4"
    if wrapper:
        tc["use_bidirectional_attention"] = "vision"
        cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
               "text_config": tc, "vision_config": _VISION, "audio_config": _AUDIO,
               "image_token_id": 90, "audio_token_id": 91, "boi_token_id": 92, "eoi_token_id": 93,
               "tie_word_embeddings": tied, "dtype": fixtures.TORCH_DTYPE[dtype],
               "transformers_version": "5.5.0"}
        pre = "model.language_model."
    else:
        cfg = dict(tc, architectures=["Gemma4ForCausalLM"], dtype=fixtures.TORCH_DTYPE[dtype],
                   transformers_version="5.5.0")
        tc = cfg
        pre = "model."
    m = Model(family, cfg)
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", "lm_head.weight", pre
    g = _Gen(m, seed, dtype, norm_dtype, False)
    g.mat(pre + "embed_tokens.weight", (V, H))
    if P:
        g.mat(pre + "embed_tokens_per_layer.weight", (V, L * P))
        g.mat(pre + "per_layer_model_projection.weight", (L * P, H))
        g.norm(pre + "per_layer_projection_norm.weight", (P,))
    for i in range(L):
        _layer(g, tc, pre + "layers.%d." % i, i, moe, (I, Im, E, P))
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat("lm_head.weight", (V, H))
    if wrapper and opt.get("towers", True):
        _towers(g, H)
    return m


def _layer(g, tc, p, i, moe, dims):
    H, nh = tc["hidden_size"], tc["num_attention_heads"]
    I, Im, E, P = dims
    t, hd, nkv, kv_from = layer_info(tc, i)
    g.norm(p + "input_layernorm.weight", (H,))
    g.norm(p + "pre_feedforward_layernorm.weight", (H,))
    _post(g, p, "post_attention_layernorm", "post_feedforward_layernorm")
    # attention runs at scale 1: q_norm/k_norm set the temperature, so their
    # gains are drawn small (as trained ones are), never all ones
    g.mat(p + "self_attn.q_proj.weight", (nh * hd, H))
    g.vec(p + "self_attn.q_norm.weight", hd, 0.2, 0.6, g.norm_dtype)
    if kv_from is None:
        g.mat(p + "self_attn.k_proj.weight", (nkv * hd, H))
        g.vec(p + "self_attn.k_norm.weight", hd, 0.2, 0.6, g.norm_dtype)
        if not (tc["attention_k_eq_v"] and t == FULL):
            g.mat(p + "self_attn.v_proj.weight", (nkv * hd, H))
    g.mat(p + "self_attn.o_proj.weight", (H, nh * hd))
    Il = I * (2 if tc["use_double_wide_mlp"] and kv_from is not None else 1)
    g.mat(p + "mlp.gate_proj.weight", (Il, H))
    g.mat(p + "mlp.up_proj.weight", (Il, H))
    g.mat(p + "mlp.down_proj.weight", (H, Il))
    if moe:
        g.mat(p + "router.proj.weight", (E, H))
        # router.scale large enough that the top-k choice is clear (near-ties
        # flip under any rounding, in the source as much as in the output)
        g.vec(p + "router.scale", H, 8.0, 16.0, g.norm_dtype)
        g.vec(p + "router.per_expert_scale", E, 0.25, 4.0, g.norm_dtype)
        g.mat(p + "experts.gate_up_proj", (E, 2 * Im, H), scale=0.25)
        g.mat(p + "experts.down_proj", (E, H, Im), scale=0.25)
        g.norm(p + "pre_feedforward_layernorm_2.weight", (H,))
        _post(g, p, "post_feedforward_layernorm_1", "post_feedforward_layernorm_2")
    if P:
        g.mat(p + "per_layer_input_gate.weight", (P, H))
        g.mat(p + "per_layer_projection.weight", (H, P))
        _post(g, p, "post_per_layer_input_norm")
    g.vec(p + "layer_scalar", 1, 0.6, 1.0, g.dtype)


def _post(g, p, *names):
    """The sandwich norms scale what each sublayer adds to the residual:
    small gains, as in trained models (large ones make a random model
    chaotic, and one rounding per folded weight then moves the logits by
    percents)."""
    for n in names:
        g.vec(p + n + ".weight", g.m.config.get("hidden_size") or g.m.config["text_config"]["hidden_size"],
              0.1, 0.5, g.norm_dtype)


_VISION = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "patch_size": 2,
           "position_embedding_size": 8, "pooling_kernel_size": 1, "rms_norm_eps": 1e-6}
_AUDIO = {"model_type": "gemma4_audio", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "output_proj_dims": 16, "rms_norm_eps": 1e-6}


def _towers(g, H):
    """Gemma4VisionModel / Gemma4AudioModel pieces, named as the wrapper
    stores them; their norms share the decoder's names
    (input_layernorm, post_attention_layernorm, ...) and must pass through."""
    Hv = 16
    vp = "model.vision_tower."
    g.mat(vp + "patch_embedder.input_proj.weight", (Hv, 12))
    g.mat(vp + "patch_embedder.position_embedding_table", (2, 8, Hv))
    lp = vp + "encoder.layers.0."
    for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"):
        g.norm(lp + n + ".weight", (Hv,))
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        g.mat(lp + "self_attn.%s.linear.weight" % n, (Hv, Hv))
    g.norm(lp + "self_attn.q_norm.weight", (8,))
    g.norm(lp + "self_attn.k_norm.weight", (8,))
    for n, shape in (("gate_proj", (32, Hv)), ("up_proj", (32, Hv)), ("down_proj", (Hv, 32))):
        g.mat(lp + "mlp.%s.linear.weight" % n, shape)
    g.mat("model.embed_vision.embedding_projection.weight", (H, Hv))
    ap = "model.audio_tower.layers.0."
    for n in ("norm_pre_attn", "norm_post_attn", "norm_out"):
        g.norm(ap + n + ".weight", (16,))
    g.mat(ap + "self_attn.q_proj.linear.weight", (16, 16))
    g.vec(ap + "self_attn.per_dim_scale", 8, -0.5, 0.5, g.dtype)
    g.mat("model.audio_tower.output_proj.weight", (16, 16))
    g.bias("model.audio_tower.output_proj.bias", 16)
    g.mat("model.embed_audio.embedding_projection.weight", (H, 16))


# ---------------------------------------------------------------- the plan

def layer_plan(tc, i, has):
    """docs/architectures.md §gemma4: input_layernorm -> the projections the
    layer has (KV-shared: q only; full attention with attention_k_eq_v: q, k;
    else q, k, v); pre_feedforward_layernorm -> gate/up (every layer);
    pre_feedforward_layernorm_2 -> experts.gate_up_proj along its last axis
    (enable_moe_block).  Kept: the sandwich norms, q/k norms."""
    t, _, _, kv_from = layer_info(tc, i)
    if kv_from is not None and not has("self_attn.k_proj.weight"):
        attn = ["self_attn.q_proj"]
    elif tc.get("attention_k_eq_v") and t == FULL:
        attn = QKV[:2]
    else:
        attn = QKV
    groups = [("input_layernorm", attn), ("pre_feedforward_layernorm", ["mlp.gate_proj", "mlp.up_proj"])]
    kept = ["post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm",
            "post_per_layer_input_norm"]
    if tc.get("enable_moe_block"):
        groups.append(("pre_feedforward_layernorm_2", [("experts.gate_up_proj", "last")]))
        kept += ["post_feedforward_layernorm_1", "post_feedforward_layernorm_2"]
    return groups, kept


# ---------------------------------------------------------------- forward

class _Ref(ref_forward._M):
    """Gemma4ForCausalLM (or the wrapper's text model) for a text-only
    sequence, in double precision, literally (ref_forward._M: the tensors)."""

    def __init__(self, ck):
        super().__init__(ck)
        self.tc = text_config(ck.config)
        self.pre = "model.language_model." if ck.config["model_type"] == "gemma4" else "model."
        self.eps = self.tc.get("rms_norm_eps", 1e-6)

    def lin(self, x, name, rows=None):
        """y = W x for W [rows, len(x)] stored from element 0 (or a slab)."""
        w, c = self.vals(name), len(x)
        rows = rows or len(w) // c
        return [sum(w[o * c + i] * x[i] for i in range(c)) for o in range(rows)]

    def rms(self, x, name=None):
        ms = sum(v * v for v in x) / len(x) + self.eps
        xh = [v * ms ** -0.5 for v in x]
        if name is None or not self.has(name):
            return xh
        return [a * b for a, b in zip(xh, self.vals(name))]


def _gelu(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _inv_freq(tc, t, hd):
    rp = (tc.get("rope_parameters") or {}).get(t) or {}
    kind = rp.get("rope_type", "default")
    theta, f = rp["rope_theta"], rp.get("factor", 1.0)
    if kind == "default":
        return [1.0 / theta ** (2 * j / hd) for j in range(hd // 2)]
    angles = int(rp.get("partial_rotary_factor", 1.0) * hd // 2)
    return [(1.0 / theta ** (2 * j / hd) if j < angles else 0.0) / f for j in range(hd // 2)]


def _rope(v, pos, inv):
    h = len(v) // 2
    out = list(v)
    for j in range(h):
        c, s = math.cos(pos * inv[j]), math.sin(pos * inv[j])
        out[j] = v[j] * c - v[j + h] * s
        out[j + h] = v[j + h] * c + v[j] * s
    return out


def _heads(v, n, hd):
    return [v[j * hd:(j + 1) * hd] for j in range(n)]


def _attention(r, p, i, hs, kv_store):
    tc = r.tc
    t, hd, nkv, kv_from = layer_info(tc, i)
    nh = tc["num_attention_heads"]
    inv = _inv_freq(tc, t, hd)
    window = tc.get("sliding_window") if t == SLIDING else None
    Q = [[_rope(r.rms(q, p + "self_attn.q_norm.weight"), pos, inv)
          for q in _heads(r.lin(h, p + "self_attn.q_proj.weight"), nh, hd)] for pos, h in enumerate(hs)]
    if kv_from is not None:
        K, Vv = kv_store[kv_from]
    else:
        K, Vv = [], []
        for pos, h in enumerate(hs):
            k = r.lin(h, p + "self_attn.k_proj.weight")
            v = k if not r.has(p + "self_attn.v_proj.weight") else r.lin(h, p + "self_attn.v_proj.weight")
            K.append([_rope(r.rms(x, p + "self_attn.k_norm.weight"), pos, inv) for x in _heads(k, nkv, hd)])
            Vv.append([r.rms(x) for x in _heads(v, nkv, hd)])
        kv_store[i] = (K, Vv)
    outs = []
    for a in range(len(hs)):
        ctx = []
        for h in range(nh):
            kh = h // (nh // nkv)
            js = [j for j in range(a + 1) if window is None or a - j < window]
            sc = [sum(x * y for x, y in zip(Q[a][h], K[j][kh])) for j in js]
            mx = max(sc)
            e = [math.exp(s - mx) for s in sc]
            z = sum(e)
            ctx += [sum(e[n] / z * Vv[j][kh][c] for n, j in enumerate(js)) for c in range(hd)]
        outs.append(r.lin(ctx, p + "self_attn.o_proj.weight"))
    return outs


def _mlp(r, p, h):
    gt = r.lin(h, p + "mlp.gate_proj.weight")
    up = r.lin(h, p + "mlp.up_proj.weight")
    return r.lin([_gelu(a) * b for a, b in zip(gt, up)], p + "mlp.down_proj.weight")


def _moe(r, p, res):
    """Gemma4TextRouter + Gemma4TextExperts for one token."""
    tc = r.tc
    H, E, K = tc["hidden_size"], tc["num_experts"], tc["top_k_experts"]
    sc = r.vals(p + "router.scale")
    x = [a * b * H ** -0.5 for a, b in zip(r.rms(res), sc)]
    logits = r.lin(x, p + "router.proj.weight")
    mx = max(logits)
    pr = [math.exp(v - mx) for v in logits]
    z = sum(pr)
    pr = [v / z for v in pr]
    top = sorted(range(E), key=lambda e: (-pr[e], e))[:K]
    tot = sum(pr[e] for e in top)
    pes = r.vals(p + "router.per_expert_scale")
    xe = r.rms(res, p + "pre_feedforward_layernorm_2.weight")
    gu, dn = r.vals(p + "experts.gate_up_proj"), r.vals(p + "experts.down_proj")
    I2 = r.ck.tensors[p + "experts.gate_up_proj"].shape[1]
    I = I2 // 2
    out = [0.0] * H
    for e in top:
        y = [sum(gu[(e * I2 + o) * H + c] * xe[c] for c in range(H)) for o in range(I2)]
        z = [_gelu(y[j]) * y[I + j] for j in range(I)]
        d = [sum(dn[(e * H + o) * I + j] * z[j] for j in range(I)) for o in range(H)]
        w = pr[e] / tot * pes[e]
        out = [a + w * b for a, b in zip(out, d)]
    return out


def _round(dtype, x):
    return ref_forward._round_to(dtype, x)


def _per_layer_inputs(r, tokens, xs):
    tc, pre = r.tc, r.pre
    L, P, H = tc["num_hidden_layers"], tc["hidden_size_per_layer_input"], tc["hidden_size"]
    et = r.ck.tensors[pre + "embed_tokens_per_layer.weight"]
    Ep, s = r.vals(pre + "embed_tokens_per_layer.weight"), _round(et.dtype, math.sqrt(P))
    out = []
    for tok, x in zip(tokens, xs):
        proj = [v * H ** -0.5 for v in r.lin(x, pre + "per_layer_model_projection.weight")]
        row = []
        for l in range(L):
            pn = r.rms(proj[l * P:(l + 1) * P], pre + "per_layer_projection_norm.weight")
            tk = Ep[tok * L * P + l * P: tok * L * P + (l + 1) * P]
            row.append([(a + b * s) * 2 ** -0.5 for a, b in zip(pn, tk)])
        out.append(row)
    return out


def ref_logits(ck, tokens):
    r = _Ref(ck)
    tc, pre = r.tc, r.pre
    H, L = tc["hidden_size"], tc["num_hidden_layers"]
    et = ck.tensors[pre + "embed_tokens.weight"]
    E = r.vals(pre + "embed_tokens.weight")
    s = _round(et.dtype, math.sqrt(H))
    xs = [[v * s for v in E[t * H:(t + 1) * H]] for t in tokens]
    ple = _per_layer_inputs(r, tokens, xs) if tc.get("hidden_size_per_layer_input") else None
    kv = {}
    for i in range(L):
        p = "%slayers.%d." % (pre, i)
        a = _attention(r, p, i, [r.rms(x, p + "input_layernorm.weight") for x in xs], kv)
        xs = [[u + v for u, v in zip(x, r.rms(y, p + "post_attention_layernorm.weight"))] for x, y in zip(xs, a)]
        new = []
        for t, res in enumerate(xs):
            y = _mlp(r, p, r.rms(res, p + "pre_feedforward_layernorm.weight"))
            if tc.get("enable_moe_block"):
                y1 = r.rms(y, p + "post_feedforward_layernorm_1.weight")
                y2 = r.rms(_moe(r, p, res), p + "post_feedforward_layernorm_2.weight")
                y = [a + b for a, b in zip(y1, y2)]
            h = [u + v for u, v in zip(res, r.rms(y, p + "post_feedforward_layernorm.weight"))]
            if ple is not None:
                gt = [_gelu(v) * q for v, q in zip(r.lin(h, p + "per_layer_input_gate.weight"), ple[t][i])]
                h = [u + v for u, v in zip(h, r.rms(r.lin(gt, p + "per_layer_projection.weight"),
                                                   p + "post_per_layer_input_norm.weight"))]
            sc = r.vals(p + "layer_scalar")[0] if r.has(p + "layer_scalar") else 1.0
            new.append([v * sc for v in h])
        xs = new
    tied = ck.config.get("tie_word_embeddings", tc.get("tie_word_embeddings", True))
    W = r.vals(pre + "embed_tokens.weight" if tied or not r.has("lm_head.weight") else "lm_head.weight")
    cap = tc.get("final_logit_softcapping")
    out = []
    for x in xs:
        h = r.rms(x, pre + "norm.weight")
        lg = [sum(W[v * H + c] * h[c] for c in range(H)) for v in range(len(W) // H)]
        out.append([math.tanh(v / cap) * cap for v in lg] if cap else lg)
    return out


# ---------------------------------------------------------------- registration

fixtures.register_family("gemma4_text", build, "Gemma4ForCausalLM", tied=True)
fixtures.register_family("gemma4", build, "Gemma4ForConditionalGeneration", tied=True)
for _mt in GEMMA4:
    expect.EXTRA_LAYER_PLANS[_mt] = layer_plan
    ref_forward.EXTRA_FORWARD[_mt] = ref_logits
    if _mt not in expect.SUPPORTED:
        expect.SUPPORTED.append(_mt)
    # post_attention_layernorm is a kept sandwich norm: a loader reading
    # flashnorm_folded would drop it (docs/architectures.md §marker)
    expect.NO_MARKER.add(_mt)
expect.COMPOSITE.add("gemma4")
