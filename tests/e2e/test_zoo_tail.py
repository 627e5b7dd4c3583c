"""test_zoo_tail.py -- issue 13's long tail (zoo_tail.py): what is specific.

The generic suites (test_families, test_verify, test_forward_families)
already convert, verify and compare the forward pass of every family here
in its default layout; this file covers the variants and what the table
must get right per family: LFM2's layer types, convolution and tie key,
the MoE layouts and layer rules (LFM2-MoE, ERNIE 4.5 MoE, HunYuan MoE), the
renamed and gateless rows (Apertus, Arcee, InternLM2), EXAONE 4's
post-norm-only layer, what stays untouched, refusals, --partial, and
verify's teeth: wrong folds that the forward check must catch on its own.
The C forward pass is compared with zoo_tail.ref_logits on every variant.
"""

import json
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import _quantize_experts, build_model, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import ZooCase, check_output, convert, describe, verify_json as verify  # noqa: E402
from verify_fixtures import c_vs_python, edit_config, forward_skipped, write_output, write_source  # noqa: E402
import zoo_tail  # noqa: E402,F401  (registers the families with fixtures, expect, ref_forward)

TOKENS = [1, 7, 30, 64, 95, 7]


class Base(ZooCase):
    tmp_prefix = "flashify-tail-"
    seed = 61

    def refused(self, model, name, needles, *flags):
        src = self.path(name)
        write_checkpoint(model, src)
        p = convert(self, src, src + "-out", *flags, expect_rc=2)
        for w in needles:
            self.assertIn(w, p.stderr, describe(p))
        self.assertFalse(os.path.exists(src + "-out"), "a refused conversion left output behind")
        return p

    def assertChanged(self, m, ck, names, changed=True):
        for k in names:
            same = ck.tensors[k].data == m.tensors[k].data
            self.assertEqual(same, not changed, "%s should %s" % (k, "change" if changed else "stay"))


class Lfm2(Base):
    def test_consumers_follow_the_layer_type(self):
        """operator_norm feeds attention's q/k/v or the convolution's
        in_proj, by layer type; out_proj, the conv kernel, w2 and the q/k
        norms stay; the final norm is model.embedding_norm (tied: a new
        lm_head)."""
        m, p, ex, ck = self.converted("lfm2")
        lp = "model.layers.%d."
        self.assertChanged(m, ck, [lp % 0 + "conv.in_proj.weight", lp % 1 + "self_attn.q_proj.weight",
                                   lp % 1 + "self_attn.v_proj.weight", lp % 2 + "feed_forward.w3.weight"])
        self.assertChanged(m, ck, [lp % 0 + "conv.out_proj.weight", lp % 0 + "conv.conv.weight",
                                   lp % 1 + "self_attn.out_proj.weight", lp % 1 + "self_attn.q_layernorm.weight",
                                   lp % 3 + "feed_forward.w2.weight"], changed=False)
        self.assertNotIn("model.embedding_norm.weight", ck.tensors)
        self.assertIn("lm_head.weight", ck.tensors)
        self.assertFalse(ck.config["tie_word_embeddings"])

    def test_hub_config(self):
        """The released config: full_attn_idxs without layer_types, and
        tie_embedding without tie_word_embeddings.  Untying writes both keys
        false -- Lfm2Config reads tie_embedding first."""
        m, p, ex, ck = self.converted("lfm2", name="hub", config="hub")
        self.assertNotIn("layer_types", m.config)
        self.assertIs(ck.config["tie_embedding"], False)
        self.assertIs(ck.config["tie_word_embeddings"], False)
        p, rep = verify(self.path("hub"), self.path("hub") + "-out")
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertTrue(rep["forward_check"]["passed"])

    def test_tie_embedding_false_decides(self):
        """tie_embedding false and a stored lm_head: the final norm folds
        into that head, both tie keys as they were."""
        m, p, ex, ck = self.converted("lfm2", name="untied", config="hub", tied=False)
        self.assertIs(m.config["tie_embedding"], False)
        self.assertNotEqual(ck.tensors["lm_head.weight"].data, m.tensors["lm_head.weight"].data)
        self.assertNotIn("tie_word_embeddings", ck.config)

    def test_tie_embedding_overrides_tie_word_embeddings(self):
        """tie_word_embeddings false but tie_embedding true: transformers ties
        (the stored lm_head is replaced by the embedding), so a head that
        differs from the embedding is refused as ambiguous, not folded."""
        m = build_model("lfm2", dtype="BF16", tied=False)
        m.config["tie_embedding"] = True
        self.refused(m, "both", ["lm_head.weight", "tie"])

    def test_untie_keeping_tie_embedding_fails_verify(self):
        """An output that materialised the head but left tie_embedding true
        would be tied back by transformers: verify says so."""
        src = self.path("keep-alias")
        write_source(src, "lfm2", "BF16", config="hub")

        def keep(cfg):
            cfg["tie_embedding"] = True
        write_output(src, src + "-out", config=keep)
        p, rep = verify(src, src + "-out")
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertIn("tie_embedding", json.dumps(rep))

    def test_no_layer_list_means_attention(self):
        """Neither layer_types nor full_attn_idxs: every layer is attention,
        so a convolution layer's missing q_proj is an error."""
        m = build_model("lfm2", dtype="BF16", config="hub")
        del m.config["full_attn_idxs"]
        self.refused(m, "nolist", ["model.layers.0.self_attn.q_proj.weight", "operator_norm"])

    def test_unknown_layer_type_refused(self):
        m = build_model("lfm2", dtype="BF16")
        m.config["layer_types"][0] = "sliding_attention"
        self.refused(m, "odd-type", ["model.layers.0.operator_norm.weight", "layer 0"])

    def test_conv_bias(self):
        m, p, ex, ck = self.converted("lfm2", name="cb", conv_bias=True)
        for k in ("conv.in_proj.bias", "conv.conv.bias", "conv.out_proj.bias"):
            self.assertChanged(m, ck, ["model.layers.0." + k], changed=False)


class Moe(Base):
    def test_lfm2_moe_layouts(self):
        """Dense first num_dense_layers (2); then the router and every
        expert's w1/w3, per expert (released) or fused [E, 2I, H]; the
        expert_bias buffer and w2 stay."""
        for experts in ("per_expert", "fused"):
            with self.subTest(experts=experts):
                m, p, ex, ck = self.converted("lfm2_moe", name="lm-" + experts, experts=experts)
                lp = "model.layers.%d.feed_forward."
                self.assertChanged(m, ck, [lp % 1 + "w1.weight", lp % 2 + "gate.weight"])
                self.assertChanged(m, ck, [lp % 2 + "expert_bias"], changed=False)
                if experts == "fused":
                    self.assertChanged(m, ck, [lp % 3 + "experts.gate_up_proj"])
                    self.assertChanged(m, ck, [lp % 3 + "experts.down_proj"], changed=False)
                else:
                    self.assertChanged(m, ck, [lp % 3 + "experts.2.w3.weight"])
                    self.assertChanged(m, ck, [lp % 3 + "experts.2.w2.weight"], changed=False)

    def test_lfm2_moe_dense_layer_default(self):
        """num_dense_layers absent: the class default, 2 -- layer 1 is dense
        (its w1 exists, its router does not)."""
        m = build_model("lfm2_moe", dtype="BF16")
        del m.config["num_dense_layers"]
        src = self.path("nd")
        write_checkpoint(m, src)
        convert(self, src, src + "-out")
        check_output(self, src, src + "-out")

    def test_ernie_sparse_layers_and_shared_experts(self):
        """moe_layer_start_index 1: layer 0 dense; the router (fp32) and the
        experts' gate/up, the shared experts; moe_statics stays."""
        m, p, ex, ck = self.converted("ernie4_5_moe")
        lp = "model.layers.%d.mlp."
        self.assertEqual(m.tensors[lp % 1 + "gate.weight"].dtype, "F32")
        self.assertChanged(m, ck, [lp % 0 + "gate_proj.weight", lp % 1 + "gate.weight",
                                   lp % 2 + "experts.3.up_proj.weight", lp % 1 + "shared_experts.gate_proj.weight"])
        self.assertChanged(m, ck, [lp % 1 + "moe_statics.e_score_correction_bias",
                                   lp % 2 + "shared_experts.down_proj.weight"], changed=False)

    def test_ernie_layer_rule(self):
        """moe_layer_end_index 1 makes layer 2 dense; interval 2 makes only
        odd layers sparse: a checkpoint whose tensors disagree is refused."""
        m = build_model("ernie4_5_moe", dtype="BF16")
        m.config["moe_layer_end_index"] = 1
        self.refused(m, "end", ["model.layers.2.mlp.gate_proj.weight"])
        m = build_model("ernie4_5_moe", dtype="BF16")
        m.config["moe_layer_interval"] = 2
        self.refused(m, "interval", ["model.layers.2.mlp.gate_proj.weight"])

    def test_ernie_shared_experts_default(self):
        """moe_num_shared_experts 0: no shared experts; absent: the class
        default 2, so a checkpoint without them is refused."""
        self.converted("ernie4_5_moe", name="noshared", shared=0)
        m = build_model("ernie4_5_moe", dtype="BF16", shared=0)
        del m.config["moe_num_shared_experts"]
        self.refused(m, "shared-default", ["mlp.shared_experts.gate_proj.weight"])

    def test_hunyuan_moe(self):
        """Every layer MoE: router mlp.gate.wg, experts, shared_mlp; the q/k
        norms after RoPE stay."""
        for experts in ("per_expert", "fused"):
            with self.subTest(experts=experts):
                m, p, ex, ck = self.converted("hunyuan_v1_moe", name="hy-" + experts, experts=experts)
                lp = "model.layers.1."
                self.assertChanged(m, ck, [lp + "mlp.gate.wg.weight", lp + "mlp.shared_mlp.up_proj.weight"])
                self.assertChanged(m, ck, [lp + "self_attn.query_layernorm.weight",
                                           lp + "mlp.shared_mlp.down_proj.weight"], changed=False)

    def test_hunyuan_per_layer_lists_refused(self):
        m = build_model("hunyuan_v1_moe", dtype="BF16")
        m.config["num_experts"] = [4, 4]
        self.refused(m, "list", ["num_experts", "per-layer"])

    def test_partial_quantized_experts(self):
        """Experts stored as compressed-tensors int4: refused, naming the
        format; --partial keeps the MoE layers' post-attention norm."""
        for fam, norm in (("ernie4_5_moe", "post_attention_layernorm"), ("lfm2_moe", "ffn_norm")):
            with self.subTest(family=fam):
                m = build_model(fam, dtype="BF16")
                _quantize_experts(m, "int4", random.Random(3))
                self.refused(m, fam + "-q", ["compressed-tensors"])
                src = self.path(fam + "-q")
                convert(self, src, src + "-partial", "--partial")
                ex = expected(read_checkpoint(src), partial=True)
                _, ck = check_output(self, src, src + "-partial", ex=ex)
                self.assertEqual(len(ex.kept_quantized), 2)
                self.assertTrue(all(k.endswith(norm + ".weight") for k in ex.kept_quantized))
                self.assertNotIn("model.layers.0.%s.weight" % norm, ck.tensors)


class Rows(Base):
    def test_exaone4_only_the_final_norm(self):
        m, p, ex, ck = self.converted("exaone4")
        self.assertEqual([g[0] for g in ex.groups], ["model.norm.weight"])
        self.assertFalse(ex.marker)
        self.assertNotIn("flashnorm_folded", ck.config)

    def test_apertus_renamed_and_gateless(self):
        """attention_layernorm -> q/k/v, feedforward_layernorm -> up_proj;
        down_proj and the xIELU parameters stay."""
        m, p, ex, ck = self.converted("apertus")
        lp = "model.layers.0."
        self.assertChanged(m, ck, [lp + "self_attn.k_proj.weight", lp + "mlp.up_proj.weight"])
        self.assertChanged(m, ck, [lp + "mlp.down_proj.weight", lp + "mlp.act_fn.alpha_p", lp + "mlp.act_fn.eps",
                                   lp + "self_attn.q_norm.weight"], changed=False)
        self.assertNotIn(lp + "feedforward_layernorm.weight", ck.tensors)

    def test_internlm2_layout(self):
        """attention_norm -> the grouped wqkv, ffn_norm -> w1/w3, the final
        norm -> output; tok_embeddings stays.  Tied: output is materialised
        from tok_embeddings."""
        m, p, ex, ck = self.converted("internlm2")
        self.assertChanged(m, ck, ["model.layers.0.attention.wqkv.weight", "output.weight",
                                   "model.layers.1.feed_forward.w3.weight"])
        self.assertChanged(m, ck, ["model.tok_embeddings.weight", "model.layers.0.attention.wo.weight"],
                           changed=False)
        m, p, ex, ck = self.converted("internlm2", name="tied", tied=True)
        self.assertNotIn("output.weight", m.tensors)
        self.assertIn("output.weight", ck.tensors)

    def test_keep_norms_identities(self):
        """Every class here is w: --keep-norms writes 1."""
        for fam in ("lfm2", "cohere2", "apertus", "internlm2"):
            with self.subTest(family=fam):
                m, p, ex, ck = self.converted(fam, name=fam + "-kn", flags=("--keep-norms",), keep_norms=True)
                for k in ex.dropped:
                    self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)

    def test_bf16_margins(self):
        """Correct BF16 folds stay far inside the forward tolerance for the
        variants the generic suites do not run."""
        for fam, opt in (("lfm2", {"config": "hub"}), ("lfm2_moe", {"experts": "fused"}),
                         ("cohere2", {"layer_types": False}), ("exaone4", {"window": None}),
                         ("hunyuan_v1_dense", {"alpha": None}), ("internlm2", {"bias": True})):
            with self.subTest(family=fam, opt=opt):
                src = self.path("%s-%d" % (fam, len(opt)))
                write_source(src, fam, "BF16", **opt)
                write_output(src, src + "-out")
                p, rep = verify(src, src + "-out")
                self.assertEqual(p.returncode, 0, describe(p))
                fc = rep["forward_check"]
                self.assertTrue(fc["passed"], fc)
                self.assertLess(fc["max_rel_diff"], fc["tolerance"] / 4, fc)


class Forward(Base):
    """The C pass (verify --dump-logits) against zoo_tail.ref_logits."""

    def check(self, family, name, **opt):
        """verify passes, and the C pass agrees with zoo_tail.ref_logits
        (through ref_forward's registry); returns the report."""
        src = self.path(name)
        write_source(src, family, "F32", **opt)
        write_output(src, src + "-out")
        return c_vs_python(self, src, src + "-out", TOKENS)

    def test_variants(self):
        cases = [("lfm2", dict(config="hub")), ("lfm2", dict(conv_bias=True)), ("lfm2", dict(tied=False)),
                 ("lfm2_moe", dict(experts="fused")), ("lfm2_moe", dict(config="hub", tied=False)),
                 ("cohere2", dict(layer_types=False)), ("exaone4", dict(window=None)),
                 ("ernie4_5", dict(use_bias=True)), ("ernie4_5_moe", dict(experts="fused")),
                 ("ernie4_5_moe", dict(shared=0)), ("hunyuan_v1_dense", dict(alpha=None)),
                 ("hunyuan_v1_moe", dict(experts="fused")), ("internlm2", dict(bias=True)),
                 ("internlm3", dict(bias=True)), ("minicpm", dict(scale_depth=None))]
        for i, (fam, opt) in enumerate(cases):
            with self.subTest(family=fam, opt=opt):
                self.check(fam, "v%d" % i, **opt)

    def test_result_line(self):
        line = self.check("lfm2_moe", "line")["forward_check"]["model"]
        self.assertIn("lfm2_moe, 4 layers", line)
        self.assertIn("MoE in 2 of 4 layers (per-expert)", line)

    def test_unsupported_said_not_computed(self):
        """ERNIE MoE experts with biases (use_bias) and a per-layer moe_topk
        list: the forward check is skipped, saying why; the tensor check
        still decides."""
        cases = [("ernie4_5_moe", dict(use_bias=True, tied=False), None, "expert biases"),
                 ("hunyuan_v1_moe", {}, {"moe_topk": [2, 2]}, "moe_topk is not one integer")]
        for fam, opt, edit, needle in cases:
            with self.subTest(family=fam):
                src = self.path("u-" + fam)
                write_source(src, fam, "BF16", **opt)
                if edit:
                    edit_config(src, lambda cfg: cfg.update(edit))
                write_output(src, src + "-out")
                forward_skipped(self, src, src + "-out", needle)


class Teeth(Base):
    """Wrong outputs verify must reject with the forward check failing on
    its own (the tensor check fails as well)."""

    def broken(self, family, name, mutate=None, gain=None, **opt):
        src = self.path(name)
        write_source(src, family, "BF16", **opt)
        write_output(src, src + "-out", mutate=mutate, gain=gain)
        return self.assertBroken(src, src + "-out")

    def test_missed_consumers(self):
        """A rule that misses one consumer in every layer it applies to: the
        convolution's in_proj, Cohere 2's parallel MLP, the gateless up_proj,
        InternLM2's wqkv, HunYuan's shared MLP, ERNIE's router."""
        cases = [("lfm2", ["model.layers.0.conv.in_proj.weight", "model.layers.2.conv.in_proj.weight"]),
                 ("cohere2", ["model.layers.%d.mlp.up_proj.weight" % i for i in range(4)]),
                 ("apertus", ["model.layers.%d.mlp.up_proj.weight" % i for i in range(2)]),
                 ("arcee", ["model.layers.%d.mlp.up_proj.weight" % i for i in range(2)]),
                 ("internlm2", ["model.layers.%d.attention.wqkv.weight" % i for i in range(2)]),
                 ("hunyuan_v1_moe", ["model.layers.%d.mlp.shared_mlp.up_proj.weight" % i for i in range(2)]),
                 ("ernie4_5_moe", ["model.layers.%d.mlp.gate.weight" % i for i in (1, 2)]),
                 ("lfm2_moe", ["model.layers.%d.feed_forward.gate.weight" % i for i in (2, 3)])]
        for fam, names in cases:
            with self.subTest(family=fam):
                src0 = self.path("orig-" + fam)
                write_source(src0, fam, "BF16")
                orig = read_checkpoint(src0).tensors

                def unfold(ts, ex, names=names, orig=orig):
                    for k in names:
                        ts[k] = orig[k]
                rep = self.broken(fam, "miss-" + fam, mutate=unfold)
                self.assertIn(names[0], json.dumps(rep))

    def test_one_plus_w(self):
        """The "all RMSNorms are 1 + w" fold."""
        for fam in ("lfm2", "exaone4", "minicpm", "internlm2"):
            with self.subTest(family=fam):
                self.broken(fam, "opw-" + fam, gain="1+w")

    def test_wrong_final_norm(self):
        """LFM2's final norm is embedding_norm: an output that kept it as
        the identity but folded nothing into the head."""
        def unfold_head(ts, ex):
            ts["lm_head.weight"] = ts["model.embed_tokens.weight"]
        self.broken("lfm2", "head", mutate=unfold_head)


if __name__ == "__main__":
    unittest.main(verbosity=2)
