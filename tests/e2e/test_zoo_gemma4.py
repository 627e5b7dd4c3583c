"""test_zoo_gemma4.py -- Gemma 4 (gemma4_text, gemma4): what is specific.

The generic suites (test_families, test_verify, test_forward_families,
test_verify_strict) already convert and verify the fixtures of
zoo_gemma4.py; here: the per-layer consumer variants (KV-shared layers,
attention_k_eq_v), the experts' own pre-norm, what must stay untouched
(sandwich norms, q/k norms, router, per-layer inputs, layer_scalar, the
vision and audio towers), no FlashNorm marker and why, --keep-norms writing
1 (the w class), refusals, and verify's teeth: a 1 + w fold, a 0 identity,
a missed consumer, what a marker-reading loader would build, and tensors
only the Gemma 4 paths read.  The C forward pass is compared with
zoo_gemma4.ref_logits (pure Python) on the released model shapes.
"""

import json
import os
import random
import shutil
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import Tensor, _quantize_experts, build_model, encode_values, read_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import ZooCase, check_output, convert, describe, run, verify_json as verify  # noqa: E402
from verify_fixtures import write_output, write_source  # noqa: E402
import zoo_gemma4 as z  # noqa: E402

TOKENS = [2, 7, 30, 64, 95, 7, 11]
# the released checkpoints' shapes (convert_gemma4_weights.py _VARIANTS), scaled down
E2B = dict(moe=False, k_eq_v=False, kv_shared=2, double_wide=True, ple=4)
A4B = dict(moe=True, k_eq_v=True, kv_shared=0, double_wide=False, ple=0)
B31 = dict(moe=False, k_eq_v=True, kv_shared=0, double_wide=False, ple=0)


class Base(ZooCase):
    tmp_prefix = "flashify-g4-"
    seed = 41

    def converted(self, family="gemma4", name=None, flags=(), keep_norms=False, **opt):
        return super().converted(family, name, flags, keep_norms, **opt)


class Plan(Base):
    def test_consumers_per_layer(self):
        """Layer by layer, written from the modeling code here rather than
        read from expect.py: which projections change and which do not."""
        m, p, ex, ck = self.converted("gemma4")
        tc = m.config["text_config"]
        self.assertEqual(tc["layer_types"][2], "full_attention")
        pre = "model.language_model.layers.%d.self_attn.%s.weight"
        for i in range(tc["num_hidden_layers"]):
            t, _, _, kv_from = z.layer_info(tc, i)
            want = {"q_proj"} if kv_from is not None else \
                {"q_proj", "k_proj"} if t == "full_attention" else {"q_proj", "k_proj", "v_proj"}
            present = {n for n in ("q_proj", "k_proj", "v_proj") if pre % (i, n) in m.tensors}
            self.assertEqual(present, want, "layer %d stores the projections its type has" % i)
            for n in present:
                self.assertNotEqual(ck.tensors[pre % (i, n)].data, m.tensors[pre % (i, n)].data,
                                    "layer %d %s must carry input_layernorm" % (i, n))
            self.assertEqual(ck.tensors[pre % (i, "o_proj")].data, m.tensors[pre % (i, "o_proj")].data)
        text = p.stdout + p.stderr
        self.assertNotIn("1+w", text, "Gemma 4 norms are w: no Gemma 1-3 load warning")

    def test_untouched(self):
        """The router reads the raw residual (router.proj, router.scale,
        per_expert_scale stay), the per-layer-input path reads no norm, the
        down projections read no norm; the kept norms are byte-identical."""
        m, _, ex, ck = self.converted("gemma4")
        lp = "model.language_model.layers.%d."
        same = ["router.proj.weight", "router.scale", "router.per_expert_scale", "experts.down_proj",
                "mlp.down_proj.weight", "per_layer_input_gate.weight", "per_layer_projection.weight",
                "layer_scalar", "post_attention_layernorm.weight", "post_feedforward_layernorm.weight",
                "post_feedforward_layernorm_1.weight", "post_feedforward_layernorm_2.weight",
                "post_per_layer_input_norm.weight", "self_attn.q_norm.weight"]
        changed = ["experts.gate_up_proj", "mlp.gate_proj.weight", "mlp.up_proj.weight"]
        for i in range(6):
            for n in same:
                k = lp % i + n
                self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
            for n in changed:
                k = lp % i + n
                self.assertNotEqual(ck.tensors[k].data, m.tensors[k].data, k)
            for n in ("input_layernorm", "pre_feedforward_layernorm", "pre_feedforward_layernorm_2"):
                self.assertNotIn(lp % i + n + ".weight", ck.tensors)
        for k in ("embed_tokens_per_layer.weight", "per_layer_model_projection.weight",
                  "per_layer_projection_norm.weight", "embed_tokens.weight"):
            k = "model.language_model." + k
            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_towers_pass_through(self):
        """The vision tower's layers have norms with the decoder's names
        (input_layernorm, pre_feedforward_layernorm): they, the audio tower
        and the multimodal embedders pass through byte for byte."""
        m, _, ex, ck = self.converted("gemma4")
        towers = [k for k in m.tensors if k.startswith(("model.vision_tower.", "model.audio_tower.",
                                                         "model.embed_vision.", "model.embed_audio."))]
        self.assertIn("model.vision_tower.encoder.layers.0.input_layernorm.weight", towers)
        for k in towers:
            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_text_only_layout(self):
        m, _, ex, ck = self.converted("gemma4_text")
        self.assertIn("model.layers.0.experts.gate_up_proj", m.tensors)
        self.assertEqual(ck.config["model_type"], "gemma4_text")

    def test_release_shapes(self):
        for name, opt in (("e2b", E2B), ("a4b", A4B), ("31b", B31)):
            for fam in ("gemma4", "gemma4_text"):
                with self.subTest(shape=name, family=fam):
                    self.converted(fam, name="%s-%s" % (fam, name), **opt)

    def test_untied(self):
        m, _, ex, ck = self.converted("gemma4", name="untied", tied=False)
        self.assertIn("lm_head.weight", m.tensors)
        self.assertNotEqual(ck.tensors["lm_head.weight"].data, m.tensors["lm_head.weight"].data)

    def test_no_marker(self):
        """post_attention_layernorm keeps its weight; a loader reading
        flashnorm_folded would build it weightless: no marker."""
        _, _, ex, ck = self.converted("gemma4")
        self.assertFalse(ex.marker)
        self.assertNotIn("flashnorm_folded", ck.config)
        self.assertNotIn("flash_norm", ck.config)

    def test_keep_norms_writes_one(self):
        """Gemma4RMSNorm multiplies by w (ones init): the identity is 1, not
        Gemma 1-3's 0, which would zero every activation."""
        m, _, ex, ck = self.converted("gemma4", flags=("--keep-norms",), keep_norms=True)
        self.assertGreater(len(ex.dropped), 12)
        for k in ex.dropped:
            self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)

    def test_kv_shared_count_covering_every_layer(self):
        """num_kv_shared_layers == num_hidden_layers shares nothing
        (Gemma4TextAttention: layer_idx >= first_kv_shared_layer_idx > 0):
        every layer keeps k/v and input_layernorm folds into all three --
        the KV-shared variant is taken only where k_proj is absent."""
        m, _, ex, ck = self.converted("gemma4_text", name="all-shared", kv_shared=6)
        self.assertIn("model.layers.5.self_attn.k_proj.weight", m.tensors)
        k = "model.layers.5.self_attn.k_proj.weight"
        self.assertNotEqual(ck.tensors[k].data, m.tensors[k].data)

    def test_dense_config_with_null_experts(self):
        """Dense Gemma 4 configs write "num_experts": null; the MoE rule is
        gated by enable_moe_block, so that is a dense model, not an error."""
        m, _, ex, ck = self.converted("gemma4", name="dense", moe=False)
        self.assertIsNone(m.config["text_config"]["num_experts"])
        self.assertFalse(any("experts" in k for k in m.tensors))


class Refusals(Base):
    def refused(self, model, name, needle, *flags):
        src = self.write(model, name)
        p = convert(self, src, src + "-out", *flags, expect_rc=None)
        self.assertNotEqual(p.returncode, 0, describe(p))
        self.assertIn(needle, p.stderr, describe(p))
        self.assertFalse(os.path.exists(src + "-out"), "a refused conversion left output behind")

    def test_missing_k_proj_outside_the_shared_tail(self):
        m = build_model("gemma4", dtype="BF16")
        del m.tensors["model.language_model.layers.1.self_attn.k_proj.weight"]
        self.refused(m, "nok", "model.language_model.layers.1.self_attn.k_proj.weight")

    def test_missing_v_proj_on_a_sliding_layer(self):
        m = build_model("gemma4_text", dtype="BF16")
        del m.tensors["model.layers.3.self_attn.v_proj.weight"]
        self.refused(m, "nov", "model.layers.3.self_attn.v_proj.weight")

    def test_moe_norm_in_a_dense_model(self):
        m = build_model("gemma4_text", dtype="BF16", moe=False)
        m.tensors["model.layers.0.pre_feedforward_layernorm_2.weight"] = \
            m.tensors["model.layers.0.pre_feedforward_layernorm.weight"]
        self.refused(m, "stray", "pre_feedforward_layernorm_2")

    def test_per_expert_layout(self):
        """Gemma4TextExperts exists only fused: per-expert tensors are not a
        layout transformers reads."""
        m = build_model("gemma4_text", dtype="BF16")
        t = m.tensors.pop("model.layers.0.experts.gate_up_proj")
        m.tensors["model.layers.0.experts.0.gate_proj.weight"] = Tensor(t.dtype, (12, 32), t.data[:12 * 32 * 2])
        self.refused(m, "per-expert", "model.layers.0.experts.gate_up_proj")

    def test_quantized_experts_and_partial(self):
        """Experts stored MXFP4 (*_blocks / *_scales): refused naming the
        format; --partial keeps only the experts' pre-norm."""
        m = build_model("gemma4_text", dtype="BF16")
        _quantize_experts(m, "mxfp4", random.Random(5))
        self.assertIn("model.layers.0.experts.gate_up_proj_blocks", m.tensors)
        self.refused(m, "q8", "MXFP4")
        src = self.path("q8")
        p = convert(self, src, src + "-partial", "--partial")
        ex = expected(read_checkpoint(src), partial=True)
        _, ck = check_output(self, src, src + "-partial", ex=ex)
        self.assertEqual(len(ex.kept_quantized), 6)
        self.assertIn("pre_feedforward_layernorm_2", p.stdout + p.stderr)
        self.assertNotIn("model.layers.0.input_layernorm.weight", ck.tensors)
        with open(os.path.join(src + "-partial", "README.md")) as f:
            self.assertIn("pre_feedforward_layernorm_2", f.read())


class Forward(Base):
    """The C pass (verify --dump-logits) against zoo_gemma4.ref_logits."""

    def check(self, family, name, dtype="F32", **opt):
        src = self.path(name)
        write_source(src, family, dtype, **opt)
        write_output(src, src + "-out")
        dump = src + ".logits"
        p = run(["verify", src, src + "-out", "--tokens", ",".join(map(str, TOKENS)), "--dump-logits", dump])
        self.assertEqual(p.returncode, 0, describe(p))
        with open(dump, "rb") as f:
            data = f.read()
        ref = z.ref_logits(read_checkpoint(src), TOKENS)
        V = len(ref[0])
        got = struct.unpack("<%df" % (V * len(TOKENS)), data)
        for t, row in enumerate(ref):
            scale = max(1.0, max(abs(v) for v in row))
            worst = max(abs(got[t * V + v] - row[v]) for v in range(V)) / scale
            self.assertLess(worst, 1e-4, "%s position %d: C vs Python differ by %.3g" % (name, t, worst))
            self.assertEqual(max(range(V), key=lambda v: got[t * V + v]), max(range(V), key=lambda v: row[v]))
        self.assertGreater(max(ref[-1]) - min(ref[-1]), 0.05, "degenerate logits")
        return p

    def test_shapes(self):
        cases = [("gemma4_text", "all", {}, ["k_eq_v", "KV shared", "per-layer inputs", "double-wide MLP",
                                            "MoE block (fused experts [E, 2I, H])"]),
                 ("gemma4", "e2b", E2B, ["KV shared", "per-layer inputs", "double-wide MLP"]),
                 ("gemma4_text", "a4b", A4B, ["k_eq_v", "MoE block"]),
                 ("gemma4", "31b", B31, ["k_eq_v"]),
                 ("gemma4_text", "nocap", dict(softcap=None, window=2), ["window 2"]),
                 ("gemma4", "untied", dict(tied=False), ["gemma4_text"])]
        for fam, name, opt, words in cases:
            with self.subTest(shape=name):
                p = self.check(fam, name, **opt)
                for w in words:
                    self.assertIn(w, p.stdout)
                if name in ("e2b", "31b"):
                    self.assertNotIn("MoE", p.stdout)
        with self.subTest(dtype="BF16"):
            self.check("gemma4", "bf16", "BF16")

    def test_refusals(self):
        """What the pass does not model is said, not computed wrongly."""
        cases = [({"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
                 ({"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                       "full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0}}},
                  "rope_type 'yarn'"),
                 ({"per_layer_config": {"2": {"head_dim": 16}}, "global_head_dim": None}, "per_layer_config")]
        for i, (edit, needle) in enumerate(cases):
            with self.subTest(needle=needle):
                src = self.path("r%d" % i)
                write_source(src, "gemma4_text", "BF16")
                path = os.path.join(src, "config.json")
                with open(path) as f:
                    cfg = json.load(f)
                cfg.update(edit)
                if cfg.get("global_head_dim") is None:
                    del cfg["global_head_dim"]
                with open(path, "w") as f:
                    json.dump(cfg, f)
                write_output(src, src + "-out")
                p = run(["verify", src, src + "-out"])
                self.assertEqual(p.returncode, 0, describe(p))
                self.assertIn("forward: skipped", p.stdout)
                self.assertIn(needle, p.stdout)


class Teeth(Base):
    """Wrong outputs verify must reject, with the forward check failing on
    its own."""

    def pair(self, name, **out_opt):
        src = self.path(name)
        write_source(src, "gemma4", "BF16")
        write_output(src, src + "-out", **out_opt)
        return src, src + "-out"

    def test_correct_pair_passes(self):
        src, out = self.pair("ok")
        p, rep = verify(src, out)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["passed"])

    def test_one_plus_w_fold(self):
        """The "Gemma means 1 + w" fold."""
        src, out = self.pair("opw", gain="1+w")
        self.assertBroken(src, out)

    def test_zero_identity(self):
        """--keep-norms with Gemma 1-3's identity (0) instead of 1."""
        def zero(tensors, ex):
            for k in ex.dropped:
                t = tensors[k]
                tensors[k] = Tensor(t.dtype, t.shape, encode_values(t.dtype, [0.0] * t.shape[0]))
        src, out = self.pair("zero", keep_norms=True, mutate=zero)
        self.assertBroken(src, out)

    def test_missed_consumers(self):
        """A wrong rule misses a consumer in every layer it applies to:
        pre_feedforward_layernorm not folded into up_proj, the experts'
        pre-norm not folded into the experts.  (Missing a q/k/v consumer
        moves the logits less: q_norm, k_norm and v_norm renormalise every
        head, so the input norm's gain only turns them; the tensor check
        catches that one.)"""
        src = self.path("miss")
        write_source(src, "gemma4", "BF16")
        orig = read_checkpoint(src).tensors
        for rel in ("mlp.up_proj.weight", "experts.gate_up_proj"):
            with self.subTest(consumer=rel):
                def unfold(tensors, ex, rel=rel):
                    for i in range(6):
                        k = "model.language_model.layers.%d.%s" % (i, rel)
                        tensors[k] = orig[k]
                shutil.rmtree(src + "-out", ignore_errors=True)
                write_output(src, src + "-out", mutate=unfold)
                rep = self.assertBroken(src, src + "-out")
                self.assertIn(rel, json.dumps(rep))

    def test_marker_loader_would_drop_post_norms(self):
        """What a flashnorm_folded loader builds: post_attention_layernorm
        without its weight.  The model computes something else, which is
        why the marker is not written for Gemma 4."""
        def drop(tensors, ex):
            for k in [k for k in tensors if k.endswith("post_attention_layernorm.weight")
                      and "language_model" in k]:
                del tensors[k]
        src, out = self.pair("marker", mutate=drop)
        self.assertBroken(src, out)

    def test_paths_only_gemma4_reads(self):
        """Copied tensors that only Gemma 4's own blocks read, set to ones
        in the output -- what a pass ignoring them computes -- in every
        layer (or in the layer whose keys a KV-shared layer reads): the
        logits must move."""
        names = ["layers.{i}.layer_scalar", "layers.{i}.router.per_expert_scale", "layers.{i}.router.scale",
                 "per_layer_projection_norm.weight", "layers.{i}.post_feedforward_layernorm_2.weight",
                 "layers.{i}.post_per_layer_input_norm.weight", "layers.2.self_attn.k_norm.weight"]
        src = self.path("paths")
        write_source(src, "gemma4", "BF16")
        for n in names:
            with self.subTest(tensor=n):
                def bump(tensors, ex, n=n):
                    for i in range(6):
                        full = "model.language_model." + n.replace("{i}", str(i))
                        t = tensors[full]
                        tensors[full] = Tensor(t.dtype, t.shape, encode_values(t.dtype, [1.0] * len(t.values())))
                shutil.rmtree(src + "-out", ignore_errors=True)
                write_output(src, src + "-out", mutate=bump)
                self.assertBroken(src, src + "-out")

if __name__ == "__main__":
    unittest.main(verbosity=2)
