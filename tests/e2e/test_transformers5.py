"""End-to-end tests of checkpoints as transformers 5 writes them (issue 12,
new capabilities 3-6): fused 3-D experts in both layouts, the renamed
expert-count key, prefixes and composite-only text_config, quantized
consumers named by format and kept with --partial.

Every output is checked tensor by tensor against expect.py (written from
docs/architectures.md, not from src/arch.c); where the forward pass runs
(verify), ref_forward.py is the second, independent implementation.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import build_model, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import check_output, convert, describe, run  # noqa: E402
from verify_fixtures import tame  # noqa: E402

MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-v5-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, model, name, **kw):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src, **kw)
        return src

    def convert_checked(self, model, name, flags=(), partial=False, keep_norms=False, **kw):
        src = self.write(model, name, **kw)
        out = src + "-out"
        p = convert(self, src, out, *flags)
        ex = expected(read_checkpoint(src), keep_norms=keep_norms, partial=partial)
        ex, ck = check_output(self, src, out, ex=ex)
        return src, out, p, ex, ck


class FusedExperts(Base):
    def test_every_moe_family_fused(self):
        """gate_up_proj [E, 2I, H] folds along its last axis; down_proj and
        the router's bias stay; names and layout as in the source."""
        for fam in MOE:
            for flags in ((), ("--keep-norms",)):
                with self.subTest(family=fam, flags=flags):
                    m = build_model(fam, dtype="BF16", seed=700 + MOE.index(fam), experts="fused",
                                    **({"mlp_only_layers": []} if fam in ("qwen2_moe", "qwen3_moe") else {}))
                    names = list(m.tensors)
                    self.assertTrue(any(n.endswith("mlp.experts.gate_up_proj") for n in names))
                    self.assertFalse(any(".experts.0." in n for n in names))
                    _, _, _, ex, ck = self.convert_checked(m, "%s-fused-%d" % (fam, len(flags)), flags,
                                                           keep_norms=bool(flags))
                    fused = [c for _, cs in ex.groups for c in cs if c.endswith("gate_up_proj")]
                    self.assertTrue(fused, "no fused experts folded")
                    for k in m.tensors:
                        if k.endswith("experts.down_proj"):
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_grouped_gemm_layout(self):
        """[E, H, 2I] (Qwen3-VL-MoE's on-disk layout): the input is axis 1."""
        for fam in ("qwen2_moe", "qwen3_moe"):
            with self.subTest(family=fam):
                m = build_model(fam, dtype="F32", seed=710, experts="fused_t", mlp_only_layers=[0])
                k = "model.layers.1.mlp.experts.gate_up_proj"
                self.assertEqual(m.tensors[k].shape, (3, 32, 48))
                self.convert_checked(m, fam + "-fused-t")

    def test_fused_sharded(self):
        m = build_model("qwen3_moe", dtype="BF16", seed=711, experts="fused")
        self.convert_checked(m, "q3-fused-shards", shards=3)

    def test_wrong_expert_count_refused(self):
        m = build_model("qwen3_moe", dtype="BF16", seed=712, experts="fused")
        m.config["num_experts"] = 4
        src = self.write(m, "q3-count")
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("gate_up_proj", p.stderr)
        self.assertIn("4", p.stderr)
        self.assertFalse(os.path.exists(src + "-out"))


class RenamedKeys(Base):
    def test_num_local_experts(self):
        """transformers 5 configs say num_local_experts (attribute_map of
        Qwen2MoeConfig / Qwen3MoeConfig / DeepseekV3Config)."""
        for fam in ("qwen2_moe", "qwen3_moe", "deepseek_v3"):
            for experts in ("per_expert", "fused"):
                with self.subTest(family=fam, experts=experts):
                    m = build_model(fam, dtype="BF16", seed=720, v5_keys=True, experts=experts)
                    self.assertIn("num_local_experts", m.config)
                    self.assertNotIn("num_experts", m.config)
                    self.assertNotIn("n_routed_experts", m.config)
                    self.convert_checked(m, "%s-v5keys-%s" % (fam, experts))

    def test_disagreeing_expert_counts_refused(self):
        m = build_model("qwen2_moe", dtype="BF16", seed=721)
        m.config["num_local_experts"] = 4
        src = self.write(m, "q2-both")
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("num_experts", p.stderr)
        self.assertIn("num_local_experts", p.stderr)


class Prefixes(Base):
    def test_stray_text_config_changes_nothing(self):
        """A text_config in a llama config (another model's leftover, with
        other sizes, tie flag and eps) must not change the plan: the same
        bytes as without it."""
        for tied in (False, True):
            with self.subTest(tied=tied):
                plain = build_model("llama", dtype="BF16", seed=730, tied=tied)
                stray = build_model("llama", dtype="BF16", seed=730, tied=tied, stray_text_config=True)
                self.assertIn("text_config", stray.config)
                _, out_a, _, _, a = self.convert_checked(plain, "plain-%d" % tied)
                _, out_b, _, _, b = self.convert_checked(stray, "stray-%d" % tied)
                self.assertEqual({k: t.data for k, t in a.tensors.items()},
                                 {k: t.data for k, t in b.tensors.items()})

    def test_text_model_prefix(self):
        m = build_model("llama", dtype="BF16", seed=731, layout="model.text_model")
        self.assertIn("model.text_model.embed_tokens.weight", m.tensors)
        _, _, _, ex, _ = self.convert_checked(m, "textmodel")
        self.assertIn("model.text_model.layers.1.input_layernorm.weight", ex.dropped)


class Quantized(Base):
    CASES = (("qwen3_moe", {"experts": "fused", "quant": "mxfp4"}, "MXFP4"),
             ("qwen2_moe", {"quant": "compressed"}, "compressed-tensors"))

    def test_refusal_names_the_format(self):
        for fam, opt, fmt in self.CASES:
            with self.subTest(family=fam, format=fmt):
                m = build_model(fam, dtype="BF16", seed=740, **opt)
                src = self.write(m, "%s-q" % fam)
                before = sorted(os.listdir(self.tmp))
                p = convert(self, src, src + "-out", expect_rc=2)
                self.assertIn(fmt, p.stderr, describe(p))
                self.assertIn("--partial", p.stderr)
                self.assertNotIn("is missing", p.stderr)
                self.assertEqual(sorted(os.listdir(self.tmp)), before)

    def test_partial(self):
        """--partial folds the norms whose consumers are unquantized, keeps
        the others with their weights, writes no marker, and says so in the
        summary and the model card; verify --partial proves the result."""
        for fam, opt, fmt in self.CASES:
            with self.subTest(family=fam, format=fmt):
                # tamed: verify --partial runs the forward pass through the
                # dequantized experts, which an untamed model makes chaotic
                m = tame(build_model(fam, dtype="BF16", seed=741, **opt))
                src, out, p, ex, ck = self.convert_checked(m, "%s-partial" % fam, ("--partial",), partial=True)
                self.assertTrue(ex.kept_quantized, "the fixture should keep some norm")
                self.assertFalse(ex.marker)
                self.assertNotIn("flashnorm_folded", ck.config)
                self.assertIn("--partial", p.stderr)
                self.assertIn("post_attention_layernorm", p.stderr)
                self.assertIn(fmt, p.stderr)
                with open(os.path.join(out, "README.md")) as f:
                    card = f.read()
                self.assertIn("quantized", card)
                self.assertIn("model.layers.{i}.post_attention_layernorm", card)
                self.assertIn(fmt, card)
                for k in ex.kept_quantized:
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                v = run(["verify", src, out, "--partial"])
                self.assertEqual(v.returncode, 0, describe(v))
                v = run(["verify", src, out])
                self.assertEqual(v.returncode, 2, "without --partial the source cannot be planned\n" + describe(v))

    def test_partial_strict_and_dry_run(self):
        m = build_model("qwen3_moe", dtype="BF16", seed=742, experts="fused", quant="mxfp4")
        src = self.write(m, "q3-strict")
        p = convert(self, src, None, "--partial", "--dry-run")
        self.assertIn("--partial", p.stdout + p.stderr)
        self.assertIn("post_attention_layernorm", p.stdout)
        convert(self, src, src + "-out", "--partial", "--strict")
        check_output(self, src, src + "-out", ex=expected(read_checkpoint(src), partial=True))


if __name__ == "__main__":
    unittest.main(verbosity=2)
