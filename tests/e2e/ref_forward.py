"""ref_forward.py -- a second, deliberately plain reference forward pass.

Pure Python (double precision, lists), written from the Hugging Face
modeling classes (models/<family>/modeling_<family>.py) independently of
src/forward.c, for the tiny generated models of fixtures.py.  test_forward_
families.py compares the C pass (`flashify verify --dump-logits`) with it.

ref_logits(ck, tokens) -> [[logit] * vocab] * len(tokens), where ck is a
fixtures.Checkpoint (read_checkpoint).
"""

import math
import struct

from fixtures import decode_values

GEMMA = ("gemma", "gemma2", "gemma3_text")


def _round_to(dtype, x):
    if dtype == "F32":
        return struct.unpack("<f", struct.pack("<f", x))[0]
    if dtype == "F16":
        return struct.unpack("<e", struct.pack("<e", x))[0]
    if dtype == "BF16":
        # round to nearest even on the top 16 bits of the float32 (x here is
        # sqrt(hidden): a normal number, and float32 rounding of it is exact
        # enough that the double rounding cannot hit a tie)
        b = struct.unpack("<I", struct.pack("<f", x))[0]
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        return struct.unpack("<f", struct.pack("<I", b << 16))[0]
    return x


class _M:
    def __init__(self, ck):
        self.ck = ck
        cfg = ck.config
        # only composite types read text_config (a stray one is ignored)
        self.tc = cfg["text_config"] if cfg.get("model_type") == "gemma3" and "text_config" in cfg else cfg
        self.mt = self.tc["model_type"]
        self.cache = {}

    def has(self, name):
        return name in self.ck.tensors

    def vals(self, name):
        if name not in self.cache:
            t = self.ck.tensors[name]
            self.cache[name] = decode_values(t.dtype, t.data)
        return self.cache[name]

    def linear(self, x, name):
        """nn.Linear: y[o] = sum_i W[o, i] x[i] (+ bias)."""
        t = self.ck.tensors[name + ".weight"]
        rows, cols = t.shape
        w = self.vals(name + ".weight")
        y = [sum(w[o * cols + i] * x[i] for i in range(cols)) for o in range(rows)]
        if self.has(name + ".bias"):
            b = self.vals(name + ".bias")
            y = [a + c for a, c in zip(y, b)]
        return y

    def norm(self, x, name, eps, centred=False, gemma=False, weight_offset=0):
        n = len(x)
        mu = sum(x) / n if centred else 0.0
        var = sum((v - mu) ** 2 for v in x) / n
        r = 1.0 / math.sqrt(var + eps)
        xh = [(v - mu) * r for v in x]
        if name is None or not self.has(name):
            return xh
        w = self.vals(name)[weight_offset:weight_offset + n]
        return [a * ((1.0 + g) if gemma else g) for a, g in zip(xh, w)]


def _act(name, x):
    if name in ("silu", "swish"):
        return x / (1.0 + math.exp(-x))
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def rope_freqs(tc, base, dim, sc):
    """(inv_freq list, attention factor) as modeling_rope_utils.py computes
    them for short sequences."""
    inv = [1.0 / base ** (2 * i / dim) for i in range(dim // 2)]
    if not sc:
        return inv, 1.0
    t = sc.get("rope_type", sc.get("type", "default"))
    f = sc.get("factor", 1.0)
    if t in ("default", "dynamic"):
        return inv, 1.0
    if t == "linear":
        return [v / f for v in inv], 1.0
    if t == "llama3":
        lf, hf, old = sc["low_freq_factor"], sc["high_freq_factor"], sc["original_max_position_embeddings"]
        out = []
        for v in inv:
            wl = 2 * math.pi / v
            if wl < old / hf:
                out.append(v)
            elif wl > old / lf:
                out.append(v / f)
            else:
                s = (old / wl - lf) / (hf - lf)
                out.append((1 - s) * v / f + s * v)
        return out, 1.0
    if t == "yarn":
        orig = sc.get("original_max_position_embeddings") or tc["max_position_embeddings"]

        def ms(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        af = sc.get("attention_factor")
        if af is None:
            af = ms(f, sc["mscale"]) / ms(f, sc["mscale_all_dim"]) \
                if sc.get("mscale") and sc.get("mscale_all_dim") else ms(f)
        bf, bs = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

        def corr(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = corr(bf), corr(bs)
        if sc.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        out = []
        for i in range(dim // 2):
            pf = base ** (2 * i / dim)
            extra = 1 - min(max((i - lo) / (hi - lo), 0), 1)
            out.append(1 / (f * pf) * (1 - extra) + 1 / pf * extra)
        return out, af
    if t == "longrope":
        if "original_max_position_embeddings" in tc:
            orig = tc["original_max_position_embeddings"]
            f = tc["max_position_embeddings"] / orig
        else:
            orig = tc["max_position_embeddings"]
        af = sc.get("attention_factor")
        if af is None:
            af = 1.0 if f <= 1 else math.sqrt(1 + math.log(f) / math.log(orig))
        return [1.0 / (e * base ** (2 * i / dim)) for i, e in enumerate(sc["short_factor"])], af
    raise ValueError("rope type " + t)


# Reference forward passes of the families in tests/e2e/zoo_*.py:
# model_type -> fn(ck, tokens) returning the logits ref_logits returns.
EXTRA_FORWARD = {}


def ref_logits(ck, tokens):
    m = _M(ck)
    tc, mt = m.tc, m.mt
    if mt in EXTRA_FORWARD:
        return EXTRA_FORWARD[mt](ck, tokens)
    H = tc["hidden_size"]
    nh = tc["num_attention_heads"]
    nkv = tc.get("num_key_value_heads") or nh
    hd = tc.get("head_dim") or H // nh
    L = tc["num_hidden_layers"]
    gemma = mt in GEMMA
    centred = mt == "cohere"
    eps = tc.get("layer_norm_eps", 1e-5) if centred else tc.get("rms_norm_eps", 1e-6)
    act = tc.get("hidden_activation") or "gelu_pytorch_tanh" if gemma else tc.get("hidden_act", "silu")
    pre = next(p for p in ("model.", "language_model.model.", "model.language_model.", "model.text_model.")
               if m.has(p + "embed_tokens.weight"))
    emb_t = ck.tensors[pre + "embed_tokens.weight"]
    V = emb_t.shape[0]
    rot = int(hd * tc.get("partial_rotary_factor", 1.0))
    rot -= rot % 2

    f_global, af = rope_freqs(tc, tc.get("rope_theta", 10000.0), rot, tc.get("rope_scaling"))
    f_local, _ = rope_freqs(tc, tc.get("rope_local_base_freq", 10000.0), rot, None)
    scale = 1.0 / math.sqrt(hd)
    if mt in ("gemma2", "gemma3_text"):
        scale = tc.get("query_pre_attn_scalar", 256) ** -0.5
    if mt == "granite":
        scale = tc.get("attention_multiplier", 1.0)
    attn_cap = tc.get("attn_logit_softcapping") if mt in ("gemma2", "gemma3_text") else None
    res_mult = tc.get("residual_multiplier", 1.0) if mt == "granite" else 1.0

    # embeddings
    E = m.vals(pre + "embed_tokens.weight")
    xs = [E[t * H:(t + 1) * H] for t in tokens]
    if gemma:
        s = _round_to(emb_t.dtype, math.sqrt(H))
        xs = [[v * s for v in x] for x in xs]
    if mt == "granite":
        xs = [[v * tc.get("embedding_multiplier", 1.0) for v in x] for x in xs]

    def rope(v, pos, fr):
        v = list(v)
        for i in range(rot // 2):
            a, b = (2 * i, 2 * i + 1) if mt == "cohere" else (i, i + rot // 2)
            c, s_ = math.cos(pos * fr[i]) * af, math.sin(pos * fr[i]) * af
            v[a], v[b] = v[a] * c - v[b] * s_, v[b] * c + v[a] * s_
        return v

    def mla(p, hs):
        """DeepseekV3Attention, with apply_rotary_pos_emb_interleave done
        literally: de-interleave (view d/2 x 2, transpose), then rotate_half."""
        nope, R, vd, klr = tc["qk_nope_head_dim"], tc["qk_rope_head_dim"], tc["v_head_dim"], tc["kv_lora_rank"]
        qk = nope + R
        fr, maf = rope_freqs(tc, tc.get("rope_theta", 10000.0), R, tc.get("rope_scaling"))
        sc_ = tc.get("rope_scaling") or {}
        qscale = qk ** -0.5
        if sc_.get("mscale_all_dim"):
            qscale *= (0.1 * sc_["mscale_all_dim"] * math.log(sc_["factor"]) + 1.0) ** 2

        def rot(x, pos):
            y = [x[2 * i] for i in range(R // 2)] + [x[2 * i + 1] for i in range(R // 2)]
            out = list(y)
            for i in range(R // 2):
                c, s_ = math.cos(pos * fr[i]) * maf, math.sin(pos * fr[i]) * maf
                out[i] = y[i] * c - y[i + R // 2] * s_
                out[i + R // 2] = y[i + R // 2] * c + y[i] * s_
            return out
        Q, K, Vs = [], [], []
        for pos, h in enumerate(hs):
            if m.has(p + "self_attn.q_a_proj.weight"):
                qa = m.norm(m.linear(h, p + "self_attn.q_a_proj"), p + "self_attn.q_a_layernorm.weight", 1e-6)
                q = m.linear(qa, p + "self_attn.q_b_proj")
            else:
                q = m.linear(h, p + "self_attn.q_proj")
            kva = m.linear(h, p + "self_attn.kv_a_proj_with_mqa")
            kvb = m.linear(m.norm(kva[:klr], p + "self_attn.kv_a_layernorm.weight", 1e-6), p + "self_attn.kv_b_proj")
            kr = rot(kva[klr:], pos)
            Q.append([q[j * qk:j * qk + nope] + rot(q[j * qk + nope:(j + 1) * qk], pos) for j in range(nh)])
            K.append([kvb[j * (nope + vd):j * (nope + vd) + nope] + kr for j in range(nh)])
            Vs.append([kvb[j * (nope + vd) + nope:(j + 1) * (nope + vd)] for j in range(nh)])
        outs = []
        for i in range(len(hs)):
            ctx = []
            for h in range(nh):
                sc = [sum(a * b for a, b in zip(Q[i][h], K[j][h])) * qscale for j in range(i + 1)]
                mx = max(sc)
                e = [math.exp(v - mx) for v in sc]
                z = sum(e)
                ctx += [sum(e[j] / z * Vs[j][h][c] for j in range(i + 1)) for c in range(vd)]
            outs.append(m.linear(ctx, p + "self_attn.o_proj"))
        return outs

    def attention(p, hs, layer):
        if mt == "deepseek_v3":
            return mla(p, hs)
        sliding = False
        if mt == "gemma3_text":
            sliding = (layer + 1) % tc.get("sliding_window_pattern", 6) != 0
        fr = f_local if sliding else f_global
        qs, ks, vs = [], [], []
        for h in hs:
            if m.has(p + "self_attn.qkv_proj.weight"):
                qkv = m.linear(h, p + "self_attn.qkv_proj")
                q, k, v = qkv[:nh * hd], qkv[nh * hd:(nh + nkv) * hd], qkv[(nh + nkv) * hd:]
            else:
                q = m.linear(h, p + "self_attn.q_proj")
                k = m.linear(h, p + "self_attn.k_proj")
                v = m.linear(h, p + "self_attn.v_proj")
            qn, kn = p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"
            if mt == "olmo2":
                q, k = m.norm(q, qn, eps), m.norm(k, kn, eps)
            elif mt in ("qwen3", "qwen3_moe", "gemma3_text"):
                q = sum((m.norm(q[j * hd:(j + 1) * hd], qn, eps, gemma=gemma) for j in range(nh)), [])
                k = sum((m.norm(k[j * hd:(j + 1) * hd], kn, eps, gemma=gemma) for j in range(nkv)), [])
            elif mt == "cohere" and tc.get("use_qk_norm"):
                q = sum((m.norm(q[j * hd:(j + 1) * hd], qn, eps, centred=True, weight_offset=j * hd)
                         for j in range(nh)), [])
                k = sum((m.norm(k[j * hd:(j + 1) * hd], kn, eps, centred=True, weight_offset=j * hd)
                         for j in range(nkv)), [])
            pos = len(qs)
            use_rope = True
            if mt == "smollm3" and "no_rope_layers" in tc:
                use_rope = bool(tc["no_rope_layers"][layer])
            if use_rope:
                q = sum((rope(q[j * hd:(j + 1) * hd], pos, fr) for j in range(nh)), [])
                k = sum((rope(k[j * hd:(j + 1) * hd], pos, fr) for j in range(nkv)), [])
            qs.append(q)
            ks.append(k)
            vs.append(v)
        outs = []
        for i in range(len(hs)):
            ctx = []
            for h in range(nh):
                kh = h // (nh // nkv)
                sc = []
                for j in range(i + 1):
                    d = sum(qs[i][h * hd + c] * ks[j][kh * hd + c] for c in range(hd)) * scale
                    if attn_cap:
                        d = math.tanh(d / attn_cap) * attn_cap
                    sc.append(d)
                mx = max(sc)
                e = [math.exp(s_ - mx) for s_ in sc]
                z = sum(e)
                ctx += [sum(e[j] / z * vs[j][kh * hd + c] for j in range(i + 1)) for c in range(hd)]
            outs.append(m.linear(ctx, p + "self_attn.o_proj"))
        return outs

    def gated(h, g, u, d):
        a = m.linear(h, g)
        b = m.linear(h, u)
        return m.linear([_act(act, x) * y for x, y in zip(a, b)], d)

    def mlp(p, h):
        if m.has(p + "mlp.gate_up_proj.weight"):
            gu = m.linear(h, p + "mlp.gate_up_proj")
            n = len(gu) // 2
            return m.linear([_act(act, gu[i]) * gu[n + i] for i in range(n)], p + "mlp.down_proj")
        if m.has(p + "block_sparse_moe.gate.weight"):
            router, ex = p + "block_sparse_moe.gate", p + "block_sparse_moe.experts.%d."
            names = ("w1", "w3", "w2")
        elif m.has(p + "mlp.gate.weight"):
            router, ex = p + "mlp.gate", p + "mlp.experts.%d."
            names = ("gate_proj", "up_proj", "down_proj")
        else:
            return gated(h, p + "mlp.gate_proj", p + "mlp.up_proj", p + "mlp.down_proj")
        normalize = True if mt == "mixtral" else tc.get("norm_topk_prob", False)
        fused = p + "mlp.experts.gate_up_proj"

        def expert(e, h):
            if not m.has(fused):
                return gated(h, ex % e + names[0], ex % e + names[1], ex % e + names[2])
            # transformers 5 fused experts (conversion_mapping.py): gate_up
            # [E, 2I, H] with gate rows first, down [E, H, I]; or the
            # grouped-GEMM layout [E, H, 2I] / [E, I, H] used as x @ W
            gu_t, dn_t = ck.tensors[fused], ck.tensors[p + "mlp.experts.down_proj"]
            gu, dn = m.vals(fused), m.vals(p + "mlp.experts.down_proj")
            _, a, b = gu_t.shape
            if b == H:          # [E, 2I, H]
                I = a // 2
                y = [sum(gu[(e * a + o) * b + i] * h[i] for i in range(H)) for o in range(a)]
            else:               # [E, H, 2I]
                I = b // 2
                y = [sum(h[i] * gu[(e * a + i) * b + o] for i in range(H)) for o in range(b)]
            z = [_act(act, y[j]) * y[I + j] for j in range(I)]
            _, c, d = dn_t.shape
            if c == H:          # [E, H, I]
                return [sum(dn[(e * c + o) * d + j] * z[j] for j in range(I)) for o in range(H)]
            return [sum(z[j] * dn[(e * c + j) * d + o] for j in range(I)) for o in range(H)]
        logits = m.linear(h, router)
        if mt == "deepseek_v3":
            # DeepseekV3TopkRouter.forward / get_topk_indices
            E = len(logits)
            scores = [1.0 / (1.0 + math.exp(-v)) for v in logits]
            bias = m.vals(router + ".e_score_correction_bias") if m.has(router + ".e_score_correction_bias") \
                else [0.0] * E
            choice = [a + b for a, b in zip(scores, bias)]
            G = tc.get("n_group", 1)
            per = E // G
            gs = [sum(sorted(choice[g * per:(g + 1) * per])[-2:]) for g in range(G)]
            keep = sorted(range(G), key=lambda g: -gs[g])[:tc.get("topk_group", 1)]
            choice = [c if e // per in keep else 0.0 for e, c in enumerate(choice)]
            top = sorted(range(E), key=lambda e: (-choice[e], e))[:tc["num_experts_per_tok"]]
            w = [scores[e] for e in top]
            if tc.get("norm_topk_prob", True):
                den = sum(w) + 1e-20
                w = [v / den for v in w]
            w = [v * tc.get("routed_scaling_factor", 1.0) for v in w]
            out = [0.0] * H
            for e, we in zip(top, w):
                y = expert(e, h)
                out = [a + we * b for a, b in zip(out, y)]
            y = gated(h, p + "mlp.shared_experts.gate_proj", p + "mlp.shared_experts.up_proj",
                      p + "mlp.shared_experts.down_proj")
            return [a + b for a, b in zip(out, y)]
        mx = max(logits)
        probs = [math.exp(v - mx) for v in logits]
        z = sum(probs)
        probs = [v / z for v in probs]
        k = tc["num_experts_per_tok"]
        top = sorted(range(len(probs)), key=lambda e: (-probs[e], e))[:k]
        w = [probs[e] for e in top]
        if normalize:
            w = [v / sum(w) for v in w]
        out = [0.0] * H
        for e, we in zip(top, w):
            y = expert(e, h)
            out = [a + we * b for a, b in zip(out, y)]
        if m.has(p + "mlp.shared_expert.gate_proj.weight"):
            y = gated(h, p + "mlp.shared_expert.gate_proj", p + "mlp.shared_expert.up_proj",
                      p + "mlp.shared_expert.down_proj")
            gsc = 1.0 / (1.0 + math.exp(-m.linear(h, p + "mlp.shared_expert_gate")[0]))
            out = [a + gsc * b for a, b in zip(out, y)]
        return out

    def nrm(x, name):
        return m.norm(x, name, eps, centred=centred, gemma=gemma)

    for layer in range(L):
        p = "%slayers.%d." % (pre, layer)
        if mt == "cohere":
            hs = [nrm(x, p + "input_layernorm.weight") for x in xs]
            a = attention(p, hs, layer)
            xs = [[x0 + a0 + m0 for x0, a0, m0 in zip(x, ai, mlp(p, h))] for x, ai, h in zip(xs, a, hs)]
            continue
        if mt == "olmo2":
            a = [nrm(v, p + "post_attention_layernorm.weight") for v in attention(p, xs, layer)]
            xs = [[u + v for u, v in zip(x, ai)] for x, ai in zip(xs, a)]
            xs = [[u + v for u, v in zip(x, nrm(mlp(p, x), p + "post_feedforward_layernorm.weight"))] for x in xs]
            continue
        a = attention(p, [nrm(x, p + "input_layernorm.weight") for x in xs], layer)
        if mt in ("gemma2", "gemma3_text"):
            a = [nrm(v, p + "post_attention_layernorm.weight") for v in a]
            xs = [[u + v for u, v in zip(x, ai)] for x, ai in zip(xs, a)]
            xs = [[u + v for u, v in zip(x, nrm(mlp(p, nrm(x, p + "pre_feedforward_layernorm.weight")),
                                                p + "post_feedforward_layernorm.weight"))] for x in xs]
            continue
        xs = [[u + res_mult * v for u, v in zip(x, ai)] for x, ai in zip(xs, a)]
        xs = [[u + res_mult * v for u, v in zip(x, mlp(p, nrm(x, p + "post_attention_layernorm.weight")))]
              for x in xs]

    head = None
    for hn in ("lm_head.weight", "language_model.lm_head.weight"):
        if m.has(hn) and not ck.config.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)) \
                and not tc.get("tie_word_embeddings", False):
            head = hn
    if head is None:
        head = pre + "embed_tokens.weight"
    W = m.vals(head)
    out = []
    for x in xs:
        h = nrm(x, pre + "norm.weight")
        lg = [sum(W[v * H + i] * h[i] for i in range(H)) for v in range(V)]
        if mt == "cohere":
            lg = [v * tc.get("logit_scale", 0.0625) for v in lg]
        if mt == "granite":
            lg = [v / tc.get("logits_scaling", 1.0) for v in lg]
        cap = tc.get("final_logit_softcapping") if mt in ("gemma2", "gemma3_text") else None
        if cap:
            lg = [math.tanh(v / cap) * cap for v in lg]
        out.append(lg)
    return out


import fixtures  # noqa: E402  (the zoo modules register once this module is complete)
fixtures.zoo_ready('ref_forward')
