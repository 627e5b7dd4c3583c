"""test_zoo_qwen.py -- Qwen3.5 / Qwen3.6 and Qwen3-Next (issue 12): what the
family-wide suites (which iterate fixtures.FAMILIES) do not cover.

Per-layer consumers by layer_types and, without them, by
full_attention_interval; the composite layout with its vision tower and MTP
block passed through; both expert layouts; the kept norms and the
--keep-norms identities per class (0 for the 1 + w decoder norms, the w
gated norm untouched); the marker; refusals; --partial; verify passing on
flashify's own output and failing on a w-instead-of-1+w fold, a missed
consumer and a dropped gated norm; and the C forward pass against
zoo_qwen.py's reference in the variants the defaults do not reach.

Expectations come from expect.py / zoo_qwen.py (written from
docs/architectures.md §qwen3_5), never from the converter.
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

from fixtures import _quantize_experts, build_model, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import check_output, convert, describe, refused_model, run  # noqa: E402
from verify_fixtures import write_output, write_source  # noqa: E402
import test_forward_families  # noqa: E402

LP = "model.language_model.layers.%d."


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-qwen-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def convert_checked(self, model, name, flags=(), **kw):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src)
        out = src + "-out"
        p = convert(self, src, out, *flags)
        ex = expected(read_checkpoint(src), keep_norms="--keep-norms" in flags,
                      keep_tied="--keep-tied" in flags, **kw)
        ex, ck = check_output(self, src, out, ex=ex)
        return src, out, p, ex, ck

    def refused(self, model, name, words, flags=()):
        return refused_model(self, self.tmp, model, name, words, flags)


def groups_of(ex, layer):
    """{norm: consumers} of one layer, names relative to the layer prefix."""
    out = {}
    for norm, cons in ex.groups:
        for pre in ("model.language_model.layers.%d." % layer, "model.layers.%d." % layer):
            if norm.startswith(pre):
                out[norm[len(pre):-len(".weight")]] = sorted(c[len(pre):] for c in cons)
    return out


class LayerTypes(Base):
    def test_consumers_follow_the_layer_type(self):
        """layer_types [linear, full, linear, full]: input_layernorm feeds
        the four linear-attention projections or q_proj/k_proj/v_proj."""
        m = build_model("qwen3_5", dtype="BF16", seed=1001)
        self.assertEqual(m.config["text_config"]["layer_types"][:2], ["linear_attention", "full_attention"])
        _, _, p, ex, ck = self.convert_checked(m, "lt")
        self.assertEqual(groups_of(ex, 0)["input_layernorm"],
                         ["linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight",
                          "linear_attn.in_proj_qkv.weight", "linear_attn.in_proj_z.weight"])
        self.assertEqual(groups_of(ex, 1)["input_layernorm"],
                         ["self_attn.k_proj.weight", "self_attn.q_proj.weight", "self_attn.v_proj.weight"])
        q = LP % 1 + "self_attn.q_proj.weight"
        self.assertEqual(ck.tensors[q].shape, (64, 32), "q_proj holds query and gate")
        self.assertNotEqual(ck.tensors[q].data, m.tensors[q].data)

    def test_without_layer_types(self):
        """The Qwen3-Next Hub config has no layer_types: every
        full_attention_interval-th layer (default 4) is full attention."""
        for fam, interval, full in (("qwen3_next", 3, [2]), ("qwen3_5", None, [3]), ("qwen3_next", 1, [0, 1, 2, 3])):
            with self.subTest(family=fam, interval=interval):
                opt = {"layer_types": False}
                if interval:
                    opt["interval"] = interval
                else:
                    opt["interval"] = 4
                m = build_model(fam, dtype="BF16", seed=1002, **opt)
                tc = m.config.get("text_config", m.config)
                self.assertNotIn("layer_types", tc)
                if interval is None:
                    del tc["full_attention_interval"]       # the class default, 4
                _, _, _, ex, _ = self.convert_checked(m, "nolt-%s-%s" % (fam, interval))
                for i in range(4):
                    cons = groups_of(ex, i)["input_layernorm"]
                    self.assertEqual(any("q_proj" in c for c in cons), i in full, (i, cons))

    def test_unknown_layer_type_refused(self):
        m = build_model("qwen3_5_text", dtype="BF16", seed=1003)
        m.config["layer_types"][2] = "sliding_attention"
        self.refused(m, "badlt", ["layers.2.input_layernorm", "layer 2", "layer_types"])

    def test_layer_type_disagreeing_with_tensors_refused(self):
        """layer_types says full attention where the tensors are linear
        attention's: the missing consumer is named, not skipped."""
        m = build_model("qwen3_next", dtype="BF16", seed=1004, layer_types=True)
        m.config["layer_types"][0] = "full_attention"
        self.refused(m, "lt-vs-tensors", ["model.layers.0.self_attn.q_proj.weight", "input_layernorm", "missing"])

    def test_missing_linear_projection_refused(self):
        m = build_model("qwen3_5", dtype="BF16", seed=1005)
        del m.tensors[LP % 2 + "linear_attn.in_proj_b.weight"]
        self.refused(m, "no-b", [LP % 2 + "linear_attn.in_proj_b.weight", "input_layernorm"])


class LayoutsAndPassThrough(Base):
    def test_expert_layouts(self):
        """Fused [E, 2I, H] (Qwen3.5-MoE on the Hub), per expert (Qwen3-Next
        on the Hub), [E, H, 2I]; the expert count under either key.  The
        router, experts' gate/up, shared expert and its gate fold; every
        down projection stays."""
        for fam in ("qwen3_5_moe", "qwen3_next"):
            for experts in ("fused", "per_expert", "fused_t"):
                for v5 in (False, True):
                    with self.subTest(family=fam, experts=experts, v5_keys=v5):
                        m = build_model(fam, dtype="BF16", seed=1010, experts=experts, v5_keys=v5)
                        _, _, _, ex, ck = self.convert_checked(m, "%s-%s-%d" % (fam, experts, v5))
                        pre = "model.language_model." if fam == "qwen3_5_moe" else "model."
                        post = groups_of(ex, 1)["post_attention_layernorm"]
                        self.assertIn("mlp.shared_expert_gate.weight", post)
                        self.assertIn("mlp.gate.weight", post)
                        self.assertEqual(any(c.endswith("experts.gate_up_proj") for c in post), experts != "per_expert")
                        for k in m.tensors:
                            if k.startswith(pre) and "down_proj" in k:
                                self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_qwen3_5_moe_has_no_dense_layer(self):
        """Qwen3_5MoeDecoderLayer always builds the sparse block: a dense MLP
        in a qwen3_5_moe layer is refused (the router is missing)."""
        m = build_model("qwen3_5_moe_text", dtype="BF16", seed=1011, experts="per_expert")
        p = "model.layers.0."
        for k in [k for k in m.tensors if k.startswith(p + "mlp.")]:
            del m.tensors[k]
        for n in ("gate_proj", "up_proj", "down_proj"):
            m.tensors[p + "mlp.%s.weight" % n] = m.tensors["model.layers.1.mlp.shared_expert.%s.weight" % n]
        self.refused(m, "dense-in-moe", ["model.layers.0.mlp.gate.weight", "missing"])

    def test_vision_and_mtp_pass_through(self):
        m = build_model("qwen3_5_moe", dtype="BF16", seed=1012)
        passed = [k for k in m.tensors if k.startswith(("model.visual.", "mtp."))]
        self.assertTrue(any(".norm" in k or "norm1" in k for k in passed))
        self.assertTrue(any(k.startswith("mtp.layers.0.mlp.experts.0.") for k in passed), "MTP experts per expert")
        for flags in ((), ("--keep-norms",)):
            with self.subTest(flags=flags):
                _, _, _, ex, ck = self.convert_checked(m, "pass-%d" % len(flags), flags)
                for k in passed:
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                self.assertTrue(ex.marker)
                self.assertIs(ck.config["flashnorm_folded"], True)


class KeptNormsAndMarker(Base):
    def test_kept_norms_and_identities_by_class(self):
        """--keep-norms writes 0 for the folded 1 + w decoder norms; the
        gain-w gated norm and the q/k norms are kept byte for byte."""
        for fam in ("qwen3_5", "qwen3_next"):
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", norm_dtype="F32", seed=1020)
                _, _, p, ex, ck = self.convert_checked(m, fam + "-kn", ("--keep-norms",))
                for k in ex.dropped:
                    self.assertEqual(set(ck.tensors[k].values()), {0.0}, k)
                kept = [k for k in m.tensors if k.endswith(("linear_attn.norm.weight", "q_norm.weight",
                                                            "k_norm.weight")) and not k.startswith("mtp.")]
                self.assertEqual(len(kept), 2 + 2 * 2)
                for k in kept:
                    self.assertIn(k, ex.kept)
                    self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                gated = [k for k in kept if "linear_attn" in k][0]
                self.assertGreater(min(m.tensors[gated].values()), 0.4, "gain-w fixture norm, around 1")
                self.assertNotEqual(set(m.tensors[gated].values()), {1.0})
                self.assertNotIn("1+w", p.stderr, "no load warning when the identities are written")
                _, _, p, _, _ = self.convert_checked(m, fam + "-drop")
                self.assertIn("1+w", p.stderr)
                self.assertIn("--keep-norms", p.stderr, "dropping 1 + w norms points to --keep-norms")

    def test_dry_run_and_card_name_kept_norms(self):
        m = build_model("qwen3_5", dtype="BF16", seed=1021)
        src = os.path.join(self.tmp, "dry")
        write_checkpoint(m, src)
        p = convert(self, src, src + "-out", "--dry-run")
        self.assertFalse(os.path.exists(src + "-out"))
        for w in ("linear_attn.norm", "tiled over the heads", "q_norm", "Gated DeltaNet", "query and gate",
                  "FlashNorm marker: yes"):
            self.assertIn(w, p.stdout, describe(p))
        convert(self, src, src + "-out")
        with open(os.path.join(src + "-out", "README.md")) as f:
            card = f.read()
        self.assertIn("linear_attn.norm", card)

    def test_tied_and_keep_tied(self):
        m = build_model("qwen3_5", dtype="BF16", seed=1022, tied=True)
        _, _, _, ex, ck = self.convert_checked(m, "tied")
        self.assertTrue(ex.untie)
        self.assertIs(ck.config["tie_word_embeddings"], False)
        self.assertIs(ck.config["text_config"]["tie_word_embeddings"], False)
        self.assertIn("lm_head.weight", ck.tensors)
        _, _, _, ex, ck = self.convert_checked(m, "keep-tied", ("--keep-tied",))
        self.assertNotIn("flashnorm_folded", ck.config)
        self.assertIn("model.language_model.norm.weight", ck.tensors)


class Partial(Base):
    def test_partial_quantized_experts(self):
        """compressed-tensors experts: refused by name, or with --partial the
        MoE layers keep post_attention_layernorm, the dense layer and every
        input norm fold, and no marker is written."""
        m = build_model("qwen3_next", dtype="BF16", seed=1030)
        _quantize_experts(m, "compressed", random.Random(5))
        self.refused(m, "q", ["compressed-tensors", "--partial"])
        _, out, p, ex, ck = self.convert_checked(m, "qp", ("--partial",), partial=True)
        self.assertEqual(sorted(ex.kept_quantized),
                         ["model.layers.%d.post_attention_layernorm.weight" % i for i in (1, 2, 3)])
        self.assertIn("model.layers.0.post_attention_layernorm.weight", ex.dropped)
        self.assertFalse(ex.marker)
        self.assertNotIn("flashnorm_folded", ck.config)
        v = run(["verify", os.path.join(self.tmp, "qp"), out, "--partial"])
        self.assertEqual(v.returncode, 0, describe(v))


class Verify(Base):
    TOKENS = "1,7,30,64,95,7,3,11"

    def verify(self, src, out, *flags):
        p = run(["verify", src, out, "--json", "--tokens", self.TOKENS] + list(flags))
        return p, (json.loads(p.stdout) if p.stdout.strip() else None)

    def test_flashify_output_verifies(self):
        """The converter's own output (also --strict) passes, and the
        forward line says what ran."""
        cases = (("qwen3_5", "BF16", "Gated DeltaNet in 2 of 4 layers"),
                 ("qwen3_5_moe", "F32", "MoE in 4 of 4 layers (fused experts [E, 2I, H])"),
                 ("qwen3_next", "BF16", "MoE in 3 of 4 layers (per-expert)"))
        for fam, dt, words in cases:
            with self.subTest(family=fam, dtype=dt):
                src = os.path.join(self.tmp, fam + dt)
                write_source(src, fam, dt)
                p = convert(self, src, src + "-out", "--strict")
                self.assertIn(words, p.stdout + p.stderr, describe(p))
                v = run(["verify", src, src + "-out"])
                self.assertEqual(v.returncode, 0, describe(v))
                self.assertIn("forward: ok", v.stdout)
                self.assertIn(words, v.stdout)

    def test_stray_fused_qkv_ignored(self):
        """A self_attn.qkv_proj (Phi3's name) in a gated-attention layer is no
        tensor of Qwen3NextAttention: ignored, as transformers ignores it,
        and never mistaken for the query projection."""
        src = os.path.join(self.tmp, "qkv")
        m = write_source(src, "qwen3_5_text", "F32")
        m.tensors["model.layers.1.self_attn.qkv_proj.weight"] = m.tensors["model.layers.1.self_attn.q_proj.weight"]
        shutil.rmtree(src)
        write_checkpoint(m, src)
        convert(self, src, src + "-out")
        p, rep = self.verify(src, src + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["passed"], rep["forward_check"])

    def test_wrong_folds_fail(self):
        """w instead of 1 + w; a linear-attention projection left unfolded;
        the gated norm dropped as if it folded."""
        src = os.path.join(self.tmp, "src")
        write_source(src, "qwen3_5", "F32")
        out = src + "-out"

        def unfold(ts, ex):
            ts[LP % 0 + "linear_attn.in_proj_a.weight"] = read_checkpoint(src).tensors[
                LP % 0 + "linear_attn.in_proj_a.weight"]

        def drop_gated(ts, ex):
            del ts[LP % 2 + "linear_attn.norm.weight"]
        for name, kw, needle in (("gain-w", {"gain": "w"}, "differs from the correctly rounded product"),
                                 ("unfolded", {"mutate": unfold}, "linear_attn.in_proj_a.weight"),
                                 ("gated", {"mutate": drop_gated}, "linear_attn.norm.weight")):
            with self.subTest(case=name):
                shutil.rmtree(out, ignore_errors=True)
                write_output(src, out, **kw)
                p, rep = self.verify(src, out)
                self.assertEqual(p.returncode, 3, describe(p))
                self.assertIn(needle, json.dumps(rep))
                self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])


class Forward(Base):
    """The C pass against zoo_qwen.py's reference, F32, 1e-4 of the logit
    scale (test_forward_families.check_dir)."""
    check_dir = test_forward_families.ForwardFamilies.check_dir

    def test_variants(self):
        cases = (("qwen3_5", {"layer_types": False, "interval": 3, "layers": 5}),
                 ("qwen3_5_text", {"rotary": None}),                   # partial_rotary_factor 0.25 by default
                 ("qwen3_next", {"rotary": None, "layer_types": True}),
                 ("qwen3_next", {"experts": "fused_t", "v5_keys": True, "mlp_only_layers": [], "decoder_sparse_step": 2}),
                 ("qwen3_5_moe", {"experts": "per_expert", "qk": "independent"}),
                 ("qwen3_next", {"qk": "independent", "interval": 1}))
        for fam, opt in cases:
            with self.subTest(family=fam, **opt):
                src = os.path.join(self.tmp, "%s-%d" % (fam, len(os.listdir(self.tmp))))
                write_source(src, fam, "F32", **opt)
                p = self.check_dir(src)
                self.assertIn("Gated DeltaNet" if opt.get("interval") != 1 else "qwen3_next", p.stdout)

    def test_bf16(self):
        src = os.path.join(self.tmp, "bf16")
        write_source(src, "qwen3_5_moe", "BF16")
        self.check_dir(src)


if __name__ == "__main__":
    unittest.main(verbosity=2)
