"""harness.py -- run the flashify binary and check what it wrote.

run(args)            -> subprocess.CompletedProcess (text, 60 s timeout)
convert(tc, src, out, *flags) -> runs flashify, asserts the source tree is
                        byte-identical afterwards, returns the process
check_output(tc, src, out, ...) -> compares the output directory with
                        expect.expected(): every tensor, the shard layout,
                        the index, config.json, README.md, copied files
dump_logits(tc, src, out, tokens) -> the C pass's logits of src (verify)
verify_json(src, out, *flags) -> `flashify verify --json`: (process, report)
refused_model(tc, tmp, model, name, words) -> a conversion refused, nothing written
assert_not_equivalent(tc, src, out, needle) -> verify's exit 3 naming needle
ZooCase              -> a TestCase with a temporary folder and converted()
"""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import build_model, read_checkpoint, safetensors_bytes, tree_digest, write_checkpoint  # noqa: E402
from expect import expected, expected_config, first_difference  # noqa: E402

ROOT = os.environ.get("FLASHIFY_ROOT") or os.path.dirname(os.path.dirname(HERE))
FLASHIFY = os.environ.get("FLASHIFY") or os.path.join(ROOT, "build", "flashify")
# bench/gen_fixture: a second, independent safetensors writer in C, for
# fixtures of tens of MB (Llama-shaped, deterministic values).
GEN_FIXTURE = (os.environ.get("FLASHIFY_GEN_FIXTURE") or
               os.path.join(os.path.dirname(FLASHIFY), "bench", "gen_fixture"))


# tests/fault/shim.c, for LD_PRELOAD (see its header for FLASHIFY_FAULT).
FAULT_SHIM = (os.environ.get("FLASHIFY_FAULT_SHIM") or
              os.path.join(os.path.dirname(FLASHIFY), "tests", "libfault_shim.so"))


def gen_fixture(dest, *args):
    subprocess.run([GEN_FIXTURE, "--quiet", *args, dest], check=True, capture_output=True)


def fault_env(rules=None, log=None, **extra):
    """The environment for a run under the fault shim: FLASHIFY_FAULT rules
    ("CALL[@TEXT]:N:ACTION", comma-separated) and a call log."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = FAULT_SHIM
    # The shim loads before an ASan build's runtime: allowed, it is not
    # instrumented.
    env["ASAN_OPTIONS"] = "verify_asan_link_order=0:" + env.get("ASAN_OPTIONS", "")
    if rules:
        env["FLASHIFY_FAULT"] = rules
    if log:
        env["FLASHIFY_FAULT_LOG"] = log
    env.update(extra)
    return env


def run_faulty(args, rules=None, log=None, cwd=None, timeout=60, **extra):
    """Runs flashify under the shim; a run killed by the shim exits -9."""
    return subprocess.run([FLASHIFY] + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=fault_env(rules, log, **extra))


def start_faulty(args, rules, cwd=None, **extra):
    return subprocess.Popen([FLASHIFY] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=fault_env(rules, **extra))


def wait_stopped(proc, timeout=60):
    """Waits until proc stopped itself (the shim's stop action)."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the process exited (%s) before stopping:\n%s" %
                                 (proc.returncode, proc.stderr.read()))
        with open("/proc/%d/stat" % proc.pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.002)
    raise AssertionError("the process did not stop")

WEIGHT_FILES = {"config.json", "model.safetensors.index.json", "README.md"}
# source weights in other formats, never copied (issue 2)
NOT_COPIED = ["*.bin", "*.pth", "*.pt", "*.gguf", "original/*"]


def run(args, cwd=None, timeout=60):
    return subprocess.run([FLASHIFY] + list(args), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def describe(p):
    return "exit %d\n--- stdout:\n%s\n--- stderr:\n%s" % (p.returncode, p.stdout[-3000:], p.stderr[-3000:])


def convert(tc, src, out, *flags, expect_rc=0, cwd=None):
    """Runs `flashify src -o out flags...` (out None: no -o) and checks the
    exit status and that src was not modified."""
    before = tree_digest(src)
    args = [src] + (["-o", out] if out is not None else []) + list(flags)
    p = run(args, cwd=cwd)
    after = tree_digest(src)
    tc.assertEqual(before, after, "flashify modified the source directory %s" % src)
    if expect_rc is not None:
        tc.assertEqual(p.returncode, expect_rc, "flashify %s\n%s" % (" ".join(args), describe(p)))
    return p


def _is_weight_file(rel):
    return rel.endswith(".safetensors") or rel in WEIGHT_FILES


def check_output(tc, src_dir, out_dir, keep_tied=False, keep_norms=False,
                 extra_groups=(), ex=None, plan=None):
    """Asserts everything about a successful conversion; returns the
    Expectation and the output Checkpoint."""
    src = read_checkpoint(src_dir)
    if ex is None:
        ex = expected(src, keep_tied=keep_tied, keep_norms=keep_norms,
                      extra_groups=extra_groups, plan=plan)
    out = read_checkpoint(out_dir, strict=True)

    # ---- the set of tensors
    got = set(out.tensors)
    want = set(ex.tensors)
    required = want - ex.optional
    tc.assertEqual(sorted(required - got), [], "tensors missing from the output")
    tc.assertEqual(sorted(got - want), [], "unexpected tensors in the output (dropped norms must be gone)")

    # ---- every tensor, exactly
    bad = []
    for name in sorted(got):
        e, g = ex.tensors[name], out.tensors[name]
        if (e.dtype, e.shape, e.data) != (g.dtype, g.shape, g.data):
            bad.append("%s: %s" % (name, first_difference(e, g)))
    tc.assertEqual(bad, [], "%d tensors differ from the expectation:\n  %s" % (len(bad), "\n  ".join(bad[:8])))
    for k in ex.kept:
        tc.assertEqual(out.tensors[k].data, src.tensors[k].data, "kept norm %s changed" % k)

    # ---- each file is what the reference writer (safetensors save_file)
    # would write for its tensors: dtype descending then name, compact JSON
    # with __metadata__ first, space padding (safetensors.md §1 "Writer")
    for fn in out.files:
        ts = {k: out.tensors[k] for k, f in out.stored.items() if f == fn}
        extra = {k: v for k, v in out.metadata[fn].items() if k != "format"}
        with open(os.path.join(out_dir, fn), "rb") as f:
            raw = f.read()
        tc.assertTrue(raw == safetensors_bytes(ts, extra, order="reference"),
                      "%s is not laid out as the reference writer would" % fn)

    # ---- shard layout mirrors the source
    # same file names; a shard whose every tensor was a dropped norm may be
    # written empty or left out
    tc.assertTrue(set(out.files) <= set(src.files), "output shard files %s not among the source's %s" % (out.files, src.files))
    for fn in src.files:
        if fn not in out.files:
            left = [k for k, f in src.stored.items() if f == fn and k in out.tensors]
            tc.assertEqual(left, [], "shard %s missing from the output" % fn)
    for name, fn in out.stored.items():
        if name in src.stored:
            tc.assertEqual(fn, src.stored[name], "%s moved to another shard" % name)
    if ex.untie:
        efile = src.stored.get(ex.embed) or src.stored[src.aliases[ex.embed]]
        tc.assertEqual(out.stored.get(ex.head), efile,
                       "materialised %s must be stored in the embedding's shard" % ex.head)
    if src.index is not None:
        tc.assertIsNotNone(out.index, "sharded source but no output index")
        wm = out.index["weight_map"]
        tc.assertTrue(set(out.stored) <= set(wm), "index lacks %s" % sorted(set(out.stored) - set(wm)))
        tc.assertTrue(set(wm) <= set(out.stored) | set(out.aliases),
                      "index names tensors that are not stored: %s" % sorted(set(wm) - set(out.stored) - set(out.aliases)))
        for k, fn in wm.items():
            if k in out.stored:
                tc.assertEqual(fn, out.stored[k], "index puts %s in the wrong file" % k)
        total = sum(len(out.tensors[k].data) for k in out.stored)
        tc.assertEqual(out.index["metadata"]["total_size"], total, "index total_size != sum of tensor bytes")
    else:
        tc.assertFalse(os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")))

    # ---- config.json
    want_cfg = expected_config(src.config, ex)
    got_cfg = dict(out.config)
    extra = [k for k in got_cfg if k not in want_cfg]
    tc.assertEqual([k for k in extra if not k.startswith("flash")], [], "unexpected config keys")
    if not ex.marker:
        tc.assertFalse(got_cfg.get("flashnorm_folded"), "flashnorm_folded written without a full fold")
        tc.assertFalse(got_cfg.get("flash_norm"), "flash_norm written without a full fold")
    for k, v in want_cfg.items():
        tc.assertIn(k, got_cfg, "config.json lost key %s" % k)
        if k == "text_config":
            tv = dict(got_cfg[k])
            for kk, vv in v.items():
                tc.assertEqual(tv.get(kk, "<absent>"), vv, "text_config.%s" % kk)
        else:
            tc.assertEqual(got_cfg[k], v, "config.json key %s" % k)

    # ---- model card
    rp = os.path.join(out_dir, "README.md")
    tc.assertTrue(os.path.exists(rp), "no README.md model card")
    with open(rp) as f:
        card = f.read()
    tc.assertTrue(card.startswith("---\n"), "model card lacks YAML front matter")
    front = card.split("---", 2)[1]
    tc.assertIn("base_model", front)
    tc.assertIn("flashnorm", front)
    if ex.marker:
        tc.assertIn("weightless-rmsnorm", front, "marker written but tag weightless-rmsnorm missing")
    else:
        tc.assertNotIn("weightless-rmsnorm", front, "tag weightless-rmsnorm without the marker")

    # ---- other files: copied verbatim, except other weight formats
    src_files = tree_digest(src_dir)
    out_files = tree_digest(out_dir)
    for rel, h in src_files.items():
        if _is_weight_file(rel):
            continue
        if any(fnmatch.fnmatch(rel, pat) for pat in NOT_COPIED):
            tc.assertNotIn(rel, out_files, "%s must not be copied" % rel)
        else:
            tc.assertEqual(out_files.get(rel), h, "%s not copied verbatim" % rel)
    stray = [rel for rel in out_files if rel not in src_files and not _is_weight_file(rel)]
    tc.assertEqual(stray, [], "unexpected files in the output")
    return ex, out


def dump_logits(tc, src, out, tokens):
    """`flashify verify src out --tokens ... --dump-logits`: (the process,
    the source's logits as computed by the C pass, flat floats)."""
    import struct
    dump = src + ".logits"
    p = run(["verify", src, out, "--tokens", ",".join(map(str, tokens)), "--dump-logits", dump])
    tc.assertEqual(p.returncode, 0, describe(p))
    with open(dump, "rb") as f:
        data = f.read()
    return p, struct.unpack("<%df" % (len(data) // 4), data)


def verify_json(src, out, *flags):
    """`flashify verify src out --json ...`: (the process, the parsed
    report, or None when nothing was printed)."""
    p = run(["verify", src, out, "--json"] + list(flags))
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


def refused_model(tc, tmp, model, name, words, flags=()):
    """Writes model to tmp/name, converts it expecting exit 2 with every one
    of words in stderr, and checks that nothing was written; returns the
    process."""
    src = os.path.join(tmp, name)
    write_checkpoint(model, src)
    before = sorted(os.listdir(tmp))
    p = convert(tc, src, src + "-out", *flags, expect_rc=2)
    for w in words:
        tc.assertIn(w, p.stderr, describe(p))
    tc.assertEqual(sorted(os.listdir(tmp)), before, "a refused run wrote something")
    return p


def assert_not_equivalent(tc, src, out, needle, forward_fails=True, *flags):
    """verify rejects the pair (exit 3), its report names needle, and its
    forward check failed (or passed: forward_fails False) on its own."""
    p, rep = verify_json(src, out, *flags)
    tc.assertEqual(p.returncode, 3, describe(p))
    tc.assertIn(needle, json.dumps(rep))
    tc.assertEqual(rep["forward_check"].get("passed"), not forward_fails, rep["forward_check"])
    return rep


class ZooCase(unittest.TestCase):
    """A temporary folder per test (named with tmp_prefix); converted()
    builds a family's BF16 fixture there, converts it and checks the
    output against expect.py: (model, process, expected, output);
    assertBroken() is verify's verdict on a deliberately wrong output."""
    tmp_prefix = "flashify-zoo-"
    seed = 1

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self.tmp_prefix)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, model, name):
        d = self.path(name)
        write_checkpoint(model, d)
        return d

    def converted(self, family, name=None, flags=(), keep_norms=False, seed=None, **opt):
        m = build_model(family, dtype="BF16", seed=self.seed if seed is None else seed, **opt)
        src = self.write(m, name or family)
        p = convert(self, src, src + "-out", *flags)
        ex, ck = check_output(self, src, src + "-out", keep_norms=keep_norms)
        return m, p, ex, ck

    def assertBroken(self, src, out, *flags):
        """verify rejects the pair (exit 3, not equivalent) and its forward
        check fails on its own; returns the JSON report."""
        p, rep = verify_json(src, out, *flags)
        self.assertEqual(p.returncode, 3, describe(p))
        self.assertFalse(rep["equivalent"])
        self.assertIs(rep["forward_check"].get("passed"), False, rep["forward_check"])
        return rep


def stderr_of(p):
    return p.stderr or ""
