"""test_zoo_gemma3n.py -- Gemma 3n (gemma3n_text, gemma3n): what is specific.

The generic suites (test_families, test_verify, test_forward_families)
already convert and verify the fixtures of zoo_gemma3n.py; here: the plan
written from modeling_gemma3n.py rather than read from expect.py (what
changes, what stays byte-identical), input_layernorm kept and why (LAuReL
adds its output to the residual), the towers passing through, no FlashNorm
marker, --keep-norms writing 1 (Gemma3nRMSNorm is w), refusals, the C
forward pass against zoo_gemma3n.ref_logits on the variants (AltUp streams,
KV sharing, sparse layers, softcap, window, integer intermediate_size,
BF16), and verify's teeth: a 1 + w fold, input_layernorm folded the naive
way, a missed consumer, and tensors only Gemma 3n's own blocks read.
"""

import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import Tensor, build_model, encode_values, read_checkpoint, write_checkpoint  # noqa: E402
from expect import fold, gain_ratios  # noqa: E402
from harness import ZooCase, convert, describe, run, verify_json as verify  # noqa: E402
from verify_fixtures import c_vs_python, edit_config, forward_skipped, write_output, write_source  # noqa: E402
import zoo_gemma3n as z  # noqa: E402

TOKENS = [2, 7, 30, 64, 95, 7, 11]
WRAP = "model.language_model."
LAYER = WRAP + "layers.%d."
QKVL = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "laurel.linear_left.weight"]


class Base(ZooCase):
    tmp_prefix = "flashify-g3n-"
    seed = 43

    def converted(self, family="gemma3n", name=None, flags=(), keep_norms=False, **opt):
        return super().converted(family, name, flags, keep_norms, **opt)


class Plan(Base):
    def test_consumers_per_layer(self):
        """From Gemma3nTextDecoderLayer: pre_feedforward_layernorm feeds
        gate/up, altup.router_norm feeds modality_router (in predict and in
        correct), and nothing else changes -- input_layernorm's consumers
        (q/k/v, laurel.linear_left) included."""
        m, p, ex, ck = self.converted()
        changed = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "altup.modality_router.weight"]
        same = QKVL + ["self_attn.o_proj.weight", "mlp.down_proj.weight", "laurel.linear_right.weight",
                       "altup.prediction_coefs.weight", "altup.correction_coefs.weight",
                       "altup.correct_output_scale", "per_layer_input_gate.weight", "per_layer_projection.weight",
                       "input_layernorm.weight", "post_attention_layernorm.weight",
                       "post_feedforward_layernorm.weight", "laurel.post_laurel_norm.weight",
                       "post_per_layer_input_norm.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight"]
        tc = m.config["text_config"]
        for i in range(tc["num_hidden_layers"]):
            for n in changed:
                k = LAYER % i + n
                self.assertNotEqual(ck.tensors[k].data, m.tensors[k].data, k)
            for n in same:
                k = LAYER % i + n
                self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
            for n in ("pre_feedforward_layernorm.weight", "altup.router_norm.weight"):
                self.assertNotIn(LAYER % i + n, ck.tensors)
        for k in ("embed_tokens.weight", "embed_tokens_per_layer.weight", "per_layer_model_projection.weight",
                  "per_layer_projection_norm.weight", "altup_projections.0.weight",
                  "altup_unembed_projections.2.weight"):
            self.assertEqual(ck.tensors[WRAP + k].data, m.tensors[WRAP + k].data, k)
        self.assertNotIn(WRAP + "norm.weight", ck.tensors)
        self.assertNotIn("1+w", p.stdout + p.stderr, "Gemma 3n norms are w: no Gemma 1-3 load warning")

    def test_input_layernorm_kept_and_why(self):
        """The reason is said in --dry-run and in the model card: LAuReL's
        output joins the residual, where no linear layer absorbs the gain."""
        m = build_model("gemma3n", dtype="BF16")
        src = self.write(m, "why")
        p = run([src, "-o", src + "-out", "--dry-run"])
        self.assertEqual(p.returncode, 0, describe(p))
        line = [ln for ln in p.stdout.splitlines() if "input_layernorm:" in ln]
        self.assertEqual(len(line), 1, p.stdout)
        self.assertIn("refused", line[0])
        self.assertIn("LAuReL", line[0])
        self.assertIn("laurel.linear_left", line[0])
        self.assertIn("FlashNorm marker: no", p.stdout)
        convert(self, src, src + "-out")
        with open(os.path.join(src + "-out", "README.md")) as f:
            card = f.read()
        self.assertIn("input_layernorm", card)
        self.assertIn("LAuReL", card)

    def test_towers_pass_through(self):
        m, _, ex, ck = self.converted()
        towers = [k for k in m.tensors if k.startswith(("model.vision_tower.", "model.audio_tower.",
                                                         "model.embed_vision.", "model.embed_audio."))]
        self.assertGreater(len(towers), 3)
        for k in towers:
            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_text_only_layout(self):
        m, _, ex, ck = self.converted("gemma3n_text")
        self.assertIn("model.layers.0.altup.modality_router.weight", m.tensors)
        self.assertEqual(ck.config["model_type"], "gemma3n_text")
        self.assertNotIn("model.layers.0.input_layernorm.weight", ex.dropped)

    def test_untied(self):
        m, _, ex, ck = self.converted(name="untied", tied=False)
        self.assertIn("lm_head.weight", m.tensors)
        self.assertNotEqual(ck.tensors["lm_head.weight"].data, m.tensors["lm_head.weight"].data)
        self.assertEqual(ck.tensors[WRAP + "embed_tokens.weight"].data, m.tensors[WRAP + "embed_tokens.weight"].data)

    def test_no_marker(self):
        _, _, ex, ck = self.converted()
        self.assertFalse(ex.marker)
        self.assertNotIn("flashnorm_folded", ck.config)

    def test_keep_norms_writes_one(self):
        m, _, ex, ck = self.converted(flags=("--keep-norms",), keep_norms=True)
        self.assertEqual(len(ex.dropped), 2 * 6 + 1)
        for k in ex.dropped:
            self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)

    def test_variants_convert(self):
        for name, opt in (("alt2", dict(altup=2)), ("noshare", dict(kv_shared=0)), ("dense", dict(sparse=0)),
                          ("full", dict(layer_types=[z.FULL] * 6, kv_shared=1))):
            with self.subTest(variant=name):
                self.converted("gemma3n_text", name=name, **opt)


class Refusals(Base):
    def refused(self, model, name, needle):
        src = self.write(model, name)
        p = convert(self, src, src + "-out", expect_rc=None)
        self.assertNotEqual(p.returncode, 0, describe(p))
        self.assertIn(needle, p.stderr, describe(p))
        self.assertFalse(os.path.exists(src + "-out"))

    def test_missing_consumer(self):
        m = build_model("gemma3n", dtype="BF16")
        del m.tensors[LAYER % 2 + "altup.modality_router.weight"]
        self.refused(m, "norouter", "altup.modality_router")

    def test_forward_skips(self):
        """What the pass cannot compute is said (forward: skipped), and the
        tensor check still decides."""
        cases = [("layer_types", lambda c: c.__setitem__("layer_types", ["sliding_attention"] * 5 + ["chunked"]),
                  "layer_types[5]"),
                 ("share-full", lambda c: c.update(layer_types=[z.SLIDING] * 5 + [z.FULL], num_kv_shared_layers=1),
                  "KV-shared layer 5"),
                 ("sparsity", lambda c: c.__setitem__("activation_sparsity_pattern", [0.95, 0.0]),
                  "activation_sparsity_pattern")]
        for name, edit, needle in cases:
            with self.subTest(case=name):
                src = self.path(name)
                write_source(src, "gemma3n_text", "BF16")
                edit_config(src, edit)
                write_output(src, src + "-out")
                forward_skipped(self, src, src + "-out", needle)

    def test_token_outside_per_layer_vocab(self):
        """embed_tokens_per_layer covers vocab_size_per_layer_input rows (the
        released models: 262144 of 262400); the ids above are the multimodal
        soft tokens, which Gemma3nModel embeds with embed_vision /
        embed_audio, not the text pass.  verify draws its tokens below that
        bound and says so when --tokens asks for one above it."""
        src = self.path("vp")
        m = write_source(src, "gemma3n_text", "BF16")
        ck = read_checkpoint(src)
        t = ck.tensors["model.embed_tokens_per_layer.weight"]
        rows = 40
        ck.tensors["model.embed_tokens_per_layer.weight"] = Tensor(
            t.dtype, (rows, t.shape[1]), t.data[:rows * t.shape[1] * 2])
        ck.config["vocab_size_per_layer_input"] = rows
        shutil.rmtree(src)
        out = type(m)("gemma3n_text", ck.config)
        out.tensors = ck.tensors
        write_checkpoint(out, src, extra_files=False)
        write_output(src, src + "-out")
        p, rep = verify(src, src + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["passed"])
        self.assertLess(max(rep["forward_check"]["tokens"]), rows)
        self.assertEqual(rep["forward_check"]["positions"], 17)
        p = run(["verify", src, src + "-out", "--tokens", "1,2,3,90"])
        self.assertEqual(p.returncode, 1, describe(p))
        self.assertIn("id 90 is outside the ids the forward pass embeds (0..39)", p.stderr)
        p = run(["verify", src, src + "-out", "--tokens", "1,2,3,39"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("forward: ok", p.stdout)


class Forward(Base):
    """The C pass (verify --dump-logits) against zoo_gemma3n.ref_logits."""

    def check(self, family, name, dtype="F32", config=None, **opt):
        """verify passes and the C pass agrees with zoo_gemma3n.ref_logits;
        returns the result line (what ran)."""
        src = self.path(name)
        write_source(src, family, dtype, **opt)
        if config:
            edit_config(src, lambda cfg: config(z.text_config(cfg)))
        write_output(src, src + "-out")
        rep = c_vs_python(self, src, src + "-out", TOKENS)
        self.assertTrue(rep["forward_check"]["passed"], rep["forward_check"])
        return rep["forward_check"]["model"]

    def test_variants(self):
        def int_inter(tc):
            tc["intermediate_size"] = 48

        cases = [("gemma3n", "default", {}, ["AltUp 4 streams", "LAuReL rank 4", "KV shared", "sparse activations in 2"]),
                 ("gemma3n_text", "alt2", dict(altup=2), ["AltUp 2 streams"]),
                 ("gemma3n_text", "noshare", dict(kv_shared=0, sparse=0), ["sparse activations in 0"]),
                 ("gemma3n_text", "nocap", dict(softcap=None, window=2), ["sliding window 2"]),
                 ("gemma3n", "untied", dict(tied=False), ["gemma3n_text"]),
                 ("gemma3n_text", "int-inter", dict(intermediate=[48] * 6, config=int_inter), ["per-layer inputs 8"])]
        for fam, name, opt, words in cases:
            with self.subTest(variant=name):
                line = self.check(fam, name, **opt)
                for w in words:
                    self.assertIn(w, line)
                if name == "noshare":
                    self.assertNotIn("KV shared", line)
        with self.subTest(dtype="BF16"):
            self.check("gemma3n", "bf16", "BF16")


class Teeth(Base):
    """Wrong outputs verify must reject, with the forward check failing on
    its own."""

    def pair(self, name, family="gemma3n", **out_opt):
        src = self.path(name)
        write_source(src, family, "BF16")
        write_output(src, src + "-out", **out_opt)
        return src, src + "-out"

    def test_correct_pair_passes(self):
        src, out = self.pair("ok")
        p, rep = verify(src, out)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["passed"])

    def test_one_plus_w_fold(self):
        src, out = self.pair("opw", gain="1+w")
        self.assertBroken(src, out)

    def test_naive_input_layernorm_fold(self):
        """What a table row "input_layernorm -> q/k/v, laurel.linear_left"
        writes: the gain folded into all four and the norm removed.  LAuReL's
        residual term (the normed input itself) then misses the gain."""
        src = self.path("naive")
        write_source(src, "gemma3n", "BF16")
        orig = read_checkpoint(src).tensors

        def naive(tensors, ex):
            for i in range(6):
                norm = LAYER % i + "input_layernorm.weight"
                g = gain_ratios(orig[norm], "w")
                for rel in QKVL:
                    k = LAYER % i + rel
                    if k in orig:
                        tensors[k] = fold(orig[k], g)
                del tensors[norm]
        write_output(src, src + "-out", mutate=naive)
        self.assertBroken(src, src + "-out")

    def test_missed_consumers(self):
        """A wrong rule misses a consumer in every layer: up_proj moves the
        logits past the tolerance.  modality_router does not, on its own:
        AltUp reads it through tanh(router(router_norm(x) / H)), which the
        1/H scale keeps near zero, so only the coefficients' small
        correction moves; the tensor check catches it, naming it."""
        src = self.path("miss")
        write_source(src, "gemma3n", "BF16")
        orig = read_checkpoint(src).tensors
        for rel, forward_fails in (("mlp.up_proj.weight", True), ("altup.modality_router.weight", False)):
            with self.subTest(consumer=rel):
                def unfold(tensors, ex, rel=rel):
                    for i in range(6):
                        k = LAYER % i + rel
                        tensors[k] = orig[k]
                shutil.rmtree(src + "-out", ignore_errors=True)
                write_output(src, src + "-out", mutate=unfold)
                if forward_fails:
                    rep = self.assertBroken(src, src + "-out")
                else:
                    p, rep = verify(src, src + "-out")
                    self.assertEqual(p.returncode, 3, describe(p))
                    self.assertFalse(rep["equivalent"])
                self.assertIn(rel, json.dumps(rep))

    def test_paths_only_gemma3n_reads(self):
        """Copied tensors that only Gemma 3n's own blocks read, negated in the
        output (every layer): a pass that ignored one would see no change;
        this one must see the logits move."""
        names = ["layers.{i}.altup.correct_output_scale", "layers.{i}.laurel.post_laurel_norm.weight",
                 "layers.{i}.post_per_layer_input_norm.weight", "per_layer_projection_norm.weight",
                 "layers.{i}.input_layernorm.weight"]
        src = self.path("paths")
        write_source(src, "gemma3n", "BF16")
        for n in names:
            with self.subTest(tensor=n):
                def bump(tensors, ex, n=n):
                    for full in sorted({WRAP + n.replace("{i}", str(i)) for i in range(6)}):
                        t = tensors[full]
                        tensors[full] = Tensor(t.dtype, t.shape, encode_values(t.dtype, [-v for v in t.values()]))
                shutil.rmtree(src + "-out", ignore_errors=True)
                write_output(src, src + "-out", mutate=bump)
                self.assertBroken(src, src + "-out")


if __name__ == "__main__":
    unittest.main(verbosity=2)
