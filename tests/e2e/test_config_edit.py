"""test_config_edit.py -- config.json is edited in place, and what a loader
reads back is what flashify meant (issue 11, item 7).

The written config is read with Python's json module, which keeps the LAST
of two equal keys, and with a strict duplicate check: every edited key must
appear exactly once with the intended value, whatever the number of
members and however the source spells the key.
"""

import json
import os
import shutil
import tempfile
import unittest

from fixtures import build_model, write_checkpoint
from harness import check_output, convert


def pairs_strict(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise AssertionError("duplicate keys in the written config.json: %s" % sorted(dup))
    return dict(pairs)


def read_config(out):
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        text = f.read()
    return text, json.loads(text, object_pairs_hook=pairs_strict)


class ConfigEdit(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-cfgedit-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_raw(self, name, model, raw_config):
        src = os.path.join(self.tmp, name)
        write_checkpoint(model, src)
        with open(os.path.join(src, "config.json"), "w", encoding="utf-8") as f:
            f.write(raw_config)
        return src

    def test_many_members_before_the_tie_key(self):
        # 600 extra members before tie_word_embeddings: the edit must find
        # the key where it is, not append a second one
        m = build_model("llama", dtype="BF16", tied=True, seed=71)
        cfg = {("extra_%03d" % i): i for i in range(600)}
        cfg.update(m.config)
        del cfg["tie_word_embeddings"]
        cfg["tie_word_embeddings"] = True
        cfg["flashnorm_folded"] = False
        raw = json.dumps(cfg, indent=2) + "\n"
        src = self.write_raw("many", m, raw)
        out = os.path.join(self.tmp, "many-out")
        convert(self, src, out)
        text, got = read_config(out)
        self.assertIs(got["tie_word_embeddings"], False)
        self.assertIs(got["flashnorm_folded"], True)
        self.assertIs(got["flash_norm"], True)
        for i in (0, 599):
            self.assertEqual(got["extra_%03d" % i], i)
        check_output(self, src, out)

    def test_escaped_key_spelling(self):
        # "tie_word_embeddings" spelled with JSON escapes is the same key
        m = build_model("llama", dtype="BF16", tied=True, seed=72)
        cfg = dict(m.config)
        del cfg["tie_word_embeddings"]
        raw = json.dumps(cfg, indent=2)
        raw = raw[:-2] + ',\n  "tie\\u005fword_embedding\\u0073": true\n}\n'
        src = self.write_raw("escaped", m, raw)
        out = os.path.join(self.tmp, "escaped-out")
        convert(self, src, out)
        text, got = read_config(out)
        self.assertIs(got["tie_word_embeddings"], False)
        # the rest of the text is kept byte for byte
        self.assertTrue(text.startswith(raw[:raw.index('"tie\\u005f')]))

    def test_one_line_config(self):
        # no newlines at all: appended keys go on the same line
        m = build_model("llama", dtype="BF16", tied=True, seed=73)
        raw = json.dumps(m.config, separators=(",", ":"))
        src = self.write_raw("oneline", m, raw)
        out = os.path.join(self.tmp, "oneline-out")
        convert(self, src, out)
        text, got = read_config(out)
        self.assertNotIn("\n", text)
        self.assertIs(got["tie_word_embeddings"], False)
        self.assertIs(got["flashnorm_folded"], True)


if __name__ == "__main__":
    unittest.main()
