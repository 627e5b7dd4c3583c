"""zoo_oss_llama4.py -- gpt-oss and Llama 4 (issue 12, zoo group c).

Standard library only.  Written from the transformers modeling code as
docs/architectures.md §gpt_oss and §llama4 describe it (modeling_gpt_oss.py,
integrations/mxfp4.py, modeling_llama4.py, configuration_*.py), not from
src/: a generator of tiny checkpoints in each on-disk layout, the layer plan
expect.py folds by, and a plain reference forward pass for ref_forward.py.

Families and their options (build_model(family, ..., **opt)):
  gpt_oss      quant="mxfp4": experts as the released checkpoints store them,
                 *_blocks U8 [E, out, in/32, 16] + *_scales U8 [E, out, in/32]
                 (E8M0); default: BF16/F32 [E, H, 2I] / [E, I, H] as
                 save_pretrained writes a dequantized model;
               layer_types=None: leave the key out (GptOssConfig's default
                 pattern: even layers sliding);
               clamp=True: expert biases of +-12, beyond swiglu_limit (7).
  llama4_text  Llama4ForCausalLM under model.;
  llama4       Llama4ForConditionalGeneration: text_config, tensors under
                 layout="language_model.model" (default, the released
                 layout) or "model.language_model", plus a small vision
                 tower and projector that pass through.
  both Llama 4: experts="fused" (default, [E, H, 2I]) or "per_expert"
                 (llm-compressor's unpacked Linears); derived=True leaves
                 moe_layers, no_rope_layers and layer_types out (the config
                 class derives them); top_k, moe_step, chunk.
"""

import math

import expect
import fixtures
import ref_forward
from fixtures import Model, Tensor, TORCH_DTYPE, _Gen, decode_values

QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]

# ------------------------------------------------------------------ gpt-oss


def _oss_config(dtype, tied, L, H, V, opt):
    cfg = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": H, "intermediate_size": opt.get("intermediate", 32), "num_hidden_layers": L,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": V,
        "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": opt.get("window", 3),
        "rope_theta": 150000.0, "max_position_embeddings": 256,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 8},
        "rms_norm_eps": 1e-5, "attention_bias": True, "hidden_act": "silu", "swiglu_limit": 7.0,
        "router_aux_loss_coef": 0.9, "tie_word_embeddings": tied, "torch_dtype": TORCH_DTYPE[dtype],
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "5.2.0",
    }
    if opt.get("layer_types", True) is not None:
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
    return cfg


def _mxfp4(g, name, E, rows, cols):
    """MXFP4 blocks and scales for E [rows, cols] matrices (cols % 32 == 0):
    random e2m1 codes, scales 2^-6 .. 2^-3 so that the decoded weights have
    trained-looking magnitudes."""
    nb = cols // 32
    g.m.tensors[name + "_blocks"] = Tensor("U8", (E, rows, nb, 16),
                                           bytes(g.rng.randrange(256) for _ in range(E * rows * nb * 16)))
    g.m.tensors[name + "_scales"] = Tensor("U8", (E, rows, nb),
                                           bytes(g.rng.randrange(121, 125) for _ in range(E * rows * nb)))


def build_gpt_oss(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    L, H, V = layers or 2, hidden, vocab
    cfg = _oss_config(dtype, tied, L, H, V, opt)
    nh, nkv, hd, E, I = 4, 2, 8, cfg["num_local_experts"], cfg["intermediate_size"]
    m = Model(family, cfg)
    g = _Gen(m, seed, dtype, norm_dtype, False)
    mx = opt.get("quant") == "mxfp4"
    if mx:
        if H % 32 or I % 32:
            raise ValueError("MXFP4 needs hidden and intermediate sizes divisible by 32")
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    g.mat("model.embed_tokens.weight", (V, H))
    for i in range(L):
        p = "model.layers.%d." % i
        g.norm(p + "input_layernorm.weight", (H,))
        g.norm(p + "post_attention_layernorm.weight", (H,))
        for n, rows in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
            g.mat(p + "self_attn.%s.weight" % n, (rows, H))
            g.bias(p + "self_attn.%s.bias" % n, rows)
        g.mat(p + "self_attn.o_proj.weight", (H, nh * hd))
        g.bias(p + "self_attn.o_proj.bias", H)
        g.vec(p + "self_attn.sinks", nh, -1.0, 2.0, dtype)
        g.mat(p + "mlp.router.weight", (E, H))
        g.bias(p + "mlp.router.bias", E)
        ex = p + "mlp.experts."
        if mx:
            _mxfp4(g, ex + "gate_up_proj", E, 2 * I, H)
            _mxfp4(g, ex + "down_proj", E, H, I)
        else:
            # trained-looking: ~ 1/sqrt(fan-in), as verify_fixtures.tame
            # scales the 2-D matrices
            g.mat(ex + "gate_up_proj", (E, H, 2 * I), scale=2.0 ** -round(math.log2(H) / 2))
            g.mat(ex + "down_proj", (E, I, H), scale=2.0 ** -round(math.log2(I) / 2))
        # wide biases push gate and up past the clamp (+-swiglu_limit)
        span = 12.0 if opt.get("clamp") else 0.3
        g.vec(ex + "gate_up_proj_bias", E * 2 * I, -span, span, dtype)
        m.tensors[ex + "gate_up_proj_bias"] = Tensor(dtype, (E, 2 * I), m.tensors[ex + "gate_up_proj_bias"].data)
        g.bias(ex + "down_proj_bias", E * H)
        m.tensors[ex + "down_proj_bias"] = Tensor(dtype, (E, H), m.tensors[ex + "down_proj_bias"].data)
    g.norm("model.norm.weight", (H,))
    if not tied:
        g.mat("lm_head.weight", (V, H))
    return m


def plan_gpt_oss(tc, i, has):
    """GptOssDecoderLayer: every layer sparse; the experts [E, H, 2I] read
    the norm along axis 1."""
    return [("input_layernorm", QKV),
            ("post_attention_layernorm", ["mlp.router", ("mlp.experts.gate_up_proj", "middle")])], []


# ------------------------------------------------------------------ Llama 4


def _llama4_text_config(dtype, tied, L, H, V, opt):
    step = opt.get("moe_step", 2)
    tc = {
        "model_type": "llama4_text", "hidden_size": H, "intermediate_size": 24, "intermediate_size_mlp": 40,
        "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": V, "num_local_experts": 3, "num_experts_per_tok": opt.get("top_k", 1),
        "interleave_moe_layer_step": step, "use_qk_norm": opt.get("qk_norm", True),
        "attention_chunk_size": opt.get("chunk", 3), "attn_temperature_tuning": True, "floor_scale": 2,
        "attn_scale": 0.1, "rope_theta": 500000.0, "max_position_embeddings": 256,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16},
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": tied,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    if not opt.get("derived"):
        # what save_pretrained writes: the derived lists spelled out
        tc["moe_layers"] = list(range(step - 1, L, step))
        tc["no_rope_layers"] = [int((j + 1) % 4 != 0) for j in range(L)]
        tc["layer_types"] = ["chunked_attention" if r else "full_attention" for r in tc["no_rope_layers"]]
    return tc


def _vision(g, vp, mp, H):
    """A one-layer Llama4VisionModel and the projector: LayerNorms with
    biases named like the decoder's norms, which must pass through."""
    Hv = 16
    g.mat(vp + "patch_embedding.linear.weight", (Hv, 48))
    g.bias(vp + "class_embedding", Hv)
    g.mat(vp + "positional_embedding_vlm", (5, Hv))
    for ln in ("layernorm_pre", "layernorm_post", "model.layers.0.input_layernorm",
               "model.layers.0.post_attention_layernorm"):
        g.vec(vp + ln + ".weight", Hv, 0.5, 2.5, g.norm_dtype)
        g.bias(vp + ln + ".bias", Hv)
    for lin in ("q_proj", "k_proj", "v_proj", "o_proj"):
        g.mat(vp + "model.layers.0.self_attn.%s.weight" % lin, (Hv, Hv))
        g.bias(vp + "model.layers.0.self_attn.%s.bias" % lin, Hv)
    g.mat(vp + "model.layers.0.mlp.fc1.weight", (32, Hv))
    g.mat(vp + "model.layers.0.mlp.fc2.weight", (Hv, 32))
    g.mat(vp + "vision_adapter.mlp.fc1.weight", (32, 64))
    g.mat(mp + "linear_1.weight", (H, 32))


def _llama4_moe(g, p, tc, per_expert):
    H, I, E = tc["hidden_size"], tc["intermediate_size"], tc["num_local_experts"]
    g.mat(p + "feed_forward.router.weight", (E, H))
    ex = p + "feed_forward.experts."
    sc_h, sc_i = 2.0 ** -round(math.log2(H) / 2), 2.0 ** -round(math.log2(I) / 2)
    if per_expert:
        for e in range(E):
            g.mat(ex + "%d.gate_proj.weight" % e, (I, H))
            g.mat(ex + "%d.up_proj.weight" % e, (I, H))
            g.mat(ex + "%d.down_proj.weight" % e, (H, I))
    else:
        g.mat(ex + "gate_up_proj", (E, H, 2 * I), scale=sc_h)
        g.mat(ex + "down_proj", (E, I, H), scale=sc_i)
    for n, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
        g.mat(p + "feed_forward.shared_expert.%s.weight" % n, shape)


def build_llama4(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    L, H, V = layers or 4, hidden, vocab
    tc = _llama4_text_config(dtype, tied, L, H, V, opt)
    pre, head = "model.", "lm_head.weight"
    if family == "llama4_text":
        cfg = dict(tc, architectures=["Llama4ForCausalLM"], torch_dtype=TORCH_DTYPE[dtype],
                   transformers_version="5.2.0")
    else:
        layout = opt.get("layout", "language_model.model")
        pre, head = ("language_model.model.", "language_model.lm_head.weight") if layout == "language_model.model" \
            else ("model.language_model.", "lm_head.weight")
        cfg = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "text_config": tc,
               "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 16, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 32, "norm_eps": 1e-5},
               "boi_token_index": 3, "eoi_token_index": 4, "image_token_index": 5, "tie_word_embeddings": tied,
               "torch_dtype": TORCH_DTYPE[dtype], "transformers_version": "5.2.0"}
    m = Model(family, cfg)
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", head, pre
    g = _Gen(m, seed, dtype, norm_dtype, False)
    g.mat(pre + "embed_tokens.weight", (V, H))
    moe_layers = range(tc["interleave_moe_layer_step"] - 1, L, tc["interleave_moe_layer_step"])
    for i in range(L):
        p = "%slayers.%d." % (pre, i)
        g.norm(p + "input_layernorm.weight", (H,))
        g.norm(p + "post_attention_layernorm.weight", (H,))
        for n, rows in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16)):
            g.mat(p + "self_attn.%s.weight" % n, (rows, H))
        g.mat(p + "self_attn.o_proj.weight", (H, 32))
        if i in moe_layers:
            _llama4_moe(g, p, tc, opt.get("experts") == "per_expert")
        else:
            Id = tc["intermediate_size_mlp"]
            for n, shape in (("gate_proj", (Id, H)), ("up_proj", (Id, H)), ("down_proj", (H, Id))):
                g.mat(p + "feed_forward.%s.weight" % n, shape)
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat(head, (V, H))
    if family == "llama4":
        vroot = "" if pre.startswith("language_model.") else "model."
        _vision(g, vroot + "vision_model.", vroot + "multi_modal_projector.", H)
    return m


def _llama4_sparse(tc, i):
    """Llama4TextConfig.moe_layers, or range(step - 1, L, step)."""
    if tc.get("moe_layers") is not None:
        return i in tc["moe_layers"]
    step = tc.get("interleave_moe_layer_step", 1)
    return i in range(step - 1, tc["num_hidden_layers"], step)


def plan_llama4(tc, i, has):
    """Llama4TextDecoderLayer: the MoE block (router, experts, shared
    expert) or the dense MLP reads post_attention_layernorm."""
    ff = "feed_forward."
    if not _llama4_sparse(tc, i):
        mlp = [ff + "gate_proj", ff + "up_proj"]
    elif has(ff + "experts.gate_up_proj"):
        mlp = [ff + "router", (ff + "experts.gate_up_proj", "middle")]
    else:
        mlp = [ff + "router"]
        for e in range(tc["num_local_experts"]):
            mlp += [ff + "experts.%d.gate_proj" % e, ff + "experts.%d.up_proj" % e]
    if _llama4_sparse(tc, i):
        mlp += [ff + "shared_expert.gate_proj", ff + "shared_expert.up_proj"]
    return [("input_layernorm", QKV), ("post_attention_layernorm", mlp)], []


# ------------------------------------------------------------------ reference forward

class _W(ref_forward._M):
    """ref_forward's tensor reader (exact floats, nn.Linear with bias),
    plus norms that may be absent and shapes."""

    def gain(self, name):
        """A norm's weight, or None where the checkpoint has none (a folded
        output without --keep-norms: the identity)."""
        return self.vals(name) if self.has(name) else None

    def shape(self, name):
        return self.ck.tensors[name].shape


def _rms(x, w, eps):
    """x / sqrt(mean(x^2) + eps), times the gain w (None: weightless)."""
    r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    if w is None:
        return [v * r for v in x]
    return [v * r * g for v, g in zip(x, w)]


def _attend(qs, ks, vs, nh, nkv, hd, visible, sinks=None):
    """softmax(q k / sqrt(hd)) v per head over the visible keys, with a sink
    logit per head in the denominator when given."""
    outs = []
    for i in range(len(qs)):
        ctx = []
        for h in range(nh):
            kh = h // (nh // nkv)
            js = [j for j in range(i + 1) if visible(i, j)]
            sc = [sum(qs[i][h * hd + c] * ks[j][kh * hd + c] for c in range(hd)) / math.sqrt(hd) for j in js]
            mx = max(sc + ([sinks[h]] if sinks else []))
            e = [math.exp(s - mx) for s in sc]
            z = sum(e) + (math.exp(sinks[h] - mx) if sinks else 0.0)
            ctx += [sum(e[n] / z * vs[j][kh * hd + c] for n, j in enumerate(js)) for c in range(hd)]
        outs.append(ctx)
    return outs


def _logits(w, xs, norm, head, eps):
    V, H = w.shape(head)
    W = w.vals(head)
    out = []
    for x in xs:
        h = _rms(x, w.gain(norm), eps)
        out.append([sum(W[v * H + j] * h[j] for j in range(H)) for v in range(V)])
    return out


def _mxfp4_matrix(w, base, e):
    """Expert e of an MXFP4 pair as rows [out][in] (convert_moe_packed_tensors:
    low nibble first, value * 2^(scale - 127))."""
    lut = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    bt, st = w.ck.tensors[base + "_blocks"], w.ck.tensors[base + "_scales"]
    _, rows, nb, _ = bt.shape
    out = []
    for r in range(rows):
        row = []
        for b in range(nb):
            k = (e * rows + r) * nb + b
            s = st.data[k] - 127
            for byte in bt.data[k * 16:(k + 1) * 16]:
                row += [math.ldexp(lut[byte & 15], s), math.ldexp(lut[byte >> 4], s)]
        out.append(row)
    return out


def _oss_expert(w, tc, p, e, x):
    """GptOssExperts for one expert: interleaved gate/up, the clamped SwiGLU
    with alpha 1.702 and (up + 1), biases."""
    H, ex = tc["hidden_size"], p + "mlp.experts."
    limit = tc.get("swiglu_limit", 7.0)
    if w.has(ex + "gate_up_proj"):
        _, _, I2 = w.shape(ex + "gate_up_proj")
        W = w.vals(ex + "gate_up_proj")
        gu = [sum(x[j] * W[(e * H + j) * I2 + o] for j in range(H)) for o in range(I2)]
    else:
        M = _mxfp4_matrix(w, ex + "gate_up_proj", e)      # [2I][H]
        I2 = len(M)
        gu = [sum(M[o][j] * x[j] for j in range(H)) for o in range(I2)]
    b = w.vals(ex + "gate_up_proj_bias")[e * I2:(e + 1) * I2]
    gu = [a + c for a, c in zip(gu, b)]
    z = []
    for i in range(I2 // 2):
        g = min(gu[2 * i], limit)
        u = max(min(gu[2 * i + 1], limit), -limit)
        z.append((u + 1.0) * g / (1.0 + math.exp(-1.702 * g)))
    I = len(z)
    if w.has(ex + "down_proj"):
        D = w.vals(ex + "down_proj")
        y = [sum(z[j] * D[(e * I + j) * H + o] for j in range(I)) for o in range(H)]
    else:
        M = _mxfp4_matrix(w, ex + "down_proj", e)          # [H][I]
        y = [sum(M[o][j] * z[j] for j in range(I)) for o in range(H)]
    return [a + c for a, c in zip(y, w.vals(ex + "down_proj_bias")[e * H:(e + 1) * H])]


def _rope_half(v, pos, fr, af):
    """rotate-half RoPE (first half with second), cos/sin times af."""
    half = len(fr)
    out = list(v)
    for i in range(half):
        c, s = math.cos(pos * fr[i]) * af, math.sin(pos * fr[i]) * af
        out[i], out[i + half] = v[i] * c - v[i + half] * s, v[i + half] * c + v[i] * s
    return out


def forward_gpt_oss(ck, tokens):
    tc, w = ck.config, _W(ck)
    H, nh, nkv, hd, L = (tc[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                         "head_dim", "num_hidden_layers"))
    eps, K = tc.get("rms_norm_eps", 1e-5), tc.get("num_experts_per_tok", 4)
    fr, af = ref_forward.rope_freqs(tc, tc.get("rope_theta", 150000.0), hd, tc.get("rope_scaling"))
    types = tc.get("layer_types") or ["sliding_attention" if j % 2 == 0 else "full_attention" for j in range(L)]
    E = w.vals("model.embed_tokens.weight")
    xs = [E[t * H:(t + 1) * H] for t in tokens]
    for layer in range(L):
        p = "model.layers.%d." % layer
        hs = [_rms(x, w.gain(p + "input_layernorm.weight"), eps) for x in xs]
        qs, ks, vs = [], [], []
        for pos, h in enumerate(hs):
            q, k = w.linear(h, p + "self_attn.q_proj"), w.linear(h, p + "self_attn.k_proj")
            qs.append(sum((_rope_half(q[j * hd:(j + 1) * hd], pos, fr, af) for j in range(nh)), []))
            ks.append(sum((_rope_half(k[j * hd:(j + 1) * hd], pos, fr, af) for j in range(nkv)), []))
            vs.append(w.linear(h, p + "self_attn.v_proj"))
        win = tc.get("sliding_window") if types[layer] == "sliding_attention" else None
        ctx = _attend(qs, ks, vs, nh, nkv, hd, lambda i, j: win is None or j > i - win,
                      sinks=w.vals(p + "self_attn.sinks"))
        xs = [[a + b for a, b in zip(x, w.linear(c, p + "self_attn.o_proj"))] for x, c in zip(xs, ctx)]
        new = []
        for x in xs:
            h = _rms(x, w.gain(p + "post_attention_layernorm.weight"), eps)
            logits = w.linear(h, p + "mlp.router")
            top = sorted(range(len(logits)), key=lambda e: (-logits[e], e))[:K]
            mx = max(logits[e] for e in top)
            z = sum(math.exp(logits[e] - mx) for e in top)
            y = [0.0] * H
            for e in top:
                ye = _oss_expert(w, tc, p, e, h)
                y = [a + math.exp(logits[e] - mx) / z * b for a, b in zip(y, ye)]
            new.append([a + b for a, b in zip(x, y)])
        xs = new
    head = "lm_head.weight" if not tc.get("tie_word_embeddings") else "model.embed_tokens.weight"
    return _logits(w, xs, "model.norm.weight", head, eps)


def _rope_pairs(v, pos, fr):
    """Llama 4's complex RoPE: pairs (2i, 2i+1) times e^(i pos f_i)."""
    out = list(v)
    for i, f in enumerate(fr):
        c, s = math.cos(pos * f), math.sin(pos * f)
        out[2 * i], out[2 * i + 1] = v[2 * i] * c - v[2 * i + 1] * s, v[2 * i] * s + v[2 * i + 1] * c
    return out


def _silu(v):
    return v / (1.0 + math.exp(-v))


def _llama4_expert(w, tc, p, e, x):
    """One routed expert on its (already scaled) input: chunk(2) of
    x @ gate_up, up * silu(gate), @ down; or the per-expert Linears."""
    H, I, ex = tc["hidden_size"], tc["intermediate_size"], p + "feed_forward.experts."
    if not w.has(ex + "gate_up_proj"):
        a = w.linear(x, ex + "%d.gate_proj" % e)
        b = w.linear(x, ex + "%d.up_proj" % e)
        return w.linear([u * _silu(g) for g, u in zip(a, b)], ex + "%d.down_proj" % e)
    W, D = w.vals(ex + "gate_up_proj"), w.vals(ex + "down_proj")
    gu = [sum(x[j] * W[(e * H + j) * 2 * I + o] for j in range(H)) for o in range(2 * I)]
    z = [gu[I + i] * _silu(gu[i]) for i in range(I)]
    return [sum(z[j] * D[(e * I + j) * H + o] for j in range(I)) for o in range(H)]


def _mlp(w, x, name):
    a, b = w.linear(x, name + ".gate_proj"), w.linear(x, name + ".up_proj")
    return w.linear([_silu(g) * u for g, u in zip(a, b)], name + ".down_proj")


def _llama4_ffn(w, tc, p, h, layer):
    if not _llama4_sparse(tc, layer):
        return _mlp(w, h, p + "feed_forward")
    logits = w.linear(h, p + "feed_forward.router")
    top = sorted(range(len(logits)), key=lambda e: (-logits[e], e))[:tc.get("num_experts_per_tok", 1)]
    y = _mlp(w, h, p + "feed_forward.shared_expert")
    for e in top:
        s = 1.0 / (1.0 + math.exp(-logits[e]))
        y = [a + b for a, b in zip(y, _llama4_expert(w, tc, p, e, [v * s for v in h]))]
    return y


def forward_llama4(ck, tokens):
    cfg = ck.config
    tc, w = cfg.get("text_config", cfg) if cfg["model_type"] == "llama4" else cfg, _W(ck)
    pre = next(r for r in ("model.", "language_model.model.", "model.language_model.")
               if w.has(r + "embed_tokens.weight"))
    H, nh, nkv, hd, L = (tc[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                         "head_dim", "num_hidden_layers"))
    eps = tc.get("rms_norm_eps", 1e-5)
    fr, _ = ref_forward.rope_freqs(tc, tc.get("rope_theta", 500000.0), hd, tc.get("rope_scaling"))
    rope = tc.get("no_rope_layers") or [int((j + 1) % tc.get("no_rope_layer_interval", 4) != 0) for j in range(L)]
    types = tc.get("layer_types") or ["chunked_attention" if r else "full_attention" for r in rope]
    chunk = tc.get("attention_chunk_size", 8192)
    E = w.vals(pre + "embed_tokens.weight")
    xs = [E[t * H:(t + 1) * H] for t in tokens]
    for layer in range(L):
        p = "%slayers.%d." % (pre, layer)
        hs = [_rms(x, w.gain(p + "input_layernorm.weight"), eps) for x in xs]
        qs, ks, vs = [], [], []
        for pos, h in enumerate(hs):
            q, k = w.linear(h, p + "self_attn.q_proj"), w.linear(h, p + "self_attn.k_proj")
            q = [q[j * hd:(j + 1) * hd] for j in range(nh)]
            k = [k[j * hd:(j + 1) * hd] for j in range(nkv)]
            if rope[layer]:
                q, k = [_rope_pairs(v, pos, fr) for v in q], [_rope_pairs(v, pos, fr) for v in k]
                if tc.get("use_qk_norm", True):
                    q, k = [_rms(v, None, eps) for v in q], [_rms(v, None, eps) for v in k]
            elif tc.get("attn_temperature_tuning", 4):
                t = math.log(math.floor((pos + 1) / tc.get("floor_scale", 8192)) + 1) * tc.get("attn_scale", 0.1) + 1
                q = [[v * t for v in hq] for hq in q]
            qs.append(sum(q, []))
            ks.append(sum(k, []))
            vs.append(w.linear(h, p + "self_attn.v_proj"))
        local = types[layer] == "chunked_attention"
        ctx = _attend(qs, ks, vs, nh, nkv, hd, lambda i, j: not local or i // chunk == j // chunk)
        xs = [[a + b for a, b in zip(x, w.linear(c, p + "self_attn.o_proj"))] for x, c in zip(xs, ctx)]
        xs = [[a + b for a, b in zip(x, _llama4_ffn(w, tc, p, _rms(x, w.gain(p + "post_attention_layernorm.weight"),
                                                                    eps), layer))] for x in xs]
    head = "lm_head.weight" if pre != "language_model.model." else "language_model.lm_head.weight"
    if cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)):
        head = pre + "embed_tokens.weight"
    return _logits(w, xs, pre + "norm.weight", head, eps)


# ------------------------------------------------------------------ registration

fixtures.register_family("gpt_oss", build_gpt_oss, "GptOssForCausalLM")
fixtures.register_family("llama4_text", build_llama4, "Llama4ForCausalLM")
fixtures.register_family("llama4", build_llama4, "Llama4ForConditionalGeneration")
expect.EXTRA_LAYER_PLANS.update(gpt_oss=plan_gpt_oss, llama4_text=plan_llama4, llama4=plan_llama4)
expect.COMPOSITE.add("llama4")
for _mt in ("gpt_oss", "llama4_text", "llama4"):
    if _mt not in expect.SUPPORTED:
        expect.SUPPORTED.append(_mt)
ref_forward.EXTRA_FORWARD.update(gpt_oss=forward_gpt_oss, llama4_text=forward_llama4, llama4=forward_llama4)
