"""test_zoo_vlm.py -- the LLaVA-style VLM wrappers (issue 13): llava,
llava_next, llava_onevision, paligemma, internvl, aya_vision, idefics3,
smolvlm, mllama, mllama_text_model.

What the family-wide suites (test_families, test_forward_families,
test_verify: one default fixture per family) do not: every wrapper in both
layouts with several of the text models it can hold, the vision towers'
own norms coming out byte for byte, which text type a config names and
what is refused, the tie flag each wrapper class reads, Mllama's
cross-attention layers (folded into q_proj only, skipped by the forward
pass), PaliGemma's bidirectional prompt and the wrappers' own lm_head in
the forward pass against zoo_vlm.py's reference, and verify's teeth on
these models.  Expectations come from expect.py and zoo_vlm.py
(docs/architectures.md §vlm), not from src/.
"""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fixtures  # noqa: E402
import zoo_vlm  # noqa: E402  (registers the families)
from expect import fold, gain_ratios, identity  # noqa: E402
from fixtures import build_model, read_checkpoint, write_checkpoint  # noqa: E402
from harness import ZooCase, assert_not_equivalent, check_output, convert, describe, dump_logits, verify_json  # noqa: E402
from verify_fixtures import write_output, write_source  # noqa: E402

TOKENS = [1, 7, 30, 64, 95, 7]

# (family, generator options): both layouts, several text models each
CASES = [
    ("llava", {}),
    ("llava", {"layout": "v5", "text": "mistral", "rope": "v5"}),
    ("llava", {"text": "qwen2"}),
    ("llava", {"text": "gemma2", "layout": "v5"}),
    ("llava", {"text": "phi3"}),
    ("llava_next", {}),
    ("llava_next", {"layout": "v5", "text": "granite"}),
    ("llava_onevision", {}),
    ("llava_onevision", {"layout": "v5"}),
    ("paligemma", {}),
    ("paligemma", {"layout": "v5"}),
    ("paligemma", {"text": "gemma2"}),
    ("paligemma", {"text": "gemma2", "layout": "v5"}),
    ("internvl", {}),
    ("internvl", {"layout": "v5", "text": "qwen3"}),
    ("internvl", {"text": "qwen3_moe"}),
    ("internvl", {"text": "llama", "layout": "v5"}),
    ("aya_vision", {}),
    ("aya_vision", {"layout": "v5"}),
    ("idefics3", {}),
    ("smolvlm", {"rope": "v5"}),
    ("mllama", {}),
    ("mllama", {"layout": "v5", "rope": "v5"}),
    ("mllama_text_model", {}),
]
GEMMA_TEXT = ("gemma", "gemma2")
# Aya Vision 8B's text model (AyaVisionConfig's default), registered by
# zoo_tail.py.
CASES += [("aya_vision", {"text": "cohere2"}), ("aya_vision", {"text": "cohere2", "layout": "v5"})]


def text_of(fam, opt):
    return opt.get("text", zoo_vlm.WRAPPERS[fam]["text"]) if fam in zoo_vlm.WRAPPERS else fam


def tower_names(m):
    return [k for k in m.tensors if not k.startswith(m.text_prefix) and k != m.head_name]


class Base(ZooCase):
    tmp_prefix = "flashify-vlm-"

    def dir(self, fam):
        return self.path("%s-%d" % (fam, len(os.listdir(self.tmp))))

    def verify(self, src, out, *flags):
        return verify_json(src, out, *flags)

    def edited(self, fam, edit, tied=False, **opt):
        """A source whose config edit(cfg) changed after generation."""
        m = build_model(fam, dtype="BF16", seed=960, tied=tied, **opt)
        edit(m.config)
        src = self.dir(fam)
        write_checkpoint(m, src)
        return src

    def refused(self, src, *needles):
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertFalse(os.path.exists(src + "-out"), "a refused conversion left output behind")
        for n in needles:
            self.assertIn(n, p.stderr, describe(p))
        return p


class Conversion(Base):
    def test_every_case_folds_exactly(self):
        """Each wrapper, layout and text model converts to exactly the
        expectation; the tower and projector (their norms included) come out
        byte for byte; --keep-norms writes the identity of the text model's
        norm class (0 for Gemma's 1 + w, else 1)."""
        for fam, opt in CASES:
            for flags in ((), ("--keep-norms",)):
                with self.subTest(family=fam, flags=flags, **opt):
                    m = build_model(fam, dtype="BF16", seed=950, **opt)
                    src = self.dir(fam)
                    write_checkpoint(m, src)
                    convert(self, src, src + "-out", *flags)
                    ex, ck = check_output(self, src, src + "-out", keep_norms=bool(flags))
                    self.assertTrue(all(n.startswith(m.text_prefix) for n in ex.dropped), ex.dropped)
                    towers = tower_names(m)
                    self.assertEqual(any("norm" in k for k in towers), fam != "mllama_text_model")
                    for k in towers:
                        self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                    ident = 0.0 if text_of(fam, opt) in GEMMA_TEXT else 1.0
                    for k in ex.dropped if flags else ():
                        self.assertEqual(set(ck.tensors[k].values()), {ident}, k)

    def test_dry_run_names_the_text_row(self):
        for fam, text in (("llava_next", "granite"), ("internvl", "qwen3_moe"), ("paligemma", "gemma2"),
                          ("mllama", "mllama_text_model")):
            with self.subTest(family=fam):
                src = self.dir(fam)
                write_checkpoint(build_model(fam, dtype="BF16", seed=951, text=text), src)
                p = convert(self, src, None, "--dry-run")
                self.assertIn("model_type %s (table entry %s)" % (fam, text), p.stdout)

    def test_mllama_cross_attention_layers(self):
        """input_layernorm of a cross-attention layer feeds cross_attn.q_proj
        only; k/v (they read the vision states), the q/k norms and the tanh
        gates come out as they were.  Without the key, MllamaTextConfig's
        default list applies (layer 3 of 5)."""
        for cross, layers, layer in (([1], 3, 1), (None, 5, 3), ([0, 2], 3, 2)):
            with self.subTest(cross=cross):
                m = build_model("mllama", dtype="BF16", seed=952, cross=cross, layers=layers)
                self.assertEqual("cross_attention_layers" in m.config["text_config"], cross is not None)
                src = self.dir("mllama")
                write_checkpoint(m, src)
                convert(self, src, src + "-out")
                ex, ck = check_output(self, src, src + "-out")
                p = "language_model.model.layers.%d." % layer
                self.assertEqual(dict(ex.groups)[p + "input_layernorm.weight"], [p + "cross_attn.q_proj.weight"])
                for rel in ("cross_attn.k_proj.weight", "cross_attn.v_proj.weight", "cross_attn.q_norm.weight",
                            "cross_attn.k_norm.weight", "cross_attn_attn_gate", "cross_attn_mlp_gate"):
                    self.assertEqual(ck.tensors[p + rel].data, m.tensors[p + rel].data, rel)
                self.assertTrue(ck.config.get("flashnorm_folded"))

    def test_text_config_model_type_is_ignored_by_mllama(self):
        """MllamaConfig builds MllamaTextConfig whatever text_config names."""
        def edit(cfg):
            cfg["text_config"]["model_type"] = "llama"
        src = self.edited("mllama", edit)
        convert(self, src, src + "-out")
        ex, _ = check_output(self, src, src + "-out")
        p = "language_model.model.layers.1."
        self.assertEqual(dict(ex.groups)[p + "input_layernorm.weight"], [p + "cross_attn.q_proj.weight"])


class TextTypes(Base):
    def test_unknown_text_type_refused(self):
        """A text type without a row is refused, naming it and the wrapper,
        instead of being read with the class default's row."""
        def starcoder(cfg):
            cfg["text_config"]["model_type"] = "starcoder2"
        self.refused(self.edited("llava", starcoder), "starcoder2", "llava")

    def test_unnamed_text_type_is_the_class_default(self):
        """No text_config.model_type: LlavaConfig's llama, InternVLConfig's
        qwen2, AyaVisionConfig's cohere2."""
        named = [("llava", "llama"), ("internvl", "qwen2"), ("aya_vision", "cohere2")]
        for fam, text in named:
            with self.subTest(family=fam):
                src = self.dir(fam)
                write_checkpoint(build_model(fam, dtype="BF16", seed=953, text=text, unnamed=True), src)
                convert(self, src, src + "-out")
                check_output(self, src, src + "-out")
                self.assertNotIn("model_type", read_checkpoint(src).config["text_config"])

    def test_missing_text_config_refused(self):
        def flat(cfg):
            cfg.update(dict(cfg.pop("text_config"), model_type=cfg["model_type"]))
        self.refused(self.edited("idefics3", flat), "text_config", "idefics3")


class Ties(Base):
    def roundtrip(self, src):
        convert(self, src, src + "-out")
        ex, ck = check_output(self, src, src + "-out")
        p, rep = self.verify(src, src + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"].get("passed"), rep["forward_check"])
        return ex, ck

    def test_class_defaults_without_keys(self):
        """No tie key at either level and no head: PaliGemma, InternVL and
        Aya Vision default to tied (materialised, false written at both
        levels); LLaVA takes the text config class's default (gemma: tied);
        Idefics3 and SmolVLM default to untied, so such a checkpoint has
        no head to load and is refused."""
        for fam, opt in (("paligemma", {}), ("internvl", {}), ("aya_vision", {}), ("llava", {"text": "gemma"})):
            with self.subTest(family=fam):
                src = self.dir(fam)
                write_source(src, fam, "BF16", tied=True, tie_levels="none", **opt)
                ex, ck = self.roundtrip(src)
                self.assertTrue(ex.untie)
                self.assertIs(ck.config["tie_word_embeddings"], False)
                self.assertIs(ck.config["text_config"]["tie_word_embeddings"], False)
        for fam in ("idefics3", "smolvlm", "llava"):
            with self.subTest(family=fam, head=False):
                src = self.dir(fam)
                write_source(src, fam, "BF16", tied=True, tie_levels="none")
                self.refused(src, "lm_head")

    def test_llava_false_top_yields_to_text_config(self):
        """LlavaConfig.__post_init__ takes text_config's flag when its own is
        false: tied, although the top says false.  InternVLConfig does not:
        the same config is untied there, and with no head refused."""
        def split(cfg):
            cfg["tie_word_embeddings"] = False
            cfg["text_config"]["tie_word_embeddings"] = True
        for fam in ("llava", "llava_next", "llava_onevision"):
            with self.subTest(family=fam):
                ex, ck = self.roundtrip(self.edited(fam, split, tied=True))
                self.assertTrue(ex.untie)
                self.assertIn(ex.head, ck.tensors)
        self.refused(self.edited("internvl", split, tied=True), "lm_head")

    def test_untied_with_head(self):
        """A stored head under untied flags folds the final norm into it."""
        for fam in ("llava", "paligemma", "idefics3", "mllama"):
            with self.subTest(family=fam):
                src = self.dir(fam)
                write_source(src, fam, "BF16", tied=False, tie_levels="both")
                ex, _ = self.roundtrip(src)
                self.assertFalse(ex.untie)
                self.assertIn(ex.head, ex.groups[-1][1])


class Forward(Base):
    def c_logits(self, src):
        write_output(src, src + "-out")
        return dump_logits(self, src, src + "-out", TOKENS)

    def worst(self, got, ref):
        V = len(ref[0])
        self.assertEqual(len(got), V * len(ref))
        return max(abs(got[t * V + v] - row[v]) / max(1.0, max(abs(x) for x in row))
                   for t, row in enumerate(ref) for v in range(V))

    def test_c_pass_against_reference(self):
        """The C pass on every case against zoo_vlm.py's reference; the
        result line names the text model and the wrapper."""
        for fam, opt in CASES:
            with self.subTest(family=fam, **opt):
                src = self.dir(fam)
                write_source(src, fam, "F32", **opt)
                p, got = self.c_logits(src)
                ref = zoo_vlm.forward(read_checkpoint(src), TOKENS)
                self.assertLess(self.worst(got, ref), 1e-4)
                line = next(x for x in p.stdout.splitlines() if x.startswith("forward:"))
                self.assertIn("forward: ok: 6 tokens on %s," % text_of(fam, opt), line)
                if fam in zoo_vlm.WRAPPERS:
                    self.assertIn("the text model of " + fam, line)
                self.assertEqual("bidirectional prompt, positions from 1" in line, fam == "paligemma")
                self.assertEqual("1 cross-attention layer skipped" in line, fam.startswith("mllama"))

    def test_reference_has_teeth(self):
        """The comparison above can fail: a causal PaliGemma prompt, the text
        model's own logit code (Gemma 2's final soft cap, Cohere's
        logit_scale, Granite's logits_scaling) or one more skipped Mllama
        layer is another model."""
        cases = [("paligemma", {}, "causal"), ("paligemma", {"text": "gemma2"}, "raw"),
                 ("llava_next", {"text": "granite"}, "raw"), ("aya_vision", {}, "raw"),
                 ("mllama", {}, "skip")]
        for fam, opt, how in cases:
            with self.subTest(family=fam, change=how, **opt):
                src = self.dir(fam)
                write_source(src, fam, "F32", **opt)
                _, got = self.c_logits(src)
                ck = read_checkpoint(src)
                saved = dict(zoo_vlm.PREFIX_LM), zoo_vlm.RAW_LOGITS
                try:
                    if how == "causal":
                        zoo_vlm.PREFIX_LM["causal"] = True
                    elif how == "raw":
                        zoo_vlm.RAW_LOGITS = False
                    ref = zoo_vlm.forward(ck, TOKENS, skip=(0,) if how == "skip" else ())
                finally:
                    zoo_vlm.PREFIX_LM.update(saved[0])
                    zoo_vlm.RAW_LOGITS = saved[1]
                self.assertGreater(self.worst(got, ref), 1e-3)

    def test_paligemma_positions_from_one(self):
        """Positions start at 1: RoPE depends on position differences only,
        so the logits move by rounding alone, but they do move."""
        src = self.dir("paligemma")
        write_source(src, "paligemma", "F32")
        _, got = self.c_logits(src)
        ck = read_checkpoint(src)
        self.assertLess(self.worst(got, zoo_vlm.forward(ck, TOKENS)), 1e-4)
        try:
            zoo_vlm.PREFIX_LM["pos0"] = 0
            shifted = zoo_vlm.forward(ck, TOKENS)
        finally:
            zoo_vlm.PREFIX_LM["pos0"] = 1
        self.assertLess(self.worst(got, shifted), 1e-4)
        self.assertNotEqual(shifted, zoo_vlm.forward(ck, TOKENS))


class Teeth(Base):
    """A deliberately wrong conversion of a wrapper checkpoint fails verify."""

    def pair(self, fam, opt=None, **out_opt):
        src = self.dir(fam)
        write_source(src, fam, "BF16", **(opt or {}))
        write_output(src, src + "-out", **out_opt)
        return src, src + "-out"

    def broken(self, src, out, needle, forward_fails=True):
        assert_not_equivalent(self, src, out, needle, forward_fails)

    def test_correct_pairs_pass(self):
        for fam, opt in CASES:
            with self.subTest(family=fam, **opt):
                p, rep = self.verify(*self.pair(fam, opt))
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["forward_check"]["passed"], rep["forward_check"])

    def test_wrong_gain_fails(self):
        """PaliGemma folded with w instead of 1 + w, LLaVA's llama with 1 + w."""
        for fam, gain in (("paligemma", "w"), ("llava", "1+w"), ("mllama", "1+w")):
            with self.subTest(family=fam):
                src, out = self.pair(fam, gain=gain)
                self.broken(src, out, "differ")

    def unfold(self, fam, rel, forward_fails=True, opt=None):
        src = self.dir(fam)
        write_source(src, fam, "BF16", **(opt or {}))
        s = read_checkpoint(src)

        def mutate(ts, ex):
            ts[rel] = s.tensors[rel]
        write_output(src, src + "-out", mutate=mutate)
        self.broken(src, src + "-out", rel, forward_fails)

    def test_missed_consumer_fails(self):
        """v_proj (LLaVA), up_proj (Idefics3) or the experts (InternVL's
        qwen3_moe) left unfolded while the norm is dropped."""
        self.unfold("llava", "language_model.model.layers.0.self_attn.v_proj.weight")
        self.unfold("idefics3", "model.text_model.layers.1.mlp.up_proj.weight")
        self.unfold("internvl", "language_model.model.layers.1.mlp.experts.0.up_proj.weight",
                    opt={"text": "qwen3_moe"})

    def test_mllama_cross_attention_teeth(self):
        """cross_attn.q_proj left unfolded, or k_proj folded as if it read the
        norm: the forward check cannot see either (the layer does not run on
        text), the tensor check does."""
        p = "language_model.model.layers.1."
        self.unfold("mllama", p + "cross_attn.q_proj.weight", forward_fails=False)
        src = self.dir("mllama")
        write_source(src, "mllama", "BF16")
        s = read_checkpoint(src)
        k = p + "cross_attn.k_proj.weight"

        def extra(ts, ex):
            ts[k] = fold(s.tensors[k], gain_ratios(s.tensors[p + "input_layernorm.weight"], "w"))
        write_output(src, src + "-out", mutate=extra)
        self.broken(src, src + "-out", k, forward_fails=False)

    def test_folded_tower_norm_fails(self):
        """A converter that also 'folds' a vision norm -- a name pattern
        would: Mllama's vision layers have an input_layernorm too --
        changes tensors that must be copied."""
        for fam, norm, lin in (
                ("llava", "vision_tower.vision_model.encoder.layers.0.layer_norm1",
                 "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"),
                ("mllama", "vision_model.transformer.layers.0.input_layernorm",
                 "vision_model.transformer.layers.0.self_attn.q_proj"),
                ("internvl", "multi_modal_projector.layer_norm", "multi_modal_projector.linear_1")):
            with self.subTest(family=fam):
                src = self.dir(fam)
                write_source(src, fam, "BF16")
                s = read_checkpoint(src)
                self.assertIn(norm + ".weight", s.tensors)

                def fold_tower(ts, ex, norm=norm, lin=lin, s=s):
                    ts[lin + ".weight"] = fold(s.tensors[lin + ".weight"], gain_ratios(s.tensors[norm + ".weight"], "w"))
                    ts[norm + ".weight"] = identity(s.tensors[norm + ".weight"], "w")
                write_output(src, src + "-out", mutate=fold_tower)
                self.broken(src, src + "-out", lin + ".weight", forward_fails=False)


if __name__ == "__main__":
    unittest.main(verbosity=2)
