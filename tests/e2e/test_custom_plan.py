"""End-to-end test of `--plan FILE` (issue 3): a made-up family the table
does not know, declared in a small JSON file (format: README "Custom
architectures"), converted and checked against expect.py."""

import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import random  # noqa: E402

from fixtures import build_model, float_tensor, write_checkpoint  # noqa: E402
from harness import FLASHIFY, check_output, convert, describe  # noqa: E402


def hybrid_model(seed, k_eq_v=True):
    """A made-up hybrid family in the shape of the 2026 models: layer 0 is
    a linear-attention layer (linear_attn.in_proj_qkv / in_proj_z read the
    input norm; a gated linear_attn.norm that keeps its weight), layer 1 a
    full-attention layer without v_proj (attention_k_eq_v); every MLP is a
    router plus 3-D fused experts [E, H, 2I] (input on axis 1)."""
    m = build_model("gemma", dtype="BF16", tied=False, seed=seed)
    rng = random.Random(seed)
    H, E, I = 32, 3, 12

    def mat(name, shape):
        n = 1
        for d in shape:
            n *= d
        m.tensors[name] = float_tensor("BF16", shape, [rng.uniform(-1, 1) for _ in range(n)])
    m.config.update(model_type="tinyhybrid", architectures=["TinyHybridForCausalLM"], num_experts=E,
                    layer_types=["linear_attention", "full_attention"], attention_k_eq_v=k_eq_v)
    for k in [k for k in m.tensors if ".self_attn." in k and (".layers.0." in k or "v_proj" in k)]:
        del m.tensors[k]
    for k in [k for k in m.tensors if ".mlp." in k]:
        del m.tensors[k]
    mat("model.layers.0.linear_attn.in_proj_qkv.weight", (40, H))
    mat("model.layers.0.linear_attn.in_proj_z.weight", (16, H))
    mat("model.layers.0.linear_attn.out_proj.weight", (H, 16))
    m.tensors["model.layers.0.linear_attn.norm.weight"] = float_tensor("BF16", (8,), [0.5 + 0.1 * j for j in range(8)])
    for i in range(2):
        mat("model.layers.%d.mlp.gate.weight" % i, (E, H))
        mat("model.layers.%d.mlp.experts.gate_up_proj" % i, (E, H, 2 * I))
        mat("model.layers.%d.mlp.experts.down_proj" % i, (E, I, H))
    return m


HYBRID_PLAN = {
    "model_type": "tinyhybrid",
    "gain": "1+w",
    "experts_key": "num_experts",
    "layers": [
        {"norm": "input_layernorm", "consumers": ["linear_attn.in_proj_qkv", "linear_attn.in_proj_z"],
         "when": {"layer_type": "linear_attention"}},
        {"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj"],
         "when": {"layer_type": "full_attention", "flag": "attention_k_eq_v"},
         "note": "attention_k_eq_v: full-attention layers have no v_proj"},
        {"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
        {"norm": "post_attention_layernorm", "gain": "w",
         "consumers": ["mlp.gate", {"name": "mlp.experts.gate_up_proj", "input": "middle"}]},
    ],
    "keep": [{"norm": "linear_attn.norm", "reason": "gated norm before out_proj", "when": {"layer_type": "linear_attention"}}],
}


def made_up_model(gain, seed):
    """A Llama-shaped model whose norms have names no table knows:
    attn_norm -> q,k,v ; ffn_norm -> gate,up ; self_attn.q_norm kept."""
    m = build_model("gemma" if gain == "1+w" else "llama", dtype="BF16", tied=True, seed=seed)
    m.config["model_type"] = "tinyfoo"
    m.config["architectures"] = ["TinyFooForCausalLM"]
    ren = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    out = {}
    for k, t in m.tensors.items():
        for a, b in ren.items():
            k = k.replace("." + a + ".", "." + b + ".")
        out[k] = t
    for i in range(2):
        out["model.layers.%d.self_attn.q_norm.weight" % i] = float_tensor("BF16", (8,), [0.5 + 0.1 * j for j in range(8)])
    m.tensors = out
    return m


def plan_for(gain):
    return {
        "model_type": "tinyfoo",
        "gain": gain,
        "layers": [
            {"norm": "attn_norm", "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
            {"norm": "ffn_norm", "consumers": ["mlp.gate_proj", "mlp.up_proj"]},
        ],
        "keep": [{"norm": "self_attn.q_norm", "reason": "feeds RoPE"}],
    }


class CustomPlan(unittest.TestCase):
    def setUp(self):
        if not os.access(FLASHIFY, os.X_OK):
            self.fail("FLASHIFY=%s is not an executable" % FLASHIFY)
        self.tmp = tempfile.mkdtemp(prefix="flashify-plan-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_made_up_family(self):
        for gain in ("w", "1+w"):
            for flags in ((), ("--keep-norms",)):
                with self.subTest(gain=gain, flags=flags):
                    m = made_up_model(gain, seed=600)
                    tag = "%s-%d" % (gain.replace("+", "p"), len(flags))
                    src = os.path.join(self.tmp, "foo-" + tag)
                    write_checkpoint(m, src)
                    plan = plan_for(gain)
                    pf = os.path.join(self.tmp, "plan-%s.json" % tag)
                    with open(pf, "w") as f:
                        json.dump(plan, f)
                    out = src + "-out"
                    # without the plan: refused, naming the model_type
                    p = convert(self, src, out, *flags, expect_rc=None)
                    self.assertEqual(p.returncode, 2, describe(p))
                    self.assertIn("tinyfoo", p.stderr)
                    self.assertFalse(os.path.exists(out))
                    convert(self, src, out, "--plan", pf, *flags)
                    ex, ck = check_output(self, src, out, keep_norms=bool(flags), plan=plan)
                    self.assertEqual(len(ex.dropped), 5)
                    for i in range(2):
                        k = "model.layers.%d.self_attn.q_norm.weight" % i
                        self.assertEqual(ck.tensors[k].data, m.tensors[k].data)

    # KNOWN CONVERTER BUG (reported to the lead): a --plan consumer with
    # "{e}" expands to zero experts (custom plans have no experts_key), so
    # the experts are silently left unfolded while the norm is dropped.
    # Remove this decorator when fixed ("unexpected success" fails the run).
    def test_made_up_moe_family_with_expert_pattern(self):
        m = build_model("qwen3_moe", dtype="BF16", seed=602, mlp_only_layers=[])
        m.config["model_type"] = "foomoe"
        src = os.path.join(self.tmp, "foomoe")
        write_checkpoint(m, src)
        # "experts_key" is not in the documented format yet; the parser
        # ignores unknown keys, and a fix may read it (or count the experts
        # stored in the checkpoint): either makes this test pass
        plan = {"model_type": "foomoe", "gain": "w", "experts_key": "num_experts",
                "layers": [{"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
                           {"norm": "post_attention_layernorm",
                            "consumers": ["mlp.gate", "mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj"]}],
                "keep": [{"norm": "self_attn.q_norm", "reason": "RoPE"}, {"norm": "self_attn.k_norm", "reason": "RoPE"}]}
        pf = os.path.join(self.tmp, "foomoe.json")
        with open(pf, "w") as f:
            json.dump(plan, f)
        out = src + "-out"
        convert(self, src, out, "--plan", pf)
        ex, ck = check_output(self, src, out, plan=plan)
        self.assertIn("model.layers.2.mlp.experts.2.up_proj.weight", ex.groups[-2][1])
        self.assertEqual(ck.tensors["model.layers.0.mlp.experts.1.down_proj.weight"].data,
                         m.tensors["model.layers.0.mlp.experts.1.down_proj.weight"].data)

    def write_plan(self, name, plan):
        pf = os.path.join(self.tmp, name)
        with open(pf, "w") as f:
            f.write(plan if isinstance(plan, str) else json.dumps(plan))
        return pf

    def test_per_layer_variants_axis_and_gain(self):
        """Consumer sets chosen per layer (layer_types, a config flag), a
        declared absence (no v_proj), 3-D experts read along axis 1, and a
        gain per norm: input_layernorm 1 + w (identity 0), the
        post-attention norm w (identity 1)."""
        for flags in ((), ("--keep-norms",)):
            with self.subTest(flags=flags):
                m = hybrid_model(610)
                src = os.path.join(self.tmp, "hybrid-%d" % len(flags))
                write_checkpoint(m, src)
                pf = self.write_plan("hybrid.json", HYBRID_PLAN)
                out = src + "-out"
                p = convert(self, src, out, "--plan", pf, *flags)
                ex, ck = check_output(self, src, out, keep_norms=bool(flags), plan=HYBRID_PLAN)
                groups = dict(ex.groups)
                self.assertEqual(groups["model.layers.0.input_layernorm.weight"],
                                 ["model.layers.0.linear_attn.in_proj_qkv.weight",
                                  "model.layers.0.linear_attn.in_proj_z.weight"])
                self.assertEqual(groups["model.layers.1.input_layernorm.weight"],
                                 ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"])
                self.assertIn("model.layers.1.mlp.experts.gate_up_proj",
                              groups["model.layers.1.post_attention_layernorm.weight"])
                k = "model.layers.0.linear_attn.norm.weight"
                self.assertEqual(ck.tensors[k].data, m.tensors[k].data)
                if flags:
                    self.assertEqual(set(ck.tensors["model.layers.0.input_layernorm.weight"].values()), {0.0})
                    self.assertEqual(set(ck.tensors["model.layers.0.post_attention_layernorm.weight"].values()), {1.0})
                p = convert(self, src, None, "--plan", pf, "--dry-run")
                self.assertIn("attention_k_eq_v: full-attention layers have no v_proj", p.stdout)

    def test_undeclared_absence_refused(self):
        """Without attention_k_eq_v the full-attention layer must have
        v_proj: its absence is an error naming it, not a silent skip."""
        m = hybrid_model(611, k_eq_v=False)
        src = os.path.join(self.tmp, "hybrid-nov")
        write_checkpoint(m, src)
        p = convert(self, src, src + "-out", "--plan", self.write_plan("h.json", HYBRID_PLAN), expect_rc=2)
        self.assertIn("model.layers.1.self_attn.v_proj.weight", p.stderr)
        self.assertIn("missing", p.stderr)
        self.assertFalse(os.path.exists(src + "-out"))

    def test_strict_plan_json(self):
        """Duplicate keys, unknown keys and ill-typed members are refused,
        naming the member."""
        m = made_up_model("w", seed=612)
        src = os.path.join(self.tmp, "foo-strict")
        write_checkpoint(m, src)
        good = json.dumps(plan_for("w"))
        cases = [
            (good[:-1] + ', "gain": "w"}', "appears twice"),
            (good.replace('"consumers"', '"consumer"', 1), "consumer"),
            (json.dumps(dict(plan_for("w"), flashnorm_marker="yes")), "flashnorm_marker"),
            (json.dumps(dict(plan_for("w"), layers=[{"norm": "attn_norm", "consumers": [{"name": "x", "input": "sideways"}]}])),
             "input"),
            (json.dumps(dict(plan_for("w"), layers=[{"norm": "attn_norm", "consumers": ["self_attn.q_proj"],
                                                    "when": {"weather": "rain"}}])), "weather"),
        ]
        for text, needle in cases:
            with self.subTest(needle=needle):
                p = convert(self, src, src + "-out", "--plan", self.write_plan("s.json", text), expect_rc=2)
                self.assertIn(needle, p.stderr, describe(p))
                self.assertFalse(os.path.exists(src + "-out"))

    def test_bad_plan_refused(self):
        m = made_up_model("w", seed=601)
        src = os.path.join(self.tmp, "foo")
        write_checkpoint(m, src)
        for bad in ({"model_type": "tinyfoo", "gain": "2w", "layers": []},
                    {"model_type": "tinyfoo", "layers": [{"norm": "attn_norm", "consumers": ["self_attn.nope_proj"]}]},
                    "not json"):
            with self.subTest(plan=bad):
                pf = os.path.join(self.tmp, "bad.json")
                with open(pf, "w") as f:
                    f.write(bad if isinstance(bad, str) else json.dumps(bad))
                out = os.path.join(self.tmp, "bad-out")
                p = convert(self, src, out, "--plan", pf, expect_rc=None)
                self.assertIn(p.returncode, (1, 2), describe(p))
                self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
