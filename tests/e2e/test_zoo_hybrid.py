"""test_zoo_hybrid.py -- issue 13's hybrid group: what the family-wide suites
(which iterate fixtures.FAMILIES: test_families, test_forward_families, the
digests) do not cover for olmo3, olmoe, granitemoe, granitemoeshared,
granitemoehybrid, nemotron_h and falcon_h1.

Per-layer consumers by the layer or block type (Granite 4.0-H's layer_types
and their absence, Nemotron-H's pattern string, its block list in both
spellings, MoE with and without latent projections, per-expert and fused
experts, the backbone. and model. layouts); the Mamba-2 gated norms folded
into out_proj and their --keep-norms identity; kept norms and the marker;
the layer count from the block list; refusals (nemotron, bitnet, configs and
checkpoints that disagree); verify passing on flashify's own output and
failing on a w-vs-1+w fold and on each kind of missed consumer, with the
forward check failing on its own; and the C forward pass (Mamba-2 in its
recurrent form) against zoo_hybrid.py's Python reference (the quadratic
form) in the variants the defaults do not reach.

Expectations come from expect.py / zoo_hybrid.py (written from
docs/architectures.md §zoo13-hybrid), never from the converter.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import build_model, read_checkpoint, write_checkpoint  # noqa: E402
from expect import expected  # noqa: E402
from harness import check_output, convert, describe, refused_model, run  # noqa: E402
from verify_fixtures import write_output, write_source  # noqa: E402
import test_forward_families  # noqa: E402

TOKENS = "1,7,30,64,95,7,3,11"


def groups_of(ex, layer):
    """{norm: sorted consumers} of one layer, names relative to its prefix."""
    out = {}
    for norm, cons in ex.groups:
        for root in ("model.", "backbone."):
            pre = "%slayers.%d." % (root, layer)
            if norm.startswith(pre):
                out[norm[len(pre):-len(".weight")]] = sorted(c[len(pre):] for c in cons)
    return out


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-hybrid-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def convert_checked(self, model, name, flags=()):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src)
        out = src + "-out"
        p = convert(self, src, out, *flags)
        ex = expected(read_checkpoint(src), keep_norms="--keep-norms" in flags)
        ex, ck = check_output(self, src, out, ex=ex)
        return src, out, p, ex, ck

    def refused(self, model, name, words, flags=()):
        return refused_model(self, self.tmp, model, name, words, flags)


class Granite(Base):
    def test_hybrid_consumers_follow_the_layer_type(self):
        """Granite 4.0-H: input_layernorm feeds mamba.in_proj in Mamba-2
        layers and q/k/v in attention layers; the gated mamba.norm folds
        into out_proj; post_attention_layernorm feeds the router, the 3-D
        input_linear [E, 2I, H] and the shared MLP."""
        m = build_model("granitemoehybrid", dtype="BF16", seed=2001)
        _, _, _, ex, ck = self.convert_checked(m, "g4")
        routed = ["block_sparse_moe.input_linear.weight", "block_sparse_moe.router.layer.weight",
                  "shared_mlp.input_linear.weight"]
        self.assertEqual(groups_of(ex, 0), {"input_layernorm": ["mamba.in_proj.weight"],
                                            "mamba.norm": ["mamba.out_proj.weight"],
                                            "post_attention_layernorm": routed})
        self.assertEqual(groups_of(ex, 1)["input_layernorm"],
                         ["self_attn.k_proj.weight", "self_attn.q_proj.weight", "self_attn.v_proj.weight"])
        self.assertNotIn("model.layers.0.mamba.norm.weight", ck.tensors)
        self.assertTrue(ck.config.get("flashnorm_folded"))

    def test_hybrid_variants(self):
        """No layer_types (every layer Mamba-2, the config class's default),
        transformers 5's layer-type names, a dense Granite 4.0 (shared MLP
        only), RoPE."""
        cases = (({"layer_types": None}, [0, 1, 2, 3]),
                 ({"layer_types": ["linear_attention", "full_attention", "full_attention", "linear_attention"]},
                  [0, 3]),
                 ({"experts": 0, "layer_types": ["attention", "attention"], "layers": 2}, []),
                 ({"rope": True}, [0, 2, 3]))
        for opt, mamba in cases:
            with self.subTest(**opt):
                m = build_model("granitemoehybrid", dtype="BF16", seed=2002, **opt)
                _, _, _, ex, _ = self.convert_checked(m, "g4-%d" % len(os.listdir(self.tmp)))
                L = m.config["num_hidden_layers"]
                self.assertEqual([i for i in range(L) if "mamba.norm" in groups_of(ex, i)], mamba)
                post = groups_of(ex, 0)["post_attention_layernorm"]
                self.assertEqual(post == ["shared_mlp.input_linear.weight"], opt.get("experts") == 0, post)

    def test_shared_mlp_is_optional(self):
        """granitemoeshared without a shared MLP (shared_intermediate_size 0)
        is granitemoe; with one, its fused input_linear reads the norm."""
        for fam, opt, shared in (("granitemoe", {}, False), ("granitemoeshared", {}, True),
                                 ("granitemoeshared", {"shared": 0}, False)):
            with self.subTest(family=fam, **opt):
                m = build_model(fam, dtype="F32", seed=2003, **opt)
                _, _, _, ex, _ = self.convert_checked(m, "%s-%d" % (fam, len(os.listdir(self.tmp))))
                post = groups_of(ex, 1)["post_attention_layernorm"]
                self.assertEqual("shared_mlp.input_linear.weight" in post, shared)
                self.assertIn("block_sparse_moe.input_linear.weight", post)

    def test_missing_shared_mlp_refused(self):
        m = build_model("granitemoeshared", dtype="F32", seed=2004)
        del m.tensors["model.layers.1.shared_mlp.input_linear.weight"]
        self.refused(m, "noshared", ["model.layers.1.shared_mlp.input_linear.weight", "missing"])


class NemotronH(Base):
    MAMBA = {"norm": ["mixer.in_proj.weight"], "mixer.norm": ["mixer.out_proj.weight"]}
    ATTN = {"norm": ["mixer.k_proj.weight", "mixer.q_proj.weight", "mixer.v_proj.weight"]}
    MLP = {"norm": ["mixer.up_proj.weight"]}

    def moe(self, experts):
        return {"norm": sorted(["mixer.gate.weight", "mixer.shared_experts.up_proj.weight"] + experts)}

    def test_one_norm_feeds_the_blocks_mixer(self):
        """backbone.layers.{i}.norm feeds whichever mixer block i has, by the
        Hub's hybrid_override_pattern "M*-ME"; MoE: router, every expert's
        up_proj (relu2 experts: no gate), the shared expert's up_proj; the
        router's correction bias passes through untouched."""
        m = build_model("nemotron_h", dtype="BF16", seed=2101)
        src, _, _, ex, ck = self.convert_checked(m, "nh")
        want = [self.MAMBA, self.ATTN, self.MLP, self.MAMBA,
                self.moe(["mixer.experts.%d.up_proj.weight" % e for e in range(4)])]
        self.assertEqual([groups_of(ex, i) for i in range(5)], want)
        b = "backbone.layers.4.mixer.gate.e_score_correction_bias"
        self.assertEqual(ck.tensors[b].data, m.tensors[b].data)
        self.assertIn("backbone.norm_f.weight", dict(ex.groups))
        self.assertTrue(ck.config.get("flashnorm_folded"))

    def test_layouts_and_block_keys(self):
        """transformers 5 (model., fused experts [E, I, H], layers_block_type
        in its names), the legacy names, moe_latent_size (the experts read
        fc1_latent_proj's output, which then reads the norm)."""
        fused = self.moe([])
        fused["norm"] = sorted(fused["norm"] + ["mixer.experts.up_proj"])
        latent = self.moe(["mixer.fc1_latent_proj.weight"])
        cases = (({"layout": "v5"}, fused), ({"blocks_key": "legacy"}, None), ({"latent": 8}, latent),
                 ({"layout": "v5", "latent": 8}, latent), ({"blocks_key": "layers_block_type"}, None))
        for opt, moe in cases:
            with self.subTest(**opt):
                m = build_model("nemotron_h", dtype="BF16", seed=2102, **opt)
                _, _, _, ex, _ = self.convert_checked(m, "nh-%d" % len(os.listdir(self.tmp)))
                self.assertEqual(groups_of(ex, 0), self.MAMBA)
                self.assertEqual(groups_of(ex, 1), self.ATTN)
                if moe:
                    self.assertEqual(groups_of(ex, 4), moe)

    def test_layer_count_from_the_block_list(self):
        """transformers 5 counts layers_block_type (num_hidden_layers is
        only a property): a config without it converts and verifies; one
        that disagrees with the list has no single meaning and is refused."""
        m = build_model("nemotron_h", dtype="F32", seed=2103, layout="v5")
        del m.config["num_hidden_layers"]
        src = os.path.join(self.tmp, "nocount")
        write_checkpoint(m, src)
        out = src + "-out"
        convert(self, src, out)
        ck = read_checkpoint(src)
        ck.config = dict(ck.config, num_hidden_layers=5)    # what expect.py needs to walk the layers
        check_output(self, src, out, ex=expected(ck))
        v = run(["verify", src, out])
        self.assertEqual(v.returncode, 0, describe(v))
        self.assertIn("5 layers", v.stdout)
        m.config["num_hidden_layers"] = 4
        self.refused(m, "badcount", ["layers_block_type", "lists 5 layers", "num_hidden_layers is 4"])

    def test_inconsistent_checkpoints_refused(self):
        """An unknown block type, a MoE block without its shared expert, a
        Mamba block without its gated norm's consumer."""
        m = build_model("nemotron_h", dtype="F32", seed=2104)
        m.config["hybrid_override_pattern"] = "M*-MX"
        self.refused(m, "badtype", ["backbone.layers.4.norm.weight", "layer 4"])
        m = build_model("nemotron_h", dtype="F32", seed=2104)
        del m.tensors["backbone.layers.4.mixer.shared_experts.up_proj.weight"]
        self.refused(m, "noshared", ["backbone.layers.4.mixer.shared_experts.up_proj.weight", "missing"])
        m = build_model("nemotron_h", dtype="F32", seed=2104)
        del m.tensors["backbone.layers.3.mixer.out_proj.weight"]
        self.refused(m, "noout", ["backbone.layers.3.mixer.out_proj.weight", "mixer.norm"])

    def test_keep_norms_writes_ones(self):
        """Every norm here applies w: --keep-norms writes 1, the gated
        mixer.norm included."""
        m = build_model("nemotron_h", dtype="BF16", norm_dtype="F32", seed=2105)
        _, _, _, ex, ck = self.convert_checked(m, "kn", ["--keep-norms"])
        self.assertIn("backbone.layers.0.mixer.norm.weight", ex.dropped)
        for k in ex.dropped:
            self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)


class FalconH1(Base):
    def test_parallel_block(self):
        """input_layernorm feeds Mamba-2 and attention at once; the gated
        norm folds only where mamba_rms_norm builds one."""
        for opt, gated in (({}, True), ({"rms_norm": False}, False), ({"before_gate": False}, True)):
            with self.subTest(**opt):
                m = build_model("falcon_h1", dtype="BF16", seed=2201, **opt)
                _, _, _, ex, _ = self.convert_checked(m, "fh-%d" % len(os.listdir(self.tmp)))
                g = groups_of(ex, 1)
                self.assertEqual(g["input_layernorm"], ["mamba.in_proj.weight", "self_attn.k_proj.weight",
                                                        "self_attn.q_proj.weight", "self_attn.v_proj.weight"])
                self.assertEqual(g["pre_ff_layernorm"], ["feed_forward.gate_proj.weight",
                                                         "feed_forward.up_proj.weight"])
                self.assertEqual("mamba.norm" in g, gated)
                self.assertIn("model.final_layernorm.weight", dict(ex.groups))

    def test_stray_gated_norm_refused(self):
        """A mamba.norm in a config that says mamba_rms_norm false: the
        model never reads it; no rule covers it, so it is refused rather
        than passed through as if it were folded."""
        m = build_model("falcon_h1", dtype="F32", seed=2202)
        m.config["mamba_rms_norm"] = False
        self.refused(m, "stray", ["model.layers.0.mamba.norm.weight", "no rule"])


class Olmo(Base):
    def test_olmo3_only_the_final_norm(self):
        m = build_model("olmo3", dtype="BF16", seed=2301)
        _, _, _, ex, ck = self.convert_checked(m, "o3")
        self.assertEqual([n for n, _ in ex.groups], ["model.norm.weight"])
        for i in range(4):
            for n in ("post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm",
                      "self_attn.k_norm"):
                k = "model.layers.%d.%s.weight" % (i, n)
                self.assertEqual(ck.tensors[k].data, m.tensors[k].data, k)
        self.assertFalse(ck.config.get("flashnorm_folded"))

    def test_olmoe_expert_layouts(self):
        for opt in ({}, {"layout": "v5"}):
            with self.subTest(**opt):
                m = build_model("olmoe", dtype="BF16", seed=2302, **opt)
                _, _, _, ex, _ = self.convert_checked(m, "oe-%d" % len(os.listdir(self.tmp)))
                post = groups_of(ex, 1)["post_attention_layernorm"]
                self.assertIn("mlp.experts.gate_up_proj" if opt else "mlp.experts.3.up_proj.weight", post)
                self.assertIn("mlp.gate.weight", post)


class Refused(Base):
    def llama_as(self, mt):
        m = build_model("llama", dtype="F32", seed=2401)
        m.config["model_type"] = mt
        return m

    def test_nemotron_layernorm1p(self):
        p = self.refused(self.llama_as("nemotron"), "nemotron",
                         ["model_type 'nemotron' is refused", "NemotronLayerNorm1P", "1 + w", "bias"])
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)

    def test_bitnet_sub_norms(self):
        p = self.refused(self.llama_as("bitnet"), "bitnet",
                         ["model_type 'bitnet' is refused", "attn_sub_norm", "ffn_sub_norm", "BitLinear"])
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)

    def test_a_plan_cannot_lift_a_refusal(self):
        plan = os.path.join(self.tmp, "plan.json")
        with open(plan, "w") as f:
            json.dump({"model_type": "bitnet", "gain": "w", "layers": [
                {"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj",
                                                          "self_attn.v_proj"]}]}, f)
        self.refused(self.llama_as("bitnet"), "bitnet-plan", ["is refused", "BitLinear"], ["--plan", plan])
        self.refused(self.llama_as("nemotron"), "nemotron-dry", ["is refused"], ["--dry-run"])


class Verify(Base):
    def verify(self, src, out):
        p = run(["verify", src, out, "--json", "--tokens", TOKENS])
        return p, (json.loads(p.stdout) if p.stdout.strip() else None)

    def test_flashify_output_verifies(self):
        """--strict on the converter's own output, BF16, and the forward
        line says what ran."""
        cases = (("olmo3", "olmo3, 4 layers"), ("olmoe", "MoE in 2 of 2 layers (per-expert)"),
                 ("granitemoe", "MoE in 2 of 2 layers (fused experts [E, 2I, H]), RoPE attention"),
                 ("granitemoeshared", "shared MLP, RoPE attention"),
                 ("granitemoehybrid", "Mamba-2 in 3 of 4 layers, shared MLP, NoPE attention"),
                 ("nemotron_h", "blocks: 2 Mamba-2, 1 attention (no RoPE), 1 MLP, 1 MoE (per-expert experts)"),
                 ("falcon_h1", "parallel Mamba-2 (4 heads, gated norm) and attention in every layer"))
        for fam, words in cases:
            with self.subTest(family=fam):
                src = os.path.join(self.tmp, fam)
                write_source(src, fam, "BF16")
                p = convert(self, src, src + "-out", "--strict")
                self.assertIn(words, p.stdout + p.stderr, describe(p))
                self.assertIn("EQUIVALENT", p.stdout + p.stderr)

    def wrong(self, fam, name, opt=None, **kw):
        """verify on a deliberately wrong output of fam fails (exit 3), and
        the forward check fails on its own."""
        src = os.path.join(self.tmp, "%s-%s" % (fam, name))
        write_source(src, fam, "F32", **(opt or {}))
        out = src + "-out"
        write_output(src, out, **kw)
        p, rep = self.verify(src, out)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])
        return src, rep

    def unfold(self, src, *names):
        """A mutate for write_output: these consumers keep the source's bytes
        although their norm is gone."""
        def mutate(ts, ex):
            s = read_checkpoint(src)
            for n in names:
                ts[n] = s.tensors[n]
        return mutate

    def test_wrong_gain_fails(self):
        for fam in ("nemotron_h", "granitemoehybrid", "falcon_h1"):
            with self.subTest(family=fam):
                _, rep = self.wrong(fam, "gain", gain="1+w")
                self.assertIn("correctly rounded product", json.dumps(rep))

    def test_missed_consumers_fail(self):
        """Each kind of consumer, left unfolded while its norm is removed:
        a Mamba-2 in_proj, a gated norm's out_proj, a relu2 MLP's up_proj,
        a latent projection, a shared expert, fused 3-D experts, Falcon-H1's
        attention half of the parallel block."""
        cases = (("nemotron_h", {}, ["backbone.layers.0.mixer.in_proj.weight"]),
                 ("nemotron_h", {}, ["backbone.layers.3.mixer.out_proj.weight"]),
                 ("nemotron_h", {}, ["backbone.layers.2.mixer.up_proj.weight"]),
                 ("nemotron_h", {"latent": 8}, ["backbone.layers.4.mixer.fc1_latent_proj.weight"]),
                 ("nemotron_h", {"layout": "v5"}, ["model.layers.4.mixer.shared_experts.up_proj.weight"]),
                 ("granitemoehybrid", {}, ["model.layers.2.mamba.out_proj.weight"]),
                 ("granitemoehybrid", {}, ["model.layers.1.block_sparse_moe.input_linear.weight"]),
                 ("granitemoeshared", {}, ["model.layers.0.shared_mlp.input_linear.weight"]),
                 ("falcon_h1", {}, ["model.layers.1.self_attn.q_proj.weight"]),
                 ("olmoe", {"layout": "v5"}, ["model.layers.0.mlp.experts.gate_up_proj"]))
        for fam, opt, names in cases:
            with self.subTest(family=fam, consumer=names[0], **opt):
                src = os.path.join(self.tmp, "%s-%d" % (fam, len(os.listdir(self.tmp))))
                write_source(src, fam, "F32", **opt)
                out = src + "-out"
                write_output(src, out, mutate=self.unfold(src, *names))
                p, rep = self.verify(src, out)
                self.assertEqual(p.returncode, 3, describe(p))
                self.assertIn(names[0], json.dumps(rep))
                self.assertFalse(rep["forward_check"]["passed"], rep["forward_check"])


class Infinity(Base):
    """time_step_limit (0.0, inf): transformers 4 saves it as Python's json
    does, [0.0, Infinity] (not strict JSON), transformers 5 as
    [0.0, {"__float__": "Infinity"}].  Both convert, the output's
    config.json keeps the spelling byte for byte, verify passes, and the
    forward pass reads the limit."""

    def test_infinite_time_step_limit(self):
        for fam, spell in (("falcon_h1", "bare"), ("falcon_h1", "tagged"), ("nemotron_h", "bare")):
            with self.subTest(family=fam, spelling=spell):
                src = os.path.join(self.tmp, "%s-%s" % (fam, spell))
                m = build_model(fam, dtype="F32", seed=2501)
                m.config["time_step_limit"] = [0.0, float("inf") if spell == "bare" else {"__float__": "Infinity"}]
                write_checkpoint(m, src)
                with open(os.path.join(src, "config.json")) as f:
                    text = f.read()
                self.assertIn("Infinity", text)
                out = src + "-out"
                p = convert(self, src, out, "--strict")
                self.assertIn("EQUIVALENT", p.stdout + p.stderr)
                check_output(self, src, out)
                with open(os.path.join(out, "config.json")) as f:
                    got = f.read()
                self.assertIn('"time_step_limit": [\n    0.0,\n    Infinity' if spell == "bare" else
                              '"__float__": "Infinity"', got)
                if fam == "falcon_h1":
                    Forward.check_dir(self, src)


class OddConfigs(Base):
    """Config values no real checkpoint has reach the planner and the
    Mamba-2 and MoE blocks without a crash: either the plan is refused with
    one error line, or the forward check says why it could not run, naming
    config.json (the configs differ, so the verdict is NOT EQUIVALENT)."""

    def test_odd_values(self):
        cases = (("falcon_h1", {"mamba_n_heads": 0}), ("falcon_h1", {"mamba_n_heads": 10 ** 18}),
                 ("falcon_h1", {"mamba_d_ssm": 1e300}), ("falcon_h1", {"mamba_n_groups": 3}),
                 ("falcon_h1", {"mamba_d_conv": 0}), ("falcon_h1", {"time_step_limit": [1, 0]}),
                 ("falcon_h1", {"ssm_multipliers": [1, 2]}), ("granitemoehybrid", {"mamba_expand": 1e300}),
                 ("granitemoehybrid", {"mamba_d_head": -8}), ("granitemoehybrid", {"layer_types": ["mamba"]}),
                 ("granitemoehybrid", {"num_experts_per_tok": 9}), ("nemotron_h", {"n_groups": 10 ** 12}),
                 ("nemotron_h", {"mamba_head_dim": 0}), ("nemotron_h", {"n_routed_experts": 0}),
                 ("nemotron_h", {"moe_latent_size": -1}), ("nemotron_h", {"mamba_hidden_act": "gelu"}),
                 ("nemotron_h", {"hybrid_override_pattern": "M*"}))
        for fam, change in cases:
            with self.subTest(family=fam, **{k: str(v) for k, v in change.items()}):
                src = os.path.join(self.tmp, "%s-%d" % (fam, len(os.listdir(self.tmp))))
                m = write_source(src, fam, "F32")
                write_output(src, src + "-out")
                m.config.update(change)
                with open(os.path.join(src, "config.json"), "w") as f:
                    json.dump(m.config, f)
                p = run(["verify", src, src + "-out"])
                self.assertIn(p.returncode, (2, 3), describe(p))
                skipped = [ln for ln in p.stdout.splitlines() if ln.startswith("forward: skipped:")]
                if p.returncode == 3:
                    self.assertTrue(skipped and "config.json" in skipped[0], describe(p))
                else:
                    self.assertEqual(len(p.stderr.strip().splitlines()), 1, describe(p))


class Forward(Base):
    """The C pass against zoo_hybrid.py's reference, F32, 1e-4 of the logit
    scale (test_forward_families.check_dir)."""
    check_dir = test_forward_families.ForwardFamilies.check_dir

    def test_variants(self):
        cases = (("nemotron_h", {"layout": "v5"}), ("nemotron_h", {"latent": 8}),
                 ("nemotron_h", {"layout": "v5", "latent": 8, "blocks": "EM*E"}),
                 ("nemotron_h", {"blocks_key": "legacy", "blocks": "ME-*M"}),
                 # the groups of this seed make NemotronHMoE's -inf mask matter:
                 # DeepSeek V3's 0.0 would let a masked expert win
                 ("nemotron_h", {"blocks": "EM*E", "seed": 5}),
                 ("nemotron_h", {"dims": {"time_step_min": 0.6}}),     # torch_forward's clamp(dt, time_step_min)
                 ("granitemoehybrid", {"rope": True}), ("granitemoehybrid", {"experts": 0}),
                 ("granitemoehybrid", {"layer_types": None}), ("granitemoeshared", {"shared": 0}),
                 ("falcon_h1", {"before_gate": False}), ("falcon_h1", {"rms_norm": False}),
                 ("falcon_h1", {"dims": {"time_step_limit": [0.5, 0.9], "mamba_d_head": "auto"}}),
                 ("olmoe", {"layout": "v5"}), ("olmoe", {"clip": None}), ("olmo3", {"window": 2, "layers": 5}))
        for fam, opt in cases:
            with self.subTest(family=fam, **opt):
                src = os.path.join(self.tmp, "%s-%d" % (fam, len(os.listdir(self.tmp))))
                write_source(src, fam, "F32", **opt)
                self.check_dir(src)

    def test_bf16(self):
        for fam in ("nemotron_h", "falcon_h1", "granitemoehybrid"):
            with self.subTest(family=fam):
                src = os.path.join(self.tmp, fam)
                write_source(src, fam, "BF16")
                self.check_dir(src)


if __name__ == "__main__":
    unittest.main(verbosity=2)
