"""zoo_vlm.py -- the LLaVA-style VLM wrappers (issue 13): llava, llava_next,
llava_onevision, paligemma, internvl, aya_vision, idefics3, smolvlm, mllama
(and its text model mllama_text_model), written from docs/architectures.md
§vlm and the transformers files it cites -- not from src/arch.c or
src/forward*.c:

  * a generator that wraps any text family of fixtures.py (or of a zoo
    module) the way each wrapper stores it, in the Hub's original layout
    (language_model.model. + language_model.lm_head + top-level towers) and
    in the one transformers >= 4.52 writes (model.language_model., lm_head,
    model.<tower>), next to a small vision tower and projector that carry
    their own norms (random gains and biases, never folded); Mllama's text
    model with its cross-attention layers;
  * the expected fold plan per layer (expect.EXTRA_LAYER_PLANS) and the tie
    flag each wrapper class reads (expect.TIE_RULES);
  * a reference forward pass (ref_forward.EXTRA_FORWARD): the text model as
    a plain checkpoint, run by ref_forward.ref_logits -- with the wrapper's
    own lm_head (no final soft cap or logit scale), PaliGemma's
    bidirectional prompt from position 1, and Mllama's cross-attention
    layers left out, as MllamaTextModel skips them without images.

Options of build (fixtures.build_model(family, ..., **opt)):
  text: the text family (default: WRAPPERS[family]["text"]); text_opt: its
    generator's options; unnamed: leave text_config.model_type out (the
    config class default applies).
  layout: "hub" (default) or "v5"; idefics3 / smolvlm have one,
    model.text_model.
  tie_levels: where tie_word_embeddings is written: "top", "text", "both",
    "none" (default: WRAPPERS[family]["tie_levels"]); text_tie: another
    value for text_config's key.
  rope: "v5" writes rope_parameters instead of rope_theta / rope_scaling.
  cross (mllama): cross_attention_layers (default [1]; None: key left out,
    MllamaTextConfig's default list applies).
"""

import expect
import fixtures
import ref_forward
from fixtures import Checkpoint, Model, TORCH_DTYPE, _Gen

# The wrappers (docs/architectures.md §vlm): the ForConditionalGeneration
# class, the text family the fixtures use by default, the config class's
# text default (text_config without model_type), its tie_word_embeddings
# default (None: LlavaConfig's, which yields to text_config's), the tower.
WRAPPERS = {
    "llava": dict(arch="LlavaForConditionalGeneration", text="llama", class_text="llama", tie=None,
                  tower="clip", tie_levels="text"),
    "llava_next": dict(arch="LlavaNextForConditionalGeneration", text="mistral", class_text="llama", tie=None,
                       tower="clip", newline=True, tie_levels="text"),
    "llava_onevision": dict(arch="LlavaOnevisionForConditionalGeneration", text="qwen2", class_text="qwen2",
                            tie=None, tower="siglip", newline=True, tie_levels="text"),
    "paligemma": dict(arch="PaliGemmaForConditionalGeneration", text="gemma", class_text="gemma", tie=True,
                      tower="siglip", tie_levels="both"),
    "internvl": dict(arch="InternVLForConditionalGeneration", text="qwen2", class_text="qwen2", tie=True,
                     tower="internvit", tie_levels="text"),
    "aya_vision": dict(arch="AyaVisionForConditionalGeneration", text="cohere", class_text="cohere2", tie=True,
                       tower="siglip", tie_levels="both"),
    "idefics3": dict(arch="Idefics3ForConditionalGeneration", text="llama", class_text="llama", tie=False,
                     tower="idefics3", tie_levels="both"),
    "smolvlm": dict(arch="SmolVLMForConditionalGeneration", text="llama", class_text="llama", tie=False,
                    tower="idefics3", tie_levels="both"),
    "mllama": dict(arch="MllamaForConditionalGeneration", text="mllama_text_model", class_text="mllama_text_model",
                   tie=False, tower="mllama", tie_levels="text", fixed=True),
}
MLLAMA_DEFAULT_CROSS = [3, 8, 13, 18, 23, 28, 33, 38]   # MllamaTextConfig.__post_init__
HV = 16                                                  # vision width
GATE_UP = expect.GATE_UP


# ---------------------------------------------------------------- generators

def _mllama_text(dtype, norm_dtype, seed, layers, hidden, vocab, opt):
    """MllamaTextModel: llama self-attention layers, cross-attention layers
    (cross_attn q/k/v/o, per-head q_norm / k_norm, two tanh gates), an
    embedding of vocab_size + 8 rows and an untied lm_head of vocab_size."""
    L = layers or 3
    m = fixtures.build_model("llama", dtype=dtype, norm_dtype=norm_dtype, tied=False, seed=seed, layers=L,
                             hidden=hidden, vocab=vocab)
    cfg = m.config
    cross = opt.get("cross", [1])
    listed = MLLAMA_DEFAULT_CROSS if cross is None else cross
    cfg.update(model_type="mllama_text_model", architectures=["MllamaForCausalLM"], rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    del cfg["head_dim"]        # MllamaTextSelfAttention: hidden / heads
    cfg.pop("attention_bias")
    cfg.pop("mlp_bias")
    if cross is not None:
        cfg["cross_attention_layers"] = cross
    g = _Gen(m, seed + 31, dtype, norm_dtype, False)
    nh, nkv, H = cfg["num_attention_heads"], cfg["num_key_value_heads"], hidden
    hd = H // nh
    g.mat("model.embed_tokens.weight", (vocab + 8, H))
    for i in range(L):
        p = "model.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            del m.tensors[p + "self_attn.%s.weight" % n]
        a = p + ("cross_attn." if i in listed else "self_attn.")
        g.mat(a + "q_proj.weight", (nh * hd, H))
        g.mat(a + "k_proj.weight", (nkv * hd, H))
        g.mat(a + "v_proj.weight", (nkv * hd, H))
        g.mat(a + "o_proj.weight", (H, nh * hd))
        if i in listed:
            g.norm(a + "q_norm.weight", (hd,))
            g.norm(a + "k_norm.weight", (hd,))
            g.vec(p + "cross_attn_attn_gate", 1, -1.0, 1.0, dtype)
            g.vec(p + "cross_attn_mlp_gate", 1, -1.0, 1.0, dtype)
    return m


def _text(family, text, dtype, norm_dtype, tied, seed, layers, hidden, vocab, opt):
    if text == "mllama_text_model":
        if tied:
            raise ValueError("Mllama's head has vocab_size rows, its embedding vocab_size + 8: it cannot be tied")
        return _mllama_text(dtype, norm_dtype, seed, layers, hidden, vocab, opt)
    return fixtures.build_model(text, dtype=dtype, norm_dtype=norm_dtype, tied=tied, seed=seed, layers=layers,
                                hidden=hidden, vocab=vocab, **opt.get("text_opt", {}))


def _rope_v5(tc):
    """transformers 5 configs: rope_parameters (with rope_theta) instead of
    rope_theta + rope_scaling."""
    rp = dict(tc.pop("rope_scaling", None) or {"rope_type": "default"})
    if "type" in rp:
        rp["rope_type"] = rp.pop("type")
    rp["rope_theta"] = tc.pop("rope_theta", 10000.0)
    tc["rope_parameters"] = rp


class _Tower:
    """A one-layer vision tower and its projector, with their own norms
    (LayerNorms: random gains and biases).  vp, mp: their prefixes."""

    def __init__(self, g, H):
        self.g, self.H = g, H

    def ln(self, name, n=HV, bias=True):
        self.g.vec(name + ".weight", n, 0.5, 2.5, self.g.norm_dtype)
        if bias:
            self.g.bias(name + ".bias", n)

    def lin(self, name, rows, cols, bias=True):
        self.g.mat(name + ".weight", (rows, cols))
        if bias:
            self.g.bias(name + ".bias", rows)

    def encoder_layer(self, b, n1="layer_norm1", n2="layer_norm2", out="out_proj"):
        self.ln(b + n1)
        self.ln(b + n2)
        for n in ("q_proj", "k_proj", "v_proj", out):
            self.lin(b + "self_attn." + n, HV, HV)
        self.lin(b + "mlp.fc1", 2 * HV, HV)
        self.lin(b + "mlp.fc2", HV, 2 * HV)

    def clip(self, vp, mp):
        g, e = self.g, vp + "vision_model.embeddings."
        g.vec(e + "class_embedding", HV, -1.0, 1.0, g.dtype)
        g.mat(e + "patch_embedding.weight", (HV, 3, 4, 4))
        g.mat(e + "position_embedding.weight", (5, HV))
        self.ln(vp + "vision_model.pre_layrnorm")        # sic: CLIPVisionTransformer
        self.encoder_layer(vp + "vision_model.encoder.layers.0.")
        self.ln(vp + "vision_model.post_layernorm")
        self.lin(mp + "linear_1", self.H, HV)
        self.lin(mp + "linear_2", self.H, self.H)

    def vit(self, vp):
        """SigLIP (and Idefics3's copy of it) under vp: patch and position
        embeddings, one encoder layer, post_layernorm."""
        g, e = self.g, vp + "embeddings."
        g.mat(e + "patch_embedding.weight", (HV, 3, 4, 4))
        g.bias(e + "patch_embedding.bias", HV)
        g.mat(e + "position_embedding.weight", (4, HV))
        self.encoder_layer(vp + "encoder.layers.0.")
        self.ln(vp + "post_layernorm")

    def siglip(self, vp, mp, proj):
        self.vit(vp + "vision_model.")
        if proj == "paligemma":       # PaliGemmaMultiModalProjector
            self.lin(mp + "linear", self.H, HV)
        elif proj == "aya_vision":    # AyaVisionMultiModalProjector: LayerNorm, SwiGLU
            self.ln(mp + "layernorm", 4 * HV)
            self.lin(mp + "linear_1", 2 * self.H, 4 * HV)
            self.lin(mp + "linear_2", self.H, self.H)
        else:
            self.lin(mp + "linear_1", self.H, HV)
            self.lin(mp + "linear_2", self.H, self.H)

    def internvit(self, vp, mp):
        g, e = self.g, vp + "embeddings."
        g.vec(e + "cls_token", HV, -1.0, 1.0, g.dtype)
        g.m.tensors[e + "cls_token"] = fixtures.Tensor(g.dtype, (1, 1, HV), g.m.tensors[e + "cls_token"].data)
        g.mat(e + "patch_embeddings.projection.weight", (HV, 3, 4, 4))
        g.bias(e + "patch_embeddings.projection.bias", HV)
        b = vp + "encoder.layer.0."
        for n in ("q_proj", "k_proj", "v_proj"):
            self.lin(b + "attention." + n, HV, HV, bias=False)
        self.lin(b + "attention.projection_layer", HV, HV)
        self.ln(b + "layernorm_before")
        self.ln(b + "layernorm_after")
        g.vec(b + "lambda_1", HV, 0.05, 0.2, g.dtype)
        g.vec(b + "lambda_2", HV, 0.05, 0.2, g.dtype)
        self.lin(b + "mlp.fc1", 2 * HV, HV)
        self.lin(b + "mlp.fc2", HV, 2 * HV)
        self.ln(mp + "layer_norm", 4 * HV)                 # InternVLMultiModalProjector
        self.lin(mp + "linear_1", self.H, 4 * HV)
        self.lin(mp + "linear_2", self.H, self.H)

    def idefics3(self, vp, cp):
        self.vit(vp)
        self.lin(cp + "modality_projection.proj", self.H, 4 * HV, bias=False)

    def mllama(self, vp, mp):
        """MllamaVisionModel: its layers' norms are called input_layernorm /
        post_attention_layernorm, like the decoder's -- never folded."""
        g = self.g
        g.mat(vp + "patch_embedding.weight", (HV, 3, 4, 4))
        g.vec(vp + "class_embedding", HV, -1.0, 1.0, g.dtype)
        g.mat(vp + "gated_positional_embedding.embedding", (5, HV))
        g.vec(vp + "gated_positional_embedding.gate", 1, -1.0, 1.0, g.dtype)
        self.ln(vp + "layernorm_pre")
        self.ln(vp + "layernorm_post")
        for stack in ("transformer", "global_transformer"):
            b = vp + stack + ".layers.0."
            self.encoder_layer(b, "input_layernorm", "post_attention_layernorm", "o_proj")
            if stack == "global_transformer":
                g.vec(b + "gate_attn", 1, -1.0, 1.0, g.dtype)
                g.vec(b + "gate_ffn", 1, -1.0, 1.0, g.dtype)
        self.lin(mp[:-1], self.H, 2 * HV)                  # multi_modal_projector: one Linear


def _layout(family, opt):
    """(text prefix, head, tower prefix root) of the layout: the Hub's
    original one, or what transformers >= 4.52 writes (the
    _checkpoint_conversion_mapping renames); Idefics3 / SmolVLM keep
    model.text_model. in both."""
    if WRAPPERS[family]["tower"] == "idefics3":
        return "model.text_model.", "lm_head.weight", "model."
    if opt.get("layout", "hub") == "v5":
        return "model.language_model.", "lm_head.weight", "model."
    return "language_model.model.", "language_model.lm_head.weight", ""


def _tower(family, g, root, H, newline):
    t, kind = _Tower(g, H), WRAPPERS[family]["tower"]
    if kind == "clip":
        t.clip(root + "vision_tower.", root + "multi_modal_projector.")
    elif kind == "siglip":
        t.siglip(root + "vision_tower.", root + "multi_modal_projector.", family)
    elif kind == "internvit":
        t.internvit(root + "vision_tower.", root + "multi_modal_projector.")
    elif kind == "idefics3":
        t.idefics3(root + "vision_model.", root + "connector.")
    else:
        t.mllama(root + "vision_model.", root + "multi_modal_projector.")
    if newline:                 # LlavaNextModel.image_newline
        g.vec(root + "image_newline", H, -1.0, 1.0, g.dtype)


def _vision_config(family):
    kind = WRAPPERS[family]["tower"]
    base = {"hidden_size": HV, "intermediate_size": 2 * HV, "num_hidden_layers": 1, "num_attention_heads": 2,
            "patch_size": 4, "image_size": 8}
    mt = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "internvit": "internvl_vision",
          "idefics3": family + "_vision", "mllama": "mllama_vision_model"}[kind]
    return dict(base, model_type=mt)


def _set_ties(cfg, tc, tied, levels, text_tie):
    for level, on in ((cfg, levels in ("top", "both")), (tc, levels in ("text", "both"))):
        level.pop("tie_word_embeddings", None)
        if on:
            level["tie_word_embeddings"] = tied
    if text_tie is not None:
        tc["tie_word_embeddings"] = text_tie


def build(family, dtype, norm_dtype, tied, seed, layers, hidden, vocab, **opt):
    if family == "mllama_text_model":
        if tied:
            raise ValueError("Mllama's head has vocab_size rows, its embedding vocab_size + 8: it cannot be tied")
        m = _mllama_text(dtype, norm_dtype, seed, layers, hidden, vocab, opt)
        if opt.get("rope") == "v5":
            _rope_v5(m.config)
        return m
    w = WRAPPERS[family]
    text = opt.get("text", w["text"])
    base = _text(family, text, dtype, norm_dtype, tied, seed, layers, hidden, vocab, opt)
    pre, head, root = _layout(family, opt)
    m = Model(family, None)
    for k, t in base.tensors.items():
        if k == base.head_name:
            m.tensors[head] = t
        elif k.startswith(base.text_prefix):
            m.tensors[pre + k[len(base.text_prefix):]] = t
        else:
            raise ValueError("%s: %s is not part of a text model" % (text, k))
    m.embed_name, m.head_name, m.text_prefix = pre + "embed_tokens.weight", head, pre
    tc = {k: v for k, v in base.config.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    if opt.get("unnamed"):
        del tc["model_type"]
    if opt.get("rope") == "v5":
        _rope_v5(tc)
    v5 = opt.get("layout") == "v5" or opt.get("rope") == "v5"
    cfg = {"architectures": [w["arch"]], "model_type": family, "text_config": tc,
           "vision_config": _vision_config(family), "image_token_index": vocab - 1,
           "torch_dtype": TORCH_DTYPE[dtype], "transformers_version": "5.3.0" if v5 else "4.51.3"}
    _set_ties(cfg, tc, tied, opt.get("tie_levels", w["tie_levels"]), opt.get("text_tie"))
    m.config = cfg
    _tower(family, _Gen(m, seed + 7919, dtype, norm_dtype, False), root, tc["hidden_size"], w.get("newline"))
    return m


# ---------------------------------------------------------------- expectation

def text_type(cfg):
    """The text model a wrapper config holds (§vlm-text)."""
    w = WRAPPERS[cfg["model_type"]]
    tc = cfg.get("text_config") or {}
    return w["class_text"] if w.get("fixed") else tc.get("model_type", w["class_text"])


def ties(cfg):
    """tie_word_embeddings as the wrapper class reads it (§vlm-tie): the top
    level's flag, else text_config's, else the wrapper class default --
    LlavaConfig's default False yields to text_config's flag, or to the
    text config class's default.  null reads as not tied."""
    w = WRAPPERS[cfg["model_type"]]
    tc = cfg.get("text_config") or {}
    text_default = expect.TIE_CLASS_DEFAULT.get(text_type(cfg), False)
    text = bool(tc["tie_word_embeddings"]) if "tie_word_embeddings" in tc else None
    if "tie_word_embeddings" in cfg and (cfg["tie_word_embeddings"] or w["tie"] is not None):
        return bool(cfg["tie_word_embeddings"])
    if text is not None:
        return text
    return text_default if w["tie"] is None else w["tie"]


def mllama_cross(tc, i):
    listed = tc.get("cross_attention_layers")
    return i in (MLLAMA_DEFAULT_CROSS if listed is None else listed)


def plan_mllama(tc, i, has):
    """MllamaCrossAttentionDecoderLayer: input_layernorm -> cross_attn.q_proj
    only (k/v read the vision states); MllamaSelfAttentionDecoderLayer: llama."""
    if mllama_cross(tc, i):
        return [("input_layernorm", ["cross_attn.q_proj"]), ("post_attention_layernorm", GATE_UP)], \
            ["cross_attn.q_norm", "cross_attn.k_norm"]
    return expect.layer_plan("llama", tc, i, has)


def _plan_wrapper(fam):
    def plan(tc, i, has):
        return expect.layer_plan(text_type({"model_type": fam, "text_config": tc}), tc, i, has)
    return plan


# ---------------------------------------------------------------- reference forward

# Switches for the tests' teeth: the text model's own logit code, the
# PaliGemma prompt mask and positions (§vlm-paligemma).
RAW_LOGITS = True
PREFIX_LM = {"causal": False, "pos0": 1}


def text_view(ck, skip=()):
    """The text model of a wrapper (or Mllama's text model) as a plain
    checkpoint under model., with what its wrapper changes: the head tied
    or not as the wrapper reads it, the logits of the wrapper's own
    lm_head (no final soft cap, no logit scale), Mllama's cross-attention
    layers left out (MllamaTextModel skips them without images)."""
    cfg = ck.config
    wrapped = cfg["model_type"] in WRAPPERS
    tc = dict(cfg["text_config"]) if wrapped else dict(cfg)
    mt = text_type(cfg) if wrapped else cfg["model_type"]
    tc["model_type"] = mt
    pre = next(p for p in ("model.language_model.", "language_model.model.", "model.text_model.", "model.")
               if p + "embed_tokens.weight" in ck.tensors)
    head = "language_model.lm_head.weight" if pre == "language_model.model." else "lm_head.weight"
    tied = head not in ck.tensors or (ties(cfg) if wrapped else bool(cfg.get("tie_word_embeddings")))
    v = Checkpoint()
    v.tensors = {"model." + k[len(pre):]: t for k, t in ck.tensors.items() if k.startswith(pre)}
    if not tied:
        v.tensors["lm_head.weight"] = ck.tensors[head]
    tc["tie_word_embeddings"] = tied
    rp = tc.pop("rope_parameters", None)
    if rp:
        rp = dict(rp)
        tc["rope_theta"] = rp.pop("rope_theta", 10000.0)
        tc["rope_scaling"] = rp
    if wrapped and RAW_LOGITS:  # the wrapper's lm_head: none of the text ForCausalLM's logit code
        tc.update(final_logit_softcapping=None, logit_scale=1.0, logits_scaling=1.0)
    if mt == "mllama_text_model":
        _mllama_view(v, tc, skip)
    v.config = tc
    return v


def _mllama_view(v, tc, skip=()):
    """A llama checkpoint of the self-attention layers alone, renumbered
    (skip: more layers to leave out, for the tests' teeth)."""
    L = tc["num_hidden_layers"]
    keep = [i for i in range(L) if not mllama_cross(tc, i) and i not in skip]
    old = v.tensors
    v.tensors = {k: t for k, t in old.items() if not k.startswith("model.layers.")}
    for j, i in enumerate(keep):
        p = "model.layers.%d." % i
        v.tensors.update({"model.layers.%d.%s" % (j, k[len(p):]): t for k, t in old.items() if k.startswith(p)})
    tc.update(model_type="llama", num_hidden_layers=len(keep))
    tc.setdefault("rope_theta", 500000.0)   # MllamaTextConfig.default_theta
    tc.setdefault("rms_norm_eps", 1e-5)


def forward(ck, tokens, skip=()):
    v = text_view(ck, skip)
    if ck.config["model_type"] == "paligemma":
        return ref_forward.ref_logits(v, tokens, **PREFIX_LM)
    return ref_forward.ref_logits(v, tokens)


# ---------------------------------------------------------------- registration

fixtures.register_family("mllama_text_model", build, "MllamaForCausalLM", tied=False)
expect.EXTRA_LAYER_PLANS["mllama_text_model"] = plan_mllama
ref_forward.EXTRA_FORWARD["mllama_text_model"] = forward
expect.SUPPORTED.append("mllama_text_model")
for _fam, _w in WRAPPERS.items():
    fixtures.register_family(_fam, build, _w["arch"], tied=bool(_w["tie"]))
    expect.SUPPORTED.append(_fam)
    expect.EXTRA_LAYER_PLANS[_fam] = _plan_wrapper(_fam)
    expect.TIE_RULES[_fam] = ties
    ref_forward.EXTRA_FORWARD[_fam] = forward
    expect.COMPOSITE.add(_fam)
expect.GAIN["paligemma"] = "1+w"     # its default text model, gemma (the generic suites read GAIN by family)
