"""test_zoo_vl.py -- the vision-language families (issue 12, zoo group d):
qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, mistral3, ministral3.

What the generic family suites (test_families, test_forward_families,
test_verify) do not: every layout each family is found in (the Hub's, what
transformers 5 writes, what its conversion mappings accept), flat and
nested configs, the three on-disk layouts of Qwen3-VL-MoE's experts, the
vision towers' own norms passing through byte for byte, where the tie flag
is read and written, the multimodal-RoPE families against a Python
reference that does the stream selection literally, Ministral 3's query
scale, and verify's teeth on these models.  Expectations come from
expect.py and zoo_vl.py (docs/architectures.md §vl), not from src/.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zoo_vl  # noqa: E402,F401  (registers the families)
from fixtures import build_model, read_checkpoint, write_checkpoint  # noqa: E402
from harness import assert_not_equivalent, check_output, convert, describe, dump_logits, run, verify_json  # noqa: E402
from verify_fixtures import write_output, write_source  # noqa: E402

TOKENS = [1, 7, 30, 64, 95, 7]

# (family, generator options): every layout and config shape of each family
LAYOUTS = [
    ("qwen2_vl", {}),                                              # Hub: flat, model. + visual.
    ("qwen2_vl", {"layout": "model.language_model", "flat": False, "rope": "v5"}),
    ("qwen2_5_vl", {}),
    ("qwen2_5_vl", {"layout": "model.language_model", "flat": False}),
    ("qwen3_vl", {}),                                              # Hub = transformers 5
    ("qwen3_vl", {"layout": "model", "rope": "v5"}),               # the 4.57 mapping's layout
    ("qwen3_vl_moe", {"experts": "hub"}),                          # [E, H, 2I]
    ("qwen3_vl_moe", {"experts": "fused", "v5_keys": True, "rope": "v5"}),   # [E, 2I, H]
    ("qwen3_vl_moe", {"experts": "per_expert"}),
    ("mistral3", {}),                                              # language_model.model.
    ("mistral3", {"layout": "model.language_model", "text_type": "ministral3"}),
    ("ministral3", {}),
]


def vision_names(m):
    return [k for k in m.tensors if not k.startswith(m.text_prefix) and k != m.head_name]


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-vl-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def name(self, fam, opt):
        return "%s-%d" % (fam, len(os.listdir(self.tmp)))

    def verify(self, src, out, *flags):
        return verify_json(src, out, *flags)


class Conversion(Base):
    def test_every_layout_folds_exactly(self):
        """Every layout converts to exactly the expectation; the vision
        tower and projector (their norms included) come out byte for byte;
        --keep-norms writes the identity 1 (every norm here is class w)."""
        for fam, opt in LAYOUTS:
            for flags in ((), ("--keep-norms",)):
                with self.subTest(family=fam, flags=flags, **opt):
                    m = build_model(fam, dtype="BF16", seed=900, **opt)
                    src = os.path.join(self.tmp, self.name(fam, opt))
                    write_checkpoint(m, src)
                    convert(self, src, src + "-out", *flags)
                    ex, ck = check_output(self, src, src + "-out", keep_norms=bool(flags))
                    self.assertTrue(all(n.startswith(m.text_prefix) for n in ex.dropped), ex.dropped)
                    norms = [k for k in vision_names(m) if "norm" in k]
                    self.assertEqual(bool(norms), fam != "ministral3")
                    for k in vision_names(m):
                        self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                    for k in ex.dropped if flags else ():
                        self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)

    def test_qwen3_vl_moe_experts(self):
        """[E, H, 2I] (the Hub's) folds along axis 1, [E, 2I, H] along axis 2,
        per-expert matrices by columns; down_proj and the dense layer's
        down stay; q/k norms are kept."""
        for experts, shape in (("hub", (3, 32, 48)), ("fused", (3, 48, 32)), ("per_expert", None)):
            with self.subTest(experts=experts):
                m = build_model("qwen3_vl_moe", dtype="BF16", seed=901, experts=experts)
                p = "model.language_model.layers.1."
                if shape:
                    self.assertEqual(m.tensors[p + "mlp.experts.gate_up_proj"].shape, shape)
                src = os.path.join(self.tmp, "moe-" + experts)
                write_checkpoint(m, src)
                convert(self, src, src + "-out")
                ex, ck = check_output(self, src, src + "-out")
                groups = dict(ex.groups)
                cons = groups[p + "post_attention_layernorm.weight"]
                self.assertIn(p + "mlp.gate.weight", cons)
                self.assertEqual(any(c.endswith("gate_up_proj") for c in cons), shape is not None)
                for k in m.tensors:
                    if "down_proj" in k or "q_norm" in k or "k_norm" in k:
                        self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_mistral3_text_types(self):
        """text_config.model_type picks the row; the dry run names it."""
        for tt in ("mistral", "ministral3"):
            with self.subTest(text_type=tt):
                m = build_model("mistral3", dtype="BF16", seed=902, text_type=tt)
                src = os.path.join(self.tmp, "m3-" + tt)
                write_checkpoint(m, src)
                p = convert(self, src, None, "--dry-run")
                self.assertIn("model_type mistral3 (table entry %s)" % tt, p.stdout)

    def test_text_type_at_the_top(self):
        """A config naming the text type itself reads its top level."""
        for fam in ("qwen2_vl", "qwen3_vl", "qwen3_vl_moe"):
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", seed=903, top_text=True)
                self.assertTrue(m.config["model_type"].endswith("_text"))
                src = os.path.join(self.tmp, "top-" + fam)
                write_checkpoint(m, src)
                convert(self, src, src + "-out")
                check_output(self, src, src + "-out")


class Ties(Base):
    def roundtrip(self, fam, name, **opt):
        src = os.path.join(self.tmp, name)
        write_source(src, fam, "BF16", **opt)
        convert(self, src, src + "-out")
        ex, ck = check_output(self, src, src + "-out")
        p, rep = self.verify(src, src + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"].get("passed"), rep["forward_check"])
        return ex, ck

    def test_tied_sources_untie_at_both_levels(self):
        for fam, opt in (("qwen3_vl", {}), ("qwen2_vl", {}), ("qwen2_5_vl", {"flat": False,
                                                                              "layout": "model.language_model"})):
            with self.subTest(family=fam, **opt):
                ex, ck = self.roundtrip(fam, "tied-" + fam + str(len(opt)), tied=True, **opt)
                self.assertTrue(ex.untie)
                self.assertIs(ck.config["tie_word_embeddings"], False)
                if "text_config" in ck.config:
                    self.assertIs(ck.config["text_config"]["tie_word_embeddings"], False)
                self.assertIn("lm_head.weight", ck.tensors)

    def test_top_level_wins(self):
        """transformers 5 writes Qwen3-VL-MoE configs with False at the top
        and text_config's class default True: the top decides (untied), in
        the plan and in the forward pass alike."""
        ex, ck = self.roundtrip("qwen3_vl_moe", "top-wins", tied=False, text_tie=True)
        self.assertFalse(ex.untie)
        self.assertIs(ck.config["text_config"]["tie_word_embeddings"], True)
        self.assertIn("lm_head.weight", ex.groups[-1][1])

    def test_mistral3_tie_keys(self):
        """Mistral Small 3.1's config has no tie key anywhere: its stored
        lm_head is used (untied, folded, config unchanged).  With no head
        either, transformers 5 would tie and 4 would not: refused.  Tied at
        the top with no head: materialised, false written at both levels."""
        ex, ck = self.roundtrip("mistral3", "m3-untied", tied=False)
        self.assertFalse(ex.untie)
        self.assertNotIn("tie_word_embeddings", ck.config)
        self.assertNotIn("tie_word_embeddings", ck.config["text_config"])
        src = os.path.join(self.tmp, "m3-nohead")
        write_source(src, "mistral3", "BF16", tied=True, tie_levels="none")
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("lm_head", p.stderr)
        self.assertFalse(os.path.exists(src + "-out"))
        ex, ck = self.roundtrip("mistral3", "m3-tied", tied=True)
        self.assertTrue(ex.untie)
        self.assertIs(ck.config["tie_word_embeddings"], False)
        self.assertIs(ck.config["text_config"]["tie_word_embeddings"], False)


class Forward(Base):
    def c_logits(self, src):
        write_output(src, src + "-out")
        return dump_logits(self, src, src + "-out", TOKENS)

    def worst(self, got, ref):
        V = len(ref[0])
        return max(abs(got[t * V + v] - row[v]) / max(1.0, max(abs(x) for x in row))
                   for t, row in enumerate(ref) for v in range(V))

    def test_c_pass_against_literal_reference(self):
        """The C pass (plain RoPE) against zoo_vl.py's reference (three
        position streams, section selection done literally), per layout."""
        for fam, opt in LAYOUTS:
            with self.subTest(family=fam, **opt):
                src = os.path.join(self.tmp, self.name(fam, opt))
                write_source(src, fam, "F32", **opt)
                p, got = self.c_logits(src)
                ref = zoo_vl._forward(read_checkpoint(src), TOKENS)
                self.assertLess(self.worst(got, ref), 1e-4)
                want = {"qwen2_vl": "qwen2_vl_text", "qwen2_5_vl": "qwen2_5_vl_text", "qwen3_vl": "qwen3_vl_text",
                        "qwen3_vl_moe": "qwen3_vl_moe_text", "ministral3": "ministral3"}.get(fam)
                want = want or opt.get("text_type", "mistral")
                self.assertIn("forward: ok: 6 tokens on %s," % want, p.stdout)

    def test_reference_has_teeth(self):
        """The comparison above can fail: the reference with unequal
        position streams, without Ministral 3's query scale, or with
        Qwen3-MoE's optional renormalisation, is a different model."""
        cases = [("qwen3_vl", {}, lambda ck: None, "streams"),
                 ("qwen2_vl", {}, lambda ck: None, "streams"),
                 ("ministral3", {}, lambda ck: ck.config["rope_parameters"].update(llama_4_scaling_beta=0.0), None),
                 ("qwen3_vl_moe", {}, None, "renorm")]
        for fam, opt, edit, how in cases:
            with self.subTest(family=fam, change=how or "beta 0"):
                src = os.path.join(self.tmp, "teeth-" + fam)
                write_source(src, fam, "F32", **opt)
                _, got = self.c_logits(src)
                ck = read_checkpoint(src)
                saved = zoo_vl._positions, zoo_vl._renormalise
                try:
                    if how == "streams":
                        zoo_vl._positions = lambda pos: [pos, 2 * pos, 3 * pos]
                    elif how == "renorm":
                        zoo_vl._renormalise = False
                    else:
                        edit(ck)
                    ref = zoo_vl._forward(ck, TOKENS)
                finally:
                    zoo_vl._positions, zoo_vl._renormalise = saved
                self.assertGreater(self.worst(got, ref), 1e-3)

    def test_qwen3_vl_moe_ignores_norm_topk_prob(self):
        """Qwen3VLMoeTextTopKRouter renormalises whatever the config says."""
        src = os.path.join(self.tmp, "norm-topk")
        write_source(src, "qwen3_vl_moe", "F32")
        path = os.path.join(src, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["text_config"]["norm_topk_prob"] = False
        with open(path, "w") as f:
            json.dump(cfg, f)
        _, got = self.c_logits(src)
        self.assertLess(self.worst(got, zoo_vl._forward(read_checkpoint(src), TOKENS)), 1e-4)

    def test_qwen2_vl_sliding_window(self):
        """use_sliding_window: layers >= max_window_layers slide (or as
        layer_types says); without it, layer_types' sliding entries do not."""
        for extra in ({"use_sliding_window": True, "max_window_layers": 1, "sliding_window": 3},
                      {"use_sliding_window": True, "sliding_window": 2,
                       "layer_types": ["sliding_attention", "full_attention"]},
                      {"use_sliding_window": False, "sliding_window": 2,
                       "layer_types": ["sliding_attention", "sliding_attention"]}):
            with self.subTest(**extra):
                src = os.path.join(self.tmp, "swa-%d" % len(os.listdir(self.tmp)))
                m = write_source(src, "qwen2_vl", "F32")
                m.config.update(extra)
                write_checkpoint(m, src, extra_files=False)
                _, got = self.c_logits(src)
                ck = read_checkpoint(src)
                self.assertLess(self.worst(got, zoo_vl._forward(ck, TOKENS)), 1e-4)
                plain = dict(ck.config, use_sliding_window=False)
                ck.config = plain
                differs = self.worst(got, zoo_vl._forward(ck, TOKENS)) > 1e-3
                self.assertEqual(differs, extra["use_sliding_window"], "the window should matter iff enabled")

    def test_ministral3_default_rope_and_missing_beta(self):
        """No rope_parameters: Ministral3Config's YaRN default, in the C
        pass and the reference alike.  rope_parameters without
        llama_4_scaling_beta: the model cannot run it; verify says the
        forward check was skipped and why, and the tensor check stands."""
        src = os.path.join(self.tmp, "m3-defaults")
        m = write_source(src, "ministral3", "F32")
        del m.config["rope_parameters"]
        m.config["max_position_embeddings"] = 16384 * 16
        write_checkpoint(m, src, extra_files=False)
        _, got = self.c_logits(src)
        self.assertLess(self.worst(got, zoo_vl._forward(read_checkpoint(src), TOKENS)), 1e-4)
        m.config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        src2 = src + "-nobeta"
        write_checkpoint(m, src2, extra_files=False)
        write_output(src2, src2 + "-out")
        p = run(["verify", src2, src2 + "-out"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("forward: skipped", p.stdout)
        self.assertIn("llama_4_scaling_beta", p.stdout)


class Teeth(Base):
    """A deliberately wrong conversion of a VL checkpoint fails verify."""

    def pair(self, fam, **out_opt):
        src = os.path.join(self.tmp, "%s-%d" % (fam, len(os.listdir(self.tmp))))
        write_source(src, fam, "BF16")
        shutil.rmtree(src + "-out", ignore_errors=True)
        write_output(src, src + "-out", **out_opt)
        return src, src + "-out"

    def broken(self, src, out, needle, forward_fails=True):
        assert_not_equivalent(self, src, out, needle, forward_fails)

    def test_correct_pairs_pass(self):
        for fam in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "mistral3", "ministral3"):
            with self.subTest(family=fam):
                p, rep = self.verify(*self.pair(fam))
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["forward_check"]["passed"])

    def test_wrong_gain_fails(self):
        for fam in ("qwen3_vl", "mistral3"):
            with self.subTest(family=fam):
                src, out = self.pair(fam, gain="1+w")
                self.broken(src, out, "differ")

    def test_missed_consumer_fails(self):
        """v_proj (Qwen2-VL), the fused experts (Qwen3-VL-MoE) or up_proj
        (Ministral 3) left unfolded while the norm is dropped."""
        for fam, rel in (("qwen2_vl", "model.layers.0.self_attn.v_proj.weight"),
                         ("qwen3_vl_moe", "model.language_model.layers.1.mlp.experts.gate_up_proj"),
                         ("ministral3", "model.layers.1.mlp.up_proj.weight")):
            with self.subTest(family=fam):
                src = os.path.join(self.tmp, "miss-" + fam)
                write_source(src, fam, "BF16")
                s = read_checkpoint(src)

                def unfold(ts, ex, rel=rel, s=s):
                    ts[rel] = s.tensors[rel]
                write_output(src, src + "-out", mutate=unfold)
                self.broken(src, src + "-out", rel)

    def test_folded_vision_norm_fails(self):
        """A converter that also 'folds' a vision-tower norm (a *norm*
        pattern would) changes a tensor that must be copied."""
        src = os.path.join(self.tmp, "vision-norm")
        write_source(src, "qwen2_5_vl", "BF16")
        s = read_checkpoint(src)
        norm, qkv = "visual.blocks.0.norm1.weight", "visual.blocks.0.attn.qkv.weight"
        self.assertIn(norm, s.tensors)

        def fold_vision(ts, ex):
            from expect import fold, gain_ratios, identity
            ts[qkv] = fold(s.tensors[qkv], gain_ratios(s.tensors[norm], "w"))
            ts[norm] = identity(s.tensors[norm], "w")
        write_output(src, src + "-out", mutate=fold_vision)
        self.broken(src, src + "-out", qkv, forward_fails=False)


if __name__ == "__main__":
    unittest.main(verbosity=2)
