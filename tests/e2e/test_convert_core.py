"""End-to-end tests of the core converter (issue 2) on real directories.

Every output tensor is checked against expect.py, a naive exact
expectation (rational arithmetic, one rounding), and everything else byte
for byte.  Runs $FLASHIFY (the built binary); Python standard library only.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import struct
import sys
import tempfile
import unittest
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures import (FLOAT_FORMATS, Tensor, bf16_bits_from_double, build_model,  # noqa: E402
                      decode_values, float_tensor, read_checkpoint, read_safetensors,
                      round_fraction_bits, safetensors_bytes, tree_digest, write_checkpoint,
                      FormatError)
from expect import expected, fold, gain_ratios  # noqa: E402
from harness import FLASHIFY, ROOT, check_output, convert, describe, run  # noqa: E402


class FixtureSelfCheck(unittest.TestCase):
    """The test tools themselves (no binary needed): if these are wrong,
    nothing else means anything."""

    def test_rounding_agrees_with_struct(self):
        import random
        rng = random.Random(7)
        for _ in range(20000):
            x = math.ldexp(rng.uniform(-1, 1), rng.randint(-150, 20))
            for fmt, code, ucode in (("F32", "f", "I"), ("F16", "e", "H")):
                try:
                    ref = struct.unpack("<" + ucode, struct.pack("<" + code, x))[0]
                except OverflowError:
                    continue
                self.assertEqual(round_fraction_bits(x, fmt), ref, (fmt, x))
            self.assertEqual(round_fraction_bits(x, "BF16"), bf16_bits_from_double(x), x)

    def test_bf16_ties_to_even(self):
        self.assertEqual(round_fraction_bits(1 + 2 ** -8, "BF16"), 0x3F80)
        self.assertEqual(round_fraction_bits(1 + 3 * 2 ** -8, "BF16"), 0x3F82)
        self.assertEqual(round_fraction_bits(-(1 + Fraction(1, 2 ** 8) + Fraction(1, 2 ** 70)), "BF16"), 0xBF81)

    def test_fold_is_exact_product_rounded_once(self):
        # F32 x F32 products are exact in double, so struct's rounding of the
        # double product is a second opinion on fold()
        m = float_tensor("F32", (3, 4), [0.1 * k - 0.5 for k in range(12)])
        g = float_tensor("F32", (4,), [1.7, 0.3, 2.2, 0.9])
        f = fold(m, gain_ratios(g, "w"))
        want = [struct.unpack("<f", struct.pack("<f", a * b))[0]
                for a, b in zip(m.values(), g.values() * 3)]
        self.assertEqual(f.values(), want)

    def test_reader_reads_writer_and_rejects_holes(self):
        ts = {"a": float_tensor("F32", (2,), [1.0, 2.0]), "b": float_tensor("BF16", (3,), [1, 2, 3])}
        raw = safetensors_bytes(ts, {"x": "a"})
        self.assertEqual(struct.unpack("<Q", raw[:8])[0] % 8, 0)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.safetensors")
            with open(p, "wb") as f:
                f.write(raw)
            meta, back = read_safetensors(p, strict=True)
            self.assertEqual(meta, {"format": "pt", "x": "a"})
            self.assertEqual({k: (t.dtype, t.shape, t.data) for k, t in back.items()},
                             {k: (t.dtype, t.shape, t.data) for k, t in ts.items()})
            with open(p, "wb") as f:
                f.write(raw + b"\0")
            with self.assertRaises(FormatError):
                read_safetensors(p)


def setUpModule():
    if not os.access(FLASHIFY, os.X_OK):
        raise RuntimeError("FLASHIFY=%s is not an executable" % FLASHIFY)


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-e2e-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def fixture(self, name, model, **kw):
        d = os.path.join(self.tmp, name)
        write_checkpoint(model, d, **kw)
        return d

    def out(self, name):
        return os.path.join(self.tmp, name)

    def roundtrip(self, model, name="m", flags=(), keep_tied=False, keep_norms=False, **kw):
        src = self.fixture(name, model, **kw)
        out = self.out(name + "-out")
        p = convert(self, src, out, *flags)
        ex, ck = check_output(self, src, out, keep_tied=keep_tied, keep_norms=keep_norms)
        return src, out, p, ex, ck


class Stories(Base):
    """The bundled real model (Llama, tied, trained norms)."""

    def _stories(self, sub):
        src = os.path.join(ROOT, "examples", sub)
        out = self.out(sub + "-FlashNorm")
        p = convert(self, src, out)
        ex, ck = check_output(self, src, out)
        self.assertTrue(ex.untie and ex.marker)
        self.assertIn("lm_head.weight", ck.tensors)
        self.assertFalse(any("layernorm" in k or k.endswith(".norm.weight") for k in ck.tensors))
        n_src = len(read_checkpoint(src).tensors)
        self.assertEqual(len(ck.tensors), n_src - 11 + 1)   # 11 norms dropped, lm_head added
        return ck

    def test_stories260K_f32(self):
        self._stories("stories260K")

    def test_stories260K_bf16(self):
        self._stories("stories260K-bf16")


class LlamaFixtures(Base):
    def test_dtypes_tied_and_untied(self):
        for dt in ("F32", "BF16", "F16"):
            for tied in (True, False):
                with self.subTest(dtype=dt, tied=tied):
                    m = build_model("llama", dtype=dt, tied=tied, seed=3, inv_freq=True)
                    _, _, p, ex, ck = self.roundtrip(m, "llama-%s-%d" % (dt, tied))
                    self.assertEqual(ex.untie, tied)
                    self.assertTrue(ck.config["flashnorm_folded"] is True and ck.config["flash_norm"] is True)
                    self.assertIs(ck.config["tie_word_embeddings"], False)
                    if tied:
                        self.assertIn("lm_head", p.stderr, "untying must be said on stderr")

    def test_f32_norms_bf16_weights(self):
        m = build_model("llama", dtype="BF16", norm_dtype="F32", tied=False, seed=4)
        _, _, _, ex, ck = self.roundtrip(m, "mixed")
        self.assertEqual(ck.tensors["model.layers.0.self_attn.q_proj.weight"].dtype, "BF16")

    def test_mixed_and_f64_dtypes(self):
        for fam in ("llama", "gemma"):
            for dt, nd in (("F64", "F64"), ("BF16", "F64"), ("F32", "F64"), ("F64", "F32"),
                           ("F16", "F32"), ("F32", "BF16"), ("BF16", "F16")):
                with self.subTest(family=fam, dtype=dt, norm_dtype=nd):
                    m = build_model(fam, dtype=dt, norm_dtype=nd, tied=False, seed=35)
                    self.roundtrip(m, "%s-%s-%s" % (fam, dt, nd))

    # With an F64 norm ("wide"), rounding W*w before adding W is not
    # absorbed under cancellation (w near -1): the result must still be the
    # once-rounded W*(1+w).
    def test_gemma_f64_norm_cancellation(self):
        m = build_model("gemma", dtype="BF16", norm_dtype="F64", tied=False, seed=36)
        q, n = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight"
        v = m.tensors[q].values()
        v[7] = 1 + 2 ** -7
        m.tensors[q] = float_tensor("BF16", m.tensors[q].shape, v)
        g = m.tensors[n].values()
        g[7] = -1 + 2 ** -53
        m.tensors[n] = float_tensor("F64", (len(g),), g)
        _, _, _, ex, ck = self.roundtrip(m, "cancel")
        self.assertEqual(ck.tensors[q].values()[7], (1 + 2 ** -7) * 2 ** -53)

    def test_three_shards_norms_apart_from_consumers(self):
        for tied in (False, True):
            with self.subTest(tied=tied):
                m = build_model("llama", dtype="BF16", tied=tied, seed=5)
                src = self.fixture("sh%d" % tied, m, shards=3)
                s = read_checkpoint(src)
                self.assertEqual(len(s.files), 3)
                # the fixture really separates a norm from its consumers
                self.assertNotEqual(s.stored["model.layers.0.input_layernorm.weight"],
                                    s.stored["model.layers.0.self_attn.q_proj.weight"])
                self.assertNotEqual(s.stored["model.norm.weight"], s.stored["model.embed_tokens.weight"])
                out = self.out("sh%d-out" % tied)
                convert(self, src, out)
                ex, ck = check_output(self, src, out)
                self.assertIsNotNone(ck.index)
                if tied:
                    self.assertIn("lm_head.weight", ck.index["weight_map"])

    def test_norms_and_consumers_in_different_shards_custom(self):
        # every norm alone in the last shard, all matrices in the first two
        m = build_model("llama", dtype="F16", tied=False, seed=6)
        src = self.fixture("apart", m, shards=3,
                           shard_of=lambda k: 2 if "norm" in k else (0 if "layers.0" in k else 1))
        out = self.out("apart-out")
        convert(self, src, out)
        check_output(self, src, out)

    def test_qwen2_biases_untouched(self):
        m = build_model("qwen2", dtype="BF16", tied=True, seed=7)
        src, out, _, ex, ck = self.roundtrip(m, "qwen2")
        s = read_checkpoint(src)
        for k in s.tensors:
            if k.endswith(".bias"):
                self.assertEqual(ck.tensors[k].data, s.tensors[k].data, k)

    def test_aliased_tied_embedding(self):
        for alias in ("embed", "head"):
            with self.subTest(stored=alias):
                m = build_model("llama", dtype="BF16", tied=True, seed=8)
                src = self.fixture("alias-" + alias, m, alias=alias)
                s = read_checkpoint(src)
                self.assertEqual(len(s.aliases), 1)
                out = self.out("alias-%s-out" % alias)
                convert(self, src, out)
                ex, ck = check_output(self, src, out)
                self.assertTrue(ex.untie)
                # both are real, different tensors now
                self.assertIn("lm_head.weight", ck.stored)
                self.assertIn("model.embed_tokens.weight", ck.stored)
                out2 = self.out("alias-%s-kt" % alias)
                convert(self, src, out2, "--keep-tied")
                ex, ck = check_output(self, src, out2, keep_tied=True)
                self.assertEqual(ck.tensors["lm_head.weight"].data, s.tensors["model.embed_tokens.weight"].data)


class TieEdgeCases(Base):
    def test_tie_key_absent(self):
        # no lm_head and no tie_word_embeddings key: the config class default
        # decides (GemmaConfig: tied), so the output must say false explicitly.
        # (LlamaConfig defaults to false: see test_config_semantics.py.)
        m = build_model("gemma", dtype="BF16", tied=True, seed=30)
        del m.config["tie_word_embeddings"]
        src, out, p, ex, ck = self.roundtrip(m, "notiekey")
        self.assertTrue(ex.untie)
        self.assertIs(ck.config.get("tie_word_embeddings"), False)

    def test_sharded_alias(self):
        for alias in ("embed", "head"):
            with self.subTest(stored=alias):
                m = build_model("llama", dtype="BF16", tied=True, seed=31)
                src = self.fixture("shal-" + alias, m, shards=3, alias=alias)
                out = self.out("shal-%s-out" % alias)
                convert(self, src, out)
                ex, ck = check_output(self, src, out)
                self.assertIn("lm_head.weight", ck.index["weight_map"])
                self.assertIn("model.embed_tokens.weight", ck.index["weight_map"])

    def test_default_output_name_with_trailing_slash(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=32)
        src = self.fixture("Slashy", m)
        cwd = os.path.join(self.tmp, "cwd")
        os.makedirs(cwd)
        convert(self, src + "/", None, cwd=cwd)
        self.assertEqual(os.listdir(cwd), ["Slashy-FlashNorm"])
        check_output(self, src, os.path.join(cwd, "Slashy-FlashNorm"))


def front_matter(card):
    """{key: value or [items]} of the YAML front matter flashify writes:
    "key: scalar" or "key:" then "- scalar" lines, scalars plain or
    double-quoted (JSON-compatible escapes)."""
    assert card.startswith("---\n"), card[:80]
    text = card[4:card.index("\n---\n", 3)]
    out, key = {}, None

    def scalar(v):
        return json.loads(v) if v.startswith('"') else v
    for line in text.split("\n"):
        if line.startswith("- "):
            out[key].append(scalar(line[2:]))
        else:
            k, _, v = line.partition(": ") if ": " in line else (line.rstrip(":"), "", "")
            assert k not in out, "key %r twice" % k
            key = k
            out[k] = scalar(v) if v else []
    return out


class OtherFilesAndCard(Base):
    """Issue 11 items 6, 10, 13: what is copied with the model, and the
    model card's metadata."""

    def test_files_in_subdirectories_are_copied(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=41)
        src = self.fixture("st", m)
        dense = safetensors_bytes({"linear.weight": float_tensor("F32", (2, 2), [1.5, -2, 0.25, 4])})
        files = {"modules.json": b'[{"idx": 0, "path": ""}, {"idx": 1, "path": "1_Pooling"}]',
                 "config_sentence_transformers.json": b'{"prompts": {}}',
                 "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
                 "2_Dense/config.json": b'{"in_features": 2}',
                 "2_Dense/model.safetensors": dense,
                 "docs/README.md": b"# the docs\n",
                 "consolidated.safetensors": dense,           # top level: other weights, not copied
                 "2_Dense/pytorch_model.bin": b"PK\x03\x04"}  # another format, not copied
        for rel, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(src, rel)) or src, exist_ok=True)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        out = self.out("st-out")
        convert(self, src, out)
        check_output(self, src, out)
        got = tree_digest(out)
        for rel, data in files.items():
            if rel in ("consolidated.safetensors", "2_Dense/pytorch_model.bin"):
                self.assertNotIn(rel, got)
            else:
                self.assertEqual(got.get(rel), hashlib.sha256(data).hexdigest(), rel)

    def test_symlinked_directories_walked_once(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=42)
        src = self.fixture("loop", m)
        os.makedirs(os.path.join(src, "a", "b"))
        with open(os.path.join(src, "a", "b", "x.txt"), "w") as f:
            f.write("x")
        os.symlink("..", os.path.join(src, "a", "b", "up"))        # a loop
        os.symlink("../a", os.path.join(src, "a", "again"))        # another
        os.symlink(".", os.path.join(src, "self"))                 # the checkpoint itself
        out = self.out("loop-out")
        convert(self, src, out)
        got = sorted(k for k in tree_digest(out) if "/" in k)
        self.assertEqual(got, ["a/b/x.txt"])
        self.assertFalse(os.path.lexists(os.path.join(out, "self")))

    def test_base_model_of_a_cache_snapshot(self):
        """A conversion of a Hub model (or of its snapshot in the cache)
        names it by its repo id, not by the commit."""
        m = build_model("llama", dtype="BF16", tied=False, seed=43)
        src = self.fixture(os.path.join("hub", "models--org--tiny-model", "snapshots", "0123abcd"), m)
        out = self.out("snap-out")
        convert(self, src, out)
        with open(os.path.join(out, "README.md")) as f:
            card = f.read()
        self.assertEqual(front_matter(card)["base_model"], "org/tiny-model")
        self.assertIn("(https://huggingface.co/org/tiny-model)", card)

    def test_front_matter_cannot_be_injected(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=44)
        name = 'evil"\nlicense: stolen\n---\n# x: \\ \x7f'
        src = self.fixture(name, m)
        out = self.out("evil-out")
        convert(self, src, out)
        with open(os.path.join(out, "README.md")) as f:
            fm = front_matter(f.read())
        self.assertEqual(sorted(fm), ["base_model", "tags"])
        self.assertEqual(fm["base_model"], name)

    def test_source_card_metadata_is_inherited(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=45)
        src = self.fixture("lic", m)
        with open(os.path.join(src, "README.md"), "w") as f:
            f.write("---\nlicense: apache-2.0\nlanguage:\n- en\n- 'fr'\npipeline_tag: text-generation\n"
                    "base_model: someone/else\ntags:\n- x\nlicense_link: \"https://example.com/L\"\n"
                    "library_name: {evil: 1}\n---\n\n# The source\n")
        out = self.out("lic-out")
        convert(self, src, out)
        with open(os.path.join(out, "README.md")) as f:
            card = f.read()
        fm = front_matter(card)
        self.assertEqual(fm["license"], "apache-2.0")
        self.assertEqual(fm["language"], ["en", "fr"])
        self.assertEqual(fm["pipeline_tag"], "text-generation")
        self.assertEqual(fm["license_link"], "https://example.com/L")
        self.assertEqual(fm["base_model"], "lic")
        self.assertNotIn("library_name", fm, "a flow mapping is not a scalar: left out")
        self.assertIn("flashnorm", fm["tags"])
        self.assertIn("model card", card.split("---", 2)[2])


class Options(Base):
    def test_keep_tied(self):
        m = build_model("llama", dtype="BF16", tied=True, seed=9)
        src = self.fixture("kt", m)
        out = self.out("kt-out")
        p = convert(self, src, out, "--keep-tied")
        ex, ck = check_output(self, src, out, keep_tied=True)
        self.assertNotIn("lm_head.weight", ck.tensors)
        self.assertIn("model.norm.weight", ck.tensors)
        self.assertEqual(ck.tensors["model.norm.weight"].data, m.tensors["model.norm.weight"].data)
        self.assertNotIn("flashnorm_folded", ck.config)
        self.assertNotIn("flash_norm", ck.config)
        self.assertIs(ck.config["tie_word_embeddings"], True)
        self.assertNotIn("model.layers.0.input_layernorm.weight", ck.tensors)
        self.assertTrue(p.stderr.strip(), "--keep-tied must say on stderr that no marker is written")

    def test_keep_norms_identity(self):
        for dt in ("BF16", "F32"):
            with self.subTest(dtype=dt):
                m = build_model("llama", dtype=dt, tied=True, seed=10)
                src = self.fixture("kn" + dt, m)
                out = self.out("kn%s-out" % dt)
                convert(self, src, out, "--keep-norms")
                ex, ck = check_output(self, src, out, keep_norms=True)
                for k in ex.dropped:
                    self.assertEqual(set(ck.tensors[k].values()), {1.0}, k)
                    self.assertEqual(ck.tensors[k].dtype, m.tensors[k].dtype)

    def test_keep_tied_and_keep_norms(self):
        m = build_model("llama", dtype="F16", tied=True, seed=33)
        src = self.fixture("ktkn", m)
        out = self.out("ktkn-out")
        convert(self, src, out, "--keep-tied", "--keep-norms")
        ex, ck = check_output(self, src, out, keep_tied=True, keep_norms=True)
        # the final norm is kept as it is (not written as the identity)
        self.assertEqual(ck.tensors["model.norm.weight"].data, m.tensors["model.norm.weight"].data)
        self.assertEqual(set(ck.tensors["model.layers.0.input_layernorm.weight"].values()), {1.0})

    def test_dry_run_with_force_keeps_existing_output(self):
        # --force replaces only an earlier flashify output: the dry run
        # says the real run would refuse this one (issue 11 item 2).
        m = build_model("llama", dtype="BF16", tied=False, seed=34)
        src = self.fixture("dryf", m)
        out = self.out("dryf-out")
        os.makedirs(out)
        with open(os.path.join(out, "precious.txt"), "w") as f:
            f.write("keep me")
        p = convert(self, src, out, "--dry-run", "--force")
        self.assertIn("would refuse: ", p.stdout)
        self.assertIn("not a flashify model card", p.stdout)
        self.assertIn("input_layernorm", p.stdout, "the plan is printed first")
        self.assertEqual(os.listdir(out), ["precious.txt"])

    def test_converting_an_output_again_is_refused(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=37)
        src = self.fixture("twice", m)
        out = self.out("twice-out")
        convert(self, src, out)
        p = convert(self, out, self.out("twice-again"), expect_rc=2)
        self.assertIn("FlashNorm", p.stderr)
        self.assertFalse(os.path.exists(self.out("twice-again")))

    def test_dry_run_writes_nothing(self):
        m = build_model("llama", dtype="BF16", tied=True, seed=11)
        src = self.fixture("dry", m)
        out = self.out("dry-out")
        before = sorted(os.listdir(self.tmp))
        p = convert(self, src, out, "--dry-run")
        self.assertFalse(os.path.exists(out), "--dry-run created the output")
        self.assertEqual(sorted(os.listdir(self.tmp)), before, "--dry-run left files behind")
        text = p.stdout + p.stderr
        for word in ("input_layernorm", "q_proj", "post_attention_layernorm", "gate_proj", "lm_head"):
            self.assertIn(word, text, "the plan printed by --dry-run should mention " + word)

    def test_existing_output_refused_then_forced(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=12)
        src = self.fixture("ex", m)
        out = self.out("ex-out")
        os.makedirs(out)
        with open(os.path.join(out, "keep.txt"), "w") as f:
            f.write("mine")
        p = convert(self, src, out, expect_rc=1)
        self.assertIn("already exists", p.stderr)
        # not an earlier flashify output: --force refuses it too
        p = convert(self, src, out, "--force", expect_rc=1)
        self.assertIn("--force replaces only", p.stderr)
        self.assertEqual(os.listdir(out), ["keep.txt"], "refused run touched the existing output")
        os.remove(os.path.join(out, "keep.txt"))
        convert(self, src, out, "--force")          # an empty directory
        check_output(self, src, out)
        other = build_model("llama", dtype="BF16", tied=False, seed=99)
        src2 = self.fixture("ex2", other)
        convert(self, src2, out, "--force")         # an earlier flashify output
        check_output(self, src2, out)
        # an existing regular file is refused too
        fpath = self.out("a-file")
        with open(fpath, "w") as f:
            f.write("x")
        p = convert(self, src, fpath, expect_rc=1)
        p = convert(self, src, fpath, "--force", expect_rc=1)
        self.assertIn("not a directory", p.stderr)

    def test_output_inside_source_refused(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=13)
        src = self.fixture("in", m)
        link = os.path.join(self.tmp, "link-to-in")
        os.symlink(src, link)
        up = os.path.join(src, "..", os.path.basename(src))
        for out in (src, os.path.join(src, "sub"), os.path.join(src, "sub", "deeper"), src + "/.",
                    up, os.path.join(up, "sub"), link, os.path.join(link, "sub")):
            with self.subTest(out=out):
                before = tree_digest(src)
                p = convert(self, src, out, "--force", expect_rc=None)
                self.assertIn(p.returncode, (1, 2), describe(p))
                self.assertEqual(tree_digest(src), before)
                self.assertFalse(os.path.exists(os.path.join(src, "sub")))

    def test_other_files_copied_weights_in_other_formats_not(self):
        m = build_model("llama", dtype="BF16", tied=True, seed=14)
        src = self.fixture("files", m, forbidden_files=True)
        out = self.out("files-out")
        convert(self, src, out)
        check_output(self, src, out)
        for rel in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model"):
            self.assertTrue(os.path.exists(os.path.join(out, rel)), rel)
        for rel in ("pytorch_model.bin", "original", "model.gguf"):
            self.assertFalse(os.path.exists(os.path.join(out, rel)), rel)

    def test_default_output_path(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=15)
        src = self.fixture("TinyLlama", m)
        cwd = os.path.join(self.tmp, "cwd")
        os.makedirs(cwd)
        convert(self, src, None, cwd=cwd)
        out = os.path.join(cwd, "TinyLlama-FlashNorm")
        self.assertTrue(os.path.isdir(out), os.listdir(cwd))
        check_output(self, src, out)

    def test_failure_leaves_nothing(self):
        # a non-finite product (F16 overflow) is refused, nothing is written
        m = build_model("llama", dtype="F16", tied=False, seed=16)
        k = "model.layers.1.mlp.up_proj.weight"
        vals = m.tensors[k].values()
        vals[5] = 60000.0
        m.tensors[k] = float_tensor("F16", m.tensors[k].shape, vals)
        g = m.tensors["model.layers.1.post_attention_layernorm.weight"].values()
        g[5] = 2.0
        m.tensors["model.layers.1.post_attention_layernorm.weight"] = float_tensor("F16", (len(g),), g)
        src = self.fixture("inf", m)
        out = self.out("inf-out")
        before = sorted(os.listdir(self.tmp))
        p = convert(self, src, out, expect_rc=None)
        self.assertEqual(p.returncode, 2, describe(p))
        self.assertIn("up_proj", p.stderr, "the error should name the tensor")
        self.assertEqual(sorted(os.listdir(self.tmp)), before, "a failed run left files behind")

    def test_quantized_consumer_refused(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=17)
        k = "model.layers.0.self_attn.k_proj.weight"
        m.tensors[k] = Tensor("I8", m.tensors[k].shape, bytes(len(m.tensors[k].data) // 2))
        src = self.fixture("i8", m)
        out = self.out("i8-out")
        p = convert(self, src, out, expect_rc=None)
        self.assertEqual(p.returncode, 2, describe(p))
        self.assertIn("k_proj", p.stderr)
        self.assertFalse(os.path.exists(out))

    def test_missing_or_mismatched_consumer_refused(self):
        for what in ("missing", "shape"):
            with self.subTest(what=what):
                m = build_model("llama", dtype="BF16", tied=False, seed=18)
                k = "model.layers.1.mlp.gate_proj.weight"
                if what == "missing":
                    del m.tensors[k]
                else:
                    m.tensors[k] = float_tensor("BF16", (32, 48), [0.5] * (32 * 48))
                src = self.fixture("bad-" + what, m)
                out = self.out("bad-%s-out" % what)
                p = convert(self, src, out, expect_rc=None)
                self.assertEqual(p.returncode, 2, describe(p))
                self.assertIn("gate_proj", p.stderr)
                self.assertFalse(os.path.exists(out))

    def test_unknown_model_type_refused(self):
        m = build_model("llama", dtype="BF16", tied=False, seed=19)
        m.config["model_type"] = "frobnicator"
        src = self.fixture("unk", m)
        out = self.out("unk-out")
        p = convert(self, src, out, expect_rc=None)
        self.assertEqual(p.returncode, 2, describe(p))
        self.assertIn("frobnicator", p.stderr)
        for t in ("llama", "gemma2", "deepseek_v3", "qwen3_moe"):
            self.assertIn(t, p.stderr, "the refusal should list the supported model_types")
        self.assertFalse(os.path.exists(out))


class ModelCard(Base):
    def test_card_rows_not_repeated_per_layer(self):
        # the card says what was folded and kept; a row per layer with the
        # same {i} pattern is repetition, not information
        m = build_model("llama", dtype="BF16", tied=True, layers=3, seed=22)
        src = self.fixture("card", m)
        out = self.out("card-out")
        convert(self, src, out)
        with open(os.path.join(out, "README.md")) as f:
            rows = [l for l in f.read().splitlines() if l.startswith("| `")]
        self.assertTrue(rows, "the card has no table of folded norms")
        dup = sorted({r for r in rows if rows.count(r) > 1})
        self.assertEqual(dup, [], "model card repeats table rows")


class Cli(Base):
    def test_help_version_usage(self):
        p = run(["--help"])
        self.assertEqual(p.returncode, 0, describe(p))
        for opt in ("--keep-tied", "--keep-norms", "--force", "--dry-run", "inspect", "-o"):
            self.assertIn(opt, p.stdout + p.stderr)
        p = run(["--version"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertRegex(p.stdout + p.stderr, r"\d+\.\d+\.\d+")
        self.assertEqual(run([]).returncode, 1)
        self.assertEqual(run(["--no-such-option", "x"]).returncode, 1)
        p = run([os.path.join(self.tmp, "does-not-exist"), "-o", self.out("x")])
        self.assertIn(p.returncode, (2, 5), describe(p))
        self.assertFalse(os.path.exists(self.out("x")))

    def test_inspect(self):
        m = build_model("llama", dtype="BF16", tied=True, seed=20)
        src = self.fixture("insp", m)
        before = tree_digest(self.tmp)
        p = run(["inspect", src])
        self.assertEqual(p.returncode, 0, describe(p))
        for word in ("model.layers.1.self_attn.q_proj.weight", "BF16", "input_layernorm"):
            self.assertIn(word, p.stdout + p.stderr)
        self.assertEqual(tree_digest(self.tmp), before, "inspect wrote something")

    def test_inspect_and_verify_exit_status(self):
        """Issue 11 item 17: no fold plan is exit 2; a failed write of the
        results to stdout is an error."""
        m = build_model("llama", dtype="BF16", tied=False, seed=22)
        m.config["model_type"] = "unknown_family"
        src = self.fixture("noplan", m)
        p = run(["inspect", src])
        self.assertEqual(p.returncode, 2, describe(p))
        self.assertIn("no fold plan", p.stdout)
        good = self.fixture("good", build_model("llama", dtype="BF16", tied=False, seed=23))
        out = self.out("good-out")
        convert(self, good, out)
        for args in (["inspect", good], ["verify", good, out]):
            with open("/dev/full", "w") as full:
                q = subprocess.run([FLASHIFY] + args, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(q.returncode, 5, (args, q.stderr))
            self.assertIn("standard output", q.stderr)

    def test_dry_run_reports_what_the_run_would_refuse(self):
        """Issue 11 item 19: the dry run makes every check the real run
        makes before writing, and says on stdout what it would refuse."""
        m = build_model("llama", dtype="BF16", tied=False, seed=24)
        src = self.fixture("dr", m)
        out = self.out("dr-out")
        os.makedirs(out)
        p = convert(self, src, out, "--dry-run")
        self.assertRegex(p.stdout, "would refuse: .*already exists")
        self.assertIn("fold plan", p.stdout)
        os.rmdir(out)
        p = convert(self, src, out, "--dry-run", "--strict")
        self.assertIn("--dry-run does not run --strict", p.stderr)
        self.assertIn("would write", p.stdout)
        os.chmod(os.path.join(src, "tokenizer.json"), 0)
        if not os.access(os.path.join(src, "tokenizer.json"), os.R_OK):   # not as root
            p = convert(self, src, out, "--dry-run")
            self.assertRegex(p.stdout, "would refuse: .*tokenizer.json")
        os.chmod(os.path.join(src, "tokenizer.json"), 0o644)
        p = convert(self, src, out, "--memory", "1TiB", expect_rc=1)
        self.assertIn("more than this machine", p.stderr)
        self.assertFalse(os.path.exists(out))

    def test_quiet(self):
        m = build_model("llama", dtype="BF16", tied=True, seed=21)
        src = self.fixture("q", m)
        loud = convert(self, src, self.out("q1"))
        quiet = convert(self, src, self.out("q2"), "-q")
        self.assertEqual(quiet.stdout, "")
        self.assertLessEqual(len(quiet.stderr), len(loud.stderr))
        check_output(self, src, self.out("q2"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
