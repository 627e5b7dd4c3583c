"""test_verify_strict.py -- `flashify SOURCE -o OUT --strict` (issue 4).

The converter's own output passes --strict (bit-exact folds, logits within
tolerance) on the bundled stories260K at F32 and BF16 and on generated
models of several families; `flashify verify` accepts it afterwards.  A
wrong plan given with --plan (w treated as 1 + w, a norm folded into only
some of its consumers) passes the tensor check -- which follows the plan --
but the reference forward pass, which does not read the plan, rejects it:
exit 3 and nothing at OUT, no temporary directory left behind.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import run, describe, ROOT  # noqa: E402
from verify_fixtures import write_source  # noqa: E402

MODELS = os.environ.get("FLASHIFY_MODELS") or os.path.join(ROOT, "examples")


class Strict(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-strict-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def strict(self, src, out, *flags):
        p = run([src, "-o", out, "--strict", "--json", "-q"] + list(flags), timeout=120)
        rep = json.loads(p.stdout) if p.stdout.strip() else None
        return p, rep

    def test_stories260k(self):
        for name, bound in (("stories260K", 1e-5), ("stories260K-bf16", 2e-2)):
            with self.subTest(model=name):
                out = os.path.join(self.tmp, name + "-FlashNorm")
                p, rep = self.strict(os.path.join(MODELS, name), out)
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["equivalent"])
                self.assertEqual(rep["output"], out)
                tc, fc = rep["tensor_check"], rep["forward_check"]
                self.assertTrue(tc["exact"])
                self.assertEqual((tc["folded"], tc["norms_removed"]), (26, 11))
                self.assertEqual(fc["positions"], 17)
                self.assertEqual(fc["tokens"][0], 1)
                self.assertLess(fc["max_rel_diff"], bound, fc)
                self.assertGreaterEqual(fc["top1_agree"], 16)
                self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors")))
                # and `verify` on the finished pair agrees (README: exact mode)
                p2 = run(["verify", os.path.join(MODELS, name), out])
                self.assertEqual(p2.returncode, 0, describe(p2))
                self.assertIn("result: EQUIVALENT", p2.stdout)

    def test_families(self):
        for fam in ("llama", "qwen2", "gemma2", "gemma3_text", "olmo2", "cohere", "phi3", "qwen2_moe"):
            with self.subTest(family=fam):
                src = os.path.join(self.tmp, fam)
                write_source(src, fam, "BF16")
                p, rep = self.strict(src, src + "-out")
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["forward_check"]["passed"])
                for extra in (["--keep-tied"], ["--keep-norms"]):
                    out = src + "-out" + extra[0]
                    p, rep = self.strict(src, out, *extra)
                    self.assertEqual(p.returncode, 0, "%s\n%s" % (extra, describe(p)))

    def test_resharded_output(self):
        """The check goes by tensor name, not by file: a re-sharded output
        verifies like the single-file one."""
        out = os.path.join(self.tmp, "resharded")
        p, rep = self.strict(os.path.join(MODELS, "stories260K"), out, "--max-shard-size", "200KB")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors.index.json")))
        self.assertEqual(rep["tensor_check"]["folded"], 26)

    def test_alias_tied_sharded_source(self):
        """transformers' alias for a tied head, over three shards: the
        default unties, --keep-tied keeps the alias; both pass."""
        from fixtures import build_model, write_checkpoint
        from verify_fixtures import tame
        src = os.path.join(self.tmp, "alias")
        write_checkpoint(tame(build_model("llama", "BF16", tied=True)), src, shards=3, alias="embed",
                         extra_files=False)
        for flags in ([], ["--keep-tied"]):
            with self.subTest(flags=flags):
                p, rep = self.strict(src, src + "-out%d" % len(flags), *flags)
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["forward_check"]["passed"])

    def wrong_plan(self, plan, family="llama"):
        src = os.path.join(self.tmp, family + "-src")
        if not os.path.exists(src):
            write_source(src, family, "BF16")
        pf = os.path.join(self.tmp, "plan.json")
        with open(pf, "w") as f:
            json.dump(plan, f)
        out = os.path.join(self.tmp, "out")
        p, rep = self.strict(src, out, "--plan", pf)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(os.path.exists(out), "--strict failed but the output was moved into place")
        self.assertEqual(sorted(os.listdir(self.tmp)), sorted([family + "-src", "plan.json"]),
                         "temporary output left behind")
        self.assertFalse(rep["equivalent"])
        self.assertTrue(rep["tensor_check"]["passed"], "the tensor check follows the plan")
        self.assertFalse(rep["forward_check"]["passed"])
        self.assertIn("position", rep["forward_check"]["failure"])
        return rep

    def test_wrong_gain_plan_rejected(self):
        self.wrong_plan({"model_type": "llama", "gain": "1+w", "layers": [
            {"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
            {"norm": "post_attention_layernorm", "consumers": ["mlp.gate_proj", "mlp.up_proj"]}]})

    def test_partial_consumers_plan_rejected(self):
        # v_proj and up_proj also read the norms: dropping them changes the model
        self.wrong_plan({"model_type": "llama", "gain": "w", "layers": [
            {"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj"]},
            {"norm": "post_attention_layernorm", "consumers": ["mlp.gate_proj"]}]})

    def test_human_report_on_stderr(self):
        out = os.path.join(self.tmp, "s")
        p = run([os.path.join(MODELS, "stories260K-bf16"), "-o", out, "--strict"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("result: EQUIVALENT", p.stderr)
        self.assertIn("forward: ok", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
