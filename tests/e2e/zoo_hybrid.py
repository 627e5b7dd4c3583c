"""zoo_hybrid.py -- issue 13's hybrid group: OLMo 3 (olmo3), OLMoE (olmoe),
Granite MoE and Granite 4 (granitemoe, granitemoeshared, granitemoehybrid),
Nemotron-H (nemotron_h) and Falcon-H1 (falcon_h1): fixtures, the expected
fold plan and a second reference forward pass, registered with fixtures.py,
expect.py and ref_forward.py (imported by fixtures.py).

Standard library only.  Written from docs/architectures.md §zoo13-hybrid
(and the transformers 5 modeling files it cites), not from src/.  The
Mamba-2 mixer is computed here in its quadratic form (the SSD "attention"
dual of the recurrence the C pass runs):

    y_t = D x_t + sum_{s <= t} (C_t . B_s) exp(sum_{s < r <= t} dt_r A) dt_s x_s

Options (build_model(family, ..., **opt)):
  layout      "hub" (default) or "v5": nemotron_h under backbone. with
              per-expert experts, or under model. with fused up_proj
              [E, I, H] / down_proj [E, H, I] as transformers 5 writes them;
              olmoe per expert, or fused mlp.experts.gate_up_proj [E, 2I, H].
  blocks      nemotron_h's block pattern (default "M*-ME"); blocks_key
              "hybrid_override_pattern" (default, the Hub's string),
              "layers_block_type" (a list, transformers 5 names) or
              "legacy" (a list of mamba / attention / mlp / moe).
  latent      nemotron_h moe_latent_size (default None: no latent projections).
  layer_types granitemoehybrid (default mamba, attention, mamba, mamba;
              None: the key left out, every layer Mamba-2).
  experts     granitemoehybrid num_local_experts (default 3; 0: dense).
  rope        granitemoehybrid position_embedding_type "rope" (default "nope").
  shared      granitemoeshared shared_intermediate_size (default 16; 0: none).
  rms_norm, before_gate  falcon_h1 mamba_rms_norm (True), mamba_norm_before_gate (True).
  clip        olmoe clip_qkv (default 1.5; None: absent).
  window      olmo3 sliding_window (default 4); rope_scaling: a rope_scaling dict.
  dims        config values to override.
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, _Gen, _fuse_experts, float_tensor

ARCH = {"olmo3": "Olmo3ForCausalLM", "olmoe": "OlmoeForCausalLM", "granitemoe": "GraniteMoeForCausalLM",
        "granitemoeshared": "GraniteMoeSharedForCausalLM", "granitemoehybrid": "GraniteMoeHybridForCausalLM",
        "nemotron_h": "NemotronHForCausalLM", "falcon_h1": "FalconH1ForCausalLM"}
FAMILIES = list(ARCH)
TIED = {"granitemoe": True, "granitemoeshared": True, "granitemoehybrid": True}
GRANITE = ("granitemoe", "granitemoeshared", "granitemoehybrid")
QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
NH_TYPE = {"M": "M", "mamba": "M", "linear_attention": "M", "*": "*", "attention": "*", "full_attention": "*",
           "-": "-", "mlp": "-", "E": "E", "moe": "E"}
NH_LEGACY = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
NH_V5 = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
RES = 0.5   # residual-branch output projections drawn at half scale


# ---------------------------------------------------------------- configs

def _base(family, dtype, tied, L, H, V):
    return {"architectures": [ARCH[family]], "model_type": family, "hidden_size": H, "num_hidden_layers": L,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": V,
            "max_position_embeddings": 256, "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": tied, "torch_dtype": fixtures.TORCH_DTYPE[dtype], "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "5.2.0"}


def _config(family, dtype, tied, L, H, V, opt):
    cfg = _base(family, dtype, tied, L, H, V)
    if family == "olmo3":
        cfg.update(intermediate_size=32, rms_norm_eps=1e-6, sliding_window=opt.get("window", 4),
                   layer_types=["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(L)])
        if opt.get("rope_scaling"):
            cfg["rope_scaling"] = opt["rope_scaling"]
    elif family == "olmoe":
        cfg.update(intermediate_size=24, rms_norm_eps=1e-5, num_experts=4, num_experts_per_tok=2,
                   norm_topk_prob=False)
        if opt.get("clip", 1.5) is not None:
            cfg["clip_qkv"] = opt.get("clip", 1.5)
    elif family in GRANITE:
        cfg.update(intermediate_size=16, rms_norm_eps=1e-6, embedding_multiplier=6.0, residual_multiplier=0.35,
                   attention_multiplier=0.2, logits_scaling=4.0, num_local_experts=3, num_experts_per_tok=2)
        if family == "granitemoeshared":
            cfg["shared_intermediate_size"] = opt.get("shared", 16)
        if family == "granitemoehybrid":
            types = opt.get("layer_types", ["mamba", "attention", "mamba", "mamba"][:L])
            cfg.update(shared_intermediate_size=16, num_local_experts=opt.get("experts", 3),
                       position_embedding_type="rope" if opt.get("rope") else "nope", mamba_n_heads=4,
                       mamba_d_head=8, mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=1,
                       mamba_conv_bias=True, mamba_proj_bias=False, mamba_chunk_size=256)
            if types is not None:
                cfg["layer_types"] = types
    elif family == "nemotron_h":
        cfg.update(intermediate_size=24, mlp_hidden_act="relu2", mamba_num_heads=4, mamba_head_dim=4,
                   ssm_state_size=4, n_groups=2, conv_kernel=3, expand=2, mamba_hidden_act="silu",
                   use_conv_bias=True, mamba_proj_bias=False, use_bias=False, time_step_min=0.001,
                   time_step_max=0.1, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                   moe_shared_expert_intermediate_size=12, n_group=2, topk_group=1, norm_topk_prob=True,
                   routed_scaling_factor=1.5, layer_norm_epsilon=1e-5, residual_in_fp32=False)
        del cfg["hidden_act"], cfg["rope_theta"]
        if opt.get("latent"):
            cfg["moe_latent_size"] = opt["latent"]
    elif family == "falcon_h1":
        cfg.update(intermediate_size=24, rms_norm_eps=1e-5, mamba_d_ssm=16, mamba_n_heads=4, mamba_d_head=4,
                   mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_conv_bias=True,
                   mamba_proj_bias=False, mamba_rms_norm=opt.get("rms_norm", True),
                   mamba_norm_before_gate=opt.get("before_gate", True), projectors_bias=False,
                   ssm_multipliers=[0.5, 1.25, 0.75, 1.5, 0.8], ssm_in_multiplier=0.9, ssm_out_multiplier=1.1,
                   attention_in_multiplier=0.8, attention_out_multiplier=0.9, key_multiplier=1.2,
                   mlp_multipliers=[1.3, 0.7], embedding_multiplier=2.0, lm_head_multiplier=0.5, mlp_bias=False)
    cfg.update(opt.get("dims", {}))
    return cfg


def nemotron_blocks(cfg):
    """Block i's type as one of M * - E: layers_block_type, layer_types, or
    hybrid_override_pattern (NemotronHConfig.__post_init__)."""
    for key in ("layers_block_type", "layer_types", "hybrid_override_pattern"):
        v = cfg.get(key)
        if v is not None:
            return [NH_TYPE[t] for t in v]
    raise KeyError("no block types")


# ---------------------------------------------------------------- tensors

def _attention(g, p, tc, names=QKV + ["self_attn.o_proj"], qk=None):
    H, nh, nkv, hd = tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    for n, rows in zip(names, (nh * hd, nkv * hd, nkv * hd)):
        g.mat(p + n + ".weight", (rows, H))
    g.mat(p + names[3] + ".weight", (H, nh * hd), scale=RES)
    if qk == "full":    # OLMo: q_norm / k_norm over all heads
        g.norm(p + "self_attn.q_norm.weight", (nh * hd,))
        g.norm(p + "self_attn.k_norm.weight", (nkv * hd,))


def _mamba(g, pre, H, heads, hd, groups, state, K, norm=True):
    """A Mamba-2 mixer: in_proj [I + C + heads, H], conv1d [C, 1, K] with
    bias, A_log / D (F32), dt_bias, the gated norm [I], out_proj [H, I]."""
    I = heads * hd
    C = I + 2 * groups * state
    g.mat(pre + "in_proj.weight", (I + C + heads, H))
    g.m.tensors[pre + "conv1d.weight"] = float_tensor(g.dtype, (C, 1, K), [g.rng.uniform(-0.6, 0.6)
                                                                            for _ in range(C * K)])
    g.bias(pre + "conv1d.bias", C)
    g.vec(pre + "A_log", heads, math.log(0.3), math.log(1.5), "F32")
    g.vec(pre + "D", heads, 0.5, 1.5, "F32")
    g.vec(pre + "dt_bias", heads, -1.0, 1.0, g.dtype)
    if norm:
        g.norm(pre + "norm.weight", (I,))
    g.mat(pre + "out_proj.weight", (H, I), scale=RES)


def _tame(model, names):
    """verify_fixtures.tame() scales 2-D matrices only: give the 3-D experts
    (or the 2-D ones about to be fused) its scale, 2^-round(log2(fan_in)/2)."""
    for k in names:
        t = model.tensors[k]
        f = 2.0 ** -round(math.log2(t.shape[-1]) / 2)
        model.tensors[k] = float_tensor(t.dtype, t.shape, [x * f for x in t.values()])


def _stack(g, name, E, rows, cols, scale=1.0):
    vals = [g.rng.uniform(-scale, scale) for _ in range(E * rows * cols)]
    g.m.tensors[name] = float_tensor(g.dtype, (E, rows, cols), vals)


def _granite_layer(g, p, tc, i):
    H = tc["hidden_size"]
    g.norm(p + "input_layernorm.weight", (H,))
    g.norm(p + "post_attention_layernorm.weight", (H,))
    types = tc.get("layer_types")
    if tc["model_type"] == "granitemoehybrid" and (types is None or types[i] in ("mamba", "linear_attention")):
        _mamba(g, p + "mamba.", H, tc["mamba_n_heads"], tc["mamba_d_head"], tc["mamba_n_groups"],
               tc["mamba_d_state"], tc["mamba_d_conv"])
    else:
        _attention(g, p, tc)
    E, I = tc["num_local_experts"], tc["intermediate_size"]
    if E:
        g.mat(p + "block_sparse_moe.router.layer.weight", (E, H))
        _stack(g, p + "block_sparse_moe.input_linear.weight", E, 2 * I, H)
        _stack(g, p + "block_sparse_moe.output_linear.weight", E, H, I, scale=RES)
    Is = tc.get("shared_intermediate_size", 0)
    if Is:
        g.mat(p + "shared_mlp.input_linear.weight", (2 * Is, H))
        g.mat(p + "shared_mlp.output_linear.weight", (H, Is), scale=RES)


def _nemotron_layer(g, p, tc, kind, fused):
    H = tc["hidden_size"]
    g.norm(p + "norm.weight", (H,))
    mx = p + "mixer."
    if kind == "M":
        _mamba(g, mx, H, tc["mamba_num_heads"], tc["mamba_head_dim"], tc["n_groups"], tc["ssm_state_size"],
               tc["conv_kernel"])
    elif kind == "*":
        _attention(g, mx, tc, names=["q_proj", "k_proj", "v_proj", "o_proj"])
    elif kind == "-":
        g.mat(mx + "up_proj.weight", (tc["intermediate_size"], H))
        g.mat(mx + "down_proj.weight", (H, tc["intermediate_size"]), scale=RES)
    else:
        E, Im, Is, lat = tc["n_routed_experts"], tc["moe_intermediate_size"], \
            tc["moe_shared_expert_intermediate_size"], tc.get("moe_latent_size")
        inw = lat or H
        g.mat(mx + "gate.weight", (E, H))
        g.vec(mx + "gate.e_score_correction_bias", E, -0.3, 0.3, "F32")
        if lat:
            g.mat(mx + "fc1_latent_proj.weight", (lat, H))
            g.mat(mx + "fc2_latent_proj.weight", (H, lat))
        if fused:
            _stack(g, mx + "experts.up_proj", E, Im, inw)
            _stack(g, mx + "experts.down_proj", E, inw, Im, scale=RES)
        else:
            for e in range(E):
                g.mat(mx + "experts.%d.up_proj.weight" % e, (Im, inw))
                g.mat(mx + "experts.%d.down_proj.weight" % e, (inw, Im), scale=RES)
        g.mat(mx + "shared_experts.up_proj.weight", (Is, H))
        g.mat(mx + "shared_experts.down_proj.weight", (H, Is), scale=RES)


def _blocks_config(cfg, pattern, how):
    cfg["num_hidden_layers"] = len(pattern)
    if how == "layers_block_type":
        cfg["layers_block_type"] = [NH_V5[c] for c in pattern]
    elif how == "legacy":
        cfg["layers_block_type"] = [NH_LEGACY[c] for c in pattern]
    else:
        cfg["hybrid_override_pattern"] = pattern


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    H, V = hidden, vocab
    pattern = opt.get("blocks", "M*-ME")
    L = layers or {"olmo3": 4, "granitemoehybrid": 4, "nemotron_h": len(pattern)}.get(family, 2)
    cfg = _config(family, dtype, tied, L, H, V, opt)
    v5 = opt.get("layout") == "v5"
    if family == "nemotron_h":
        _blocks_config(cfg, pattern, opt.get("blocks_key", "layers_block_type" if v5 else
                                             "hybrid_override_pattern"))
    model = Model(family, cfg)
    g = _Gen(model, seed, dtype, norm_dtype, False)   # every class here applies gain w
    pre = "model." if family != "nemotron_h" or v5 else "backbone."
    emb = pre + ("embeddings.weight" if family == "nemotron_h" else "embed_tokens.weight")
    model.embed_name, model.text_prefix = emb, pre
    g.mat(emb, (V, H))
    kinds = nemotron_blocks(cfg) if family == "nemotron_h" else None
    for i in range(L):
        p = "%slayers.%d." % (pre, i)
        if family == "olmo3":
            _attention(g, p, cfg, qk="full")
            for n in ("post_attention_layernorm", "post_feedforward_layernorm"):
                g.norm(p + n + ".weight", (H,))
        elif family == "olmoe":
            _attention(g, p, cfg, qk="full")
            g.norm(p + "input_layernorm.weight", (H,))
            g.norm(p + "post_attention_layernorm.weight", (H,))
            g.mat(p + "mlp.gate.weight", (cfg["num_experts"], H))
        elif family in GRANITE:
            _granite_layer(g, p, cfg, i)
        elif family == "nemotron_h":
            _nemotron_layer(g, p, cfg, kinds[i], v5)
        else:
            g.norm(p + "input_layernorm.weight", (H,))
            g.norm(p + "pre_ff_layernorm.weight", (H,))
            hd = cfg["mamba_d_head"]
            if hd == "auto":    # FalconH1Config: mamba_d_ssm // mamba_n_heads
                hd = cfg["mamba_d_ssm"] // cfg["mamba_n_heads"]
            _mamba(g, p + "mamba.", H, cfg["mamba_n_heads"], hd, cfg["mamba_n_groups"],
                   cfg["mamba_d_state"], cfg["mamba_d_conv"], norm=cfg["mamba_rms_norm"])
            _attention(g, p, cfg)
        if family in ("olmo3", "olmoe", "falcon_h1"):
            I = cfg["intermediate_size"]
            mlp = "feed_forward." if family == "falcon_h1" else "mlp."
            experts = range(cfg["num_experts"]) if family == "olmoe" else [None]
            for e in experts:
                base = p + mlp + ("" if e is None else "experts.%d." % e)
                g.mat(base + "gate_proj.weight", (I, H))
                g.mat(base + "up_proj.weight", (I, H))
                g.mat(base + "down_proj.weight", (H, I), scale=RES)
    final = {"nemotron_h": "norm_f", "falcon_h1": "final_layernorm"}.get(family, "norm")
    g.norm(pre + final + ".weight", (H,))
    if not tied:
        g.mat("lm_head.weight", (V, H))
    _tame(model, [k for k, t in model.tensors.items() if len(t.shape) == 3 and "conv1d" not in k])
    if family == "olmoe" and v5:
        _tame(model, [k for k in model.tensors if ".mlp.experts." in k])
        _fuse_experts(model, dict(cfg), transposed=False)
    return model


# ---------------------------------------------------------------- the fold plan

def layer_plan(mt):
    """expect.layer_plan for model_type mt (docs/architectures.md §zoo13-hybrid)."""
    def olmo3(tc, i, has):
        return [], ["post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm",
                    "self_attn.k_norm"]

    def olmoe(tc, i, has):
        moe = ["mlp.gate"]
        if has("mlp.experts.gate_up_proj"):
            moe.append(("mlp.experts.gate_up_proj", has("mlp.experts.gate_up_proj")))
        else:
            for e in range(tc.get("num_experts", tc.get("num_local_experts", 0))):
                moe += ["mlp.experts.%d.gate_proj" % e, "mlp.experts.%d.up_proj" % e]
        return [("input_layernorm", QKV), ("post_attention_layernorm", moe)], ["self_attn.q_norm",
                                                                               "self_attn.k_norm"]

    def granite(tc, i, has):
        routed = ["block_sparse_moe.router.layer", ("block_sparse_moe.input_linear.weight", "last")] \
            if tc.get("num_local_experts") else []
        shared = ["shared_mlp.input_linear"] if tc.get("shared_intermediate_size") else []
        groups = [("post_attention_layernorm", routed + shared)]
        types = tc.get("layer_types")
        if mt == "granitemoehybrid" and (not types or types[i] in ("mamba", "linear_attention")):
            return [("input_layernorm", ["mamba.in_proj"]), ("mamba.norm", ["mamba.out_proj"])] + groups, []
        return [("input_layernorm", QKV)] + groups, []

    def nemotron(tc, i, has):
        kind = nemotron_blocks(tc)[i]
        if kind == "M":
            return [("norm", ["mixer.in_proj"]), ("mixer.norm", ["mixer.out_proj"])], []
        if kind == "*":
            return [("norm", ["mixer.q_proj", "mixer.k_proj", "mixer.v_proj"])], []
        if kind == "-":
            return [("norm", ["mixer.up_proj"])], []
        moe = ["mixer.gate"]
        if tc.get("moe_latent_size"):
            moe.append("mixer.fc1_latent_proj")
        elif has("mixer.experts.up_proj"):
            moe.append(("mixer.experts.up_proj", "last"))
        else:
            moe += ["mixer.experts.%d.up_proj" % e for e in range(tc["n_routed_experts"])]
        return [("norm", moe + ["mixer.shared_experts.up_proj"])], []

    def falcon(tc, i, has):
        groups = [("input_layernorm", ["mamba.in_proj"] + QKV),
                  ("pre_ff_layernorm", ["feed_forward.gate_proj", "feed_forward.up_proj"])]
        if tc.get("mamba_rms_norm"):
            groups.append(("mamba.norm", ["mamba.out_proj"]))
        return groups, []
    return {"olmo3": olmo3, "olmoe": olmoe, "nemotron_h": nemotron, "falcon_h1": falcon}.get(mt, granite)


def text_layout(cfg, names):
    """(layer root, embedding, final norm, head): Nemotron-H backbone. (Hub)
    or model. (transformers 5), Falcon-H1's final_layernorm."""
    if cfg["model_type"] == "falcon_h1":
        return "model.", "model.embed_tokens.weight", "model.final_layernorm.weight", "lm_head.weight"
    for root in ("backbone.", "model."):
        for emb in ("embeddings", "embedding"):
            if root + emb + ".weight" in names:
                return root, root + emb + ".weight", root + "norm_f.weight", "lm_head.weight"
    raise AssertionError("fixture has no Nemotron-H embedding")


# ---------------------------------------------------------------- the forward pass

def _silu(x):
    return x / (1.0 + math.exp(-x))


def _softplus(x):
    return x if x > 20 else math.log1p(math.exp(x))


def _act(name, x):
    if name == "relu2":
        return max(x, 0.0) ** 2
    return _silu(x)


class _W:
    """The checkpoint's tensors as Python floats, by name."""

    def __init__(self, ck):
        self.ck, self.cache = ck, {}

    def has(self, name):
        return name in self.ck.tensors

    def vals(self, name):
        if name not in self.cache:
            self.cache[name] = self.ck.tensors[name].values()
        return self.cache[name]

    def shape(self, name):
        return self.ck.tensors[name].shape

    def linear(self, x, base):
        w = self.vals(base + ".weight")
        rows, cols = self.shape(base + ".weight")
        y = [sum(w[o * cols + i] * x[i] for i in range(cols)) for o in range(rows)]
        if self.has(base + ".bias"):
            y = [a + b for a, b in zip(y, self.vals(base + ".bias"))]
        return y

    def slab(self, name, e, x):
        """Expert e of a 3-D [E, out, in] tensor applied to x."""
        _, rows, cols = self.shape(name)
        w, off = self.vals(name), e * rows * cols
        return [sum(w[off + o * cols + i] * x[i] for i in range(cols)) for o in range(rows)]

    def rms(self, x, name, eps):
        """w * x_hat; a norm a folded checkpoint dropped is the identity."""
        r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
        if name is None or not self.has(name):
            return [v * r for v in x]
        return [v * r * g for v, g in zip(x, self.vals(name))]


def _rotate(v, pos, inv):
    """rotate_half RoPE over the whole head."""
    v, half = list(v), len(inv)
    for i, f in enumerate(inv):
        c, s = math.cos(pos * f), math.sin(pos * f)
        a, b = v[i], v[i + half]
        v[i], v[i + half] = a * c - b * s, b * c + a * s
    return v


def _attend(Q, K, Vs, nh, nkv, hd, scale, window=0):
    """Causal GQA softmax attention; Q[t] is [nh * hd] flat, K, Vs [nkv * hd]."""
    out = []
    for t in range(len(Q)):
        ctx = []
        for h in range(nh):
            kh = h // (nh // nkv)
            s0 = max(0, t - window + 1) if window else 0
            sc = [sum(Q[t][h * hd + c] * K[s][kh * hd + c] for c in range(hd)) * scale for s in range(s0, t + 1)]
            mx = max(sc)
            e = [math.exp(v - mx) for v in sc]
            z = sum(e)
            ctx += [sum(e[s - s0] * Vs[s][kh * hd + c] for s in range(s0, t + 1)) / z for c in range(hd)]
        out.append(ctx)
    return out


def _inv_freq(tc, scaling=None):
    hd = tc["head_dim"]
    theta = tc.get("rope_theta", 10000.0)
    inv = [theta ** (-2.0 * i / hd) for i in range(hd // 2)]
    if scaling and scaling.get("rope_type", scaling.get("type")) == "linear":
        inv = [f / scaling["factor"] for f in inv]
    return inv


def _attention_block(w, p, hs, tc, names, scale, inv=None, window=0, qk_eps=None, clip=None, kmult=1.0):
    """q/k/v (+ OLMo's full-width q/k norms, OLMoE's clip), RoPE, attention, o_proj."""
    nh, nkv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    Q, K, Vs = [], [], []
    for pos, h in enumerate(hs):
        q, k, v = (w.linear(h, p + n) for n in names[:3])
        if qk_eps is not None:
            q, k = w.rms(q, p + "self_attn.q_norm.weight", qk_eps), w.rms(k, p + "self_attn.k_norm.weight", qk_eps)
        if clip is not None:
            q, k, v = ([min(max(a, -clip), clip) for a in t] for t in (q, k, v))
        k = [a * kmult for a in k]
        if inv is not None:
            q = sum((_rotate(q[j * hd:(j + 1) * hd], pos, inv) for j in range(nh)), [])
            k = sum((_rotate(k[j * hd:(j + 1) * hd], pos, inv) for j in range(nkv)), [])
        Q.append(q)
        K.append(k)
        Vs.append(v)
    return [w.linear(c, p + names[3]) for c in _attend(Q, K, Vs, nh, nkv, hd, scale, window)]


def _tagged(v):
    """transformers 5 writes a float JSON cannot spell as {"__float__": "Infinity"}."""
    if isinstance(v, dict):
        return {"Infinity": math.inf, "-Infinity": -math.inf}[v["__float__"]]
    return v


def _mamba_dims(tc):
    mt = tc["model_type"]
    if mt == "nemotron_h":
        heads, hd = tc["mamba_num_heads"], tc["mamba_head_dim"]
        groups = tc["n_groups"]
        return dict(heads=heads, hd=hd, groups=groups, state=tc["ssm_state_size"], K=tc["conv_kernel"],
                    eps=tc["layer_norm_epsilon"], norm=True, group=heads * hd // groups, before=False,
                    dt=(tc.get("time_step_min", 0.001), math.inf), in_mult=1.0, mup=[1.0] * 5)
    if mt == "falcon_h1":
        heads, inner = tc["mamba_n_heads"], tc["mamba_d_ssm"]
        return dict(heads=heads, hd=inner // heads, groups=tc["mamba_n_groups"], state=tc["mamba_d_state"],
                    K=tc["mamba_d_conv"], eps=tc["rms_norm_eps"], norm=tc["mamba_rms_norm"],
                    group=inner // tc["mamba_n_groups"], before=tc["mamba_norm_before_gate"],
                    dt=tuple(_tagged(v) for v in tc.get("time_step_limit", (0.0, math.inf))),
                    in_mult=tc["ssm_in_multiplier"],
                    mup=tc["ssm_multipliers"])
    heads, hd = tc["mamba_n_heads"], tc["mamba_d_head"]   # Granite 4.0-H: BambaMixer
    return dict(heads=heads, hd=hd, groups=tc["mamba_n_groups"], state=tc["mamba_d_state"], K=tc["mamba_d_conv"],
                eps=tc["rms_norm_eps"], norm=True, group=heads * hd, before=False, dt=(0.0, math.inf),
                in_mult=1.0, mup=[1.0] * 5)


def mamba2(w, pre, hs, d):
    """The Mamba-2 mixer on the rows hs, in the quadratic form (see the top)."""
    heads, hd, G, N, Kc = d["heads"], d["hd"], d["groups"], d["state"], d["K"]
    I, GN = heads * hd, G * N
    C = I + 2 * GN
    bounds = [I, 2 * I, 2 * I + GN, 2 * I + 2 * GN, I + C + heads]
    proj = []
    for h in hs:
        p = w.linear([v * d["in_mult"] for v in h], pre + "in_proj")
        proj.append([v * d["mup"][next(k for k, b in enumerate(bounds) if c < b)] for c, v in enumerate(p)])
    cw = w.vals(pre + "conv1d.weight")
    cb = w.vals(pre + "conv1d.bias") if w.has(pre + "conv1d.bias") else [0.0] * C
    T = len(hs)
    xbc = [[_silu(cb[c] + sum(cw[c * Kc + j] * proj[t - Kc + 1 + j][I + c] for j in range(Kc)
                              if t - Kc + 1 + j >= 0)) for c in range(C)] for t in range(T)]
    dtb, D = w.vals(pre + "dt_bias"), w.vals(pre + "D")
    A = [-math.exp(a) for a in w.vals(pre + "A_log")]
    dt = [[min(max(_softplus(proj[t][I + C + h] + dtb[h]), d["dt"][0]), d["dt"][1]) for h in range(heads)]
          for t in range(T)]
    cum = [[0.0] * heads for _ in range(T)]
    for t in range(T):
        for h in range(heads):
            cum[t][h] = (cum[t - 1][h] if t else 0.0) + dt[t][h] * A[h]
    ys = []
    for t in range(T):
        y = [0.0] * I
        for h in range(heads):
            g = h // (heads // G)
            Ct = xbc[t][I + GN + g * N:I + GN + (g + 1) * N]
            for s in range(t + 1):
                Bs = xbc[s][I + g * N:I + (g + 1) * N]
                k = sum(a * b for a, b in zip(Ct, Bs)) * math.exp(cum[t][h] - cum[s][h]) * dt[s][h]
                for i in range(hd):
                    y[h * hd + i] += k * xbc[s][h * hd + i]
            for i in range(hd):
                y[h * hd + i] += D[h] * xbc[t][h * hd + i]
        ys.append(_gated_norm(w, pre, y, proj[t][:I], d))
    return [w.linear(y, pre + "out_proj") for y in ys]


def _gated_norm(w, pre, y, z, d):
    gate = [_silu(v) for v in z]
    if not d["norm"]:
        return [a * b for a, b in zip(y, gate)]
    v = y if d["before"] else [a * b for a, b in zip(y, gate)]
    g = w.vals(pre + "norm.weight") if w.has(pre + "norm.weight") else [1.0] * len(v)
    out, G = [], d["group"]
    for g0 in range(0, len(v), G):
        part = v[g0:g0 + G]
        r = 1.0 / math.sqrt(sum(a * a for a in part) / G + d["eps"])
        out += [a * r * gw for a, gw in zip(part, g[g0:g0 + G])]
    return [a * b for a, b in zip(out, gate)] if d["before"] else out


def _experts_sum(top, wts, fn):
    out = None
    for e, we in zip(top, wts):
        y = fn(e)
        out = [we * b for b in y] if out is None else [a + we * b for a, b in zip(out, y)]
    return out


def _gated(w, h, gate, up, down, act="silu"):
    a, b = w.linear(h, gate), w.linear(h, up)
    return w.linear([_act(act, x) * y for x, y in zip(a, b)], down)


def _olmoe_mlp(w, p, h, tc):
    """OlmoeSparseMoeBlock: softmax over all experts, top-k, not renormalised
    unless norm_topk_prob."""
    logits = w.linear(h, p + "mlp.gate")
    mx = max(logits)
    pr = [math.exp(v - mx) for v in logits]
    pr = [v / sum(pr) for v in pr]
    top = sorted(range(len(pr)), key=lambda e: (-pr[e], e))[:tc["num_experts_per_tok"]]
    wts = [pr[e] for e in top]
    if tc.get("norm_topk_prob"):
        wts = [v / sum(wts) for v in wts]
    fused = p + "mlp.experts.gate_up_proj"

    def expert(e):
        if not w.has(fused):
            ex = p + "mlp.experts.%d." % e
            return _gated(w, h, ex + "gate_proj", ex + "up_proj", ex + "down_proj")
        gu = w.slab(fused, e, h)
        n = len(gu) // 2
        return w.slab(p + "mlp.experts.down_proj", e, [_silu(gu[i]) * gu[n + i] for i in range(n)])
    return _experts_sum(top, wts, expert)


def _granite_ffn(w, p, h, tc):
    """GraniteMoeMoE (top-k logits, softmax over those k) + the shared MLP."""
    out = [0.0] * len(h)
    if tc.get("num_local_experts"):
        logits = w.linear(h, p + "block_sparse_moe.router.layer")
        top = sorted(range(len(logits)), key=lambda e: (-logits[e], e))[:tc["num_experts_per_tok"]]
        mx = max(logits[e] for e in top)
        ex = [math.exp(logits[e] - mx) for e in top]
        wts = [v / sum(ex) for v in ex]

        def expert(e):
            gu = w.slab(p + "block_sparse_moe.input_linear.weight", e, h)
            n = len(gu) // 2
            return w.slab(p + "block_sparse_moe.output_linear.weight", e, [_silu(gu[i]) * gu[n + i]
                                                                          for i in range(n)])
        out = _experts_sum(top, wts, expert)
    if tc.get("shared_intermediate_size"):
        gu = w.linear(h, p + "shared_mlp.input_linear")
        n = len(gu) // 2
        sh = w.linear([_silu(gu[i]) * gu[n + i] for i in range(n)], p + "shared_mlp.output_linear")
        out = [a + b for a, b in zip(out, sh)]
    return out


def _nemotron_moe(w, mx, h, tc):
    """NemotronHMoE: sigmoid scores, + correction bias for the choice, the
    topk_group best groups (by their two best choices; the rest -inf), top-k,
    weights the plain scores renormalised (+1e-20) times routed_scaling_factor;
    relu2 experts (through the latent projections), plus the shared expert."""
    logits = w.linear(h, mx + "gate")
    E = len(logits)
    score = [1.0 / (1.0 + math.exp(-v)) for v in logits]
    bias = w.vals(mx + "gate.e_score_correction_bias") if w.has(mx + "gate.e_score_correction_bias") else [0.0] * E
    choice = [a + b for a, b in zip(score, bias)]
    G = tc.get("n_group", 1)
    per = E // G
    gs = [sum(sorted(choice[g * per:(g + 1) * per])[-2:]) for g in range(G)]
    keep = sorted(range(G), key=lambda g: -gs[g])[:tc.get("topk_group", 1)]
    choice = [c if e // per in keep else -math.inf for e, c in enumerate(choice)]
    top = sorted(range(E), key=lambda e: (-choice[e], e))[:tc["num_experts_per_tok"]]
    wts = [score[e] for e in top]
    if tc.get("norm_topk_prob", True):
        wts = [v / (sum(wts) + 1e-20) for v in wts]
    wts = [v * tc.get("routed_scaling_factor", 1.0) for v in wts]
    x = w.linear(h, mx + "fc1_latent_proj") if tc.get("moe_latent_size") else h

    def expert(e):
        if w.has(mx + "experts.up_proj"):
            u = w.slab(mx + "experts.up_proj", e, x)
            return w.slab(mx + "experts.down_proj", e, [_act("relu2", v) for v in u])
        ex = mx + "experts.%d." % e
        return w.linear([_act("relu2", v) for v in w.linear(x, ex + "up_proj")], ex + "down_proj")
    y = _experts_sum(top, wts, expert)
    if tc.get("moe_latent_size"):
        y = w.linear(y, mx + "fc2_latent_proj")
    sh = w.linear([_act("relu2", v) for v in w.linear(h, mx + "shared_experts.up_proj")],
                  mx + "shared_experts.down_proj")
    return [a + b for a, b in zip(y, sh)]


def _head(w, ck, xs, final, eps, emb, mult=1.0):
    tc = ck.config
    W = w.vals(emb if tc.get("tie_word_embeddings") else "lm_head.weight")
    H = len(xs[0])
    V = len(W) // H
    out = []
    for x in xs:
        h = w.rms(x, final, eps)
        out.append([mult * sum(W[v * H + i] * h[i] for i in range(H)) for v in range(V)])
    return out


def _add(xs, ys, k=1.0):
    return [[a + k * b for a, b in zip(x, y)] for x, y in zip(xs, ys)]


def _olmo_layers(w, tc, xs):
    eps, post = tc["rms_norm_eps"], tc["model_type"] == "olmo3"
    scale = tc["head_dim"] ** -0.5
    for i in range(tc["num_hidden_layers"]):
        p = "model.layers.%d." % i
        if post:    # Olmo3DecoderLayer: post norms; sliding layers: default RoPE, the window
            sliding = tc["layer_types"][i] == "sliding_attention"
            inv = _inv_freq(tc, None if sliding else tc.get("rope_scaling"))
            a = _attention_block(w, p, xs, tc, QKV + ["self_attn.o_proj"], scale, inv,
                                 tc["sliding_window"] if sliding else 0, qk_eps=eps)
            xs = _add(xs, [w.rms(v, p + "post_attention_layernorm.weight", eps) for v in a])
            m = [_gated(w, x, p + "mlp.gate_proj", p + "mlp.up_proj", p + "mlp.down_proj") for x in xs]
            xs = _add(xs, [w.rms(v, p + "post_feedforward_layernorm.weight", eps) for v in m])
            continue
        hs = [w.rms(x, p + "input_layernorm.weight", eps) for x in xs]
        xs = _add(xs, _attention_block(w, p, hs, tc, QKV + ["self_attn.o_proj"], scale, _inv_freq(tc),
                                       qk_eps=eps, clip=tc.get("clip_qkv")))
        xs = _add(xs, [_olmoe_mlp(w, p, w.rms(x, p + "post_attention_layernorm.weight", eps), tc) for x in xs])
    return xs


def forward_olmo(ck, tokens):
    tc, w = ck.config, _W(ck)
    H = tc["hidden_size"]
    E = w.vals("model.embed_tokens.weight")
    xs = _olmo_layers(w, tc, [list(E[t * H:(t + 1) * H]) for t in tokens])
    return _head(w, ck, xs, "model.norm.weight", tc["rms_norm_eps"], "model.embed_tokens.weight")


def forward_granite(ck, tokens):
    tc, w = ck.config, _W(ck)
    H, eps, rm = tc["hidden_size"], tc["rms_norm_eps"], tc["residual_multiplier"]
    E = w.vals("model.embed_tokens.weight")
    xs = [[v * tc["embedding_multiplier"] for v in E[t * H:(t + 1) * H]] for t in tokens]
    hybrid = tc["model_type"] == "granitemoehybrid"
    inv = _inv_freq(tc) if not hybrid or tc.get("position_embedding_type") == "rope" else None
    for i in range(tc["num_hidden_layers"]):
        p = "model.layers.%d." % i
        hs = [w.rms(x, p + "input_layernorm.weight", eps) for x in xs]
        if w.has(p + "mamba.in_proj.weight"):
            y = mamba2(w, p + "mamba.", hs, _mamba_dims(tc))
        else:
            y = _attention_block(w, p, hs, tc, QKV + ["self_attn.o_proj"], tc["attention_multiplier"], inv)
        xs = _add(xs, y, rm)
        xs = _add(xs, [_granite_ffn(w, p, w.rms(x, p + "post_attention_layernorm.weight", eps), tc) for x in xs], rm)
    return _head(w, ck, xs, "model.norm.weight", eps, "model.embed_tokens.weight", 1.0 / tc["logits_scaling"])


def forward_nemotron(ck, tokens):
    tc, w = ck.config, _W(ck)
    root, emb, final, _ = text_layout(tc, set(ck.tensors))
    H, eps = tc["hidden_size"], tc["layer_norm_epsilon"]
    E = w.vals(emb)
    xs = [list(E[t * H:(t + 1) * H]) for t in tokens]
    for i, kind in enumerate(nemotron_blocks(tc)):
        p = "%slayers.%d." % (root, i)
        mx = p + "mixer."
        hs = [w.rms(x, p + "norm.weight", eps) for x in xs]
        if kind == "M":
            y = mamba2(w, mx, hs, _mamba_dims(tc))
        elif kind == "*":    # NemotronHAttention: no RoPE
            y = _attention_block(w, mx, hs, tc, ["q_proj", "k_proj", "v_proj", "o_proj"], tc["head_dim"] ** -0.5)
        elif kind == "-":
            y = [w.linear([_act("relu2", v) for v in w.linear(h, mx + "up_proj")], mx + "down_proj") for h in hs]
        else:
            y = [_nemotron_moe(w, mx, h, tc) for h in hs]
        xs = _add(xs, y)
    return _head(w, ck, xs, final, eps, emb)


def forward_falcon(ck, tokens):
    tc, w = ck.config, _W(ck)
    H, eps = tc["hidden_size"], tc["rms_norm_eps"]
    E = w.vals("model.embed_tokens.weight")
    xs = [[v * tc["embedding_multiplier"] for v in E[t * H:(t + 1) * H]] for t in tokens]
    gm, dm = tc["mlp_multipliers"]
    for i in range(tc["num_hidden_layers"]):
        p = "model.layers.%d." % i
        hs = [w.rms(x, p + "input_layernorm.weight", eps) for x in xs]
        m = mamba2(w, p + "mamba.", hs, _mamba_dims(tc))
        a = _attention_block(w, p, [[v * tc["attention_in_multiplier"] for v in h] for h in hs], tc,
                             QKV + ["self_attn.o_proj"], tc["head_dim"] ** -0.5, _inv_freq(tc),
                             kmult=tc["key_multiplier"])
        xs = [[x0 + tc["ssm_out_multiplier"] * m0 + tc["attention_out_multiplier"] * a0
               for x0, m0, a0 in zip(x, mi, ai)] for x, mi, ai in zip(xs, m, a)]
        out = []
        for x in xs:
            h = w.rms(x, p + "pre_ff_layernorm.weight", eps)
            g, u = w.linear(h, p + "feed_forward.gate_proj"), w.linear(h, p + "feed_forward.up_proj")
            y = w.linear([b * _silu(a * gm) for a, b in zip(g, u)], p + "feed_forward.down_proj")
            out.append([v * dm for v in y])
        xs = _add(xs, out)
    return _head(w, ck, xs, "model.final_layernorm.weight", eps, "model.embed_tokens.weight",
                 tc["lm_head_multiplier"])


FORWARD = {"olmo3": forward_olmo, "olmoe": forward_olmo, "nemotron_h": forward_nemotron,
           "falcon_h1": forward_falcon}

# ---------------------------------------------------------------- registration

for _f in FAMILIES:
    fixtures.register_family(_f, build, ARCH[_f], tied=TIED.get(_f, False))
    expect.EXTRA_LAYER_PLANS[_f] = layer_plan(_f)
    if _f not in expect.SUPPORTED:
        expect.SUPPORTED.append(_f)
    ref_forward.EXTRA_FORWARD[_f] = FORWARD.get(_f, forward_granite)
expect.NO_MARKER.add("olmo3")      # its post_attention_layernorm is an output norm, kept
expect.EXTRA_LAYOUTS.update(nemotron_h=text_layout, falcon_h1=text_layout)
