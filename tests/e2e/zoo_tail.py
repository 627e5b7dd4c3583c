"""zoo_tail.py -- issue 13's long tail for the e2e suites: LFM2 (lfm2,
lfm2_moe), Cohere 2, MiniCPM, ERNIE 4.5 (ernie4_5, ernie4_5_moe), HunYuan
(hunyuan_v1_dense, hunyuan_v1_moe), EXAONE 4, Seed-OSS, Apertus, Arcee,
InternLM2 / InternLM3 (Gemma 3n is zoo_gemma3n.py).  A fixture generator,
the expected fold plan and a plain reference forward pass, all written from
docs/architectures.md §zoo13-tail and the modeling code it cites --
independently of src/arch.c and src/forward*.c.

Fixtures (build_model(family, ..., **opt)), hidden 32, 4 heads (2 kv) of 8:
  lfm2, lfm2_moe  4 layers [conv, attention, conv, attention];
      config="v5" (default: layer_types, tie_word_embeddings, as
      transformers 5 save_pretrained writes) or "hub" (the released form:
      full_attn_idxs and tie_embedding, no layer_types / tie_word_embeddings);
      experts="per_expert" (default: feed_forward.experts.{e}.w1/w3/w2, the
      released layout, which save_pretrained writes back) or "fused"
      (gate_up_proj [E, 2I, H], save_original_format=False); conv_bias.
  cohere2   4 layers, 3 sliding (window 3) + 1 full; layer_types=False: only
      sliding_window_pattern (the released config).
  ernie4_5_moe  3 layers, layer 0 dense; experts "per_expert" | "fused";
      shared (1: moe_num_shared_experts), use_bias (biases, lm_head's too).
  hunyuan_v1_moe  2 layers, every layer MoE; experts as ernie4_5_moe.
  hunyuan_v1_dense, hunyuan_v1_moe  alpha (1000.0): DynamicNTKAlpha RoPE.
  exaone4   4 layers, 3 sliding + 1 full; window=None: no sliding window.
  internlm2 bias: wqkv / wo biases.
Norm gains are drawn around 1 (every class here is w), never all ones.
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, Tensor, _Gen, _stack

QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
GATE_UP = ["mlp.gate_proj", "mlp.up_proj"]
H, NH, NKV, HD, I, E, IM = 32, 4, 2, 8, 48, 4, 16
SLIDING, FULL = "sliding_attention", "full_attention"

ARCH = {
    "lfm2": "Lfm2ForCausalLM", "lfm2_moe": "Lfm2MoeForCausalLM", "cohere2": "Cohere2ForCausalLM",
    "minicpm": "MiniCPMForCausalLM", "ernie4_5": "Ernie4_5ForCausalLM", "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "hunyuan_v1_dense": "HunYuanDenseV1ForCausalLM", "hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM",
    "exaone4": "Exaone4ForCausalLM", "seed_oss": "SeedOssForCausalLM", "apertus": "ApertusForCausalLM",
    "arcee": "ArceeForCausalLM", "internlm2": "InternLM2ForCausalLM", "internlm3": "InternLM3ForCausalLM",
}
# The config classes' tie_word_embeddings defaults (configuration_<type>.py;
# the remote InternLM ones default to False).
TIED = {"lfm2": True, "lfm2_moe": True, "cohere2": True, "minicpm": True, "ernie4_5": True, "ernie4_5_moe": True}
LAYERS = {"lfm2": 4, "lfm2_moe": 4, "cohere2": 4, "exaone4": 4, "ernie4_5_moe": 3}
LFM2_TYPES = ["conv", FULL, "conv", FULL]


# ---------------------------------------------------------------- configs

def _config(family, dtype, tied, L, V, opt):
    c = {"architectures": [ARCH[family]], "model_type": family, "hidden_size": H, "intermediate_size": I,
         "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
         "vocab_size": V, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "hidden_act": "silu",
         "rope_theta": 10000.0, "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 0, "torch_dtype": fixtures.TORCH_DTYPE[dtype], "transformers_version": "5.2.0"}
    extra = _EXTRA.get(family)
    if extra:
        extra(c, L, opt)
    return c


def _lfm2_cfg(c, L, opt):
    for k in ("rms_norm_eps", "hidden_act", "head_dim"):
        del c[k]
    c.update(norm_eps=1e-5, rope_theta=1000000.0, conv_bias=bool(opt.get("conv_bias")), conv_L_cache=3,
             block_auto_adjust_ff_dim=False, block_multiple_of=16, block_ffn_dim_multiplier=1.0,
             layer_types=LFM2_TYPES[:L])
    if c["model_type"] == "lfm2_moe":
        c.update(num_dense_layers=2, num_experts=E, num_experts_per_tok=2, moe_intermediate_size=IM,
                 use_expert_bias=True, routed_scaling_factor=1.5, norm_topk_prob=True)
    if opt.get("config") == "hub":
        # as LiquidAI's config.json: the original keys, derived ones absent
        tied = c.pop("tie_word_embeddings")
        del c["layer_types"]
        c.update(full_attn_idxs=[i for i in range(L) if LFM2_TYPES[i] == FULL], tie_embedding=tied,
                 theta=c["rope_theta"], block_ff_dim=I)


def _cohere2_cfg(c, L, opt):
    del c["rms_norm_eps"]
    c.update(layer_norm_eps=1e-5, logit_scale=0.25, sliding_window=3, use_qk_norm=False)
    c["sliding_window_pattern"] = 4
    if opt.get("layer_types", True):
        c["layer_types"] = [SLIDING if (i + 1) % 4 else FULL for i in range(L)]


def _minicpm_cfg(c, L, opt):
    c.update(scale_emb=opt.get("scale_emb", 12), scale_depth=opt.get("scale_depth", 1.4), dim_model_base=8,
             rms_norm_eps=1e-6)


def _ernie_cfg(c, L, opt):
    c.update(rope_theta=500000.0, use_bias=bool(opt.get("use_bias")))
    if c["model_type"] == "ernie4_5_moe":
        c.update(moe_num_experts=E, moe_k=2, moe_intermediate_size=IM, moe_num_shared_experts=opt.get("shared", 1),
                 moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1, moe_norm_min=1e-12)


def _hunyuan_cfg(c, L, opt):
    c.update(use_qk_norm=True)
    alpha = opt.get("alpha", 1000.0)
    if alpha:
        c["rope_scaling"] = {"type": "dynamic", "alpha": alpha, "factor": 1.0}
    if c["model_type"] == "hunyuan_v1_moe":
        c.update(num_experts=E, moe_topk=2)


def _exaone4_cfg(c, L, opt):
    w = opt.get("window", 3)
    c.update(sliding_window=w, sliding_window_pattern=4)
    if w:
        c["layer_types"] = [SLIDING if (i + 1) % 4 else FULL for i in range(L)]
    else:
        c["layer_types"] = [FULL] * L


def _seed_cfg(c, L, opt):
    c.update(attention_bias=True, attention_out_bias=False, mlp_bias=False, rms_norm_eps=1e-6)


def _apertus_cfg(c, L, opt):
    c.update(hidden_act="xielu", rope_theta=12000000.0,
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0})


def _arcee_cfg(c, L, opt):
    c.update(hidden_act="relu2", mlp_bias=False)


def _internlm_cfg(c, L, opt):
    c.update(rms_norm_eps=1e-6, bias=bool(opt.get("bias")))
    if c["model_type"] == "internlm3":
        c["qkv_bias"] = bool(opt.get("bias"))


_EXTRA = {"lfm2": _lfm2_cfg, "lfm2_moe": _lfm2_cfg, "cohere2": _cohere2_cfg, "minicpm": _minicpm_cfg,
          "ernie4_5": _ernie_cfg, "ernie4_5_moe": _ernie_cfg, "hunyuan_v1_dense": _hunyuan_cfg,
          "hunyuan_v1_moe": _hunyuan_cfg, "exaone4": _exaone4_cfg, "seed_oss": _seed_cfg,
          "apertus": _apertus_cfg, "arcee": _arcee_cfg, "internlm2": _internlm_cfg, "internlm3": _internlm_cfg}


# ---------------------------------------------------------------- generator

def _layer_types(cfg):
    """LFM2: layer_types, else full_attn_idxs, else every layer attention."""
    L = cfg["num_hidden_layers"]
    if cfg.get("layer_types") is not None:
        return cfg["layer_types"]
    idx = cfg.get("full_attn_idxs")
    return [FULL if idx is None or i in idx else "conv" for i in range(L)]


def _lfm2_moe_layer(cfg, i):
    return cfg["model_type"] == "lfm2_moe" and i >= cfg.get("num_dense_layers", 2)


def _ernie_sparse(cfg, i):
    end = cfg.get("moe_layer_end_index", -1)
    end = cfg["num_hidden_layers"] - 1 if end == -1 else end
    return (i + 1) % cfg.get("moe_layer_interval", 1) == 0 and cfg.get("moe_layer_start_index", 1) <= i <= end


def _experts(g, p, names, fused, bias=False):
    """Per-expert (router names[0], experts names[1], gate/up/down names[2:5];
    biases with ERNIE's use_bias) or transformers 5 fused gate_up_proj
    [E, 2I, H] / down_proj [E, H, I]."""
    router, ex, gn, un, dn = names
    g.mat(p + router + ".weight", (E, H), dtype="F32" if router != "feed_forward.gate" else None)
    mats = {n: [] for n in (gn, un, dn)}
    for e in range(E):
        for n, shape in ((gn, (IM, H)), (un, (IM, H)), (dn, (H, IM))):
            name = "%s%s.%d.%s.weight" % (p, ex, e, n)
            # fused 3-D tensors escape verify_fixtures.tame: scaled here as it
            # scales 2-D matrices (~ 1/sqrt(fan-in))
            g.mat(name, shape, scale=2.0 ** -round(math.log2(shape[1]) / 2) if fused else 1.0)
            mats[n].append(g.m.tensors[name])
            if bias and not fused:
                g.bias(name[:-len("weight")] + "bias", shape[0])
    if not fused:
        return
    ts = g.m.tensors
    for e in range(E):
        for n in (gn, un, dn):
            del ts["%s%s.%d.%s.weight" % (p, ex, e, n)]
    dt = mats[gn][0].dtype
    gu = [Tensor(dt, (2 * IM, H), a.data + b.data) for a, b in zip(mats[gn], mats[un])]
    ts[p + ex + ".gate_up_proj"] = Tensor(dt, (E, 2 * IM, H), _stack(dt, gu, False))
    ts[p + ex + ".down_proj"] = Tensor(dt, (E, H, IM), _stack(dt, mats[dn], False))


def _mlp(g, p, names, up_only=False, bias=False):
    for n, shape in zip(names, ((I, H), (I, H), (H, I))):
        if n is None:
            continue
        g.mat(p + n + ".weight", shape)
        if bias:
            g.bias(p + n + ".bias", shape[0])


def _attn_tensors(g, p, fam, cfg):
    bias = {"seed_oss": "qkv", "ernie4_5": "all", "ernie4_5_moe": "all", "internlm3": "qkv+o"}.get(fam)
    if fam.startswith("ernie") and not cfg.get("use_bias"):
        bias = None
    if fam == "internlm3" and not cfg.get("bias"):
        bias = None
    o = "self_attn.out_proj" if fam.startswith("lfm2") else "self_attn.o_proj"
    for n, rows in (("self_attn.q_proj", NH * HD), ("self_attn.k_proj", NKV * HD), ("self_attn.v_proj", NKV * HD)):
        g.mat(p + n + ".weight", (rows, H))
        if bias:
            g.bias(p + n + ".bias", rows)
    g.mat(p + o + ".weight", (H, NH * HD))
    if bias in ("all", "qkv+o"):
        g.bias(p + o + ".bias", H)


def _qk_norms(g, p, fam):
    names = {"lfm2": "layernorm", "lfm2_moe": "layernorm", "exaone4": "norm", "apertus": "norm"}
    if fam.startswith("hunyuan"):
        g.norm(p + "self_attn.query_layernorm.weight", (HD,))
        g.norm(p + "self_attn.key_layernorm.weight", (HD,))
    elif fam in names:
        g.norm(p + "self_attn.q_%s.weight" % names[fam], (HD,))
        g.norm(p + "self_attn.k_%s.weight" % names[fam], (HD,))


def _lfm2_layer(g, p, cfg, i):
    t = _layer_types(cfg)[i]
    g.norm(p + "operator_norm.weight", (H,))
    g.norm(p + "ffn_norm.weight", (H,))
    if t == FULL:
        _attn_tensors(g, p, cfg["model_type"], cfg)
        _qk_norms(g, p, cfg["model_type"])
    else:
        # the gated convolution is cubic in its input: weights drawn smaller so
        # one rounding per weight moves the logits as little as in trained models
        g.mat(p + "conv.in_proj.weight", (3 * H, H), scale=0.25)
        g.mat(p + "conv.conv.weight", (H, 1, cfg["conv_L_cache"]), scale=0.5)
        g.mat(p + "conv.out_proj.weight", (H, H))
        if cfg["conv_bias"]:
            g.bias(p + "conv.in_proj.bias", 3 * H)
            g.bias(p + "conv.conv.bias", H)
            g.bias(p + "conv.out_proj.bias", H)
    if _lfm2_moe_layer(cfg, i):
        _experts(g, p, ("feed_forward.gate", "feed_forward.experts", "w1", "w3", "w2"), g.fused)
        g.vec(p + "feed_forward.expert_bias", E, -0.2, 0.2, "F32")
    else:
        _mlp(g, p, ("feed_forward.w1", "feed_forward.w3", "feed_forward.w2"))


def _post(g, p, *names):
    """Post norms scale what a sublayer adds to the residual: small gains."""
    for n in names:
        g.vec(p + n + ".weight", H, 0.1, 0.5, g.norm_dtype)


def _layer(g, p, fam, cfg, i):
    if fam.startswith("lfm2"):
        return _lfm2_layer(g, p, cfg, i)
    if fam == "internlm2":
        g.norm(p + "attention_norm.weight", (H,))
        g.norm(p + "ffn_norm.weight", (H,))
        g.mat(p + "attention.wqkv.weight", ((NH + 2 * NKV) * HD, H))
        g.mat(p + "attention.wo.weight", (H, NH * HD))
        if cfg.get("bias"):
            g.bias(p + "attention.wqkv.bias", (NH + 2 * NKV) * HD)
            g.bias(p + "attention.wo.bias", H)
        return _mlp(g, p, ("feed_forward.w1", "feed_forward.w3", "feed_forward.w2"))
    pre_norms = {"apertus": ("attention_layernorm", "feedforward_layernorm"),
                 "exaone4": (None, None), "cohere2": ("input_layernorm", None)}
    for n in pre_norms.get(fam, ("input_layernorm", "post_attention_layernorm")):
        if n:
            g.norm(p + n + ".weight", (H,))
    if fam == "exaone4":
        _post(g, p, "post_attention_layernorm", "post_feedforward_layernorm")
    _attn_tensors(g, p, fam, cfg)
    _qk_norms(g, p, fam)
    bias = bool(cfg.get("use_bias") or (fam == "internlm3" and cfg.get("bias")))
    if fam == "ernie4_5_moe" and _ernie_sparse(cfg, i):
        _experts(g, p, ("mlp.gate", "mlp.experts", "gate_proj", "up_proj", "down_proj"), g.fused, bias=bias)
        g.vec(p + "mlp.moe_statics.e_score_correction_bias", E, -0.05, 0.05, "F32")
        g.m.tensors[p + "mlp.moe_statics.e_score_correction_bias"] = Tensor(
            "F32", (1, E), g.m.tensors[p + "mlp.moe_statics.e_score_correction_bias"].data)
        if cfg["moe_num_shared_experts"]:
            _mlp(g, p, ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj"),
                 bias=bias)
    elif fam == "hunyuan_v1_moe":
        _experts(g, p, ("mlp.gate.wg", "mlp.experts", "gate_proj", "up_proj", "down_proj"), g.fused)
        _mlp(g, p, ("mlp.shared_mlp.gate_proj", "mlp.shared_mlp.up_proj", "mlp.shared_mlp.down_proj"))
    elif fam in ("apertus", "arcee"):
        _mlp(g, p, (None, "mlp.up_proj", "mlp.down_proj"))
        if fam == "apertus":
            # XIELUActivation: alpha_p, alpha_n [1] (log(expm1) space, around
            # the init 0.8 / 0.8 - beta), the beta and eps buffers
            g.vec(p + "mlp.act_fn.alpha_p", 1, 0.0, 0.6, g.dtype)
            g.vec(p + "mlp.act_fn.alpha_n", 1, -1.4, -0.7, g.dtype)
            g.m.tensors[p + "mlp.act_fn.beta"] = fixtures.float_tensor(g.dtype, (), [0.5])
            g.m.tensors[p + "mlp.act_fn.eps"] = fixtures.float_tensor(g.dtype, (), [-1e-6])
    else:
        _mlp(g, p, ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), bias=bias)


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    if hidden != H:
        raise ValueError("zoo_tail fixtures are %d wide" % H)
    L = layers or LAYERS.get(family, 2)
    V = vocab
    cfg = _config(family, dtype, tied, L, V, opt)
    m = Model(family, cfg)
    emb = "model.tok_embeddings.weight" if family == "internlm2" else "model.embed_tokens.weight"
    m.embed_name, m.head_name = emb, "output.weight" if family == "internlm2" else "lm_head.weight"
    g = _Gen(m, seed, dtype, norm_dtype, False)
    g.fused = opt.get("experts") == "fused"
    g.mat(emb, (V, H))
    for i in range(L):
        _layer(g, "model.layers.%d." % i, family, cfg, i)
    g.norm("model.embedding_norm.weight" if family.startswith("lfm2") else "model.norm.weight", (H,))
    if not tied:
        g.mat(m.head_name, (V, H))
        if family == "ernie4_5_moe" and cfg.get("use_bias"):
            g.bias("lm_head.bias", V)
    return m


# ---------------------------------------------------------------- the plan

def layer_plan(mt):
    """expect.layer_plan for model_type mt (docs/architectures.md
    §zoo13-tail): ([(norm, [consumers])], [kept norms]) of layer i."""
    def plan(tc, i, has):
        if mt.startswith("lfm2"):
            t = _layer_types(tc)[i]
            op = QKV if t == FULL else ["conv.in_proj"]
            kept = ["self_attn.q_layernorm", "self_attn.k_layernorm"]
            if not _lfm2_moe_layer(tc, i):
                return [("operator_norm", op), ("ffn_norm", ["feed_forward.w1", "feed_forward.w3"])], kept
            ffn = ["feed_forward.gate"]
            if has("feed_forward.experts.gate_up_proj"):
                ffn.append(("feed_forward.experts.gate_up_proj", "last"))
            else:
                ffn += ["feed_forward.experts.%d.%s" % (e, n) for e in range(tc["num_experts"]) for n in ("w1", "w3")]
            return [("operator_norm", op), ("ffn_norm", ffn)], kept
        if mt == "cohere2":
            return [("input_layernorm", QKV + GATE_UP)], []
        if mt == "exaone4":
            return [], ["post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"]
        if mt == "apertus":
            return [("attention_layernorm", QKV), ("feedforward_layernorm", ["mlp.up_proj"])], \
                ["self_attn.q_norm", "self_attn.k_norm"]
        if mt == "arcee":
            return [("input_layernorm", QKV), ("post_attention_layernorm", ["mlp.up_proj"])], []
        if mt == "internlm2":
            return [("attention_norm", ["attention.wqkv"]), ("ffn_norm", ["feed_forward.w1", "feed_forward.w3"])], []
        kept = ["self_attn.query_layernorm", "self_attn.key_layernorm"] if mt.startswith("hunyuan") else []
        if mt == "ernie4_5_moe" and _ernie_sparse(tc, i):
            return [("input_layernorm", QKV), ("post_attention_layernorm", _moe_consumers(tc, has, "mlp.gate",
                     "mlp.shared_experts" if tc.get("moe_num_shared_experts", 2) else None))], kept
        if mt == "hunyuan_v1_moe":
            return [("input_layernorm", QKV), ("post_attention_layernorm",
                                               _moe_consumers(tc, has, "mlp.gate.wg", "mlp.shared_mlp"))], kept
        return [("input_layernorm", QKV), ("post_attention_layernorm", GATE_UP)], kept
    return plan


def _moe_consumers(tc, has, router, shared):
    out = [router]
    if has("mlp.experts.gate_up_proj"):
        out.append(("mlp.experts.gate_up_proj", "last"))
    else:
        n = tc.get("moe_num_experts") or tc.get("num_experts")
        out += ["mlp.experts.%d.%s" % (e, x) for e in range(n) for x in ("gate_proj", "up_proj")]
    if shared:
        out += [shared + ".gate_proj", shared + ".up_proj"]
    return out


def _layout(cfg, names):
    if cfg["model_type"] == "internlm2":
        return "model.", "model.tok_embeddings.weight", "model.norm.weight", "output.weight"
    if cfg["model_type"].startswith("lfm2"):
        return "model.", "model.embed_tokens.weight", "model.embedding_norm.weight", "lm_head.weight"
    return None


# ---------------------------------------------------------------- forward

class _Ref(ref_forward._M):
    """The family's forward pass for a text-only prompt, in double
    precision, written from its modeling code (ref_forward._M: the tensors)."""

    def __init__(self, ck):
        super().__init__(ck)
        self.c = ck.config
        self.mt = self.c["model_type"]
        self.eps = self.c.get("norm_eps", self.c.get("layer_norm_eps", self.c.get("rms_norm_eps", 1e-6)))

    def norm(self, x, name, centred=False):
        return super().norm(x, name, self.eps, centred=centred)

    def tensor(self, name):
        t = self.ck.tensors[name]
        return t, self.vals(name)

    def lin_w(self, x, name):
        """A Linear from a weight name (biased when "<base>.bias" exists)."""
        return self.linear(x, name[:-len(".weight")])


def _act(r, x, p):
    act = r.c.get("hidden_act", "silu") if not r.mt.startswith("lfm2") else "silu"
    if act == "relu2":
        return max(x, 0.0) ** 2
    if act == "xielu":
        a_p, a_n, beta, eps = r.xielu[p]
        if x > 0:
            return a_p * x * x + beta * x
        return (math.expm1(min(x, eps)) - x) * a_n + beta * x
    return x / (1.0 + math.exp(-x))


def _round(dtype, x):
    return ref_forward._round_to(dtype, x)


def _xielu_params(r, p):
    """softplus(alpha_p), beta + softplus(alpha_n), each in the parameters'
    dtype (XIELUActivation._xielu_python on bf16 parameters)."""
    def sp(v):
        return math.log1p(math.exp(v))
    t = r.ck.tensors[p + "mlp.act_fn.alpha_p"]
    beta = r.vals(p + "mlp.act_fn.beta")[0] if r.has(p + "mlp.act_fn.beta") else 0.5
    eps = r.vals(p + "mlp.act_fn.eps")[0] if r.has(p + "mlp.act_fn.eps") else -1e-6
    a_p = _round(t.dtype, sp(r.vals(p + "mlp.act_fn.alpha_p")[0]))
    a_n = _round(t.dtype, beta + _round(t.dtype, sp(r.vals(p + "mlp.act_fn.alpha_n")[0])))
    return a_p, a_n, beta, eps


def _inv_freq(r):
    c = r.c
    theta = c.get("rope_theta", {"lfm2": 1e6, "lfm2_moe": 1e6}.get(r.mt, 10000.0))
    sc = c.get("rope_scaling")
    if r.mt.startswith("hunyuan") and sc and sc.get("alpha"):
        # HunYuanDenseV1RotaryEmbedding: DynamicNTKAlphaRotary
        base = theta * sc["alpha"] ** (HD / (HD - 2))
        return [1.0 / base ** (2 * i / HD) for i in range(HD // 2)], 1.0
    return ref_forward.rope_freqs(c, theta, HD, sc)


def _rope(v, pos, inv, af, pairs):
    out = list(v)
    h = len(v) // 2
    for i, f in enumerate(inv):
        c, s = math.cos(pos * f) * af, math.sin(pos * f) * af
        a, b = (2 * i, 2 * i + 1) if pairs else (i, i + h)
        out[a], out[b] = v[a] * c - v[b] * s, v[b] * c + v[a] * s
    return out


def _heads(v, n):
    return [v[j * HD:(j + 1) * HD] for j in range(n)]


def _sliding(r, i):
    """(is sliding, RoPE on) for layer i."""
    c = r.c
    lt = c.get("layer_types")
    if r.mt == "cohere2":
        s = (lt[i] == SLIDING) if lt else (i + 1) % c.get("sliding_window_pattern", 4) != 0
        # Cohere2Attention: RoPE only when self.sliding_window is set
        return s, s and c.get("sliding_window", 4096) is not None
    if r.mt == "exaone4":
        s = lt[i] == SLIDING
        # Exaone4Attention: "global NoPE" when a sliding window is configured
        return s, c.get("sliding_window", 4096) is None or s
    return False, True


def _attend(r, qs, ks, vs, window, scale):
    n_rep = NH // NKV
    out = []
    for i in range(len(qs)):
        ctx = []
        for h in range(NH):
            js = [j for j in range(i + 1) if window is None or j > i - window]
            sc = [sum(a * b for a, b in zip(qs[i][h], ks[j][h // n_rep])) * scale for j in js]
            mx = max(sc)
            e = [math.exp(v - mx) for v in sc]
            z = sum(e)
            ctx += [sum(e[n] / z * vs[js[n]][h // n_rep][c] for n in range(len(js))) for c in range(HD)]
        out.append(ctx)
    return out


def _attention(r, p, i, hs):
    c, mt = r.c, r.mt
    inv, af = _inv_freq(r)
    pairs = mt in ("cohere2", "ernie4_5", "ernie4_5_moe")
    slides, rope_on = _sliding(r, i)
    window = c.get("sliding_window") if slides else None
    qn = {"lfm2": "q_layernorm", "lfm2_moe": "q_layernorm", "exaone4": "q_norm", "apertus": "q_norm",
          "hunyuan_v1_dense": "query_layernorm", "hunyuan_v1_moe": "query_layernorm"}.get(mt)
    kn = qn and qn.replace("q_", "k_").replace("query_", "key_")
    after_rope = mt.startswith("hunyuan")
    Q, K, Vs = [], [], []
    for pos, h in enumerate(hs):
        if mt == "internlm2":
            # InternLM2Attention: wqkv rows per kv head: G queries, key, value
            qkv = r.linear(h, p + "attention.wqkv")
            G = NH // NKV
            grp = [qkv[g * (G + 2) * HD:(g + 1) * (G + 2) * HD] for g in range(NKV)]
            q = sum((gr[:G * HD] for gr in grp), [])
            k = sum((gr[G * HD:(G + 1) * HD] for gr in grp), [])
            v = sum((gr[(G + 1) * HD:] for gr in grp), [])
        else:
            q, k, v = (r.linear(h, p + n) for n in QKV)
        q, k = _heads(q, NH), _heads(k, NKV)
        if qn and not after_rope:
            q = [r.norm(x, p + "self_attn.%s.weight" % qn) for x in q]
            k = [r.norm(x, p + "self_attn.%s.weight" % kn) for x in k]
        if rope_on:
            q = [_rope(x, pos, inv, af, pairs) for x in q]
            k = [_rope(x, pos, inv, af, pairs) for x in k]
        if qn and after_rope:
            q = [r.norm(x, p + "self_attn.%s.weight" % qn) for x in q]
            k = [r.norm(x, p + "self_attn.%s.weight" % kn) for x in k]
        Q.append(q)
        K.append(k)
        Vs.append(_heads(v, NKV))
    ctx = _attend(r, Q, K, Vs, window, HD ** -0.5)
    o = {"lfm2": "self_attn.out_proj", "lfm2_moe": "self_attn.out_proj", "internlm2": "attention.wo"}.get(mt,
                                                                                                       "self_attn.o_proj")
    return [r.linear(x, p + o) for x in ctx]


def _shortconv(r, p, hs):
    """Lfm2ShortConv.slow_forward: [B | C | x] = in_proj(h); causal depthwise
    conv of B * x; C * conv; out_proj."""
    K = r.c.get("conv_L_cache", 3)
    w = r.vals(p + "conv.conv.weight")
    cb = r.vals(p + "conv.conv.bias") if r.has(p + "conv.conv.bias") else [0.0] * H
    bcx = [r.linear(h, p + "conv.in_proj") for h in hs]
    u = [[row[c] * row[2 * H + c] for c in range(H)] for row in bcx]
    out = []
    for t in range(len(hs)):
        y = []
        for c in range(H):
            acc = cb[c] + sum(w[c * K + j] * u[t - (K - 1) + j][c] for j in range(K) if t - (K - 1) + j >= 0)
            y.append(bcx[t][H + c] * acc)
        out.append(r.linear(y, p + "conv.out_proj"))
    return out


def _gated(r, x, p, names):
    a = r.linear(x, p + names[0])
    b = r.linear(x, p + names[1])
    return r.linear([_act(r, u, p) * v for u, v in zip(a, b)], p + names[2])


def _expert(r, p, ex, e, x, names):
    fused = p + ex + ".gate_up_proj"
    if not r.has(fused):
        return _gated(r, x, p, ["%s.%d.%s" % (ex, e, n) for n in names])
    gu, dn = r.vals(fused), r.vals(p + ex + ".down_proj")
    y = [sum(gu[(e * 2 * IM + o) * H + j] * x[j] for j in range(H)) for o in range(2 * IM)]
    z = [_act(r, y[j], p) * y[IM + j] for j in range(IM)]
    return [sum(dn[(e * H + o) * IM + j] * z[j] for j in range(IM)) for o in range(H)]


def _moe(r, p, x):
    """Lfm2MoeSparseMoeBlock, Ernie4_5_MoeSparseMoeBlock, HunYuanMoEV1Moe."""
    c, mt = r.c, r.mt
    if mt == "lfm2_moe":
        router, ex, names = "feed_forward.gate", "feed_forward.experts", ("w1", "w3", "w2")
        K = c.get("num_experts_per_tok", 4)
    elif mt == "ernie4_5_moe":
        router, ex, names = "mlp.gate", "mlp.experts", ("gate_proj", "up_proj", "down_proj")
        K = c.get("moe_k", 6)
    else:
        router, ex, names = "mlp.gate.wg", "mlp.experts", ("gate_proj", "up_proj", "down_proj")
        K = c.get("moe_topk", 1)
    logits = r.linear(x, p + router)
    if mt == "lfm2_moe":
        scores = [1.0 / (1.0 + math.exp(-v)) for v in logits]
        bias = r.vals(p + "feed_forward.expert_bias") if r.has(p + "feed_forward.expert_bias") else [0.0] * E
    else:
        mx = max(logits)
        z = sum(math.exp(v - mx) for v in logits)
        scores = [math.exp(v - mx) / z for v in logits]
        bn = p + "mlp.moe_statics.e_score_correction_bias"
        bias = r.vals(bn) if mt == "ernie4_5_moe" and r.has(bn) else [0.0] * E
    choice = [a + b for a, b in zip(scores, bias)]
    top = sorted(range(E), key=lambda e: (-choice[e], e))[:K]
    w = [scores[e] for e in top]
    if mt == "lfm2_moe":
        if c.get("norm_topk_prob", True):
            den = sum(w) + 1e-6
            w = [v / den for v in w]
        w = [v * c.get("routed_scaling_factor", 1.0) for v in w]
    elif mt == "ernie4_5_moe":
        den = max(sum(w), c.get("moe_norm_min", 1e-12))
        w = [v / den for v in w]
    else:
        w = [v / sum(w) for v in w]
    y = [0.0] * H
    for e, we in zip(top, w):
        y = [a + we * b for a, b in zip(y, _expert(r, p, ex, e, x, names))]
    shared = {"ernie4_5_moe": "mlp.shared_experts", "hunyuan_v1_moe": "mlp.shared_mlp"}.get(mt)
    if shared and r.has(p + shared + ".gate_proj.weight"):
        y = [a + b for a, b in zip(y, _gated(r, x, p, [shared + ".gate_proj", shared + ".up_proj",
                                                      shared + ".down_proj"]))]
    return y


def _ffn(r, p, i, x):
    mt = r.mt
    if mt.startswith("lfm2"):
        if _lfm2_moe_layer(r.c, i):
            return _moe(r, p, x)
        return _gated(r, x, p, ["feed_forward.w1", "feed_forward.w3", "feed_forward.w2"])
    if mt == "internlm2":
        return _gated(r, x, p, ["feed_forward.w1", "feed_forward.w3", "feed_forward.w2"])
    if (mt == "ernie4_5_moe" and _ernie_sparse(r.c, i)) or mt == "hunyuan_v1_moe":
        return _moe(r, p, x)
    if mt in ("apertus", "arcee"):
        # NemotronMLP: down(act(up(x)))
        return r.linear([_act(r, v, p) for v in r.linear(x, p + "mlp.up_proj")], p + "mlp.down_proj")
    return _gated(r, x, p, ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])


def _norm_names(mt):
    return {"lfm2": ("operator_norm", "ffn_norm"), "lfm2_moe": ("operator_norm", "ffn_norm"),
            "internlm2": ("attention_norm", "ffn_norm"),
            "apertus": ("attention_layernorm", "feedforward_layernorm")}.get(
        mt, ("input_layernorm", "post_attention_layernorm"))


def ref_logits(ck, tokens):
    r = _Ref(ck)
    c, mt = r.c, r.mt
    L = c["num_hidden_layers"]
    emb_name, final, head = _layout(c, None) and _layout(c, None)[1:] or \
        ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
    emb_t = ck.tensors[emb_name]
    Ew = r.vals(emb_name)
    xs = [Ew[t * H:(t + 1) * H] for t in tokens]
    res = 1.0
    if mt == "minicpm":
        # MiniCPMScaledWordEmbedding: * scale_emb in the weight's dtype;
        # MiniCPMDecoderLayer: residual branches * scale_depth / sqrt(layers)
        s = _round(emb_t.dtype, c.get("scale_emb", 12))
        xs = [[v * s for v in x] for x in xs]
        sd = c.get("scale_depth", 1.4)
        res = 1.0 if sd is None else sd / math.sqrt(L)
    n1, n2 = _norm_names(mt)
    centred = mt == "cohere2"
    r.xielu = {}
    for i in range(L):
        p = "model.layers.%d." % i
        if mt == "apertus":
            r.xielu[p] = _xielu_params(r, p)
        if mt == "exaone4":
            # Olmo2DecoderLayer: post norms, the raw residual into each sublayer
            a = [r.norm(v, p + "post_attention_layernorm.weight") for v in _attention(r, p, i, xs)]
            xs = [[u + v for u, v in zip(x, y)] for x, y in zip(xs, a)]
            xs = [[u + v for u, v in zip(x, r.norm(_ffn(r, p, i, x), p + "post_feedforward_layernorm.weight"))]
                  for x in xs]
            continue
        hs = [r.norm(x, p + n1 + ".weight", centred=centred) for x in xs]
        if mt == "cohere2":
            # Cohere2DecoderLayer: x + attn(h) + mlp(h), one normed h
            a = _attention(r, p, i, hs)
            xs = [[u + v + w for u, v, w in zip(x, y, _ffn(r, p, i, h))] for x, y, h in zip(xs, a, hs)]
            continue
        conv = mt.startswith("lfm2") and _layer_types(c)[i] != FULL
        a = _shortconv(r, p, hs) if conv else _attention(r, p, i, hs)
        xs = [[u + res * v for u, v in zip(x, y)] for x, y in zip(xs, a)]
        xs = [[u + res * v for u, v in zip(x, _ffn(r, p, i, r.norm(x, p + n2 + ".weight")))] for x in xs]
    tie_key = "tie_embedding" if mt.startswith("lfm2") and "tie_embedding" in c else "tie_word_embeddings"
    if c.get(tie_key, TIED.get(mt, False)):
        head = emb_name
    W = r.vals(head)
    hb = r.vals("lm_head.bias") if head == "lm_head.weight" and r.has("lm_head.bias") else [0.0] * len(W)
    out = []
    for x in xs:
        h = r.norm(x, final, centred=centred)
        lg = [sum(W[v * H + j] * h[j] for j in range(H)) + hb[v] for v in range(len(W) // H)]
        if mt == "cohere2":
            lg = [v * c.get("logit_scale", 0.0625) for v in lg]
        if mt == "minicpm":
            # MiniCPMForCausalLM: hidden / (hidden_size / dim_model_base)
            base = c.get("dim_model_base", 256) or H
            lg = [v / (H / base) for v in lg]
        out.append(lg)
    return out


# ---------------------------------------------------------------- registration

for _f in ARCH:
    fixtures.register_family(_f, build, ARCH[_f], tied=TIED.get(_f, False))
    expect.EXTRA_LAYER_PLANS[_f] = layer_plan(_f)
    expect.EXTRA_LAYOUTS[_f] = _layout
    if _f not in expect.SUPPORTED:
        expect.SUPPORTED.append(_f)
    ref_forward.EXTRA_FORWARD[_f] = ref_logits
    if TIED.get(_f):
        expect.TIE_CLASS_DEFAULT[_f] = True
expect.NO_MARKER.add("exaone4")
expect.TIE_ALIAS.update(lfm2="tie_embedding", lfm2_moe="tie_embedding")
