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

    def test_every_family(self):
        for fam in FAMILIES:
            with self.subTest(family=fam):
                self.check(fam, "F32")

    def test_deepseek_q_proj_variant(self):
        src = os.path.join(self.tmp, "ds-q")
        write_source(src, "deepseek_v3", "F32", q_lora_rank=None)
        self.check_dir(src)

    def test_gemma_bf16(self):
        for fam in ("gemma", "gemma2", "gemma3_text"):
            with self.subTest(family=fam):
                self.check(fam, "BF16")


if __name__ == "__main__":
    unittest.main(verbosity=2)
