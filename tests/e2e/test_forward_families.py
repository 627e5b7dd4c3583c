"""test_forward_families.py -- the C reference forward pass against a second,
independent implementation (ref_forward.py, pure Python in double) on a
generated model of every family (DeepSeek-V3 with and without q_lora_rank).

`flashify verify --dump-logits` writes the source's logits as computed by
src/forward.c; they must agree with ref_forward.ref_logits to 1e-4 of the
logit scale (float32 accumulation vs double).  Also run in BF16 for the
Gemma families, whose embedding normaliser is rounded to the dtype.
"""

import os
import shutil
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import run, describe  # noqa: E402
from fixtures import FAMILIES, read_checkpoint  # noqa: E402
from verify_fixtures import write_source, write_output  # noqa: E402
from ref_forward import ref_logits  # noqa: E402

TOKENS = [1, 7, 30, 64, 95, 7]


class ForwardFamilies(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-fwd-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, fam, dtype):
        src = os.path.join(self.tmp, "%s-%s" % (fam, dtype))
        opt = {"mm_projector": False} if fam == "gemma3" else {}
        write_source(src, fam, dtype, **opt)
        self.check_dir(src, fam, dtype)

    def check_dir(self, src, fam="", dtype=""):
        write_output(src, src + "-out")
        dump = src + ".logits"
        p = run(["verify", src, src + "-out", "--tokens", ",".join(map(str, TOKENS)),
                 "--dump-logits", dump])
        self.assertEqual(p.returncode, 0, describe(p))
        with open(dump, "rb") as f:
            data = f.read()
        ref = ref_logits(read_checkpoint(src), TOKENS)
        V = len(ref[0])
        self.assertEqual(len(data), 4 * V * len(TOKENS))
        got = struct.unpack("<%df" % (V * len(TOKENS)), data)
        worst = 0.0
        for t, row in enumerate(ref):
            scale = max(1.0, max(abs(v) for v in row))
            d = max(abs(got[t * V + v] - row[v]) for v in range(V))
            worst = max(worst, d / scale)
            self.assertEqual(max(range(V), key=lambda v: got[t * V + v]),
                             max(range(V), key=lambda v: row[v]), "top-1 at position %d" % t)
        self.assertLess(worst, 1e-4, "%s %s: C vs Python reference differ by %.3g" % (fam, dtype, worst))
        spread = max(ref[0]) - min(ref[0])
        self.assertGreater(spread, 0.05, "degenerate logits")
        return p

    def test_every_family(self):
        for fam in FAMILIES:
            with self.subTest(family=fam):
                self.check(fam, "F32")

    def test_fused_experts(self):
        """transformers 5 fused 3-D experts in both layouts: the C pass
        reads them, ref_forward.py reads them its own way, and the result
        line says which layout ran."""
        cases = [(f, "fused") for f in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")]
        cases += [("qwen2_moe", "fused_t"), ("qwen3_moe", "fused_t")]
        for fam, experts in cases:
            with self.subTest(family=fam, experts=experts):
                src = os.path.join(self.tmp, "%s-%s" % (fam, experts))
                write_source(src, fam, "F32", experts=experts, v5_keys=experts == "fused_t")
                p = self.check_dir(src)
                want = "[E, 2I, H]" if experts == "fused" else "[E, H, 2I]"
                self.assertIn("fused experts " + want, p.stdout)

    def test_stray_text_config(self):
        """A llama config with another model's text_config computes llama."""
        src = os.path.join(self.tmp, "stray")
        write_source(src, "llama", "F32", stray_text_config=True)
        self.check_dir(src)

    def test_deepseek_q_proj_variant(self):
        src = os.path.join(self.tmp, "ds-q")
        write_source(src, "deepseek_v3", "F32", q_lora_rank=None)
        self.check_dir(src)

    def test_rope_scaling(self):
        """Every rope_type the C pass accepts, against ref_forward's port of
        modeling_rope_utils.py; an unknown type is refused clearly."""
        cases = [
            ("llama", {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, {}),
            ("gemma3_text", {"rope_type": "linear", "factor": 8.0}, {}),
            ("mistral", {"rope_type": "dynamic", "factor": 2.0}, {}),
            ("qwen3", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, {}),
            ("deepseek_v3", {"type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                             "beta_fast": 32, "beta_slow": 1, "original_max_position_embeddings": 64}, {}),
            ("phi3", {"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [4.0, 8.0]},
             {"partial_rotary_factor": 0.5, "max_position_embeddings": 1024,
              "original_max_position_embeddings": 256}),
        ]
        for fam, rs, extra in cases:
            with self.subTest(family=fam, rope=rs.get("rope_type", rs.get("type"))):
                src = os.path.join(self.tmp, "rope-" + fam)
                write_source(src, fam, "F32")
                self.set_config(src, rope_scaling=rs, **extra)
                self.check_dir(src)
        src = os.path.join(self.tmp, "rope-bad")
        write_source(src, "llama", "F32")
        self.set_config(src, rope_scaling={"rope_type": "su", "factor": 2.0})
        write_output(src, src + "-out")
        p = run(["verify", src, src + "-out"])
        self.assertEqual(p.returncode, 0, describe(p))   # tensor check alone still proves it
        self.assertIn("forward: skipped", p.stdout)
        self.assertIn("rope_scaling type 'su' is not supported", p.stdout)

    def set_config(self, src, **kv):
        import json
        path = os.path.join(src, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg.update(kv)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)

    def test_gemma_bf16(self):
        for fam in ("gemma", "gemma2", "gemma3_text"):
            with self.subTest(family=fam):
                self.check(fam, "BF16")


if __name__ == "__main__":
    unittest.main(verbosity=2)
