"""test_config_semantics.py -- config values seen in real checkpoints mean
what transformers makes of them (issue 11, items 11 and 12).

- tie_word_embeddings false (or null, or absent where the class defaults to
  false) without a stored lm_head: the loader would make a random head, so
  there is nothing to be equivalent to: refused.
- null reads as "not tied" (Python tests `if config.tie_word_embeddings`):
  a distinct stored head is folded, never replaced by the embedding.
- a tied config that also stores lm_head.weight: an exact copy is fine
  (and --keep-tied --strict agrees with itself), a differing one is
  refused (transformers 4 and 5 would load different heads).
- counts written as floats (2.0, 2e0) are refused: Python reads a float.
- a weight_map file name with an embedded \u0000 is refused (cJSON cut it
  at the NUL and mapped the tensor to another file); so is a --plan file
  with one, and a plan that both folds and keeps a norm (item 14).
- a wrapper's text_config.model_type that is not a name is refused, not
  read as the class default; so is a layer list a rule reads that is not a
  list of layer indices.
Each case failed on the code before the fix.
"""

import json
import os
import shutil
import tempfile
import unittest

from fixtures import build_model, write_checkpoint, read_checkpoint, float_tensor, decode_values
from harness import check_output, convert, run, describe


class ConfigSemantics(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-cfgsem-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, model, edit=None, raw=None):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src)
        path = os.path.join(src, "config.json")
        if edit:
            with open(path) as f:
                cfg = json.load(f)
            edit(cfg)
            with open(path, "w") as f:
                json.dump(cfg, f, indent=2)
        if raw:
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(raw(text))
        return src

    def refused(self, src, *needles):
        out = os.path.join(self.tmp, os.path.basename(src) + "-out")
        p = convert(self, src, out, expect_rc=2)
        for n in needles:
            self.assertIn(n, p.stderr, describe(p))
        self.assertFalse(os.path.exists(out))
        return p

    def test_not_tied_without_a_head_is_refused(self):
        def set_tie(value):
            return lambda c: c.__setitem__("tie_word_embeddings", value)
        for name, edit, spelled in (("false", set_tie(False), "false"),
                                    ("null", set_tie(None), "null"),
                                    ("absent", lambda c: c.pop("tie_word_embeddings"), "absent")):
            with self.subTest(tie=name):
                m = build_model("llama", dtype="BF16", tied=True, seed=81)   # no lm_head stored
                src = self.write("nohead-" + name, m, edit)
                self.refused(src, "tie_word_embeddings is " + spelled, "random output head")

    def test_null_never_replaces_a_stored_head(self):
        # Gemma's class ties by default; with null the loader does not tie,
        # so the distinct stored head is the one to fold.
        m = build_model("gemma", dtype="F32", tied=False, seed=82)
        src = self.write("null-head", m, lambda c: c.__setitem__("tie_word_embeddings", None))
        out = os.path.join(self.tmp, "null-head-out")
        convert(self, src, out)
        ex, ck = check_output(self, src, out)
        self.assertFalse(ex.untie)
        self.assertIn("tie_word_embeddings", ck.config)
        self.assertIsNone(ck.config["tie_word_embeddings"])
        # the folded head is the stored head times the gain, not the embedding
        src_ck = read_checkpoint(src)
        self.assertNotEqual(src_ck.tensors["lm_head.weight"].data,
                            src_ck.tensors["model.embed_tokens.weight"].data)
        p = run(["verify", src, out])
        self.assertEqual(p.returncode, 0, describe(p))

    def tied_with_copy(self, name, differ):
        m = build_model("llama", dtype="BF16", tied=True, seed=83)
        e = m.tensors["model.embed_tokens.weight"]
        if differ:
            vals = decode_values(e.dtype, e.data)
            vals[5] = vals[5] * 2 + 0.5
            m.tensors["lm_head.weight"] = float_tensor(e.dtype, e.shape, vals)
        else:
            m.tensors["lm_head.weight"] = e
        return self.write(name, m)

    def test_tied_with_an_exact_copy(self):
        src = self.tied_with_copy("copy", differ=False)
        out = os.path.join(self.tmp, "copy-out")
        convert(self, src, out, "--strict")
        ex, ck = check_output(self, src, out)
        self.assertTrue(ex.untie)
        self.assertIs(ck.config["tie_word_embeddings"], False)
        # --keep-tied: the writer keeps the copy and the norm, and --strict
        # checks against the same definition of "tied"
        out2 = os.path.join(self.tmp, "copy-kt")
        convert(self, src, out2, "--keep-tied", "--strict")
        check_output(self, src, out2, keep_tied=True)

    def test_tied_with_a_differing_head_is_refused(self):
        src = self.tied_with_copy("differ", differ=True)
        self.refused(src, "lm_head.weight", "holds other values", "transformers 4")

    def test_counts_written_as_floats(self):
        for spelling in ("2.0", "2e0", "20E-1"):
            with self.subTest(spelling=spelling):
                m = build_model("llama", dtype="BF16", tied=False, seed=84, layers=2)
                src = self.write("float-" + spelling, m, raw=lambda t: t.replace(
                    '"num_hidden_layers": 2', '"num_hidden_layers": ' + spelling))
                self.refused(src, "num_hidden_layers", "float")
        # a float elsewhere (rope_theta 10000.0) is fine
        m = build_model("llama", dtype="BF16", tied=False, seed=85)
        src = self.write("float-ok", m)
        out = os.path.join(self.tmp, "float-ok-out")
        convert(self, src, out)

    def test_nested_count_written_as_float(self):
        m = build_model("gemma3", dtype="BF16", seed=86)
        src = self.write("nested-float", m, raw=lambda t: t.replace(
            '"num_hidden_layers": 2', '"num_hidden_layers": 2.0'))
        with open(os.path.join(src, "config.json")) as f:
            self.assertIn('"num_hidden_layers": 2.0', f.read())
        self.refused(src, "num_hidden_layers", "float")

    def test_text_type_that_is_not_a_name(self):
        """A wrapper's text_config.model_type that is a number, an object or
        empty must not fall back to the class default (LlavaConfig would
        fail on it); null reads as absent (the default applies)."""
        for name, value in (("number", 5), ("object", {}), ("empty", "")):
            with self.subTest(value=name):
                m = build_model("llava", dtype="BF16", seed=88)
                src = self.write("text-type-" + name, m,
                                 edit=lambda c: c["text_config"].__setitem__("model_type", value))
                self.refused(src, "text_config", "model_type")
        m = build_model("llava", dtype="BF16", seed=89)
        src = self.write("text-type-null", m, edit=lambda c: c["text_config"].__setitem__("model_type", None))
        convert(self, src, os.path.join(self.tmp, "text-type-null-out"))

    def test_layer_list_that_is_not_one(self):
        """A layer list a rule reads (Mllama's cross_attention_layers, LFM2's
        full_attn_idxs) that is not a list of layer indices is refused by
        name, not left to the rule for the other layers."""
        cases = [("mllama", lambda c: c["text_config"].__setitem__("cross_attention_layers", "3,8"),
                  "cross_attention_layers"),
                 ("mllama", lambda c: c["text_config"].__setitem__("cross_attention_layers", [0.5]),
                  "cross_attention_layers"),
                 ("lfm2", lambda c: (c.pop("layer_types", None), c.__setitem__("full_attn_idxs", [10 ** 18])),
                  "full_attn_idxs")]
        for i, (fam, edit, key) in enumerate(cases):
            with self.subTest(family=fam, case=i):
                src = self.write("list-%d" % i, build_model(fam, dtype="BF16", seed=90 + i), edit=edit)
                self.refused(src, key, "layer indices")

    def test_nul_in_weight_map(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=87)
        src = os.path.join(self.tmp, "nul")
        files = write_checkpoint(m, src, shards=2)
        path = os.path.join(src, "model.safetensors.index.json")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace('"%s"' % files[0], '"%s\\u0000.evil"' % files[0], 1))
        self.refused(src, "model.safetensors.index.json", "NUL")

    def custom(self, name, plan):
        m = build_model("llama", dtype="BF16", tied=False, seed=88)
        m.config["model_type"] = "mymodel"
        src = self.write(name, m)
        plan_path = os.path.join(self.tmp, name + ".plan.json")
        with open(plan_path, "w") as f:
            f.write(plan)
        return src, plan_path

    PLAN = {"model_type": "mymodel", "gain": "w",
            "layers": [{"norm": "input_layernorm",
                        "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
                       {"norm": "post_attention_layernorm", "consumers": ["mlp.gate_proj", "mlp.up_proj"]}]}

    def test_plan_that_folds_and_keeps_a_norm(self):
        plan = dict(self.PLAN, keep=[{"norm": "input_layernorm", "reason": "kept on purpose"}])
        src, path = self.custom("foldkeep", json.dumps(plan))
        out = os.path.join(self.tmp, "foldkeep-out")
        p = convert(self, src, out, "--plan", path, expect_rc=2)
        self.assertIn("both folded and kept", p.stderr)
        self.assertFalse(os.path.exists(out))

    def test_plan_with_a_nul(self):
        text = json.dumps(self.PLAN).replace('"input_layernorm"', '"input_layernorm\\u0000x"', 1)
        src, path = self.custom("plannul", text)
        out = os.path.join(self.tmp, "plannul-out")
        p = convert(self, src, out, "--plan", path, expect_rc=2)
        self.assertIn("NUL", p.stderr)


if __name__ == "__main__":
    unittest.main()
