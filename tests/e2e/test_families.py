"""End-to-end tests of every model family (issue 3).

Each family's tiny fixture (trained-looking norms) is converted by $FLASHIFY
and checked tensor by tensor against expect.py, whose fold map was written
from docs/architectures.md independently of src/arch.c.
"""

import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import FAMILIES, build_model, float_tensor, read_checkpoint, write_checkpoint  # noqa: E402
from expect import GAIN, SUPPORTED, expected  # noqa: E402
from harness import FLASHIFY, check_output, convert, describe  # noqa: E402


def setUpModule():
    if not os.access(FLASHIFY, os.X_OK):
        raise RuntimeError("FLASHIFY=%s is not an executable" % FLASHIFY)


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-fam-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def convert_and_check(self, model, name, flags=(), keep_tied=False, keep_norms=False, **kw):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src, **kw)
        out = os.path.join(self.tmp, name + "-out")
        p = convert(self, src, out, *flags)
        ex, ck = check_output(self, src, out, keep_tied=keep_tied, keep_norms=keep_norms)
        return src, out, p, ex, ck


class EveryFamily(Base):
    def test_every_family_default(self):
        for fam in FAMILIES:
            if fam == "gemma3":
                continue    # its own tests below (projector policy)
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", seed=100 + FAMILIES.index(fam))
                self.convert_and_check(m, fam)

    def test_every_family_keep_norms_f32_norms_untied(self):
        for fam in FAMILIES:
            if fam == "gemma3":
                continue
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", norm_dtype="F32", tied=False,
                                seed=200 + FAMILIES.index(fam))
                _, _, _, ex, ck = self.convert_and_check(m, fam + "-kn", ["--keep-norms"], keep_norms=True)
                # the identity follows the norm class, not the brand: Gemma 4 is w
                ident = 0.0 if GAIN.get(fam, "w") == "1+w" else 1.0
                for k in ex.dropped:
                    self.assertEqual(set(ck.tensors[k].values()), {ident}, k)

    def test_every_family_f16(self):
        for fam in ("llama", "qwen3", "phi3", "gemma", "gemma2", "olmo2", "mixtral", "deepseek_v3", "cohere"):
            with self.subTest(family=fam):
                m = build_model(fam, dtype="F16", seed=300 + FAMILIES.index(fam))
                self.convert_and_check(m, fam + "-f16")

    def test_table_covers_issue_families(self):
        self.assertEqual(sorted(FAMILIES), sorted(SUPPORTED))


class Specifics(Base):
    def test_kept_norms_byte_identical(self):
        cases = {
            "qwen3": ["self_attn.q_norm", "self_attn.k_norm"],
            "gemma2": ["post_attention_layernorm", "post_feedforward_layernorm"],
            "gemma3_text": ["post_attention_layernorm", "post_feedforward_layernorm",
                            "self_attn.q_norm", "self_attn.k_norm"],
            "olmo2": ["post_attention_layernorm", "post_feedforward_layernorm",
                      "self_attn.q_norm", "self_attn.k_norm"],
            "cohere": ["self_attn.q_norm", "self_attn.k_norm"],
            "qwen3_moe": ["self_attn.q_norm", "self_attn.k_norm"],
        }
        for fam, kept in cases.items():
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", seed=400)
                for flags in ((), ("--keep-norms",)):
                    src, out, p, ex, ck = self.convert_and_check(
                        m, fam + "-k%d" % len(flags), flags, keep_norms=bool(flags))
                    for i in range(2):
                        for n in kept:
                            k = "model.layers.%d.%s.weight" % (i, n)
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_plan_and_card_say_which_norms_are_kept(self):
        cases = {"qwen3": ["q_norm", "k_norm"],
                 "gemma2": ["post_attention_layernorm", "post_feedforward_layernorm"],
                 "gemma3_text": ["post_attention_layernorm", "post_feedforward_layernorm", "q_norm", "k_norm"],
                 "olmo2": ["post_attention_layernorm", "post_feedforward_layernorm", "q_norm", "k_norm"],
                 "cohere": ["q_norm", "k_norm"]}
        for fam, kept in cases.items():
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16", seed=411)
                src = os.path.join(self.tmp, fam + "-dry")
                write_checkpoint(m, src)
                out = src + "-out"
                p = convert(self, src, out, "--dry-run")
                self.assertFalse(os.path.exists(out))
                # the kept norms are named after the folded ones, with a reason
                text = p.stdout + p.stderr
                for n in kept:
                    self.assertIn(n, text, "--dry-run should list the kept norm " + n)
                convert(self, src, out)
                with open(os.path.join(out, "README.md")) as f:
                    card = f.read()
                for n in kept:
                    self.assertIn(n, card, "the model card should list the kept norm " + n)
                if fam.startswith("gemma"):
                    self.assertIn("--keep-norms", card, "the Gemma load warning belongs in the card too")

    def test_olmo2_only_final_norm(self):
        m = build_model("olmo2", dtype="BF16", seed=401)
        _, _, _, ex, ck = self.convert_and_check(m, "olmo2")
        self.assertEqual(ex.dropped, ["model.norm.weight"])
        for k in m.tensors:
            if "self_attn" in k or "mlp" in k:
                self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
        self.assertNotIn("flashnorm_folded", ck.config)

    def test_moe_fanout(self):
        m = build_model("mixtral", dtype="BF16", seed=402)
        _, _, _, ex, ck = self.convert_and_check(m, "mixtral")
        for i in range(3):
            p = "model.layers.%d.block_sparse_moe." % i
            self.assertNotEqual(ck.tensors[p + "gate.weight"].data, m.tensors[p + "gate.weight"].data)
            for j in range(3):
                self.assertNotEqual(ck.tensors[p + "experts.%d.w1.weight" % j].data, m.tensors[p + "experts.%d.w1.weight" % j].data)
                self.assertNotEqual(ck.tensors[p + "experts.%d.w3.weight" % j].data, m.tensors[p + "experts.%d.w3.weight" % j].data)
                self.assertEqual(ck.tensors[p + "experts.%d.w2.weight" % j].data, m.tensors[p + "experts.%d.w2.weight" % j].data)

    def test_qwen2_moe_dense_and_sparse_layers(self):
        for opt in ({"mlp_only_layers": [0], "decoder_sparse_step": 1},
                    {"mlp_only_layers": [], "decoder_sparse_step": 2},
                    {"mlp_only_layers": [2], "decoder_sparse_step": 1}):
            for fam in ("qwen2_moe", "qwen3_moe"):
                with self.subTest(family=fam, **opt):
                    m = build_model(fam, dtype="BF16", seed=403, **opt)
                    src, _, _, ex, ck = self.convert_and_check(
                        m, "%s-%s-%d" % (fam, "".join(map(str, opt["mlp_only_layers"])), opt["decoder_sparse_step"]))
                    dense = [i for i in range(3) if "model.layers.%d.mlp.gate_proj.weight" % i in m.tensors]
                    self.assertTrue(dense and len(dense) < 3, "fixture should mix dense and sparse layers")
                    for k in m.tensors:
                        if "down_proj" in k:
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                    if fam == "qwen2_moe":
                        sp = [i for i in range(3) if i not in dense][0]
                        k = "model.layers.%d.mlp.shared_expert_gate.weight" % sp
                        self.assertNotEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_deepseek_v3_mla(self):
        for qlr in (24, None):
            with self.subTest(q_lora_rank=qlr):
                m = build_model("deepseek_v3", dtype="BF16", seed=404, q_lora_rank=qlr)
                _, _, _, ex, ck = self.convert_and_check(m, "dsv3-%s" % qlr)
                self.assertIn("model.layers.1.self_attn.kv_a_layernorm.weight", ex.dropped)
                for k in m.tensors:
                    if k.endswith("e_score_correction_bias") or "down_proj" in k:
                        self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                # layer 0 dense (first_k_dense_replace = 1), layers 1, 2 MoE
                self.assertIn("model.layers.0.mlp.gate_proj.weight", ck.tensors)
                self.assertIn("model.layers.2.mlp.experts.2.up_proj.weight", ck.tensors)

    def test_deepseek_v3_mtp_layer_left_alone(self):
        # DeepSeek-V3 checkpoints carry a multi-token-prediction layer after
        # the last decoder layer (model.layers.{num_hidden_layers}.*: enorm,
        # hnorm, eh_proj, shared_head.norm, plus a full decoder block).  The
        # v4 loader ignores it; docs/architectures.md §deepseek_v3: leave it alone.
        m = build_model("deepseek_v3", dtype="BF16", seed=409)
        L = m.config["num_hidden_layers"]
        extra = {}
        for k, t in m.tensors.items():
            if k.startswith("model.layers.%d." % (L - 1)):
                extra[k.replace("model.layers.%d." % (L - 1), "model.layers.%d." % L)] = t
        p = "model.layers.%d." % L
        extra[p + "enorm.weight"] = m.tensors["model.norm.weight"]
        extra[p + "hnorm.weight"] = m.tensors["model.norm.weight"]
        extra[p + "eh_proj.weight"] = float_tensor("BF16", (32, 64), [0.25] * (32 * 64))
        extra[p + "shared_head.norm.weight"] = m.tensors["model.norm.weight"]
        m.tensors.update(extra)
        _, _, _, ex, ck = self.convert_and_check(m, "dsv3-mtp")
        for k in extra:
            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)

    def test_gemma3_untied_source(self):
        m = build_model("gemma3", dtype="BF16", tied=False, seed=410)
        m.config["text_config"]["tie_word_embeddings"] = False
        _, _, p, ex, ck = self.convert_and_check(m, "g3-untied")
        self.assertFalse(ex.untie)
        self.assertIn("language_model.lm_head.weight", ex.groups[-1][1])

    def test_phi3_fused(self):
        m = build_model("phi3", dtype="BF16", seed=405)
        _, _, _, ex, ck = self.convert_and_check(m, "phi3")
        self.assertIn(("model.layers.0.input_layernorm.weight", ["model.layers.0.self_attn.qkv_proj.weight"]), ex.groups)

    def test_gemma_one_plus_w_and_warning(self):
        m = build_model("gemma", dtype="BF16", tied=True, seed=406)
        _, _, p, ex, ck = self.convert_and_check(m, "gemma")
        self.assertIn("--keep-norms", p.stderr, "dropping Gemma norms must point to --keep-norms")
        self.assertIn("vllm", p.stderr.lower(), "an untied Gemma must be reported (vLLM asserts ties)")
        _, _, p, ex, ck = self.convert_and_check(m, "gemma-kn", ["--keep-norms"], keep_norms=True)
        self.assertEqual(set(ck.tensors["model.norm.weight"].values()), {0.0})
        _, _, p, ex, ck = self.convert_and_check(m, "gemma-kt", ["--keep-tied"], keep_tied=True)
        self.assertIs(ck.config["tie_word_embeddings"], True)
        self.assertNotIn("lm_head.weight", ck.tensors)

    def test_gemma_f32_gain_exact_not_double_rounded(self):
        # W * (1 + w) with F32 w near 2^-24 needs ~71 bits: computing it in
        # double rounds twice.  Pick W (even significand) and w = m * 2^-48
        # with W*w = 2^-24 + eps, 0 < eps < 2^-53: the exact product is just
        # above an F32 midpoint (rounds up), its double is the midpoint
        # (ties to even: rounds down).
        m = build_model("gemma", dtype="F32", tied=False, seed=407)
        n = None
        for cand in range(1 << 23, 1 << 24, 2):
            mm = -(-(1 << 47) // cand)
            if 0 < cand * mm - (1 << 47) < (1 << 18) and mm < (1 << 24):
                n = cand
                break
        W, w = n * 2.0 ** -23, mm * 2.0 ** -48
        q = "model.layers.0.self_attn.q_proj.weight"
        vals = m.tensors[q].values()
        vals[7] = W       # element [0, 7]
        m.tensors[q] = float_tensor("F32", m.tensors[q].shape, vals)
        nk = "model.layers.0.input_layernorm.weight"
        g = m.tensors[nk].values()
        g[7] = w
        m.tensors[nk] = float_tensor("F32", (len(g),), g)
        src, out, p, ex, ck = self.convert_and_check(m, "gemma-adv")
        self.assertEqual(ck.tensors[q].values()[7], W + 2.0 ** -23)

    def test_gemma3_multimodal_layouts(self):
        for layout in ("language_model.model", "model.language_model"):
            for top_tie in (False, True):
                with self.subTest(layout=layout, top_level_tie=top_tie):
                    m = build_model("gemma3", dtype="BF16", seed=408, layout=layout, top_level_tie=top_tie)
                    src = os.path.join(self.tmp, "g3-%s-%d" % (layout, top_tie))
                    write_checkpoint(m, src)
                    out = src + "-out"
                    p = convert(self, src, out)
                    s = read_checkpoint(src)
                    mp = ("model." if layout == "model.language_model" else "") + "multi_modal_projector."
                    proj, nrm = mp + "mm_input_projection_weight", mp + "mm_soft_emb_norm.weight"
                    o = read_checkpoint(out)
                    if o.tensors[proj].data == s.tensors[proj].data:
                        extra = ()          # the projector norm left alone ...
                    else:                   # ... or folded into ROWS (x @ W)
                        extra = [(nrm, [proj], "rows")]
                    ex, ck = check_output(self, src, out, extra_groups=extra)
                    self.assertIs(ck.config["tie_word_embeddings"], False)
                    self.assertIs(ck.config["text_config"]["tie_word_embeddings"], False)
                    self.assertIn(m.head_name, ck.tensors)
                    self.assertNotIn("flashnorm_folded", ck.config)
                    for k in m.tensors:
                        if "vision_tower" in k:
                            self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
                    self.assertIn("--keep-norms", p.stderr)
                    # --keep-norms: identity 0 for every folded norm
                    out2 = src + "-kn"
                    o2 = convert(self, src, out2, "--keep-norms")
                    ex2, ck2 = check_output(self, src, out2, keep_norms=True, extra_groups=extra)
                    for k in ex2.dropped:
                        self.assertEqual(set(ck2.tensors[k].values()), {0.0}, k)


class Refusals(Base):
    def refused(self, model, name, words):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src)
        out = os.path.join(self.tmp, name + "-out")
        before = sorted(os.listdir(self.tmp))
        p = convert(self, src, out, expect_rc=None)
        self.assertEqual(p.returncode, 2, describe(p))
        for w in words:
            self.assertIn(w, p.stderr, describe(p))
        self.assertEqual(sorted(os.listdir(self.tmp)), before, "a refused run wrote something")
        return p

    def test_unknown_model_type(self):
        m = build_model("llama", dtype="BF16", seed=500)
        m.config["model_type"] = "mamba_llama_hybrid"
        self.refused(m, "unk", ["mamba_llama_hybrid", "llama", "gemma3", "mixtral", "cohere"])

    def test_fp8_consumer(self):
        m = build_model("deepseek_v3", dtype="BF16", seed=501, fp8=True)
        self.assertEqual(m.tensors["model.layers.0.self_attn.q_a_proj.weight"].dtype, "F8_E4M3")
        p = self.refused(m, "fp8", [])
        self.assertTrue("F8" in p.stderr or "FP8" in p.stderr.upper() or "quantiz" in p.stderr.lower(), describe(p))


if __name__ == "__main__":
    unittest.main(verbosity=2)
