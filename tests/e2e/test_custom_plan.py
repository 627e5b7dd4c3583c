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

from fixtures import build_model, float_tensor, write_checkpoint  # noqa: E402
from harness import FLASHIFY, check_output, convert, describe  # noqa: E402


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
