"""zoo_qwen.py -- Qwen3.5 / Qwen3.6 (qwen3_5, qwen3_5_moe and their text types)
and Qwen3-Next (qwen3_next): fixtures, the expected fold plan and a second
reference forward pass, registered with fixtures.py, expect.py and
ref_forward.py (imported by fixtures.py; import fixtures before expect).

Written from docs/architectures.md §qwen3_5 (and the transformers 5 modeling
files it cites), not from src/arch.c or src/forward*.c.  The Gated DeltaNet
recurrence is written here in its transition-matrix form,
S <- (I - beta k k^T)(alpha S) + beta k v^T, the algebraic twin of the
delta-update form the C pass uses.

build_model options of these families:
  layers: number of decoder layers (default 4).
  interval: full_attention_interval (default 2: linear, full, linear, full).
  layer_types: True writes config layer_types, False leaves them to the
    interval (default: True for qwen3_5*, False for qwen3_next, as their
    Hub configs do).
  rotary: partial_rotary_factor (default 0.5), or None to leave it to the
    config class default (0.25); qwen3_5* keep it in rope_parameters.
  experts: "fused" ([E, 2I, H], qwen3_5_moe's default), "per_expert"
    (qwen3_next's default) or "fused_t" ([E, H, 2I]); v5_keys: the expert
    count as num_local_experts.
  mlp_only_layers, decoder_sparse_step: Qwen3-Next's MoE rule (default [0], 1).
  mtp: the multi-token-prediction block mtp.* (composite types: default True).
  dims: config values to override (sizes: heads, head dims, experts ...).
  qk: "independent" draws linear attention's key projections independently
    of the query ones (default: aligned, see _align_keys).
  vision: model.visual.* (composite types: always).
"""

import math

import fixtures
from fixtures import Model, _Gen, _fuse_experts, float_tensor
import expect
import ref_forward

TEXT_TYPE = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
ARCH = {"qwen3_5": "Qwen3_5ForConditionalGeneration", "qwen3_5_text": "Qwen3_5ForCausalLM",
        "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration", "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM",
        "qwen3_next": "Qwen3NextForCausalLM"}
FAMILIES = list(ARCH)
MOE = {"qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"}
ALL_SPARSE = {"qwen3_5_moe", "qwen3_5_moe_text"}   # Qwen3_5MoeDecoderLayer: every layer
FUSED_PROJ = {"qwen3_next"}                        # in_proj_qkvz / in_proj_ba

RES = 0.5   # residual-branch output projections drawn at half scale (trained-looking, less chaotic)
LIN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
           linear_value_head_dim=8, linear_conv_kernel_dim=4)


def text_config(cfg):
    return cfg["text_config"] if cfg.get("model_type") in TEXT_TYPE and "text_config" in cfg else cfg


def layer_type(tc, i):
    """config layer_types[i], or Qwen3NextConfig's rule without them."""
    if tc.get("layer_types") is not None:
        return tc["layer_types"][i]
    n = tc.get("full_attention_interval", 4)
    return "full_attention" if (i + 1) % n == 0 else "linear_attention"


def expert_count(tc):
    return tc.get("num_experts", tc.get("num_local_experts", 0))


def sparse(mt, tc, i):
    if mt in ALL_SPARSE:
        return True
    if mt not in MOE:
        return False
    return i not in (tc.get("mlp_only_layers") or []) and expert_count(tc) > 0 \
        and (i + 1) % tc.get("decoder_sparse_step", 1) == 0


# ---------------------------------------------------------------- fixtures

def _config(family, dtype, tied, L, H, V, opt):
    mt = TEXT_TYPE.get(family, family)
    interval = opt.get("interval", 2)
    types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(L)]
    tc = {"architectures": [ARCH[family]], "model_type": mt, "hidden_size": H, "intermediate_size": 48,
          "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
          "vocab_size": V, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "hidden_act": "silu",
          "attention_bias": False, "full_attention_interval": interval, "tie_word_embeddings": tied,
          "torch_dtype": fixtures.TORCH_DTYPE[dtype], "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    tc.update(LIN)
    if opt.get("layer_types", family != "qwen3_next"):
        tc["layer_types"] = types
    rot = opt.get("rotary", 0.5)
    if family == "qwen3_next":      # Hub configs: transformers 4.57 keys
        tc.update(rope_theta=10000.0, rope_scaling=None, transformers_version="4.57.0")
        if rot is not None:
            tc["partial_rotary_factor"] = rot
    else:                           # transformers 5: rope_parameters, mrope sections
        tc["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                 "mrope_section": [1, 1, 0]}
        if rot is not None:
            tc["rope_parameters"]["partial_rotary_factor"] = rot
        tc["transformers_version"] = "5.2.0"
        if opt.get("mtp", family in TEXT_TYPE):
            tc["mtp_num_hidden_layers"] = 1
    if mt in MOE:
        tc.update(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24,
                  shared_expert_intermediate_size=40)
        if mt == "qwen3_next":
            tc.update(norm_topk_prob=True, mlp_only_layers=opt.get("mlp_only_layers", [0]),
                      decoder_sparse_step=opt.get("decoder_sparse_step", 1))
        else:
            del tc["intermediate_size"]     # Qwen3_5MoeTextConfig deletes it
    tc.update(opt.get("dims", {}))
    if mt in MOE and opt.get("v5_keys"):
        tc["num_local_experts"] = tc.pop("num_experts")
    if family not in TEXT_TYPE:
        return tc
    inner = {k: v for k, v in tc.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    return {"architectures": [ARCH[family]], "model_type": family, "text_config": inner,
            "vision_config": {"model_type": family, "depth": 1, "hidden_size": 16, "intermediate_size": 32,
                              "num_heads": 2, "patch_size": 4, "temporal_patch_size": 2, "spatial_merge_size": 2,
                              "out_hidden_size": H, "num_position_embeddings": 4},
            "image_token_id": 90, "video_token_id": 91, "vision_start_token_id": 92, "vision_end_token_id": 93,
            "tie_word_embeddings": tied, "torch_dtype": fixtures.TORCH_DTYPE[dtype], "transformers_version": "5.2.0"}


def _attention(g, p, tc):
    H, nh, nkv, hd = tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    g.mat(p + "self_attn.q_proj.weight", (nh * hd * 2, H))     # query and gate, per head
    g.mat(p + "self_attn.k_proj.weight", (nkv * hd, H))
    g.mat(p + "self_attn.v_proj.weight", (nkv * hd, H))
    g.mat(p + "self_attn.o_proj.weight", (H, nh * hd), scale=RES)
    g.norm(p + "self_attn.q_norm.weight", (hd,))
    g.norm(p + "self_attn.k_norm.weight", (hd,))


def _align_keys(g, name, q_rows, k_rows):
    """k = 0.8 q + 0.6 noise, row by row: trained-looking queries and keys.
    With independent random ones a head whose k.q is near 0 at some token
    has an output (beta (k.q) v, then RMS-normalised) whose sign the 1-ulp
    roundings of a correct BF16 fold can flip: the fixture, not the fold,
    would then fail the forward check (docs/architectures.md §qwen3_5)."""
    t = g.m.tensors[name]
    v, cols = t.values(), t.shape[1]
    for q, k in zip(q_rows, k_rows):
        for c in range(cols):
            v[k * cols + c] = 0.8 * v[q * cols + c] + 0.6 * v[k * cols + c]
    g.m.tensors[name] = float_tensor(t.dtype, t.shape, v)


def _linear_attention(g, p, tc, fused, aligned):
    H, nk, nv, dk = tc["hidden_size"], tc["linear_num_key_heads"], tc["linear_num_value_heads"], tc["linear_key_head_dim"]
    dv = tc["linear_value_head_dim"]
    kd, vd = nk * dk, nv * dv
    la = p + "linear_attn."
    if fused:
        g.mat(la + "in_proj_qkvz.weight", (2 * kd + 2 * vd, H))
        g.mat(la + "in_proj_ba.weight", (2 * nv, H))
        grp = (2 * kd + 2 * vd) // nk     # rows per key head: q, k, v, z
        q_rows = [h * grp + i for h in range(nk) for i in range(dk)]
        proj = la + "in_proj_qkvz.weight"
    else:
        g.mat(la + "in_proj_qkv.weight", (2 * kd + vd, H))
        g.mat(la + "in_proj_z.weight", (vd, H))
        g.mat(la + "in_proj_b.weight", (nv, H))
        g.mat(la + "in_proj_a.weight", (nv, H))
        q_rows = list(range(kd))
        proj = la + "in_proj_qkv.weight"
    C, K = 2 * kd + vd, tc["linear_conv_kernel_dim"]
    cw = [g.rng.uniform(-0.6, 0.6) for _ in range(C * K)]
    if aligned:
        _align_keys(g, proj, q_rows, [r + dk for r in q_rows] if fused else [r + kd for r in q_rows])
        cw[kd * K:2 * kd * K] = cw[:kd * K]    # conv channels: q ... then k ...: the same filters
    g.m.tensors[la + "conv1d.weight"] = float_tensor(g.dtype, (C, 1, K), cw)
    # A = exp(A_log) kept small enough that the state decays slowly
    g.vec(la + "A_log", nv, math.log(0.05), math.log(1.0), "F32")
    g.vec(la + "dt_bias", nv, -1.0, 1.0, g.dtype)
    g.vec(la + "norm.weight", dv, 0.5, 2.5, g.norm_dtype)   # gain w
    g.mat(la + "out_proj.weight", (H, vd), scale=RES)


def _mlp(g, p, H, tc, moe):
    if not moe:
        I = tc["intermediate_size"]
        for n, shape, sc in (("gate_proj", (I, H), 1.0), ("up_proj", (I, H), 1.0), ("down_proj", (H, I), RES)):
            g.mat(p + "mlp.%s.weight" % n, shape, scale=sc)
        return
    E, Im, Is = expert_count(tc), tc["moe_intermediate_size"], tc["shared_expert_intermediate_size"]
    g.mat(p + "mlp.gate.weight", (E, H))
    for j in range(E):
        g.mat(p + "mlp.experts.%d.gate_proj.weight" % j, (Im, H))
        g.mat(p + "mlp.experts.%d.up_proj.weight" % j, (Im, H))
        g.mat(p + "mlp.experts.%d.down_proj.weight" % j, (H, Im), scale=RES)
    g.mat(p + "mlp.shared_expert.gate_proj.weight", (Is, H))
    g.mat(p + "mlp.shared_expert.up_proj.weight", (Is, H))
    g.mat(p + "mlp.shared_expert.down_proj.weight", (H, Is), scale=RES)
    g.mat(p + "mlp.shared_expert_gate.weight", (1, H))


def _mtp(g, H, tc, moe):
    """Qwen3.5's multi-token-prediction block: ignored by the transformers
    loaders, passed through byte for byte (per-expert even in fused models)."""
    g.mat("mtp.fc.weight", (H, 2 * H))
    for n in ("mtp.norm", "mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden",
              "mtp.layers.0.input_layernorm", "mtp.layers.0.post_attention_layernorm"):
        g.norm(n + ".weight", (H,))
    _attention(g, "mtp.layers.0.", tc)
    _mlp(g, "mtp.layers.0.", H, tc, moe)


def _vision(g, H):
    """A one-block Qwen3.5 vision tower (LayerNorms with bias): passes through."""
    v, Hv = "model.visual.", 16
    g.mat(v + "patch_embed.proj.weight", (Hv, 3, 2, 4, 4))
    g.bias(v + "patch_embed.proj.bias", Hv)
    g.mat(v + "pos_embed.weight", (4, Hv))
    b = v + "blocks.0."
    for n in ("norm1", "norm2"):
        g.vec(b + n + ".weight", Hv, 0.5, 2.5, g.norm_dtype)
        g.bias(b + n + ".bias", Hv)
    for n, shape in (("attn.qkv", (3 * Hv, Hv)), ("attn.proj", (Hv, Hv)), ("mlp.linear_fc1", (32, Hv)),
                     ("mlp.linear_fc2", (Hv, 32))):
        g.mat(b + n + ".weight", shape)
        g.bias(b + n + ".bias", shape[0])
    g.vec(v + "merger.norm.weight", Hv, 0.5, 2.5, g.norm_dtype)
    g.bias(v + "merger.norm.bias", Hv)
    g.mat(v + "merger.linear_fc1.weight", (4 * Hv, 4 * Hv))
    g.bias(v + "merger.linear_fc1.bias", 4 * Hv)
    g.mat(v + "merger.linear_fc2.weight", (H, 4 * Hv))
    g.bias(v + "merger.linear_fc2.bias", H)


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    L, H, V = layers or 4, hidden, vocab
    cfg = _config(family, dtype, tied, L, H, V, opt)
    tc = text_config(cfg)
    mt = tc["model_type"]
    model = Model(family, cfg)
    g = _Gen(model, seed, dtype, norm_dtype, True)      # 1 + w gains: random around 0
    pre = "model.language_model." if family in TEXT_TYPE else "model."
    model.embed_name, model.text_prefix = pre + "embed_tokens.weight", pre
    g.mat(pre + "embed_tokens.weight", (V, H))
    for i in range(L):
        p = "%slayers.%d." % (pre, i)
        if layer_type(tc, i) == "linear_attention":
            _linear_attention(g, p, tc, mt in FUSED_PROJ, opt.get("qk") != "independent")
        else:
            _attention(g, p, tc)
        g.norm(p + "input_layernorm.weight", (H,))
        g.norm(p + "post_attention_layernorm.weight", (H,))
        _mlp(g, p, H, tc, sparse(mt, tc, i))
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat("lm_head.weight", (V, H))
    if "mtp_num_hidden_layers" in tc:
        _mtp(g, H, tc, mt in MOE)
    if family in TEXT_TYPE:
        _vision(g, H)
    experts = opt.get("experts", "fused" if mt in ALL_SPARSE else "per_expert")
    if mt in MOE and experts in ("fused", "fused_t"):
        # verify_fixtures.tame() scales 2-D matrices only: give the experts
        # the same trained-looking scale before they become 3-D
        for k in [k for k in model.tensors if ".mlp.experts." in k and k.startswith(pre)]:
            t = model.tensors[k]
            f = 2.0 ** -round(math.log2(t.shape[1]) / 2)
            model.tensors[k] = float_tensor(t.dtype, t.shape, [x * f for x in t.values()])
        ecfg = dict(tc, num_experts=expert_count(tc))
        _fuse_experts(model, ecfg, transposed=experts == "fused_t")
    return model


# ---------------------------------------------------------------- the fold plan

QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
SPLIT_IN = ["linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.in_proj_b", "linear_attn.in_proj_a"]
FUSED_IN = ["linear_attn.in_proj_qkvz", "linear_attn.in_proj_ba"]
SHARED = ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"]


def layer_plan(mt):
    """expect.layer_plan for model_type mt: input_layernorm feeds the
    linear-attention projections or q/k/v by the layer type; the
    post-attention norm feeds the dense MLP or router, experts, shared
    expert and its gate; q/k norms and the gated norm are kept."""
    text = TEXT_TYPE.get(mt, mt)

    def plan(tc, i, has):
        if layer_type(tc, i) == "linear_attention":
            groups = [("input_layernorm", FUSED_IN if text in FUSED_PROJ else SPLIT_IN)]
            kept = ["linear_attn.norm"]
        else:
            groups = [("input_layernorm", QKV)]
            kept = ["self_attn.q_norm", "self_attn.k_norm"]
        if not sparse(text, tc, i):
            groups.append(("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]))
            return groups, kept
        moe = ["mlp.gate"]
        if has("mlp.experts.gate_up_proj"):
            moe.append(("mlp.experts.gate_up_proj", has("mlp.experts.gate_up_proj")))
        else:
            for j in range(expert_count(tc)):
                moe += ["mlp.experts.%d.gate_proj" % j, "mlp.experts.%d.up_proj" % j]
        groups.append(("post_attention_layernorm", moe + SHARED))
        return groups, kept
    return plan


# ---------------------------------------------------------------- the forward pass

def _rms(x, eps, w=None, one_plus=False):
    r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    if w is None:
        return [v * r for v in x]
    return [v * r * ((1.0 + g) if one_plus else g) for v, g in zip(x, w)]


def _silu(x):
    return x / (1.0 + math.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


class _Ref:
    def __init__(self, ck):
        self.m = ref_forward._M(ck)
        self.ck = ck
        self.tc = text_config(ck.config)
        self.mt = self.tc["model_type"]
        self.eps = self.tc.get("rms_norm_eps", 1e-6)
        self.pre = next(p for p in ("model.language_model.", "model.") if self.m.has(p + "embed_tokens.weight"))

    def vec(self, name):
        return self.m.vals(name) if self.m.has(name) else None

    def norm1p(self, x, name):
        return _rms(x, self.eps, self.vec(name), one_plus=True)

    def rotary(self):
        rp = self.tc.get("rope_parameters") or {}
        prf = rp.get("partial_rotary_factor", self.tc.get("partial_rotary_factor", 0.25))
        theta = rp.get("rope_theta", self.tc.get("rope_theta", 10000.0))
        rot = int(self.tc.get("head_dim", 256) * prf)
        return rot, [theta ** (-2.0 * i / rot) for i in range(rot // 2)]

    def gated_attention(self, p, hs):
        """Qwen3NextAttention: per head, q_proj gives [query | gate]."""
        hd, nh, nkv = self.tc.get("head_dim", 256), self.tc["num_attention_heads"], self.tc["num_key_value_heads"]
        rot, inv = self.rotary()
        Q, G, K, Vs = [], [], [], []
        for pos, h in enumerate(hs):
            qg = self.m.linear(h, p + "self_attn.q_proj")
            k, v = self.m.linear(h, p + "self_attn.k_proj"), self.m.linear(h, p + "self_attn.v_proj")
            qh = [self.norm1p(qg[j * 2 * hd:j * 2 * hd + hd], p + "self_attn.q_norm.weight") for j in range(nh)]
            G.append(sum((qg[j * 2 * hd + hd:(j + 1) * 2 * hd] for j in range(nh)), []))
            kh = [self.norm1p(k[j * hd:(j + 1) * hd], p + "self_attn.k_norm.weight") for j in range(nkv)]
            for vecs in (qh, kh):
                for x in vecs:       # rotate_half over the first rot dims, the rest passes
                    for i, f in enumerate(inv):
                        c, s = math.cos(pos * f), math.sin(pos * f)
                        a, b = x[i], x[i + rot // 2]
                        x[i], x[i + rot // 2] = a * c - b * s, b * c + a * s
            Q.append(qh)
            K.append(kh)
            Vs.append([v[j * hd:(j + 1) * hd] for j in range(nkv)])
        outs = []
        for t in range(len(hs)):
            ctx = []
            for j in range(nh):
                kvh = j * nkv // nh
                sc = [sum(a * b for a, b in zip(Q[t][j], K[u][kvh])) / math.sqrt(hd) for u in range(t + 1)]
                mx = max(sc)
                e = [math.exp(s - mx) for s in sc]
                z = sum(e)
                ctx += [sum(e[u] * Vs[u][kvh][c] for u in range(t + 1)) / z for c in range(hd)]
            outs.append(self.m.linear([c * _sigmoid(gt) for c, gt in zip(ctx, G[t])], p + "self_attn.o_proj"))
        return outs

    def lin_inputs(self, p, h):
        """(q, k, v, z, b, a) of one token, flat, head-major."""
        tc, la = self.tc, p + "linear_attn."
        nk, nv, dk, dv = (tc["linear_num_key_heads"], tc["linear_num_value_heads"], tc["linear_key_head_dim"],
                          tc["linear_value_head_dim"])
        if self.mt not in FUSED_PROJ:
            qkv = self.m.linear(h, la + "in_proj_qkv")
            return (qkv[:nk * dk], qkv[nk * dk:2 * nk * dk], qkv[2 * nk * dk:], self.m.linear(h, la + "in_proj_z"),
                    self.m.linear(h, la + "in_proj_b"), self.m.linear(h, la + "in_proj_a"))
        r = nv // nk
        qkvz, ba = self.m.linear(h, la + "in_proj_qkvz"), self.m.linear(h, la + "in_proj_ba")
        w, out = 2 * dk + 2 * r * dv, ([], [], [], [], [], [])
        for grp in range(nk):       # one key head's group: q, k, its value heads' v and z
            s = qkvz[grp * w:(grp + 1) * w]
            for dst, lo, hi in ((0, 0, dk), (1, dk, 2 * dk), (2, 2 * dk, 2 * dk + r * dv), (3, 2 * dk + r * dv, w)):
                out[dst].extend(s[lo:hi])
            out[4].extend(ba[grp * 2 * r:grp * 2 * r + r])
            out[5].extend(ba[grp * 2 * r + r:(grp + 1) * 2 * r])
        return out

    def deltanet(self, p, hs):
        tc, la, T = self.tc, p + "linear_attn.", len(hs)
        nk, nv, dk, dv = (tc["linear_num_key_heads"], tc["linear_num_value_heads"], tc["linear_key_head_dim"],
                          tc["linear_value_head_dim"])
        Kc = tc["linear_conv_kernel_dim"]
        ins = [self.lin_inputs(p, h) for h in hs]
        x = [i[0] + i[1] + i[2] for i in ins]
        C = len(x[0])
        w = self.m.vals(la + "conv1d.weight")
        # causal depthwise conv: the window ends at t, zeros before the start
        y = [[_silu(sum(w[c * Kc + j] * x[t - Kc + 1 + j][c] for j in range(Kc) if t - Kc + 1 + j >= 0))
              for c in range(C)] for t in range(T)]
        A = [math.exp(v) for v in self.m.vals(la + "A_log")]
        dt = self.m.vals(la + "dt_bias")
        gn = self.vec(la + "norm.weight")

        def l2(v):
            n = 1.0 / math.sqrt(sum(a * a for a in v) + 1e-6)
            return [a * n for a in v]
        outs = [[0.0] * (nv * dv) for _ in range(T)]
        for j in range(nv):
            kh = j // (nv // nk)
            S = [[0.0] * dv for _ in range(dk)]        # S[i][c]
            for t in range(T):
                q = [a / math.sqrt(dk) for a in l2(y[t][kh * dk:(kh + 1) * dk])]
                k = l2(y[t][nk * dk + kh * dk:nk * dk + (kh + 1) * dk])
                v = y[t][2 * nk * dk + j * dv:2 * nk * dk + (j + 1) * dv]
                beta = _sigmoid(ins[t][4][j])
                alpha = math.exp(-A[j] * math.log1p(math.exp(ins[t][5][j] + dt[j])))
                kS = [sum(k[i] * S[i][c] for i in range(dk)) for c in range(dv)]   # k^T S
                # (I - beta k k^T)(alpha S) + beta k v^T
                S = [[alpha * (S[i][c] - beta * k[i] * kS[c]) + beta * k[i] * v[c] for c in range(dv)]
                     for i in range(dk)]
                o = [sum(S[i][c] * q[i] for i in range(dk)) for c in range(dv)]
                z = ins[t][3][j * dv:(j + 1) * dv]
                o = [a * _silu(b) for a, b in zip(_rms(o, self.eps, gn), z)]
                outs[t][j * dv:(j + 1) * dv] = o
        return [self.m.linear(o, la + "out_proj") for o in outs]

    def expert(self, p, e, h):
        fused = p + "mlp.experts.gate_up_proj"
        if not self.m.has(fused):
            ex = p + "mlp.experts.%d." % e
            g, u = self.m.linear(h, ex + "gate_proj"), self.m.linear(h, ex + "up_proj")
            return self.m.linear([_silu(a) * b for a, b in zip(g, u)], ex + "down_proj")
        gu_t, dn_t = self.ck.tensors[fused], self.ck.tensors[p + "mlp.experts.down_proj"]
        gu, dn, H = self.m.vals(fused), self.m.vals(p + "mlp.experts.down_proj"), len(h)
        _, a, b = gu_t.shape
        if b == H:      # [E, 2I, H]: gate rows, then up rows
            y = [sum(gu[(e * a + o) * b + i] * h[i] for i in range(H)) for o in range(a)]
        else:           # [E, H, 2I]
            y = [sum(h[i] * gu[(e * a + i) * b + o] for i in range(H)) for o in range(b)]
        I = len(y) // 2
        z = [_silu(y[j]) * y[I + j] for j in range(I)]
        _, c, d = dn_t.shape
        if c == H:
            return [sum(dn[(e * c + o) * d + j] * z[j] for j in range(I)) for o in range(H)]
        return [sum(z[j] * dn[(e * c + j) * d + o] for j in range(I)) for o in range(H)]

    def mlp(self, p, h):
        if not self.m.has(p + "mlp.gate.weight"):
            g, u = self.m.linear(h, p + "mlp.gate_proj"), self.m.linear(h, p + "mlp.up_proj")
            return self.m.linear([_silu(a) * b for a, b in zip(g, u)], p + "mlp.down_proj")
        logits = self.m.linear(h, p + "mlp.gate")
        mx = max(logits)
        pr = [math.exp(v - mx) for v in logits]
        pr = [v / sum(pr) for v in pr]
        top = sorted(range(len(pr)), key=lambda e: (-pr[e], e))[:self.tc["num_experts_per_tok"]]
        wts = [pr[e] for e in top]
        if self.mt in ALL_SPARSE or self.tc.get("norm_topk_prob", True):
            wts = [v / sum(wts) for v in wts]
        out = [0.0] * len(h)
        for e, we in zip(top, wts):
            out = [a + we * b for a, b in zip(out, self.expert(p, e, h))]
        s = p + "mlp.shared_expert."
        g, u = self.m.linear(h, s + "gate_proj"), self.m.linear(h, s + "up_proj")
        y = self.m.linear([_silu(a) * b for a, b in zip(g, u)], s + "down_proj")
        gate = _sigmoid(self.m.linear(h, p + "mlp.shared_expert_gate")[0])
        return [a + gate * b for a, b in zip(out, y)]

    def logits(self, tokens):
        tc, H = self.tc, self.tc["hidden_size"]
        E = self.m.vals(self.pre + "embed_tokens.weight")
        xs = [list(E[t * H:(t + 1) * H]) for t in tokens]
        for i in range(tc["num_hidden_layers"]):
            p = "%slayers.%d." % (self.pre, i)
            hs = [self.norm1p(x, p + "input_layernorm.weight") for x in xs]
            a = self.deltanet(p, hs) if layer_type(tc, i) == "linear_attention" else self.gated_attention(p, hs)
            xs = [[u + v for u, v in zip(x, y)] for x, y in zip(xs, a)]
            xs = [[u + v for u, v in zip(x, self.mlp(p, self.norm1p(x, p + "post_attention_layernorm.weight")))]
                  for x in xs]
        cfg = self.ck.config
        tied = cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
        W = self.m.vals(self.pre + "embed_tokens.weight" if tied else "lm_head.weight")
        V = len(W) // H
        out = []
        for x in xs:
            h = self.norm1p(x, self.pre + "norm.weight")
            out.append([sum(W[v * H + i] * h[i] for i in range(H)) for v in range(V)])
        return out


def ref_logits(ck, tokens):
    return _Ref(ck).logits(tokens)


# ---------------------------------------------------------------- registration

for _f in FAMILIES:
    fixtures.register_family(_f, build, ARCH[_f], tied=False)
    expect.EXTRA_LAYER_PLANS[_f] = layer_plan(_f)
    expect.GAIN[_f] = "1+w"      # Qwen3_5RMSNorm / Qwen3NextRMSNorm (the gated norm is kept)
    if _f not in expect.SUPPORTED:
        expect.SUPPORTED.append(_f)
    ref_forward.EXTRA_FORWARD[_f] = ref_logits
expect.COMPOSITE.update(TEXT_TYPE)
