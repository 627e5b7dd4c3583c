"""zoo_gemma3n.py -- Gemma 3n (gemma3n_text, and the gemma3n multimodal
wrapper) for the e2e suites: a fixture generator, the expected fold plan and
a plain reference forward pass, all written from docs/architectures.md
§gemma3n and transformers' gemma3n/modeling_gemma3n.py (Gemma3nTextModel,
Gemma3nTextDecoderLayer, Gemma3nTextAltUp, Gemma3nTextLaurelBlock,
Gemma3nTextMLP, Gemma3nTextAttention) -- independently of src/arch.c and
src/forward_gemma3n.c.

Fixtures (build_model("gemma3n_text" | "gemma3n", **opt)), hidden 32, 6
layers [s, s, s, f, s, f] (s: sliding, f: full):
  layout: gemma3n_text is Gemma3nForCausalLM (model.layers.N);
    gemma3n is Gemma3nForConditionalGeneration (model.language_model.*,
    text_config, plus model.vision_tower / audio_tower / embed_vision /
    embed_audio, the layout Google's checkpoints ship and save_pretrained
    writes: there is no conversion mapping for it).
  kv_shared (2): num_kv_shared_layers.  altup (4): altup_num_inputs.
  sparse (2): layers with activation sparsity 0.95.  window (3).
  softcap (30.0).  towers (True): the wrapper's vision/audio tensors.
  intermediate: a list of per-layer widths (default 48 and 40, alternating).
Norm gains are drawn around 1 (Gemma3nRMSNorm is w), never all ones.
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, _Gen

SLIDING, FULL = "sliding_attention", "full_attention"
H, NH, NKV, HD, P, R = 32, 4, 2, 8, 8, 4


def text_config(cfg):
    return cfg["text_config"] if cfg.get("model_type") == "gemma3n" else cfg


def kv_from(tc, i):
    """Gemma3nTextAttention.kv_shared_layer_index: the last layer of layer
    i's type before the shared tail, or None."""
    L = tc["num_hidden_layers"]
    first = L - tc.get("num_kv_shared_layers", 15)
    types = tc["layer_types"]
    if i < first:
        return None
    return max(j for j in range(first) if types[j] == types[i])


# ---------------------------------------------------------------- generator

def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    if hidden != H:
        raise ValueError("zoo_gemma3n fixtures are %d wide" % H)
    L = layers or 6
    V = vocab
    types = opt.get("layer_types") or ([SLIDING, SLIDING, SLIDING, FULL, SLIDING, FULL] * L)[:L]
    inter = opt.get("intermediate") or [48 if i % 2 == 0 else 40 for i in range(L)]
    n_sparse = opt.get("sparse", 2)
    tc = {
        "model_type": "gemma3n_text", "hidden_size": H, "intermediate_size": inter, "num_hidden_layers": L,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD, "vocab_size": V,
        "vocab_size_per_layer_input": V, "hidden_size_per_layer_input": P, "laurel_rank": R,
        "altup_num_inputs": opt.get("altup", 4), "altup_active_idx": 0, "altup_coef_clip": 120.0,
        "altup_correct_scale": True, "num_kv_shared_layers": opt.get("kv_shared", 2),
        "activation_sparsity_pattern": [0.95 if i < n_sparse else 0.0 for i in range(L)],
        "layer_types": types, "sliding_window": opt.get("window", 3), "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "rope_scaling": None, "final_logit_softcapping": opt.get("softcap", 30.0),
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "attention_bias": False,
        "max_position_embeddings": 256, "tie_word_embeddings": tied, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2,
    }
    wrapper = family == "gemma3n"
    if wrapper:
        cfg = {"architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n", "text_config": tc,
               "vision_config": {"model_type": "gemma3n_vision", "hidden_size": 16, "vocab_size": 4,
                                 "vocab_offset": V, "rms_norm_eps": 1e-6},
               "audio_config": {"model_type": "gemma3n_audio", "hidden_size": 16, "vocab_size": 4,
                                "vocab_offset": V + 4, "rms_norm_eps": 1e-6},
               "tie_word_embeddings": tied, "torch_dtype": fixtures.TORCH_DTYPE[dtype],
               "transformers_version": "4.53.0"}
        pre = "model.language_model."
    else:
        cfg = dict(tc, architectures=["Gemma3nForCausalLM"], torch_dtype=fixtures.TORCH_DTYPE[dtype],
                   transformers_version="4.53.0")
        tc = cfg
        pre = "model."
    m = Model(family, cfg)
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", "lm_head.weight", pre
    g = _Gen(m, seed, dtype, norm_dtype, False)
    n = tc["altup_num_inputs"]
    g.mat(pre + "embed_tokens.weight", (V, H))
    g.mat(pre + "embed_tokens_per_layer.weight", (V, L * P))
    g.mat(pre + "per_layer_model_projection.weight", (L * P, H))
    g.norm(pre + "per_layer_projection_norm.weight", (P,))
    for j in range(n - 1):
        g.mat(pre + "altup_projections.%d.weight" % j, (H, H))
        g.mat(pre + "altup_unembed_projections.%d.weight" % j, (H, H))
    for i in range(L):
        _gen_layer(g, pre + "layers.%d." % i, n, inter[i])
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat("lm_head.weight", (V, H))
    if wrapper and opt.get("towers", True):
        _towers(g, H)
    return m


def _small(g, name, lo=0.1, hi=0.5):
    """Norms that scale what a sublayer adds to the residual: small gains."""
    g.vec(name, H, lo, hi, g.norm_dtype)


def _gen_layer(g, p, n, I):
    g.norm(p + "input_layernorm.weight", (H,))
    g.norm(p + "pre_feedforward_layernorm.weight", (H,))
    _small(g, p + "post_attention_layernorm.weight")
    _small(g, p + "post_feedforward_layernorm.weight")
    # attention runs at scale 1: q_norm/k_norm set the temperature, so their
    # gains are drawn small (as trained ones are)
    g.mat(p + "self_attn.q_proj.weight", (NH * HD, H))
    g.mat(p + "self_attn.k_proj.weight", (NKV * HD, H))
    g.mat(p + "self_attn.v_proj.weight", (NKV * HD, H))
    g.mat(p + "self_attn.o_proj.weight", (H, NH * HD))
    g.vec(p + "self_attn.q_norm.weight", HD, 0.2, 0.6, g.norm_dtype)
    g.vec(p + "self_attn.k_norm.weight", HD, 0.2, 0.6, g.norm_dtype)
    g.mat(p + "mlp.gate_proj.weight", (I, H))
    g.mat(p + "mlp.up_proj.weight", (I, H))
    g.mat(p + "mlp.down_proj.weight", (H, I))
    g.mat(p + "laurel.linear_left.weight", (R, H))
    g.mat(p + "laurel.linear_right.weight", (H, R))
    _small(g, p + "laurel.post_laurel_norm.weight")
    g.norm(p + "altup.router_norm.weight", (H,))
    g.mat(p + "altup.modality_router.weight", (n, H))
    g.mat(p + "altup.prediction_coefs.weight", (n * n, n), scale=0.3)
    g.mat(p + "altup.correction_coefs.weight", (n, n), scale=0.3)
    g.vec(p + "altup.correct_output_scale", H, 0.5, 1.5, g.dtype)
    g.mat(p + "per_layer_input_gate.weight", (P, H))
    g.mat(p + "per_layer_projection.weight", (H, P))
    _small(g, p + "post_per_layer_input_norm.weight")


def _towers(g, H):
    """Gemma3nModel's other parts as the wrapper stores them: a MobileNet
    (timm) vision tower, the audio conformer, the multimodal embedders --
    norms with names of their own, passed through."""
    vp = "model.vision_tower.timm_model."
    g.mat(vp + "conv_stem.conv.weight", (8, 3, 3, 3))
    g.vec(vp + "conv_stem.bn.weight", 8, 0.5, 2.0, g.norm_dtype)
    g.mat(vp + "blocks.0.0.pw_exp.conv.weight", (16, 8, 1, 1))
    g.vec(vp + "msfa.norm.weight", 16, 0.5, 2.0, g.norm_dtype)
    ap = "model.audio_tower.conformer.0."
    g.vec(ap + "ffw_layer_start.pre_layer_norm.weight", 16, 0.5, 2.0, g.norm_dtype)
    g.mat(ap + "attention.attn.q_proj.weight", (16, 16))
    g.vec(ap + "norm.weight", 16, 0.5, 2.0, g.norm_dtype)
    for e, hid in (("model.embed_vision.", 16), ("model.embed_audio.", 16)):
        g.mat(e + "embedding.weight", (4, hid))
        g.vec(e + "hard_embedding_norm.weight", hid, 0.5, 2.0, g.norm_dtype)
        g.vec(e + "soft_embedding_norm.weight", hid, 0.5, 2.0, g.norm_dtype)
        g.mat(e + "embedding_projection.weight", (H, hid))


# ---------------------------------------------------------------- the plan

def layer_plan(tc, i, has):
    """docs/architectures.md §gemma3n: pre_feedforward_layernorm -> gate/up;
    altup.router_norm -> altup.modality_router.  input_layernorm is kept:
    LAuReL adds its output to the residual."""
    return [("pre_feedforward_layernorm", ["mlp.gate_proj", "mlp.up_proj"]),
            ("altup.router_norm", ["altup.modality_router"])], \
        ["input_layernorm", "post_attention_layernorm", "post_feedforward_layernorm", "laurel.post_laurel_norm",
         "post_per_layer_input_norm", "self_attn.q_norm", "self_attn.k_norm"]


# ---------------------------------------------------------------- forward

class _Ref(ref_forward._M):
    def __init__(self, ck):
        super().__init__(ck)
        self.tc = text_config(ck.config)
        self.pre = "model.language_model." if ck.config["model_type"] == "gemma3n" else "model."
        self.eps = self.tc.get("rms_norm_eps", 1e-6)
        self.dtype = ck.tensors[self.pre + "embed_tokens.weight"].dtype

    def lin(self, x, name):
        w, c = self.vals(name), len(x)
        return [sum(w[o * c + i] * x[i] for i in range(c)) for o in range(len(w) // c)]

    def rms(self, x, name=None):
        """Gemma3nRMSNorm: x / sqrt(mean(x^2) + eps) * weight (weightless
        when name is None or absent)."""
        d = math.sqrt(sum(v * v for v in x) / len(x) + self.eps)
        xh = [v / d for v in x]
        if name is None or not self.has(name):
            return xh
        return [a * b for a, b in zip(xh, self.vals(name))]


def _gelu(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _icdf(p):
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _rope(v, pos, inv):
    h = len(v) // 2
    out = list(v)
    for j in range(h):
        c, s = math.cos(pos * inv[j]), math.sin(pos * inv[j])
        out[j], out[j + h] = v[j] * c - v[j + h] * s, v[j + h] * c + v[j] * s
    return out


def _mag(x):
    return math.sqrt(sum(v * v for v in x) / len(x))


def _modalities(r, p, x):
    """compute_router_modalities: tanh(modality_router(router_norm(x) / H))."""
    return [math.tanh(v) for v in r.lin([v / H for v in r.rms(x, p + "altup.router_norm.weight")],
                                        p + "altup.modality_router.weight")]


def _predict(r, p, streams, n, a0):
    """predictions[a] = streams[a] + sum_c coefs[a, c] streams[c], the n x n
    coefficients from prediction_coefs(modalities), reshaped row-major
    (a, c) and applied through the permutes of Gemma3nTextAltUp.predict."""
    T = len(streams[0])
    out = [[None] * T for _ in range(n)]
    for t in range(T):
        coef = r.lin(_modalities(r, p, streams[a0][t]), p + "altup.prediction_coefs.weight")
        for a in range(n):
            out[a][t] = [streams[a][t][h] + sum(coef[a * n + c] * streams[c][t][h] for c in range(n))
                         for h in range(H)]
    return out


def _ref_attention(r, p, i, hs, store):
    tc = r.tc
    sliding = tc["layer_types"][i] == SLIDING
    theta = tc["rope_local_base_freq"] if sliding else tc["rope_theta"]
    inv = [1.0 / theta ** (2 * j / HD) for j in range(HD // 2)]
    window = tc.get("sliding_window") if sliding else None
    Q = [[_rope(r.rms(hq, p + "self_attn.q_norm.weight"), pos, inv)
          for hq in (lambda q: [q[j * HD:(j + 1) * HD] for j in range(NH)])(r.lin(h, p + "self_attn.q_proj.weight"))]
         for pos, h in enumerate(hs)]
    src = kv_from(tc, i)
    if src is not None:
        K, Vv = store[src]
    else:
        K, Vv = [], []
        for pos, h in enumerate(hs):
            k, v = r.lin(h, p + "self_attn.k_proj.weight"), r.lin(h, p + "self_attn.v_proj.weight")
            K.append([_rope(r.rms(k[j * HD:(j + 1) * HD], p + "self_attn.k_norm.weight"), pos, inv)
                      for j in range(NKV)])
            Vv.append([r.rms(v[j * HD:(j + 1) * HD]) for j in range(NKV)])
        store[i] = (K, Vv)
    out = []
    for t in range(len(hs)):
        ctx = []
        for h in range(NH):
            kh = h // (NH // NKV)
            js = [j for j in range(t + 1) if window is None or j > t - window]
            sc = [sum(a * b for a, b in zip(Q[t][h], K[j][kh])) for j in js]   # scaling 1.0
            mx = max(sc)
            e = [math.exp(v - mx) for v in sc]
            z = sum(e)
            ctx += [sum(e[n] / z * Vv[js[n]][kh][c] for n in range(len(js))) for c in range(HD)]
        out.append(r.lin(ctx, p + "self_attn.o_proj.weight"))
    return out


def _mlp(r, p, i, x):
    """Gemma3nTextMLP with _gaussian_topk where the layer's sparsity > 0
    (std_multiplier in the model dtype)."""
    gate = r.lin(x, p + "mlp.gate_proj.weight")
    sp = r.tc["activation_sparsity_pattern"][i]
    if sp > 0:
        mean = sum(gate) / len(gate)
        std = math.sqrt(sum((v - mean) ** 2 for v in gate) / len(gate))
        cut = mean + std * ref_forward._round_to(r.dtype, _icdf(sp))
        gate = [max(v - cut, 0.0) for v in gate]
    up = r.lin(x, p + "mlp.up_proj.weight")
    return r.lin([_gelu(a) * b for a, b in zip(gate, up)], p + "mlp.down_proj.weight")


def _layer(r, i, streams, ple, store):
    tc, n, a0 = r.tc, r.tc["altup_num_inputs"], r.tc.get("altup_active_idx", 0)
    p = "%slayers.%d." % (r.pre, i)
    T = len(streams[0])
    pred = _predict(r, p, streams, n, a0)
    active = pred[a0]
    normed = [r.rms(x, p + "input_layernorm.weight") for x in active]
    laurel = [[a + b for a, b in zip(x, r.rms(r.lin(r.lin(x, p + "laurel.linear_left.weight"),
                                                     p + "laurel.linear_right.weight"),
                                               p + "laurel.post_laurel_norm.weight"))] for x in normed]
    attn = [r.rms(a, p + "post_attention_layernorm.weight") for a in _ref_attention(r, p, i, normed, store)]
    al = [[(u + v + w) / math.sqrt(2) for u, v, w in zip(a, b, c)] for a, b, c in zip(active, attn, laurel)]
    ffw = [r.rms(_mlp(r, p, i, r.rms(x, p + "pre_feedforward_layernorm.weight")),
                 p + "post_feedforward_layernorm.weight") for x in al]
    activated = [[u + v for u, v in zip(a, b)] for a, b in zip(al, ffw)]
    clip = tc.get("altup_coef_clip")
    cw = r.vals(p + "altup.correction_coefs.weight")
    cw = [min(max(v, -clip), clip) for v in cw] if clip is not None else cw
    new = [[None] * T for _ in range(n)]
    for t in range(T):
        mo = _modalities(r, p, activated[t])
        coef = [sum(cw[a * n + k] * mo[k] for k in range(n)) + 1.0 for a in range(n)]
        innov = [u - v for u, v in zip(activated[t], pred[a0][t])]
        for a in range(n):
            new[a][t] = [pred[a][t][h] + innov[h] * coef[a] for h in range(H)]
    scale = r.vals(p + "altup.correct_output_scale")
    for t in range(T):
        first = [v * s for v, s in zip(new[a0][t], scale)] if tc.get("altup_correct_scale", True) else new[a0][t]
        gate = [_gelu(v) for v in r.lin(first, p + "per_layer_input_gate.weight")]
        y = r.rms(r.lin([a * b for a, b in zip(gate, ple[t][i])], p + "per_layer_projection.weight"),
                  p + "post_per_layer_input_norm.weight")
        for a in range(1, n):
            new[a][t] = [u + v for u, v in zip(new[a][t], y)]
    return new


def ref_logits(ck, tokens):
    r = _Ref(ck)
    tc, pre = r.tc, r.pre
    L, n = tc["num_hidden_layers"], tc["altup_num_inputs"]
    E = r.vals(pre + "embed_tokens.weight")
    s = ref_forward._round_to(r.dtype, math.sqrt(H))
    x0 = [[v * s for v in E[t * H:(t + 1) * H]] for t in tokens]
    # get_per_layer_inputs / project_per_layer_inputs
    pe = r.vals(pre + "embed_tokens_per_layer.weight")
    pdt = ck.tensors[pre + "embed_tokens_per_layer.weight"].dtype
    ps, pin = ref_forward._round_to(r.dtype, H ** -0.5), ref_forward._round_to(r.dtype, 2 ** -0.5)
    pes = ref_forward._round_to(pdt, math.sqrt(P))
    ple = []
    for t, x in zip(tokens, x0):
        proj = [v * ps for v in r.lin(x, pre + "per_layer_model_projection.weight")]
        row = []
        for i in range(L):
            nrm = r.rms(proj[i * P:(i + 1) * P], pre + "per_layer_projection_norm.weight")
            emb = [pe[t * L * P + i * P + k] * pes for k in range(P)]
            row.append([(a + b) * pin for a, b in zip(nrm, emb)])
        ple.append(row)
    streams = [x0]
    for j in range(1, n):
        cur = [r.lin(x, pre + "altup_projections.%d.weight" % (j - 1)) for x in x0]
        streams.append([[v * _mag(x) / _mag(c) for v in c] for x, c in zip(x0, cur)])
    store = {}
    for i in range(L):
        streams = _layer(r, i, streams, ple, store)
    outs = [streams[0]]
    for j in range(1, n):
        cur = [r.lin(x, pre + "altup_unembed_projections.%d.weight" % (j - 1)) for x in streams[j]]
        outs.append([[v * _mag(x) / _mag(c) for v in c] for x, c in zip(streams[0], cur)])
    hs = [[sum(outs[a][t][h] for a in range(n)) / n for h in range(H)] for t in range(len(tokens))]
    tied = ck.config.get("tie_word_embeddings", tc.get("tie_word_embeddings", True))
    W = r.vals(pre + "embed_tokens.weight" if tied else "lm_head.weight")
    cap = tc.get("final_logit_softcapping")
    out = []
    for x in hs:
        h = r.rms(x, pre + "norm.weight")
        lg = [sum(W[v * H + j] * h[j] for j in range(H)) for v in range(len(W) // H)]
        if cap:
            lg = [math.tanh(v / cap) * cap for v in lg]
        out.append(lg)
    return out


# ---------------------------------------------------------------- registration

fixtures.register_family("gemma3n_text", build, "Gemma3nForCausalLM", tied=True)
fixtures.register_family("gemma3n", build, "Gemma3nForConditionalGeneration", tied=True)
for _mt in ("gemma3n_text", "gemma3n"):
    expect.EXTRA_LAYER_PLANS[_mt] = layer_plan
    ref_forward.EXTRA_FORWARD[_mt] = ref_logits
    if _mt not in expect.SUPPORTED:
        expect.SUPPORTED.append(_mt)
    expect.TIE_CLASS_DEFAULT[_mt] = True
    expect.NO_MARKER.add(_mt)
expect.COMPOSITE.add("gemma3n")
