"""zoo_glm_deepseek.py -- GLM-4, GLM-4.5/4.6/4.7 (glm4_moe, glm4_moe_lite),
DeepSeek-V2, DeepSeek-V3.2 (deepseek_v32), GLM-5 (glm_moe_dsa) and Kimi K2 /
K2.5 (kimi_k2, kimi_k25): fixtures, the expected layer plans and a second
reference forward pass, registered with fixtures.py, expect.py and
ref_forward.py (issue 13).

Standard library only.  Written from docs/architectures.md §glm-deepseek
(and the transformers 5 modeling files and remote code it cites), not from
src/arch.c or src/forward*.c.

build_model options of these families:
  layers: decoder layers (default 2 for glm4, else 3).
  v5: the config as transformers 5 writes it (rope_parameters, dtype,
    mlp_layer_types / indexer_types spelled out; default False: the Hub's).
  experts: "per_expert" (default: the original layout, and what
    save_pretrained writes by default) or "fused" ([E, 2I, H], what
    save_pretrained(save_original_format=False) writes).
  mtp: the multi-token-prediction layer at model.layers.{num_hidden_layers}
    (default True for glm4_moe, glm4_moe_lite, deepseek_v32, glm_moe_dsa).
  q_lora_rank: None for MLA's q_proj variant (glm4_moe_lite, deepseek_v2).
  qk_norm: glm4_moe's use_qk_norm (default True).
  topk_method: deepseek_v2's "group_limited_greedy" (default) or "greedy";
    shared: n_shared_experts (deepseek_v2, default 2; None: none).
  index_topk: the DSA indexer's top-k (default 3, less than the test
    sequences, so that the selection matters); shared_indexer: GLM-5
    indexer_types with a "shared" layer (default: with v5).
  quant: "int4" (the routed experts as compressed-tensors
    pack-quantized, group 32, as Kimi K2 Thinking / K2.5 ship), "fp8"
    (every decoder projection FP8 E4M3 with 128x128 block scales, as Kimi
    K2 and DeepSeek-V3 ship) or "fp8_channel" (the same with
    compressed-tensors' per-channel weight_scale); the values decode to
    trained-looking weights.
  dims: config values to override.
"""

import bisect
import math
import struct

import expect
import fixtures
import ref_forward
from fixtures import Model, Tensor, TORCH_DTYPE, _Gen, _fuse_experts, decode_values, float_tensor, numel

ARCH = {"glm4": "Glm4ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM", "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
        "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v32": "DeepseekV32ForCausalLM",
        "glm_moe_dsa": "GlmMoeDsaForCausalLM", "kimi_k2": "DeepseekV3ForCausalLM",
        "kimi_k25": "KimiK25ForConditionalGeneration"}
FAMILIES = list(ARCH)
MLA = {"glm4_moe_lite", "deepseek_v2", "deepseek_v32", "glm_moe_dsa", "kimi_k2", "kimi_k25"}
DSA = {"deepseek_v32", "glm_moe_dsa"}
KIMI = {"kimi_k2", "kimi_k25"}
MTP_DEFAULT = {"glm4_moe", "glm4_moe_lite", "deepseek_v32", "glm_moe_dsa"}
# the config class default of first_k_dense_replace (or of mlp_layer_types)
FIRST_DENSE = {"glm4_moe": 1, "glm4_moe_lite": 1, "deepseek_v2": 0, "deepseek_v32": 3, "glm_moe_dsa": 3,
               "kimi_k2": 0, "kimi_k25": 0}
EPS = {"glm4": 1.5625e-07, "glm4_moe": 1e-5, "glm4_moe_lite": 1e-5, "glm_moe_dsa": 1e-5}
QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
GATE_UP = ["mlp.gate_proj", "mlp.up_proj"]
RES = 0.5   # residual-branch output projections at half scale: trained-looking, less chaotic


def text_config(cfg):
    return cfg["text_config"] if cfg.get("model_type") == "kimi_k25" else cfg


def flag(tc, key, default=None):
    """Python truthiness of a config key, as `if config.key` reads it."""
    return bool(tc.get(key, default))


def sparse(mt, tc, i):
    """Whether layer i is MoE: mlp_layer_types (GLM-4.7-Flash, V3.2, GLM-5),
    else first_k_dense_replace (and DeepSeek's moe_layer_freq)."""
    if mt in ("glm4",):
        return False
    if mt in ("glm4_moe_lite", "deepseek_v32", "glm_moe_dsa") and tc.get("mlp_layer_types") is not None:
        return tc["mlp_layer_types"][i] == "sparse"
    first = tc.get("first_k_dense_replace", FIRST_DENSE[mt])
    return i >= first and i % (tc.get("moe_layer_freq") or 1) == 0


def indexer_shared(tc, i):
    """GlmMoeDsaConfig.indexer_types[i] == "shared"."""
    types = tc.get("indexer_types")
    return bool(types) and types[i] == "shared"


# ------------------------------------------------------------------ configs

def _base(mt, dtype, tied, L, H, V, v5):
    cfg = {"architectures": [ARCH[mt]], "model_type": mt, "hidden_size": H, "intermediate_size": 48,
           "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
           "max_position_embeddings": 256, "rms_norm_eps": EPS.get(mt, 1e-6), "hidden_act": "silu",
           "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "transformers_version": "5.2.0" if v5 else "4.57.1"}
    cfg["dtype" if v5 else "torch_dtype"] = TORCH_DTYPE[dtype]
    return cfg


def _rope(cfg, v5, theta, prf=None, scaling=None):
    """rope_theta / partial_rotary_factor / rope_scaling (v4), or
    rope_parameters (transformers 5)."""
    if v5:
        rp = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rp.update(scaling)
        if prf is not None:
            rp["partial_rotary_factor"] = prf
        cfg["rope_parameters"] = rp
        return
    cfg["rope_theta"] = theta
    if prf is not None:
        cfg["partial_rotary_factor"] = prf
    if scaling:
        cfg["rope_scaling"] = scaling


def _moe_cfg(cfg, mt, opt):
    E = {"deepseek_v2": 6}.get(mt, 4)
    cfg.update(n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16,
               n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
               first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid")
    if mt == "deepseek_v2":
        # topk_group 1 of 3: group-limited and greedy routing differ
        cfg.update(n_group=3, topk_group=1, routed_scaling_factor=1.5, norm_topk_prob=False,
                   topk_method=opt.get("topk_method", "group_limited_greedy"), scoring_func="softmax",
                   n_shared_experts=opt.get("shared", 2), moe_layer_freq=1, moe_intermediate_size=8)
    if mt in KIMI:
        cfg.update(moe_layer_freq=1, routed_scaling_factor=2.827, moe_intermediate_size=32, n_group=1,
                   topk_group=1)
    if mt in ("glm4_moe_lite",):
        cfg.update(routed_scaling_factor=1.8, n_group=1, topk_group=1)


def _mla_cfg(cfg, opt):
    cfg.update(q_lora_rank=opt.get("q_lora_rank", 24), kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
               v_head_dim=8)


def config(mt, dtype, tied, L, H, V, opt):
    v5 = opt.get("v5", False)
    cfg = _base(mt, dtype, tied, L, H, V, v5)
    if mt == "glm4":
        cfg.update(num_key_value_heads=2, head_dim=8, attention_bias=True, pad_token_id=0)
        _rope(cfg, v5, 10000.0, prf=0.5)
    if mt == "glm4_moe":
        cfg.update(num_key_value_heads=2, head_dim=8, attention_bias=True, use_qk_norm=opt.get("qk_norm", True))
        _moe_cfg(cfg, mt, opt)
        _rope(cfg, v5, 1000000.0, prf=0.5)
    if mt in MLA:
        _mla_cfg(cfg, opt)
        _moe_cfg(cfg, mt, opt)
        scaling = None
        if mt == "deepseek_v2":
            # DeepSeek-V2's YaRN with mscale == mscale_all_dim (attention factor 1)
            scaling = {"type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32,
                       "beta_slow": 1, "original_max_position_embeddings": 32}
            cfg["attention_bias"] = opt.get("attention_bias", False)
        _rope(cfg, v5, 10000.0, prf=1.0 if mt == "glm4_moe_lite" else None, scaling=scaling)
        if mt in ("glm4_moe_lite",) or mt in KIMI:
            cfg["rope_interleave"] = True
    if mt in DSA:
        cfg.update(index_n_heads=2, index_head_dim=8, index_topk=opt.get("index_topk", 3))
        if mt == "deepseek_v32":
            cfg["first_k_dense_replace"] = 1
    if mt in MTP_DEFAULT and opt.get("mtp", True):
        cfg["num_nextn_predict_layers"] = 1
    if v5 and mt in ("glm4_moe_lite", "deepseek_v32", "glm_moe_dsa"):
        first = cfg["first_k_dense_replace"]
        cfg["mlp_layer_types"] = ["dense" if i < first else "sparse" for i in range(L)]
        if mt == "glm4_moe_lite":
            del cfg["first_k_dense_replace"]   # ignored by Glm4MoeLiteConfig
    if mt == "glm_moe_dsa" and opt.get("shared_indexer", v5):
        cfg["indexer_types"] = ["shared" if i % 2 else "full" for i in range(L)]
    cfg.update(opt.get("dims", {}))
    return cfg


# ------------------------------------------------------------------ tensors

def _fan(n):
    """2^-round(log2(n)/2): ~1/sqrt(fan-in), as verify_fixtures.tame scales."""
    return 2.0 ** -round(math.log2(n) / 2)


def _attention(g, p, mt, tc, H):
    nh, hd = tc["num_attention_heads"], tc.get("head_dim")
    if mt not in MLA:
        nkv = tc["num_key_value_heads"]
        for n, rows in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
            g.mat(p + "self_attn.%s.weight" % n, (rows, H))
            g.bias(p + "self_attn.%s.bias" % n, rows)
        g.mat(p + "self_attn.o_proj.weight", (H, nh * hd), scale=RES)
        if mt == "glm4_moe" and tc.get("use_qk_norm"):
            g.norm(p + "self_attn.q_norm.weight", (hd,))
            g.norm(p + "self_attn.k_norm.weight", (hd,))
        return
    qlr, klr, R = tc["q_lora_rank"], tc["kv_lora_rank"], tc["qk_rope_head_dim"]
    qk = tc["qk_nope_head_dim"] + R
    if qlr is None:
        g.mat(p + "self_attn.q_proj.weight", (nh * qk, H))
    else:
        g.mat(p + "self_attn.q_a_proj.weight", (qlr, H))
        g.norm(p + "self_attn.q_a_layernorm.weight", (qlr,))
        g.mat(p + "self_attn.q_b_proj.weight", (nh * qk, qlr))
    g.mat(p + "self_attn.kv_a_proj_with_mqa.weight", (klr + R, H))
    g.norm(p + "self_attn.kv_a_layernorm.weight", (klr,))
    g.mat(p + "self_attn.kv_b_proj.weight", (nh * (tc["qk_nope_head_dim"] + tc["v_head_dim"]), klr))
    g.mat(p + "self_attn.o_proj.weight", (H, nh * tc["v_head_dim"]), scale=RES)
    if tc.get("attention_bias"):   # DeepseekV2Attention: q_a_proj, kv_a_proj_with_mqa, o_proj
        if qlr:
            g.bias(p + "self_attn.q_a_proj.bias", qlr)
        g.bias(p + "self_attn.kv_a_proj_with_mqa.bias", klr + R)
        g.bias(p + "self_attn.o_proj.bias", H)


def _indexer(g, p, tc, H):
    nh, D = tc["index_n_heads"], tc["index_head_dim"]
    ip = p + "self_attn.indexer."
    g.mat(ip + "wq_b.weight", (nh * D, tc["q_lora_rank"]))
    g.mat(ip + "wk.weight", (D, H))
    g.norm(ip + "k_norm.weight", (D,))
    g.bias(ip + "k_norm.bias", D)
    # DeepseekV32PreTrainedModel keeps weights_proj in fp32
    g.mat(ip + "weights_proj.weight", (nh, H), dtype="F32")


def _mlp(g, p, mt, tc, H, i):
    if mt == "glm4":
        I = tc["intermediate_size"]
        g.mat(p + "mlp.gate_up_proj.weight", (2 * I, H))
        g.mat(p + "mlp.down_proj.weight", (H, I), scale=RES)
        return
    if not sparse(mt, tc, i):
        I = tc["intermediate_size"]
        for n, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            g.mat(p + "mlp.%s.weight" % n, shape, scale=RES if n == "down_proj" else 1.0)
        return
    E, Im = tc["n_routed_experts"], tc["moe_intermediate_size"]
    g.mat(p + "mlp.gate.weight", (E, H))
    if mt != "deepseek_v2":
        g.vec(p + "mlp.gate.e_score_correction_bias", E, -0.2, 0.2, "F32")
    for e in range(E):
        for n, shape in (("gate_proj", (Im, H)), ("up_proj", (Im, H)), ("down_proj", (H, Im))):
            g.mat(p + "mlp.experts.%d.%s.weight" % (e, n), shape, scale=RES if n == "down_proj" else 1.0)
    if tc.get("n_shared_experts"):
        Is = Im * tc["n_shared_experts"]
        for n, shape in (("gate_proj", (Is, H)), ("up_proj", (Is, H)), ("down_proj", (H, Is))):
            g.mat(p + "mlp.shared_experts.%s.weight" % n, shape, scale=RES if n == "down_proj" else 1.0)


def _layer(g, p, mt, tc, H, i):
    g.norm(p + "input_layernorm.weight", (H,))
    g.norm(p + "post_attention_layernorm.weight", (H,))
    if mt == "glm4":
        g.norm(p + "post_self_attn_layernorm.weight", (H,))
        g.norm(p + "post_mlp_layernorm.weight", (H,))
    _attention(g, p, mt, tc, H)
    if mt in DSA and not indexer_shared(tc, i):
        _indexer(g, p, tc, H)
    _mlp(g, p, mt, tc, H, i)


def _mtp(g, p, mt, tc, H):
    """DeepSeek-V3 / GLM-4.5's next-token-prediction layer: a decoder block
    (MoE) plus enorm, hnorm, eh_proj and shared_head.norm; the loaders skip
    it (_keys_to_ignore_on_load_unexpected), flashify passes it through."""
    L = tc["num_hidden_layers"]
    _layer(g, p, mt, dict(tc, first_k_dense_replace=0, mlp_layer_types=["sparse"] * (L + 1), indexer_types=None),
           H, L)
    for n in ("enorm", "hnorm", "shared_head.norm"):
        g.norm(p + n + ".weight", (H,))
    g.mat(p + "eh_proj.weight", (H, 2 * H))


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    L, H, V = layers or (2 if family == "glm4" else 3), hidden, vocab
    tc = config(family, dtype, tied, L, H, V, opt)
    cfg, pre, head = tc, "model.", "lm_head.weight"
    if family == "kimi_k25":
        tc = dict(tc, model_type="kimi_k2", architectures=["DeepseekV3ForCausalLM"])
        for k in ("transformers_version", "torch_dtype", "dtype", "bos_token_id", "eos_token_id"):
            tc.pop(k, None)
        cfg = {"architectures": [ARCH[family]], "model_type": family, "text_config": tc,
               "vision_config": {"model_type": "moonvit3d", "hidden_size": 16, "num_hidden_layers": 1},
               "tie_word_embeddings": tied, "media_placeholder_token_id": 5, "bos_token_id": 1, "eos_token_id": 2,
               "torch_dtype": TORCH_DTYPE[dtype], "transformers_version": "4.57.1"}
        pre, head = "language_model.model.", "language_model.lm_head.weight"
    m = Model(family, cfg)
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", head, pre
    g = _Gen(m, seed, dtype, norm_dtype, False)
    g.mat(pre + "embed_tokens.weight", (V, H))
    for i in range(L):
        _layer(g, "%slayers.%d." % (pre, i), family, tc, H, i)
    if family in MTP_DEFAULT and opt.get("mtp", True):
        _mtp(g, "%slayers.%d." % (pre, L), family, tc, H)
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat(head, (V, H))
    if family == "kimi_k25":
        _moonvit(g)
    if opt.get("experts") == "fused":
        _fuse_experts(m, tc, transposed=False)
        _tame_fused(m)
    if opt.get("quant"):
        _quantize(m, opt["quant"], g.rng)
        cfg_q = {"int4": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                              "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                              "group_size": 32}}}},
                 "fp8": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                         "weight_block_size": [128, 128]},
                 "fp8_channel": {"quant_method": "compressed-tensors", "format": "float-quantized",
                                 "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                                     "num_bits": 8, "type": "float", "symmetric": True,
                                     "strategy": "channel"}}}}}[opt["quant"]]
        tc["quantization_config"] = cfg_q
    return m


def _moonvit(g):
    """A one-block MoonViT and Kimi K2.5's projector: LayerNorms with biases
    and biased Linears outside the text prefix, passed through."""
    Hv = 16
    vp = "vision_tower."
    g.mat(vp + "patch_embed.proj.weight", (Hv, 3, 2, 2))
    g.bias(vp + "patch_embed.proj.bias", Hv)
    bp = vp + "encoder.blocks.0."
    for ln in ("norm0", "norm1"):
        g.vec(bp + ln + ".weight", Hv, 0.5, 2.5, g.norm_dtype)
        g.bias(bp + ln + ".bias", Hv)
    g.mat(bp + "wqkv.weight", (3 * Hv, Hv))
    g.mat(bp + "wo.weight", (Hv, Hv))
    g.vec(vp + "encoder.final_layernorm.weight", Hv, 0.5, 2.5, g.norm_dtype)
    g.vec("mm_projector.pre_norm.weight", Hv, 0.5, 2.5, g.norm_dtype)
    g.bias("mm_projector.pre_norm.bias", Hv)
    g.mat("mm_projector.linear_1.weight", (64, 4 * Hv))
    g.mat("mm_projector.linear_2.weight", (32, 64))


def _tame_fused(m):
    """The fused [E, 2I, H] / [E, H, I] experts get the scale verify_fixtures.tame
    gives 2-D matrices (it leaves 3-D tensors alone)."""
    for k, t in list(m.tensors.items()):
        if len(t.shape) == 3 and k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            s = _fan(t.shape[2])
            m.tensors[k] = float_tensor(t.dtype, t.shape, [v * s for v in decode_values(t.dtype, t.data)])


# ------------------------------------------------------------------ quantized storage

def _e4m3_codes():
    """(value, code) of every finite E4M3FN code, sorted by value."""
    out = []
    for c in range(256):
        e, mnt, s = (c >> 3) & 15, c & 7, -1.0 if c & 0x80 else 1.0
        if e == 15 and mnt == 7:
            continue
        v = math.ldexp(1 + mnt / 8, e - 7) if e else math.ldexp(mnt / 8, -6)
        out.append((s * v, c))
    return sorted(out)


E4M3 = _e4m3_codes()


def e4m3_value(c):
    e, mnt = (c >> 3) & 15, c & 7
    if e == 15 and mnt == 7:
        return math.nan
    v = math.ldexp(1 + mnt / 8, e - 7) if e else math.ldexp(mnt / 8, -6)
    return -v if c & 0x80 else v


def _e4m3(x):
    """The code of the E4M3FN value nearest to x (saturating at +-448)."""
    vals = [v for v, _ in E4M3]
    i = bisect.bisect_left(vals, x)
    best = min((j for j in (i - 1, i) if 0 <= j < len(vals)), key=lambda j: abs(vals[j] - x))
    return E4M3[best][1]


def _fp8(m, name, t, per_channel=False):
    """W [out, in] as F8_E4M3 codes with one F32 scale_inv per 128x128
    block (DeepSeek's layout), or with compressed-tensors' BF16
    weight_scale [out, 1] per output channel: scale = max |W| / 448 of the
    block or row."""
    rows, cols = t.shape
    vals = decode_values(t.dtype, t.data)
    if per_channel:
        sc = [max(abs(v) for v in vals[r * cols:(r + 1) * cols]) / 448.0 or 1.0 for r in range(rows)]
        sc = decode_values("BF16", fixtures.encode_values("BF16", sc))
        m.tensors[name] = Tensor("F8_E4M3", t.shape, bytes(_e4m3(vals[r * cols + c] / sc[r]) for r in range(rows)
                                                           for c in range(cols)))
        m.tensors[name[:-len("weight")] + "weight_scale"] = float_tensor("BF16", (rows, 1), sc)
        return
    br, bc = -(-rows // 128), -(-cols // 128)
    scales = [0.0] * (br * bc)
    for r in range(rows):
        for c in range(cols):
            k = (r // 128) * bc + c // 128
            scales[k] = max(scales[k], abs(vals[r * cols + c]) / 448.0)
    scales = [struct.unpack("<f", struct.pack("<f", s or 1.0))[0] for s in scales]
    codes = bytes(_e4m3(vals[r * cols + c] / scales[(r // 128) * bc + c // 128]) for r in range(rows)
                  for c in range(cols))
    m.tensors[name] = Tensor("F8_E4M3", t.shape, codes)
    m.tensors[name[:-len("weight")] + "weight_scale_inv"] = float_tensor("F32", (br, bc), scales)


def _int4(m, name, t, group=32):
    """W [out, in] as compressed-tensors pack-quantized INT4: q in [-8, 7]
    with one BF16 scale per group of `group` inputs, stored q + 8, eight per
    I32 word (element j at bit 4 * (j % 8))."""
    rows, cols = t.shape
    if cols % group:
        raise ValueError("int4 fixture: %s has %d inputs, not a multiple of %d" % (name, cols, group))
    vals = decode_values(t.dtype, t.data)
    ng = cols // group
    scales, words = [], []
    for r in range(rows):
        for gi in range(ng):
            blk = vals[r * cols + gi * group:r * cols + (gi + 1) * group]
            scales.append(max(abs(v) for v in blk) / 7.0 or 1.0)
    sc = decode_values("BF16", fixtures.encode_values("BF16", scales))
    for r in range(rows):
        qs = [max(-8, min(7, round(vals[r * cols + c] / sc[r * ng + c // group]))) + 8 for c in range(cols)]
        for w0 in range(0, cols, 8):
            word = 0
            for j, q in enumerate(qs[w0:w0 + 8]):
                word |= q << (4 * j)
            words.append(word)
    base = name[:-len(".weight")]
    del m.tensors[name]
    m.tensors[base + ".weight_packed"] = Tensor("I32", (rows, cols // 8), struct.pack("<%dI" % len(words), *words))
    m.tensors[base + ".weight_scale"] = float_tensor("BF16", (rows, ng), sc)
    m.tensors[base + ".weight_shape"] = Tensor("I64", (2,), struct.pack("<2q", rows, cols))


def _quantize(m, how, rng):
    """int4: the routed experts (Kimi K2 Thinking / K2.5); fp8: every
    projection of the decoder layers (Kimi K2, DeepSeek-V3), not the
    routers, embedding or head."""
    for k in sorted(m.tensors):
        t = m.tensors[k]
        if len(t.shape) != 2 or not k.endswith(".weight") or ".layers." not in k:
            continue
        if how == "int4" and ".mlp.experts." in k:
            _int4(m, k, t)
        elif how in ("fp8", "fp8_channel") and k.endswith(("proj.weight", "proj_with_mqa.weight")):
            _fp8(m, k, t, per_channel=how == "fp8_channel")


# ------------------------------------------------------------------ expected plans

def plan(mt):
    def layer_plan(tc, i, has):
        if mt in KIMI:
            return expect.layer_plan("deepseek_v3", tc, i, has)
        groups, kept = [], []
        if mt == "glm4":
            return [("input_layernorm", QKV), ("post_attention_layernorm", ["mlp.gate_up_proj"])], \
                ["post_self_attn_layernorm", "post_mlp_layernorm"]
        if mt == "glm4_moe":
            groups.append(("input_layernorm", QKV))
            if tc.get("use_qk_norm"):
                kept += ["self_attn.q_norm", "self_attn.k_norm"]
        elif mt in DSA:
            idx = not (mt == "glm_moe_dsa" and indexer_shared(tc, i))
            extra_in = ["self_attn.indexer.wk", "self_attn.indexer.weights_proj"] if idx else []
            groups.append(("input_layernorm", ["self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"] + extra_in))
            groups.append(("self_attn.q_a_layernorm", ["self_attn.q_b_proj"] + (["self_attn.indexer.wq_b"] if idx
                                                                                 else [])))
            kept.append("self_attn.indexer.k_norm")
        else:
            q = ["self_attn.q_a_proj"] if tc.get("q_lora_rank") is not None else ["self_attn.q_proj"]
            groups.append(("input_layernorm", q + ["self_attn.kv_a_proj_with_mqa"]))
            if tc.get("q_lora_rank") is not None:
                groups.append(("self_attn.q_a_layernorm", ["self_attn.q_b_proj"]))
        if mt in MLA:
            groups.append(("self_attn.kv_a_layernorm", ["self_attn.kv_b_proj"]))
        if not sparse(mt, tc, i):
            groups.append(("post_attention_layernorm", GATE_UP))
            return groups, kept
        moe = ["mlp.gate"]   # never mlp.gate.e_score_correction_bias
        if has("mlp.experts.gate_up_proj"):
            moe.append(("mlp.experts.gate_up_proj", has("mlp.experts.gate_up_proj")))
        else:
            for e in range(tc["n_routed_experts"]):
                moe += ["mlp.experts.%d.gate_proj" % e, "mlp.experts.%d.up_proj" % e]
        if tc.get("n_shared_experts"):
            moe += ["mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"]
        groups.append(("post_attention_layernorm", moe))
        return groups, kept
    return layer_plan


# ------------------------------------------------------------------ reference forward

class _W(ref_forward._M):
    """Exact tensor values; linear layers plain, FP8 with block scales, or
    packed INT4 (decoded here, independently of src/forward_quant.c)."""

    def gain(self, name):
        return self.vals(name) if self.has(name) else None

    def matrix(self, base):
        """(rows, cols, values) of linear layer `base` as floats."""
        key = base + "#dequant"
        if key in self.cache:
            return self.cache[key]
        if self.has(base + ".weight_packed"):
            rows, cols = struct.unpack("<2q", self.ck.tensors[base + ".weight_shape"].data)
            words = struct.unpack("<%dI" % (rows * cols // 8), self.ck.tensors[base + ".weight_packed"].data)
            sc = self.vals(base + ".weight_scale")
            ng = len(sc) // rows
            gs = cols // ng
            vals = [(((words[(r * cols + c) // 8] >> (4 * (c % 8))) & 15) - 8) * sc[r * ng + c // gs]
                    for r in range(rows) for c in range(cols)]
        else:
            t = self.ck.tensors[base + ".weight"]
            rows, cols = t.shape
            if t.dtype == "F8_E4M3" and self.has(base + ".weight_scale"):   # per output channel
                sc = self.vals(base + ".weight_scale")
                vals = [e4m3_value(t.data[r * cols + c]) * sc[r] for r in range(rows) for c in range(cols)]
            elif t.dtype == "F8_E4M3":
                si = self.vals(base + ".weight_scale_inv")
                bc = -(-cols // 128)
                vals = [e4m3_value(t.data[r * cols + c]) * si[(r // 128) * bc + c // 128]
                        for r in range(rows) for c in range(cols)]
            else:
                vals = self.vals(base + ".weight")
        self.cache[key] = (rows, cols, vals)
        return self.cache[key]

    def lin(self, x, base):
        rows, cols, W = self.matrix(base)
        y = [sum(W[o * cols + i] * x[i] for i in range(cols)) for o in range(rows)]
        if self.has(base + ".bias"):
            y = [a + b for a, b in zip(y, self.vals(base + ".bias"))]
        return y


def _rms(x, w, eps):
    r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v * r * (1.0 if w is None else w[i]) for i, v in enumerate(x)]


def _layer_norm(x, w, b, eps):
    mu = sum(x) / len(x)
    r = 1.0 / math.sqrt(sum((v - mu) ** 2 for v in x) / len(x) + eps)
    return [(v - mu) * r * w[i] + b[i] for i, v in enumerate(x)]


def _silu(v):
    return v / (1.0 + math.exp(-v))


def _rotate(v, pos, fr, af, interleaved):
    """RoPE on the first 2 * len(fr) values: pairs (2i, 2i+1) or (i, i+n)."""
    n, out = len(fr), list(v)
    for i in range(n):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + n)
        c, s = math.cos(pos * fr[i]) * af, math.sin(pos * fr[i]) * af
        out[a], out[b] = v[a] * c - v[b] * s, v[b] * c + v[a] * s
    return out


def _rope_cfg(tc):
    """(theta, scaling dict or None, partial_rotary_factor or None)."""
    rp = tc.get("rope_parameters")
    if rp:
        sc = rp if rp.get("rope_type", "default") != "default" else None
        return rp["rope_theta"], sc, rp.get("partial_rotary_factor")
    return tc.get("rope_theta", 10000.0), tc.get("rope_scaling"), tc.get("partial_rotary_factor")


def _softmax_attend(q, k, v, scale, allowed):
    """Causal softmax attention for one head: q[t], k[s], v[s] lists."""
    out = []
    for t in range(len(q)):
        js = [j for j in range(t + 1) if allowed(t, j)]
        sc = [sum(a * b for a, b in zip(q[t], k[j])) * scale for j in js]
        mx = max(sc)
        e = [math.exp(s - mx) for s in sc]
        z = sum(e)
        out.append([sum(e[n] / z * v[j][c] for n, j in enumerate(js)) for c in range(len(v[0]))])
    return out


def _gqa(w, mt, tc, p, hs):
    """GLM-4 (interleaved RoPE) and GLM-4.5 (rotate-half RoPE, q/k norms)
    attention with q/k/v biases, RoPE on the first half of each head."""
    nh, nkv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc.get("head_dim")
    theta, sc, prf = _rope_cfg(tc)
    rot = int(hd * (0.5 if prf is None else prf))
    fr, af = ref_forward.rope_freqs(tc, theta, rot, sc)
    il = mt == "glm4"
    eps = tc.get("rms_norm_eps", EPS[mt])
    Q, K, Vv = [], [], []
    for pos, h in enumerate(hs):
        q, k, v = (w.lin(h, p + "self_attn.%s" % n) for n in ("q_proj", "k_proj", "v_proj"))
        qh = [q[j * hd:(j + 1) * hd] for j in range(nh)]
        kh = [k[j * hd:(j + 1) * hd] for j in range(nkv)]
        if mt == "glm4_moe" and tc.get("use_qk_norm"):
            qh = [_rms(x, w.gain(p + "self_attn.q_norm.weight"), eps) for x in qh]
            kh = [_rms(x, w.gain(p + "self_attn.k_norm.weight"), eps) for x in kh]
        Q.append([_rotate(x, pos, fr, af, il) for x in qh])
        K.append([_rotate(x, pos, fr, af, il) for x in kh])
        Vv.append([v[j * hd:(j + 1) * hd] for j in range(nkv)])
    ctx = [[] for _ in hs]
    for h in range(nh):
        kv = h // (nh // nkv)
        o = _softmax_attend([x[h] for x in Q], [x[kv] for x in K], [x[kv] for x in Vv], hd ** -0.5,
                            lambda t, j: True)
        for t in range(len(hs)):
            ctx[t] += o[t]
    return [w.lin(c, p + "self_attn.o_proj") for c in ctx]


def _index_keys(w, mt, tc, p, hs, qas, fr, af):
    """The DSA indexer's allowed keys: allowed[t] = set of positions."""
    nh, D, R = tc["index_n_heads"], tc["index_head_dim"], tc["qk_rope_head_dim"]
    il = mt == "glm_moe_dsa"
    ip = p + "self_attn.indexer."
    qs, ks, ws = [], [], []
    for pos, (h, qa) in enumerate(zip(hs, qas)):
        q = w.lin(qa, ip + "wq_b")
        qs.append([_rotate(q[j * D:(j + 1) * D], pos, fr, af, il) for j in range(nh)])
        k = _layer_norm(w.lin(h, ip + "wk"), w.vals(ip + "k_norm.weight"), w.vals(ip + "k_norm.bias"), 1e-6)
        ks.append(_rotate(k, pos, fr, af, il))
        ws.append([v * nh ** -0.5 for v in w.lin(h, ip + "weights_proj")])
    K = min(tc.get("index_topk", 2048), len(hs))
    allowed = []
    for t in range(len(hs)):
        score = [sum(ws[t][j] * max(0.0, sum(a * b for a, b in zip(qs[t][j], ks[s])) / math.sqrt(D))
                     for j in range(nh)) for s in range(t + 1)]
        order = sorted(range(t + 1), key=lambda s: (-score[s], s))
        allowed.append(set(order[:K]))
    return allowed


def _mla(w, mt, tc, p, hs, layer, state):
    """DeepSeek's MLA (and V3.2 / GLM-5's indexer)."""
    nh, R, nope, vd, klr = (tc[k] for k in ("num_attention_heads", "qk_rope_head_dim", "qk_nope_head_dim",
                                            "v_head_dim", "kv_lora_rank"))
    theta, sc, _ = _rope_cfg(tc)
    fr, af = ref_forward.rope_freqs(tc, theta, R, sc)
    scale = (nope + R) ** -0.5
    if sc and sc.get("mscale_all_dim") and mt != "deepseek_v2":   # DeepseekV3Attention, not V2
        scale *= (0.1 * sc["mscale_all_dim"] * math.log(sc["factor"]) + 1.0) ** 2
    Q, K, Vv, qas = [], [], [], []
    for pos, h in enumerate(hs):
        if tc.get("q_lora_rank") is not None:
            qa = _rms(w.lin(h, p + "self_attn.q_a_proj"), w.gain(p + "self_attn.q_a_layernorm.weight"), 1e-6)
            qas.append(qa)
            q = w.lin(qa, p + "self_attn.q_b_proj")
        else:
            q = w.lin(h, p + "self_attn.q_proj")
        kva = w.lin(h, p + "self_attn.kv_a_proj_with_mqa")
        kvb = w.lin(_rms(kva[:klr], w.gain(p + "self_attn.kv_a_layernorm.weight"), 1e-6), p + "self_attn.kv_b_proj")
        kr = _rotate(kva[klr:], pos, fr, af, True)
        Q.append([q[j * (nope + R):j * (nope + R) + nope] + _rotate(q[j * (nope + R) + nope:(j + 1) * (nope + R)],
                                                                    pos, fr, af, True) for j in range(nh)])
        K.append([kvb[j * (nope + vd):j * (nope + vd) + nope] + kr for j in range(nh)])
        Vv.append([kvb[j * (nope + vd) + nope:(j + 1) * (nope + vd)] for j in range(nh)])
    allowed = lambda t, j: True
    if mt in DSA:
        if not (mt == "glm_moe_dsa" and indexer_shared(tc, layer)):
            state["keys"] = _index_keys(w, mt, tc, p, hs, qas, fr, af)
        keys = state["keys"]
        allowed = lambda t, j: j in keys[t]
    ctx = [[] for _ in hs]
    for h in range(nh):
        o = _softmax_attend([x[h] for x in Q], [x[h] for x in K], [x[h] for x in Vv], scale, allowed)
        for t in range(len(hs)):
            ctx[t] += o[t]
    return [w.lin(c, p + "self_attn.o_proj") for c in ctx]


def _route(mt, tc, logits, bias):
    """(experts, weights) of one token: DeepSeek-V3's sigmoid router with
    the correction bias and group limit, or DeepSeek-V2's softmax one."""
    E, K = len(logits), tc["num_experts_per_tok"]
    G = tc.get("n_group") or 1
    per = E // G
    if mt == "deepseek_v2":
        mx = max(logits)
        p = [math.exp(v - mx) for v in logits]
        z = sum(p)
        p = [v / z for v in p]
        choice = list(p)
        if tc.get("topk_method", "greedy") == "group_limited_greedy":
            best = [max(p[g * per:(g + 1) * per]) for g in range(G)]
            keep = sorted(range(G), key=lambda g: (-best[g], g))[:tc["topk_group"]]
            choice = [c if e // per in keep else 0.0 for e, c in enumerate(choice)]
        top = sorted(range(E), key=lambda e: (-choice[e], e))[:K]
        return top, [p[e] * tc.get("routed_scaling_factor", 1.0) for e in top]
    s = [1.0 / (1.0 + math.exp(-v)) for v in logits]
    choice = [a + b for a, b in zip(s, bias)]
    gs = [sum(sorted(choice[g * per:(g + 1) * per])[-2:]) for g in range(G)]
    keep = sorted(range(G), key=lambda g: (-gs[g], g))[:tc.get("topk_group") or 1]
    choice = [c if e // per in keep else 0.0 for e, c in enumerate(choice)]
    top = sorted(range(E), key=lambda e: (-choice[e], e))[:K]
    wts = [s[e] for e in top]
    if tc.get("norm_topk_prob", True):
        den = sum(wts) + 1e-20
        wts = [v / den for v in wts]
    return top, [v * tc.get("routed_scaling_factor", 1.0) for v in wts]


def _gated(w, h, base):
    a, b = w.lin(h, base + ".gate_proj"), w.lin(h, base + ".up_proj")
    return w.lin([_silu(x) * y for x, y in zip(a, b)], base + ".down_proj")


def _expert(w, p, e, h, H):
    fused = p + "mlp.experts.gate_up_proj"
    if not w.has(fused):
        return _gated(w, h, p + "mlp.experts.%d" % e)
    _, I2, _ = w.ck.tensors[fused].shape
    GU, DN = w.vals(fused), w.vals(p + "mlp.experts.down_proj")
    gu = [sum(GU[(e * I2 + o) * H + i] * h[i] for i in range(H)) for o in range(I2)]
    I = I2 // 2
    z = [_silu(gu[j]) * gu[I + j] for j in range(I)]
    return [sum(DN[(e * H + o) * I + j] * z[j] for j in range(I)) for o in range(H)]


def _ffn(w, mt, tc, p, h, layer):
    H = len(h)
    if mt == "glm4":
        gu = w.lin(h, p + "mlp.gate_up_proj")
        n = len(gu) // 2
        return w.lin([_silu(gu[i]) * gu[n + i] for i in range(n)], p + "mlp.down_proj")
    if not w.has(p + "mlp.gate.weight"):
        return _gated(w, h, p + "mlp")
    logits = w.lin(h, p + "mlp.gate")
    bias = w.gain(p + "mlp.gate.e_score_correction_bias") or [0.0] * len(logits)
    top, wts = _route(mt, tc, logits, bias)
    out = [0.0] * H
    for e, we in zip(top, wts):
        out = [a + we * b for a, b in zip(out, _expert(w, p, e, h, H))]
    if w.has(p + "mlp.shared_experts.gate_proj.weight") or w.has(p + "mlp.shared_experts.gate_proj.weight_packed"):
        out = [a + b for a, b in zip(out, _gated(w, h, p + "mlp.shared_experts"))]
    return out


def forward(ck, tokens):
    cfg = ck.config
    mt = cfg["model_type"]
    tc, w = text_config(cfg), _W(ck)
    pre = next(r for r in ("model.", "language_model.model.") if w.has(r + "embed_tokens.weight"))
    H, L = tc["hidden_size"], tc["num_hidden_layers"]
    eps = tc.get("rms_norm_eps", EPS.get(mt, 1e-6))
    E = w.vals(pre + "embed_tokens.weight")
    xs = [E[t * H:(t + 1) * H] for t in tokens]
    state = {}
    for layer in range(L):
        p = "%slayers.%d." % (pre, layer)
        hs = [_rms(x, w.gain(p + "input_layernorm.weight"), eps) for x in xs]
        a = _mla(w, mt, tc, p, hs, layer, state) if mt in MLA else _gqa(w, mt, tc, p, hs)
        if mt == "glm4":
            a = [_rms(v, w.gain(p + "post_self_attn_layernorm.weight"), eps) for v in a]
        xs = [[u + v for u, v in zip(x, ai)] for x, ai in zip(xs, a)]
        new = []
        for x in xs:
            y = _ffn(w, mt, tc, p, _rms(x, w.gain(p + "post_attention_layernorm.weight"), eps), layer)
            if mt == "glm4":
                y = _rms(y, w.gain(p + "post_mlp_layernorm.weight"), eps)
            new.append([u + v for u, v in zip(x, y)])
        xs = new
    head = "language_model.lm_head.weight" if pre.startswith("language_model.") else "lm_head.weight"
    tied = cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    if tied or not w.has(head):
        head = pre + "embed_tokens.weight"
    Wh = w.vals(head)
    V = len(Wh) // H
    out = []
    for x in xs:
        h = _rms(x, w.gain(pre + "norm.weight"), eps)
        out.append([sum(Wh[v * H + j] * h[j] for j in range(H)) for v in range(V)])
    return out


# ------------------------------------------------------------------ registration

for _f in FAMILIES:
    fixtures.register_family(_f, build, ARCH[_f], tied=False)
    expect.EXTRA_LAYER_PLANS[_f] = plan(_f)
    ref_forward.EXTRA_FORWARD[_f] = forward
    if _f not in expect.SUPPORTED:
        expect.SUPPORTED.append(_f)
expect.COMPOSITE.add("kimi_k25")
