"""test_zoo_glm_deepseek.py -- what is specific to GLM-4, GLM-4.5/4.6/4.7,
GLM-4.7-Flash, DeepSeek-V2, DeepSeek-V3.2, GLM-5 and Kimi K2 / K2.5 (issue 13).

The generic suites (test_families, test_verify, test_forward_families, the
digests) cover these families through tests/e2e/zoo_glm_deepseek.py.  Here:
every on-disk layout converted and checked tensor by tensor against
expect.py (the sandwich and q/k norms, the indexer's k_norm and the MTP
layers untouched); the C forward pass against zoo_glm_deepseek's Python
reference in every variant (both RoPE pairings, DeepSeek-V2's greedy and
group-limited softmax routers, the DSA indexer's top-k selection and GLM-5's
shared indexer layers); verify's teeth (a wrong gain, every kind of missed
consumer, the indexer's included, also where its selection keeps every key);
the FP8 and INT4 releases refused without --partial, converted with it and
verified by a forward pass that dequantizes them; refusals.
"""

import json
import os
import shutil
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import Model, Tensor, build_model, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import check_output, convert, describe, run  # noqa: E402
from ref_forward import ref_logits  # noqa: E402
from verify_fixtures import c_vs_python, refold, tame  # noqa: E402

TOKENS = [1, 7, 30, 64, 95, 7, 3, 9]
LAYOUTS = [("glm4", {}), ("glm4", {"v5": True}),
           ("glm4_moe", {}), ("glm4_moe", {"v5": True, "experts": "fused"}), ("glm4_moe", {"qk_norm": False}),
           ("glm4_moe_lite", {}), ("glm4_moe_lite", {"v5": True, "experts": "fused"}),
           ("glm4_moe_lite", {"q_lora_rank": None}),
           ("deepseek_v2", {}), ("deepseek_v2", {"topk_method": "greedy", "shared": None, "q_lora_rank": None}),
           ("deepseek_v2", {"attention_bias": True, "v5": True, "experts": "fused"}),
           ("deepseek_v32", {}), ("deepseek_v32", {"v5": True, "experts": "fused"}),
           ("glm_moe_dsa", {}), ("glm_moe_dsa", {"v5": True}),
           ("kimi_k2", {}), ("kimi_k25", {})]
MTP = ("glm4_moe", "glm4_moe_lite", "deepseek_v32", "glm_moe_dsa")


def verify(src, out, *flags):
    p = run(["verify", src, out, "--json"] + list(flags))
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


def write_model(d, m):
    write_checkpoint(m, d, extra_files=False)
    return d


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-zoo-glm-ds-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def source(self, name, fam, dtype="F32", seed=1, **opt):
        m = tame(build_model(fam, dtype=dtype, seed=seed, **opt))
        return m, write_model(os.path.join(self.tmp, name), m)

    def c_vs_python(self, src, out, *flags):
        return c_vs_python(self, src, out, TOKENS, *flags)


class Layouts(Base):
    def test_every_layout_converts_exactly(self):
        for n, (fam, opt) in enumerate(LAYOUTS):
            for dtype in ("BF16", "F32"):
                with self.subTest(family=fam, dtype=dtype, **opt):
                    m, src = self.source("%s-%s-%d" % (fam, dtype, n), fam, dtype, **opt)
                    convert(self, src, src + "-out")
                    ex, ck = check_output(self, src, src + "-out")
                    self.assertTrue(ex.marker)
                    self.assertTrue(ck.config.get("flashnorm_folded"))
                    for k in m.tensors:   # biases, correction biases, down projections: untouched
                        if k.endswith((".bias", "e_score_correction_bias", "down_proj", "down_proj.weight")):
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_kept_norms(self):
        cases = {"glm4": ["post_self_attn_layernorm", "post_mlp_layernorm"],
                 "glm4_moe": ["self_attn.q_norm", "self_attn.k_norm"],
                 "deepseek_v32": ["self_attn.indexer.k_norm"], "glm_moe_dsa": ["self_attn.indexer.k_norm"]}
        for fam, kept in cases.items():
            with self.subTest(family=fam):
                m, src = self.source("kept-" + fam, fam, "BF16")
                p = convert(self, src, src + "-out", "--dry-run")
                convert(self, src, src + "-out")
                ex, ck = check_output(self, src, src + "-out")
                for k in kept:
                    name = "model.layers.0.%s.weight" % k
                    self.assertIn(name, ex.kept)
                    self.assertEqual(ck.tensors[name].data, m.tensors[name].data)
                    self.assertIn(k, p.stdout)
                if "indexer" in kept[0]:
                    b = "model.layers.0.self_attn.indexer.k_norm.bias"
                    self.assertEqual(ck.tensors[b].data, m.tensors[b].data)

    def test_glm4_pre_mlp_norm_is_post_attention_layernorm(self):
        m, src = self.source("glm4-names", "glm4", "BF16")
        convert(self, src, src + "-out")
        ex, _ = check_output(self, src, src + "-out")
        groups = dict(ex.groups)
        self.assertEqual(groups["model.layers.1.post_attention_layernorm.weight"],
                         ["model.layers.1.mlp.gate_up_proj.weight"])

    def test_indexer_consumers(self):
        """input_layernorm feeds the MLA and the indexer's wk and
        weights_proj, q_a_layernorm feeds q_b_proj and wq_b; GLM-5's shared
        layer (indexer_types) has no indexer."""
        m, src = self.source("dsa-groups", "glm_moe_dsa", "BF16", v5=True)
        self.assertEqual(m.config["indexer_types"], ["full", "shared", "full"])
        convert(self, src, src + "-out")
        ex, _ = check_output(self, src, src + "-out")
        g = dict(ex.groups)
        p0, p1 = "model.layers.0.", "model.layers.1."
        self.assertEqual(sorted(g[p0 + "input_layernorm.weight"]),
                         sorted(p0 + c + ".weight" for c in ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa",
                                                            "self_attn.indexer.wk", "self_attn.indexer.weights_proj")))
        self.assertEqual(sorted(g[p0 + "self_attn.q_a_layernorm.weight"]),
                         [p0 + "self_attn.indexer.wq_b.weight", p0 + "self_attn.q_b_proj.weight"])
        self.assertEqual(sorted(g[p1 + "input_layernorm.weight"]),
                         [p1 + "self_attn.kv_a_proj_with_mqa.weight", p1 + "self_attn.q_a_proj.weight"])
        self.assertFalse(any(k.startswith(p1 + "self_attn.indexer") for k in m.tensors))

    def test_mtp_layer_passes_through(self):
        for fam in MTP:
            with self.subTest(family=fam):
                m, src = self.source("mtp-" + fam, fam, "BF16")
                L = m.config["num_hidden_layers"]
                mtp = [k for k in m.tensors if k.startswith("model.layers.%d." % L)]
                self.assertTrue(any(k.endswith("eh_proj.weight") for k in mtp))
                self.assertTrue(any(k.endswith(".input_layernorm.weight") for k in mtp))
                convert(self, src, src + "-out")
                _, ck = check_output(self, src, src + "-out")
                for k in mtp:
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_sparse_layers(self):
        """mlp_layer_types decides when the config has it; without it,
        first_k_dense_replace with the config class default (DeepSeek-V3.2:
        3, so a 4-layer model without the key has one MoE layer)."""
        m = build_model("glm4_moe_lite", dtype="BF16", seed=7, v5=True)
        m.config["mlp_layer_types"] = ["dense", "dense", "sparse"]
        m.config["first_k_dense_replace"] = 1   # ignored: the list decides
        m2 = build_model("glm4_moe_lite", dtype="BF16", seed=7, dims={"first_k_dense_replace": 2})
        m.tensors = {k: v for k, v in m2.tensors.items()}
        src = write_model(os.path.join(self.tmp, "lite-types"), m)
        convert(self, src, src + "-out")
        ex, _ = check_output(self, src, src + "-out")
        self.assertEqual(dict(ex.groups)["model.layers.1.post_attention_layernorm.weight"],
                         ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"])
        m3 = build_model("deepseek_v32", dtype="BF16", seed=8, layers=4, dims={"first_k_dense_replace": 3})
        del m3.config["first_k_dense_replace"]
        src3 = write_model(os.path.join(self.tmp, "v32-default"), m3)
        convert(self, src3, src3 + "-out")
        ex3, _ = check_output(self, src3, src3 + "-out")
        self.assertIn("model.layers.3.mlp.gate.weight", dict(ex3.groups)["model.layers.3.post_attention_layernorm.weight"])

    def test_kimi_k25_vision_passes_through(self):
        m, src = self.source("k25-vis", "kimi_k25", "BF16")
        convert(self, src, src + "-out")
        ex, ck = check_output(self, src, src + "-out")
        vis = [k for k in m.tensors if k.startswith(("vision_tower.", "mm_projector."))]
        self.assertIn("mm_projector.pre_norm.weight", vis)
        for k in vis:
            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
        self.assertIn("language_model.model.layers.1.self_attn.q_a_layernorm.weight", ex.dropped)


class Forward(Base):
    def test_c_pass_matches_python_reference(self):
        for n, (fam, opt) in enumerate(LAYOUTS):
            with self.subTest(family=fam, **opt):
                _, src = self.source("fw-%s-%d" % (fam, n), fam, **opt)
                convert(self, src, src + "-out")
                rep = self.c_vs_python(src, src + "-out")
                self.assertTrue(rep["forward_check"]["passed"])

    def test_result_line_names_what_ran(self):
        cases = (("glm4", {}, "glm4, 2 layers"),
                 ("deepseek_v2", {}, "deepseek_v2, 3 layers, hidden 32, 4 heads (4 kv), vocab 96, BF16, MLA"),
                 ("deepseek_v32", {}, "DSA indexer (2 heads x 8, top 3 keys, half-split RoPE)"),
                 ("glm_moe_dsa", {"v5": True}, "DSA indexer (2 heads x 8, top 3 keys, interleaved RoPE), "
                                               "1 layers reuse an earlier selection"),
                 ("kimi_k25", {}, "deepseek_v3, 3 layers"))
        for fam, opt, want in cases:
            with self.subTest(family=fam, **opt):
                _, src = self.source("rl-" + fam, fam, "BF16", **opt)
                convert(self, src, src + "-out")
                p = run(["verify", src, src + "-out"])
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertIn(want, p.stdout)
                if fam in ("deepseek_v32", "glm_moe_dsa"):
                    self.assertIn("DSA indexer: key selection pinned", p.stdout)

    def test_routers(self):
        """DeepSeek-V2's two topk_methods choose differently on the same
        weights (groups ranked by their best expert), and each matches the
        Python reference."""
        outs = {}
        for method in ("greedy", "group_limited_greedy"):
            _, src = self.source("v2-" + method, "deepseek_v2", seed=11, topk_method=method)
            convert(self, src, src + "-out")
            self.c_vs_python(src, src + "-out")
            outs[method] = ref_logits(read_checkpoint(src), TOKENS)
        self.assertTrue(outs["greedy"] != outs["group_limited_greedy"], "the fixture does not tell them apart")

    def test_selection_matters(self):
        """With index_topk 3 the indexer's choice changes the logits (against
        index_topk 2048, every key kept), and the C pass follows it."""
        a = {}
        for k in (3, 2048):
            _, src = self.source("topk-%d" % k, "deepseek_v32", index_topk=k)
            convert(self, src, src + "-out")
            rep = self.c_vs_python(src, src + "-out")
            ix = rep["forward_check"]["dsa_indexer"]
            self.assertGreater(ix["scores_compared"], 0)
            self.assertEqual(ix["differed"], 0)
            self.assertEqual(ix["rows_with_a_choice"] == 0, k == 2048, ix)
            a[k] = ref_logits(read_checkpoint(src), TOKENS)
        self.assertTrue(a[3] != a[2048], "the selection changed nothing")


class Teeth(Base):
    """Wrong outputs fail verify; the forward check sees it on its own."""

    def broken(self, fam, name, dtype="F32", opt=None, **kw):
        _, src = self.source("t-" + name, fam, dtype, **(opt or {}))
        out = src + "-out"
        refold(src, out, **kw)
        p, rep = verify(src, out)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])
        return rep

    def test_wrong_gain(self):
        for fam in ("glm4", "glm4_moe", "deepseek_v2", "glm_moe_dsa", "kimi_k2"):
            with self.subTest(family=fam):
                self.broken(fam, "gain-" + fam, "BF16", gain="1+w")

    def test_missed_consumers(self):
        cases = [("glm4", "mlp.gate_up_proj.weight"), ("glm4_moe", "mlp.gate.weight"),
                 ("glm4_moe", "mlp.shared_experts.up_proj.weight"), ("glm4_moe_lite", "self_attn.q_b_proj.weight"),
                 ("deepseek_v2", "self_attn.kv_b_proj.weight"), ("deepseek_v2", "mlp.gate.weight"),
                 ("deepseek_v32", "self_attn.indexer.wk.weight"),
                 ("deepseek_v32", "self_attn.indexer.weights_proj.weight"),
                 ("deepseek_v32", "self_attn.indexer.wq_b.weight"), ("kimi_k25", "self_attn.q_a_proj.weight")]
        for fam, c in cases:
            with self.subTest(family=fam, consumer=c):
                rep = self.broken(fam, "miss-%s-%s" % (fam, c.replace(".", "-")), unfold=(c,))
                if "indexer" in c:
                    self.assertIn("DSA indexer's scores", rep["forward_check"]["failure"])

    def test_missed_indexer_consumer_where_every_key_is_kept(self):
        """index_topk 2048 over 17 tokens keeps every key: the selection
        cannot show the wrong fold, the compared scores do."""
        rep = self.broken("glm_moe_dsa", "keep-all", "BF16", opt={"index_topk": 2048, "v5": True},
                          unfold=("self_attn.indexer.weights_proj.weight",))
        ix = rep["forward_check"]["dsa_indexer"]
        self.assertEqual(ix["rows_with_a_choice"], 0)
        self.assertGreater(ix["max_rel_score_diff"], 0.1)
        self.assertLess(rep["forward_check"]["max_rel_diff"], 0.1, "the logits alone would have passed")

    def test_sandwich_norm_dropped(self):
        self.broken("glm4", "sandwich", drop_kept=("post_mlp_layernorm",))


class Quantized(Base):
    def test_refused_without_partial(self):
        for fam, quant, fmt, ev in (("kimi_k2", "fp8", "FP8", "weight_scale_inv"),
                                    ("kimi_k25", "int4", "compressed-tensors", "weight_packed")):
            with self.subTest(family=fam):
                _, src = self.source("q-" + fam, fam, "BF16", quant=quant)
                before = sorted(os.listdir(self.tmp))
                p = convert(self, src, src + "-out", expect_rc=2)
                self.assertIn(fmt, p.stderr)
                self.assertIn(ev, p.stderr)
                self.assertIn("--partial", p.stderr)
                self.assertEqual(sorted(os.listdir(self.tmp)), before, "nothing may be left behind")

    def test_fp8_partial_keeps_all_but_the_final_norm(self):
        m, src = self.source("k2-fp8", "kimi_k2", "BF16", quant="fp8")
        out = src + "-out"
        p = convert(self, src, out, "--partial")
        ex, ck = check_output(self, src, out, ex=expected(read_checkpoint(src), partial=True))
        self.assertEqual(ex.dropped, ["model.norm.weight"])
        self.assertNotIn("flashnorm_folded", ck.config)
        self.assertIn("FP8 with block scales", p.stderr)
        rep = self.c_vs_python(src, out, "--partial")
        self.assertIn("FP8 matrices dequantized", rep["forward_check"]["model"])

    def test_fp8_per_channel(self):
        """compressed-tensors FP8 with a weight_scale per output channel:
        refused naming it, and with --partial verified through it."""
        m, src = self.source("g45-fp8", "glm4_moe", "BF16", quant="fp8_channel")
        p = convert(self, src, src + "-bad", expect_rc=2)
        self.assertIn("weight_scale", p.stderr)
        convert(self, src, src + "-out", "--partial")
        check_output(self, src, src + "-out", ex=expected(read_checkpoint(src), partial=True))
        rep = self.c_vs_python(src, src + "-out", "--partial")
        self.assertIn("FP8 matrices dequantized", rep["forward_check"]["model"])

    def test_int4_partial_keeps_the_moe_norms(self):
        for fam in ("kimi_k25", "kimi_k2"):
            with self.subTest(family=fam):
                m, src = self.source("k-int4-" + fam, fam, "BF16", quant="int4")
                out = src + "-out"
                convert(self, src, out, "--partial")
                ex, ck = check_output(self, src, out, ex=expected(read_checkpoint(src), partial=True))
                pre = ex.final[:-len("norm.weight")]
                self.assertEqual(sorted(ex.kept_quantized),
                                 [pre + "layers.%d.post_attention_layernorm.weight" % i for i in (1, 2)])
                self.assertIn(pre + "layers.0.post_attention_layernorm.weight", ex.dropped)
                self.assertIn(pre + "layers.2.self_attn.kv_a_layernorm.weight", ex.dropped)
                rep = self.c_vs_python(src, out, "--partial")
                self.assertIn("packed-integer (compressed-tensors) matrices dequantized", rep["forward_check"]["model"])

    def test_partial_output_with_a_wrong_fold_fails(self):
        m, src = self.source("k25-bad", "kimi_k25", "F32", quant="int4")
        out = src + "-out"
        convert(self, src, out, "--partial")
        ck = read_checkpoint(out)
        q = "language_model.model.layers.1.self_attn.q_a_proj.weight"
        ck.tensors[q] = read_checkpoint(src).tensors[q]
        m2 = Model("bad", ck.config)
        m2.tensors = ck.tensors
        bad = write_model(src + "-bad", m2)
        p, rep = verify(src, bad, "--partial")
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])

    def test_deepseek_v3_fp8_partial_runs_the_forward_check(self):
        """The released DeepSeek-V3 layout (F8_E4M3 with 128x128 block
        scales): before this, verify --partial stopped at the tensor check
        ('F8_E4M3; the forward pass reads F16, BF16, F32 or F64')."""
        m = build_model("deepseek_v3", dtype="BF16", seed=501, fp8=True)
        src = write_model(os.path.join(self.tmp, "v3-fp8"), m)
        convert(self, src, src + "-out", "--partial")
        p, rep = verify(src, src + "-out", "--partial")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["ran"])
        self.assertFalse(rep["tensors_only"])
        self.assertIn("FP8 matrices dequantized", rep["forward_check"]["model"])

    def test_undecodable_forms_say_so(self):
        """An asymmetric packed layer and a scale of the wrong shape: the
        conversion still works with --partial, and the verdict says that the
        forward check could not run, and why."""
        cases = (("zero_point", "weight_zero_point"), ("scale", "do not fit the blocks"))
        for what, msg in cases:
            with self.subTest(case=what):
                m = tame(build_model("kimi_k2", dtype="BF16", seed=21, quant="int4" if what == "zero_point" else "fp8"))
                if what == "zero_point":
                    base = "model.layers.1.mlp.experts.0.gate_proj"
                    m.tensors[base + ".weight_zero_point"] = Tensor("I32", (32, 1), bytes(128))
                else:
                    k = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"
                    m.tensors[k] = Tensor("F32", (2, 1), struct.pack("<2f", 0.01, 0.01))
                src = write_model(os.path.join(self.tmp, "undec-" + what), m)
                convert(self, src, src + "-out", "--partial")
                p, rep = verify(src, src + "-out", "--partial")
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertTrue(rep["tensors_only"])
                self.assertIn(msg, rep["result"])


class Refusals(Base):
    def test_shared_indexer_layers_need_indexer_types(self):
        """GLM-5 shared layers derived from index_topk_pattern alone are not
        in the table's conditions: refused as a missing indexer tensor, with
        nothing written (transformers writes indexer_types on save)."""
        m = build_model("glm_moe_dsa", dtype="BF16", seed=31, v5=True)
        m.config["index_topk_pattern"] = "FSF"
        del m.config["indexer_types"]
        src = write_model(os.path.join(self.tmp, "dsa-pattern"), m)
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("model.layers.1.self_attn.indexer.wk.weight", p.stderr)
        self.assertFalse(os.path.exists(src + "-out"))

    def test_v32_needs_q_lora(self):
        """DeepseekV32Attention always has q_a_proj (the indexer reads its
        latent): a q_proj checkpoint is refused, naming the missing tensor."""
        m = build_model("deepseek_v32", dtype="BF16", seed=32)
        m.config["q_lora_rank"] = None
        for i in range(m.config["num_hidden_layers"]):
            p = "model.layers.%d.self_attn." % i
            m.tensors[p + "q_proj.weight"] = m.tensors.pop(p + "q_b_proj.weight")
            del m.tensors[p + "q_a_proj.weight"], m.tensors[p + "q_a_layernorm.weight"]
        src = write_model(os.path.join(self.tmp, "v32-q"), m)
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("self_attn.q_a_proj.weight", p.stderr)

    def test_v2_unknown_topk_method(self):
        """The fold does not depend on the router; the forward pass refuses
        a topk_method DeepseekV2Moe does not have, and the verdict says so."""
        _, src = self.source("v2-noaux", "deepseek_v2", "BF16", topk_method="noaux_tc")
        convert(self, src, src + "-out")
        p = run(["verify", src, src + "-out"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("topk_method 'noaux_tc' is not one of DeepseekV2Moe's", p.stdout)
        self.assertIn("tensors only", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
