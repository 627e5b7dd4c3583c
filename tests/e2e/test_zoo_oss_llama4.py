"""test_zoo_oss_llama4.py -- what is specific to gpt-oss and Llama 4 (issue 12).

The generic suites (test_families, test_verify, test_forward_families, the
digests) cover these families through tests/e2e/zoo_oss_llama4.py.  Here:
every on-disk layout converted and checked tensor by tensor against
expect.py; gpt-oss's MXFP4 experts refused with the format named and
converted only with --partial (q/k/v and the head folded,
post_attention_layernorm kept, no marker, summary and card saying why),
the --partial output verified by a forward pass that dequantizes the
experts; the C forward pass against zoo_oss_llama4's Python reference in
every variant (sinks, sliding and chunked windows, NoPE layers with the
temperature, the clamp); verify's teeth (a w vs 1+w fold, a missed router,
expert or shared-expert consumer) with the MoE routing pinned; the
routing flip a correct BF16 fold can cause, pinned and reported; refusals.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import build_model, float_tensor, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected, fold, gain_ratios  # noqa: E402
from harness import check_output, convert, describe, run, verify_json  # noqa: E402
from verify_fixtures import c_vs_python, tame, write_output  # noqa: E402

TOKENS = [1, 7, 30, 64, 95, 7, 3, 9]
LLAMA4_LAYOUTS = [("llama4_text", {}), ("llama4", {}), ("llama4", {"layout": "model.language_model"}),
                  ("llama4", {"experts": "per_expert"}), ("llama4_text", {"derived": True, "top_k": 2}),
                  ("llama4_text", {"moe_step": 1, "qk_norm": False})]
OSS_LAYOUTS = [("gpt_oss", {}), ("gpt_oss", {"layer_types": None}), ("gpt_oss", {"clamp": True})]


verify = verify_json


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-zoo-c-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def source(self, name, fam, dtype="F32", seed=1, **opt):
        """A trained-looking source (verify_fixtures.tame); clamp=True then
        widens the gpt-oss expert biases to +-12, past swiglu_limit."""
        m = tame(build_model(fam, dtype=dtype, seed=seed, **opt))
        if opt.get("clamp"):
            r = random.Random(seed)
            for k in [k for k in m.tensors if k.endswith("gate_up_proj_bias")]:
                t = m.tensors[k]
                m.tensors[k] = float_tensor(t.dtype, t.shape, [r.uniform(-12, 12) for _ in range(t.shape[0] * t.shape[1])])
        d = os.path.join(self.tmp, name)
        write_checkpoint(m, d)
        return m, d

    def c_vs_python(self, src, out, *flags):
        """verify passes, and the C pass's source logits agree with the
        Python reference to 1e-4 of the logit scale; returns the report."""
        return c_vs_python(self, src, out, TOKENS, *flags)


class Layouts(Base):
    def test_every_layout_converts_exactly(self):
        for n, (fam, opt) in enumerate(LLAMA4_LAYOUTS + OSS_LAYOUTS):
            for dtype in ("BF16", "F32"):
                with self.subTest(family=fam, dtype=dtype, **opt):
                    m, src = self.source("%s-%s-%d" % (fam, dtype, n), fam, dtype, **opt)
                    p = convert(self, src, src + "-out")
                    ex, ck = check_output(self, src, src + "-out")
                    self.assertTrue(ex.marker, "a full fold writes the marker")
                    self.assertTrue(ck.config.get("flashnorm_folded"))
                    folded = [c for _, cs in ex.groups for c in cs]
                    if fam == "gpt_oss":
                        self.assertIn("model.layers.1.mlp.experts.gate_up_proj", folded)
                        self.assertIn("model.layers.0.mlp.router.weight", folded)
                    for k in m.tensors:   # biases, sinks, down projections: untouched
                        if k.endswith(("_bias", ".bias", "sinks", "down_proj", "down_proj.weight")):
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_llama4_moe_and_dense_layers(self):
        """moe_layers decides, not the step, when the config lists them; the
        MoE layers fold into router, experts [E, H, 2I] along axis 1 and the
        shared expert, the dense layers into feed_forward.{gate,up}_proj."""
        m = build_model("llama4_text", dtype="BF16", seed=3)
        m.config["moe_layers"] = [1, 3]
        m.config["interleave_moe_layer_step"] = 1   # would make every layer sparse
        src = os.path.join(self.tmp, "l4-list")
        write_checkpoint(m, src)
        convert(self, src, src + "-out")
        ex, _ = check_output(self, src, src + "-out")
        groups = dict(ex.groups)
        self.assertEqual(groups["model.layers.0.post_attention_layernorm.weight"],
                         ["model.layers.0.feed_forward.gate_proj.weight", "model.layers.0.feed_forward.up_proj.weight"])
        self.assertIn("model.layers.3.feed_forward.experts.gate_up_proj", groups["model.layers.3.post_attention_layernorm.weight"])
        self.assertIn("model.layers.3.feed_forward.shared_expert.up_proj.weight",
                      groups["model.layers.3.post_attention_layernorm.weight"])
        # the step alone (no list): every layer sparse, and the dense
        # tensors of layer 0 are then an error naming the missing router
        del m.config["moe_layers"]
        src2 = os.path.join(self.tmp, "l4-step")
        write_checkpoint(m, src2)
        p = convert(self, src2, src2 + "-out", expect_rc=2)
        self.assertIn("model.layers.0.feed_forward.router.weight", p.stderr)
        self.assertFalse(os.path.exists(src2 + "-out"))

    def test_llama4_vision_passes_through(self):
        """The vision tower's LayerNorms are named like decoder norms; they
        are not under the text prefix and pass through byte for byte."""
        for layout in ("language_model.model", "model.language_model"):
            with self.subTest(layout=layout):
                m, src = self.source("l4v-" + layout, "llama4", "BF16", layout=layout)
                convert(self, src, src + "-out")
                _, ck = check_output(self, src, src + "-out")
                vis = [k for k in m.tensors if "vision_model." in k or "multi_modal_projector." in k]
                self.assertTrue(any(k.endswith("model.layers.0.input_layernorm.weight") for k in vis))
                for k in vis:
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_keep_norms_identity_is_one(self):
        for fam in ("gpt_oss", "llama4"):
            with self.subTest(family=fam):
                m, src = self.source(fam + "-kn", fam, "BF16")
                convert(self, src, src + "-out", "--keep-norms")
                ex, ck = check_output(self, src, src + "-out", keep_norms=True)
                for k in ex.dropped:
                    self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)


class Mxfp4(Base):
    def test_refused_without_partial(self):
        m, src = self.source("oss-mx", "gpt_oss", "BF16", quant="mxfp4")
        before = sorted(os.listdir(self.tmp))
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("MXFP4", p.stderr)
        self.assertIn("model.layers.0.mlp.experts.gate_up_proj_blocks", p.stderr)
        self.assertIn("--partial", p.stderr)
        self.assertEqual(sorted(os.listdir(self.tmp)), before, "nothing may be left behind")

    def test_partial_folds_qkv_and_head_keeps_post_attention(self):
        for dtype in ("BF16", "F32"):
            with self.subTest(dtype=dtype):
                m, src = self.source("oss-mx-" + dtype, "gpt_oss", dtype, quant="mxfp4")
                out = src + "-out"
                p = convert(self, src, out, "--partial")
                ex, ck = check_output(self, src, out, ex=expected(read_checkpoint(src), partial=True))
                kept = ["model.layers.%d.post_attention_layernorm.weight" % i for i in range(2)]
                self.assertEqual(sorted(ex.kept_quantized), kept)
                dropped = set(ex.dropped)
                self.assertEqual(dropped, {"model.layers.0.input_layernorm.weight",
                                           "model.layers.1.input_layernorm.weight", "model.norm.weight"})
                self.assertNotIn("flashnorm_folded", ck.config)
                for k in kept + [k for k in m.tensors if "_blocks" in k or "_scales" in k]:
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                text = p.stderr
                self.assertIn("post_attention_layernorm", text)
                self.assertIn("MXFP4", text)
                with open(os.path.join(out, "README.md")) as f:
                    card = f.read()
                self.assertIn("model.layers.{i}.post_attention_layernorm", card)
                self.assertIn("MXFP4", card)
                # the forward pass dequantizes the experts to prove it
                p = run(["verify", src, out, "--partial"])
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertIn("MXFP4 experts, dequantized", p.stdout)
                self.assertIn("result: EQUIVALENT", p.stdout)

    def test_partial_strict(self):
        m, src = self.source("oss-mx-strict", "gpt_oss", "BF16", quant="mxfp4")
        p = convert(self, src, src + "-out", "--partial", "--strict")
        self.assertIn("MXFP4 experts, dequantized", p.stdout + p.stderr)
        check_output(self, src, src + "-out", ex=expected(read_checkpoint(src), partial=True))

    def test_partial_output_with_wrong_qkv_fold_fails(self):
        m, src = self.source("oss-mx-bad", "gpt_oss", "F32", quant="mxfp4")
        out = src + "-out"
        convert(self, src, out, "--partial")
        ck = read_checkpoint(out)
        q = "model.layers.1.self_attn.q_proj.weight"
        ck.tensors[q] = read_checkpoint(src).tensors[q]     # left unfolded
        m2 = build_model("gpt_oss")
        m2.config, m2.tensors = ck.config, ck.tensors
        bad = src + "-bad"
        write_checkpoint(m2, bad)
        p, rep = verify(src, bad, "--partial")
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])


class Forward(Base):
    def test_c_pass_matches_python_reference(self):
        """Every variant: sinks and sliding layers, YaRN, the router bias
        and top-k softmax, interleaved gate/up, the clamp (biases past 7),
        (up + 1), expert biases; Llama 4's sigmoid-scaled expert input,
        shared expert, chunked RoPE layers vs the NoPE layer with its
        temperature, complex RoPE, the L2 qk norm, dense layers."""
        for n, (fam, opt) in enumerate(LLAMA4_LAYOUTS + OSS_LAYOUTS):
            with self.subTest(family=fam, **opt):
                _, src = self.source("fw-%s-%d" % (fam, n), fam, **opt)
                write_output(src, src + "-out")
                rep = self.c_vs_python(src, src + "-out")
                self.assertTrue(rep["forward_check"]["passed"])
                self.assertIn(fam if fam != "llama4" else "llama4_text", rep["forward_check"]["model"])

    def test_mxfp4_source_matches_python_dequantization(self):
        _, src = self.source("fw-mx", "gpt_oss", quant="mxfp4")
        convert(self, src, src + "-out", "--partial")
        rep = self.c_vs_python(src, src + "-out", "--partial")
        self.assertIn("MXFP4 experts, dequantized", rep["forward_check"]["model"])

    def test_result_line_names_what_ran(self):
        cases = (("gpt_oss", {}, "gpt_oss, 2 layers", "MoE in 2 of 2 layers (fused experts [E, H, 2I])"),
                 ("llama4", {}, "llama4_text, 4 layers", "MoE in 2 of 4 layers (fused experts [E, H, 2I])"),
                 ("llama4", {"experts": "per_expert"}, "llama4_text, 4 layers", "MoE in 2 of 4 layers (per-expert)"))
        for fam, opt, a, b in cases:
            with self.subTest(family=fam, **opt):
                _, src = self.source("rl-%s-%d" % (fam, len(opt)), fam, "BF16", **opt)
                write_output(src, src + "-out")
                p = run(["verify", src, src + "-out"])
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertIn(a, p.stdout)
                self.assertIn(b, p.stdout)


def refold(src_dir, out_dir, gain=None, unfold=()):
    """The correct output of src_dir, refolded with `gain` (every group, its
    own axes), or with the consumers in `unfold` left as in the source."""
    src = read_checkpoint(src_dir)
    ex = expected(src)
    ts = dict(ex.tensors)
    for norm, consumers in ex.groups:
        for c in consumers:
            base = src.tensors[c] if c in src.tensors else src.tensors[ex.embed]
            if any(c.endswith(u) for u in unfold):
                ts[c] = base
            elif gain:
                axis = "middle" if len(base.shape) == 3 else "cols"
                ts[c] = fold(base, gain_ratios(src.tensors[norm], gain), axis)
    from expect import expected_config
    from fixtures import Model
    m = Model("out", expected_config(src.config, ex))
    m.tensors = ts
    write_checkpoint(m, out_dir, extra_files=False)


class Teeth(Base):
    """Wrong outputs fail verify, and the forward check sees it on its own
    (with the MoE routing pinned to the source's choices)."""

    def broken(self, fam, name, **kw):
        _, src = self.source("t-" + name, fam, "F32")
        out = src + "-out"
        refold(src, out, **kw)
        p, rep = verify(src, out)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])
        p2, rep2 = verify(src, out, "--skip-forward")
        self.assertEqual(p2.returncode, 3, "the tensor check alone sees it too")
        return rep

    def test_one_plus_w(self):
        for fam in ("gpt_oss", "llama4"):
            with self.subTest(family=fam):
                self.broken(fam, fam + "-1pw", gain="1+w")

    def test_missed_consumers(self):
        cases = (("gpt_oss", "mlp.router.weight"), ("gpt_oss", "mlp.experts.gate_up_proj"),
                 ("llama4", "feed_forward.router.weight"), ("llama4", "feed_forward.experts.gate_up_proj"),
                 ("llama4", "feed_forward.shared_expert.gate_proj.weight"),
                 ("llama4", "layers.0.feed_forward.up_proj.weight"))
        for fam, consumer in cases:
            with self.subTest(family=fam, consumer=consumer):
                rep = self.broken(fam, "%s-%s" % (fam, consumer.replace(".", "_")), unfold=(consumer,))
                self.assertIn("moe_routing", rep["forward_check"])


class Routing(Base):
    def test_near_tie_flip_is_pinned_and_reported(self):
        """Seed 1's BF16 Llama 4 fixture has a router margin of 1e-3 at
        position 4 of the default tokens: the correct BF16 fold flips that
        top-1 choice (measured: 0.2 of the logit scale without pinning).
        verify pins it to the source's expert and says so."""
        _, src = self.source("flip", "llama4_text", "BF16")
        write_output(src, src + "-out")
        p, rep = verify(src, src + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        r = rep["forward_check"]["moe_routing"]
        self.assertEqual(r["decisions"], 34)        # 17 tokens x 2 MoE layers
        self.assertGreaterEqual(r["differed"], 1)
        self.assertTrue(r["pinned"])
        p = run(["verify", src, src + "-out"])
        self.assertIn("MoE routing pinned to the source's experts", p.stdout)


class Refusals(Base):
    def test_experts_in_the_wrong_layout(self):
        """gpt-oss's experts are [E, H, 2I] by the modeling code; an
        [E, 2I, H] tensor does not read the norm along axis 1."""
        m = build_model("gpt_oss", dtype="BF16")
        k = "model.layers.0.mlp.experts.gate_up_proj"
        t = m.tensors[k]
        from fixtures import Tensor
        m.tensors[k] = Tensor(t.dtype, (t.shape[0], t.shape[2], t.shape[1]), t.data)
        src = os.path.join(self.tmp, "oss-t")
        write_checkpoint(m, src)
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn(k, p.stderr)
        self.assertIn("axis 1", p.stderr)
        self.assertFalse(os.path.exists(src + "-out"))

    def test_missing_shared_expert(self):
        m = build_model("llama4_text", dtype="BF16")
        del m.tensors["model.layers.1.feed_forward.shared_expert.up_proj.weight"]
        src = os.path.join(self.tmp, "l4-noshared")
        write_checkpoint(m, src)
        p = convert(self, src, src + "-out", expect_rc=2)
        self.assertIn("model.layers.1.feed_forward.shared_expert.up_proj.weight", p.stderr)

    def test_mxfp4_blocks_of_the_wrong_shape(self):
        """The forward pass checks the MXFP4 layout before it decodes."""
        m, src = self.source("oss-mx-shape", "gpt_oss", "BF16", quant="mxfp4")
        ck = read_checkpoint(src)
        from fixtures import Model, Tensor
        k = "model.layers.1.mlp.experts.down_proj_scales"
        t = ck.tensors[k]
        ck.tensors[k] = Tensor("U8", (t.shape[0], t.shape[1] // 2, 2 * t.shape[2]), t.data)
        m2 = Model("gpt_oss", ck.config)
        m2.tensors = ck.tensors
        bad = src + "-bad"
        write_checkpoint(m2, bad)
        convert(self, bad, bad + "-out", "--partial")
        p = run(["verify", bad, bad + "-out", "--partial"])
        self.assertIn("forward: skipped", p.stdout)
        self.assertIn(k, p.stdout)


class Hostile(Base):
    """Odd configs and tensors reach the forward pass's own blocks: verify
    answers (exit 0, 2 or 3, the forward check skipped with a reason where
    it cannot run) and never crashes."""

    CASES = (
        ("llama4_text", {}, {"attention_chunk_size": -3}), ("llama4_text", {}, {"attention_chunk_size": None}),
        ("llama4_text", {}, {"floor_scale": 0}), ("llama4_text", {}, {"floor_scale": 1e308, "attn_scale": -1e308}),
        ("llama4_text", {}, {"no_rope_layers": [], "layer_types": None}),
        ("llama4_text", {}, {"num_experts_per_tok": 9}), ("llama4_text", {}, {"no_rope_layer_interval": 0}),
        ("gpt_oss", {}, {"swiglu_limit": None}), ("gpt_oss", {}, {"num_experts_per_tok": 0}),
        ("gpt_oss", {"quant": "mxfp4"}, {"intermediate_size": 0}),
        ("gpt_oss", {"quant": "mxfp4"}, {"intermediate_size": 64}),
        ("gpt_oss", {}, {"layer_types": ["sliding_attention"]}), ("gpt_oss", {}, {"sliding_window": -1}),
    )

    def test_odd_configs(self):
        for n, (fam, opt, change) in enumerate(self.CASES):
            with self.subTest(family=fam, **change):
                _, src = self.source("h-%d" % n, fam, "BF16", **opt)
                flags = ["--partial"] if opt else []
                convert(self, src, src + "-out", *flags)
                with open(os.path.join(src, "config.json")) as f:
                    cfg = json.load(f)
                for k, v in change.items():
                    if v is None and k == "layer_types":
                        cfg.pop(k, None)
                    else:
                        cfg[k] = v
                for d in (src, src + "-out"):
                    with open(os.path.join(d, "config.json"), "w") as f:
                        json.dump(cfg, f)
                p = run(["verify", src, src + "-out"] + flags)
                self.assertIn(p.returncode, (0, 2, 3), describe(p))

    def test_missing_and_misshapen_tensors(self):
        for n, (name, how) in enumerate((("self_attn.sinks", "drop"), ("self_attn.sinks", "short"),
                                         ("mlp.experts.gate_up_proj_bias", "short"),
                                         ("mlp.experts.down_proj", "drop"))):
            with self.subTest(tensor=name, how=how):
                m, src = self.source("hm-%d" % n, "gpt_oss", "BF16")
                out = src + "-out"
                write_output(src, out)
                from fixtures import Tensor
                for d in (src, out):
                    ck = read_checkpoint(d)
                    k = "model.layers.1." + name
                    if how == "drop":
                        del ck.tensors[k]
                    else:
                        t = ck.tensors[k]
                        ck.tensors[k] = Tensor(t.dtype, (2,), t.data[:4])
                    m2 = build_model("gpt_oss")
                    m2.config, m2.tensors = ck.config, ck.tensors
                    shutil.rmtree(d)
                    write_checkpoint(m2, d)
                p = run(["verify", src, out])
                self.assertIn(p.returncode, (0, 2, 3), describe(p))
                if p.returncode == 0:
                    self.assertIn("forward: skipped", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
