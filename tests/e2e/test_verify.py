"""test_verify.py -- `flashify verify SOURCE OUTPUT` (issue 4).

Correct pairs (computed in Python by expect.py, not by the converter) pass
for every family at BF16, and for several families at F16 and F32.  Then
the teeth: each deliberately wrong output must fail with exit 3 and a
report naming what is wrong -- a folded row scaled by 2, lm_head left
unfolded while the final norm is dropped, a norm kept although its
consumers are folded, a Gemma model folded with w instead of 1 + w, a
flipped exponent bit (in a copied and in a folded tensor), a changed
config, an extra and a missing tensor.  Where the damage changes what the
model computes enough, the forward check must catch it on its own too.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import run, describe  # noqa: E402
from fixtures import FAMILIES  # noqa: E402
from verify_fixtures import (write_source, write_output, scale_row, flip_bit,  # noqa: E402
                             bump_ulps, exponent_top_bit)

# families without a reference forward pass (tensor check only)
NO_FORWARD = set()


def verify(src, out, *flags):
    p = run(["verify", src, out, "--json"] + list(flags))
    rep = None
    if p.stdout.strip():
        rep = json.loads(p.stdout)
    return p, rep


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-verify-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pair(self, family, dtype="BF16", name=None, src_opt=None, **out_opt):
        name = name or "%s-%s" % (family, dtype)
        src = os.path.join(self.tmp, name)
        out = src + "-out"
        if not os.path.exists(src):
            write_source(src, family, dtype, **(src_opt or {}))
        shutil.rmtree(out, ignore_errors=True)
        write_output(src, out, **out_opt)
        return src, out

    def assertEquivalent(self, src, out, *flags, forward=True):
        p, rep = verify(src, out, *flags)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["equivalent"])
        self.assertTrue(rep["tensor_check"]["passed"], rep)
        self.assertEqual(rep["tensor_check"]["ulp1_elements"], 0)
        if forward:
            fc = rep["forward_check"]
            self.assertTrue(fc["passed"], fc)
            self.assertLess(fc["max_rel_diff"], fc["tolerance"] / 4,
                            "a correct fold should be far inside the tolerance: %s" % fc)
        return rep

    def assertBroken(self, src, out, needle, *flags, forward_fails=None):
        p, rep = verify(src, out, *flags)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["equivalent"])
        text = json.dumps(rep)
        self.assertIn(needle, text, "the report should name %r:\n%s" % (needle, text))
        if forward_fails is not None:
            self.assertEqual(rep["forward_check"].get("passed"), not forward_fails, rep["forward_check"])
        return rep


class CorrectPairs(Base):
    def test_every_family_bf16(self):
        for fam in FAMILIES:
            with self.subTest(family=fam):
                opt = {"mm_projector": False} if fam == "gemma3" else {}
                src, out = self.pair(fam, "BF16", src_opt=opt)
                rep = self.assertEquivalent(src, out, forward=fam not in NO_FORWARD)
                self.assertGreater(rep["tensor_check"]["folded"], 0)
                self.assertGreater(rep["tensor_check"]["norms_removed"], 0)
                if fam in NO_FORWARD:
                    self.assertIn("skipped", rep["forward_check"])
                else:
                    self.assertEqual(rep["forward_check"]["positions"], 17)

    def test_other_dtypes(self):
        for fam in ("llama", "gemma2", "qwen3", "phi3", "cohere", "qwen2_moe"):
            for dt in ("F32", "F16"):
                with self.subTest(family=fam, dtype=dt):
                    src, out = self.pair(fam, dt)
                    rep = self.assertEquivalent(src, out)
                    self.assertEqual(rep["forward_check"]["tolerance_dtype"], dt)

    def test_keep_tied_and_keep_norms(self):
        src, out = self.pair("llama", "BF16", keep_tied=True)
        self.assertEquivalent(src, out)
        src, out = self.pair("gemma2", "BF16", keep_norms=True)
        rep = self.assertEquivalent(src, out)
        self.assertGreater(rep["tensor_check"]["norms_kept_as_identity"], 0)

    def test_human_report_and_tokens(self):
        src, out = self.pair("llama", "BF16")
        p = run(["verify", src, out])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("result: EQUIVALENT", p.stdout)
        self.assertIn("folded bit-exact", p.stdout)
        p, rep = verify(src, out, "--tokens", "1, 5,7,95")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertEqual(rep["forward_check"]["tokens"], [1, 5, 7, 95])
        p, _ = verify(src, out, "--tokens", "1,x")
        self.assertEqual(p.returncode, 1, describe(p))
        p, _ = verify(src, out, "--tokens", "1,96")      # vocab is 96
        self.assertEqual(p.returncode, 1, describe(p))
        self.assertIn("96", p.stderr)
        p = run(["verify", src])
        self.assertEqual(p.returncode, 1, describe(p))

    def test_one_ulp_from_another_tool(self):
        """Pairs made by other tools may round differently by 1 ulp: counted
        and reported, accepted; 2 ulps are not; flashify's own output (its
        README says so) must be bit-exact."""
        q = "model.layers.0.self_attn.q_proj.weight"

        def one_ulp(ts, ex):
            ts[q] = bump_ulps(ts[q], [5, 6, 7])
        src, out = self.pair("llama", "BF16", mutate=one_ulp)
        p, rep = verify(src, out)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertEqual(rep["tensor_check"]["ulp1_elements"], 3)
        self.assertEqual(rep["tensor_check"]["ulp1_tensors"], 1)
        shutil.rmtree(out)
        write_output(src, out, mutate=one_ulp, readme="# x\n\nConverted by flashify 0.1.0.\n")
        self.assertBroken(src, out, q)

        def two_ulps(ts, ex):
            ts[q] = bump_ulps(ts[q], [5], n=2)
        src, out = self.pair("llama", "BF16", mutate=two_ulps)
        self.assertBroken(src, out, q)


class Teeth(Base):
    def test_folded_row_scaled_by_two(self):
        for fam, t in (("llama", "model.layers.0.self_attn.k_proj.weight"),
                       ("phi3", "model.layers.1.mlp.gate_up_proj.weight"),
                       ("mixtral", "model.layers.2.block_sparse_moe.experts.1.w3.weight")):
            for dt in ("BF16", "F32"):
                with self.subTest(family=fam, dtype=dt):
                    def scale(ts, ex):
                        ts[t] = scale_row(ts[t], 3, 2.0)
                    src, out = self.pair(fam, dt, mutate=scale)
                    self.assertBroken(src, out, t)

    def test_row_scaled_forward_alone(self):
        """The forward check alone (a wide row of a small model) sees it."""
        t = "model.layers.0.mlp.up_proj.weight"

        def scale(ts, ex):
            for r in range(0, 48, 2):
                ts[t] = scale_row(ts[t], r, 2.0)
        src, out = self.pair("llama", "BF16", mutate=scale)
        self.assertBroken(src, out, t, forward_fails=True)

    def test_lm_head_unfolded(self):
        for fam in ("llama", "qwen2", "gemma"):
            with self.subTest(family=fam):
                def unfold(ts, ex):
                    ts[ex.head] = ts[ex.embed]      # the plain embedding, final norm dropped
                src, out = self.pair(fam, "BF16", mutate=unfold)
                self.assertBroken(src, out, "lm_head.weight", forward_fails=True)

    def test_norm_kept_although_folded(self):
        for fam, norm in (("llama", "model.layers.1.input_layernorm.weight"),
                          ("gemma2", "model.layers.0.pre_feedforward_layernorm.weight"),
                          ("llama", "model.norm.weight")):
            with self.subTest(family=fam, norm=norm):
                src_dir = os.path.join(self.tmp, "%s-BF16" % fam)

                def keep(ts, ex):
                    from fixtures import read_checkpoint
                    ts[norm] = read_checkpoint(src_dir).tensors[norm]
                src, out = self.pair(fam, "BF16", mutate=keep)
                self.assertBroken(src, out, norm, forward_fails=True)

    def test_gemma_folded_with_w(self):
        for fam in ("gemma", "gemma2", "gemma3_text"):
            with self.subTest(family=fam):
                src, out = self.pair(fam, "BF16", gain="w")
                self.assertBroken(src, out, "differs from the correctly rounded product",
                                  forward_fails=True)

    def test_llama_folded_with_one_plus_w(self):
        src, out = self.pair("llama", "F32", gain="1+w")
        self.assertBroken(src, out, "differs from the correctly rounded product", forward_fails=True)

    def test_flipped_exponent_bit(self):
        for dt in ("BF16", "F16", "F32"):
            for t in ("model.layers.1.self_attn.o_proj.weight",     # copied
                      "model.layers.1.mlp.gate_proj.weight",        # folded
                      "model.embed_tokens.weight"):                 # copied, read by the head fold
                with self.subTest(dtype=dt, tensor=t):
                    def flip(ts, ex):
                        ts[t] = flip_bit(ts[t], 17, exponent_top_bit(dt))
                    src, out = self.pair("llama", dt, mutate=flip)
                    self.assertBroken(src, out, t)

    def test_config_changes(self):
        def eps(cfg):
            cfg["rms_norm_eps"] = 1e-3
        src, out = self.pair("llama", "BF16", config=eps)
        self.assertBroken(src, out, "rms_norm_eps")

        def tie(cfg):
            cfg["tie_word_embeddings"] = True
        src, out = self.pair("llama", "BF16", config=tie)
        self.assertBroken(src, out, "tie_word_embeddings")

        def marker(cfg):
            cfg["flashnorm_folded"] = True
        src, out = self.pair("gemma2", "BF16", config=marker)
        self.assertBroken(src, out, "marker")

    def test_extra_and_missing_tensor(self):
        def extra(ts, ex):
            ts["model.layers.0.mlp.extra.weight"] = ts["model.layers.0.mlp.down_proj.weight"]
        src, out = self.pair("llama", "BF16", mutate=extra)
        self.assertBroken(src, out, "model.layers.0.mlp.extra.weight")

        def missing(ts, ex):
            del ts["model.layers.1.mlp.down_proj.weight"]
        src, out = self.pair("llama", "BF16", mutate=missing)
        self.assertBroken(src, out, "model.layers.1.mlp.down_proj.weight")

    def test_human_report_names_the_problem(self):
        def scale(ts, ex):
            t = "model.layers.0.self_attn.v_proj.weight"
            ts[t] = scale_row(ts[t], 0, 2.0)
        src, out = self.pair("qwen3", "BF16", mutate=scale)
        p = run(["verify", src, out])
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertIn("NOT EQUIVALENT", p.stdout)
        self.assertIn("model.layers.0.self_attn.v_proj.weight", p.stdout)
        self.assertIn("element [0, ", p.stdout)


class HonestReports(Base):
    """Issue 11 items 15 and 16: a claim in the report is made only for
    what was checked, and a check that cannot compute fails or says so."""

    def test_identity_claimed_only_after_the_check(self):
        norm = "model.layers.1.input_layernorm.weight"
        src_dir = os.path.join(self.tmp, "llama-BF16")

        def keep(ts, ex):
            from fixtures import read_checkpoint
            ts[norm] = read_checkpoint(src_dir).tensors[norm]   # its trained, non-identity values
        src, out = self.pair("llama", "BF16", mutate=keep)
        rep = self.assertBroken(src, out, norm)
        self.assertEqual(rep["tensor_check"]["norms_kept_as_identity"], 0)
        p = run(["verify", src, out])
        self.assertNotIn("identity value", p.stdout.split("\n")[1], p.stdout)
        # and a norm that does hold the identity is counted
        src, out = self.pair("llama", "BF16", keep_norms=True)
        rep = self.assertEquivalent(src, out)
        self.assertGreater(rep["tensor_check"]["norms_kept_as_identity"], 0)

    def test_non_finite_logits_fail(self):
        """NaN compares false with everything: a NaN logit once slipped
        through as max |dlogit| 0 and KL -nan."""
        from fixtures import decode_values, encode_values, Tensor
        for bad in (float("nan"), float("inf")):
            with self.subTest(value=bad):
                def poison(ts, ex):
                    t = ts[ex.head]
                    vals = decode_values(t.dtype, t.data)
                    vals[:t.shape[1]] = [bad] * t.shape[1]         # token 0's row
                    ts[ex.head] = Tensor(t.dtype, t.shape, encode_values(t.dtype, vals))
                src, out = self.pair("llama", "F32", mutate=poison)
                rep = self.assertBroken(src, out, "not finite", forward_fails=True)
                self.assertIn("not finite", rep["forward_check"]["failure"])

    def test_verdict_without_forward_check(self):
        src = os.path.join(self.tmp, "rope-su")
        write_source(src, "llama", "F32")
        with open(os.path.join(src, "config.json")) as f:
            cfg = json.load(f)
        cfg["rope_scaling"] = {"rope_type": "su", "factor": 2.0}
        with open(os.path.join(src, "config.json"), "w") as f:
            json.dump(cfg, f)
        out = src + "-out"
        write_output(src, out)
        p = run(["verify", src, out])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertRegex(p.stdout, r"result: EQUIVALENT \(tensors only; forward check unavailable: .*"
                                   r"rope_scaling type 'su' is not supported")
        p, rep = verify(src, out)
        self.assertTrue(rep["equivalent"])
        self.assertTrue(rep["tensors_only"])
        self.assertFalse(rep["forward_check"]["ran"])
        self.assertTrue(rep["result"].startswith("EQUIVALENT (tensors only; forward check unavailable: "), rep)
        src, out = self.pair("llama", "BF16")
        p = run(["verify", src, out, "--skip-forward"])
        self.assertIn("result: EQUIVALENT (tensors only; forward check skipped: --skip-forward)", p.stdout)
        p, rep = verify(src, out)
        self.assertEqual(rep["result"], "EQUIVALENT")
        self.assertFalse(rep["tensors_only"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
