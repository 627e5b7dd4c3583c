"""Streaming writer (issue 6): output bytes independent of --threads and
--memory, re-sharding round trips, --resume after a killed conversion, and
what an interrupted run leaves behind.

Fixtures come from bench/gen_fixture (a second, independent safetensors
writer in C) so they can be tens of MB without slowing the suite."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import read_checkpoint  # noqa: E402
from harness import FLASHIFY, GEN_FIXTURE, describe, gen_fixture as gen, run, run_faulty  # noqa: E402


def file_digests(d):
    """{relative path: sha256} of every file under d.  The model card's
    title is the output directory's name, so README.md is compared with
    that name taken out."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                data = fh.read()
            if f == "README.md":
                data = data.replace(os.path.basename(d).encode(), b"<OUT>")
            out[os.path.relpath(p, d)] = hashlib.sha256(data).hexdigest()
    return out


def tensors(d):
    """{name: (dtype, shape, bytes)} as a reader sees the checkpoint."""
    ck = read_checkpoint(d, strict=True)
    return {k: (t.dtype, tuple(t.shape), bytes(t.data)) for k, t in ck.tensors.items()}


class Streaming(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(GEN_FIXTURE):
            raise unittest.SkipTest("bench/gen_fixture not built")
        cls.tmp = tempfile.mkdtemp(prefix="flashify-stream-")
        # ~13 MB, 4 source shards, tensors larger than the smallest buffers
        # so chunks split rows mid-tensor.
        cls.src = os.path.join(cls.tmp, "src")
        gen(cls.src, "--layers", "3", "--hidden", "512", "--intermediate", "1536",
            "--heads", "8", "--kv-heads", "2", "--head-dim", "64", "--vocab", "4096",
            "--tied", "--max-shard-size", "4MB")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def out(self, name):
        return os.path.join(self.tmp, name)

    def convert(self, src, out, *flags):
        p = run([src, "-o", out, "-q", *flags], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        return p

    def test_bytes_independent_of_threads_and_memory(self):
        ref = self.out("t1")
        self.convert(self.src, ref, "--threads", "1", "--memory", "1MiB")
        want = file_digests(ref)
        self.assertGreater(len([f for f in want if f.endswith(".safetensors")]), 1)
        for i, flags in enumerate([("--threads", "2"), ("--threads", "7", "--memory", "3MiB"),
                                   ("--threads", "3", "--memory", "1GiB"), ("--no-fsync",)]):
            o = self.out("tN%d" % i)
            self.convert(self.src, o, *flags)
            self.assertEqual(file_digests(o), want, "output differs with %s" % (flags,))

    def test_reshard_round_trip(self):
        # --keep-norms writes identity norms, so the output can be converted
        # again: folding by exactly 1 changes nothing, only the layout moves.
        base = self.out("rs-base")
        self.convert(self.src, base, "--keep-norms")
        small = self.out("rs-small")
        self.convert(self.src, small, "--keep-norms", "--max-shard-size", "1MB")
        files = sorted(f for f in os.listdir(small) if f.endswith(".safetensors"))
        n = len(files)
        self.assertGreater(n, 4)
        self.assertEqual(files, ["model-%05d-of-%05d.safetensors" % (i + 1, n) for i in range(n)])
        with open(os.path.join(small, "model.safetensors.index.json")) as f:
            index = json.load(f)
        ts_small = tensors(small)
        self.assertEqual(set(index["weight_map"]), set(ts_small))
        self.assertEqual(index["metadata"]["total_size"], sum(len(v[2]) for v in ts_small.values()))
        for fn in files:
            ck = read_checkpoint(small)  # noqa: F841 (validated above)
            size = os.path.getsize(os.path.join(small, fn))
            in_file = [k for k, v in index["weight_map"].items() if v == fn]
            data = sum(len(ts_small[k][2]) for k in in_file)
            # over the limit only when a single tensor is larger than it
            self.assertTrue(data <= 1_000_000 or len(in_file) == 1, (fn, data, in_file))
            self.assertLess(data, size)
        back = self.out("rs-back")
        self.convert(small, back, "--keep-norms", "--max-shard-size", "1GB")
        self.assertTrue(os.path.exists(os.path.join(back, "model.safetensors")))
        self.assertFalse(os.path.exists(os.path.join(back, "model.safetensors.index.json")))
        ts_base = tensors(base)
        self.assertEqual(ts_small, ts_base)
        self.assertEqual(tensors(back), ts_base)

    def big(self):
        src = self.out("big")
        if not os.path.exists(src):
            # ~130 MB in 18 shards.
            gen(src, "--layers", "8", "--hidden", "768", "--intermediate", "2048",
                "--heads", "12", "--kv-heads", "4", "--head-dim", "64", "--vocab", "8192",
                "--untied", "--max-shard-size", "8MB")
        return src

    def killed_run(self, src, out, *flags, at=3):
        """A conversion killed (SIGKILL, by the fault shim) as it is about
        to fsync output shard `at`: the shards before it are finished."""
        p = run_faulty([src, "-o", out, "-q", *flags],
                       rules="fsync@.flashify-partial/model-%05d-of:1:kill" % at, timeout=120)
        self.assertEqual(p.returncode, -signal.SIGKILL, describe(p))
        self.assertFalse(os.path.exists(out), "a killed conversion left something at the output path")
        partial = os.path.join(self.tmp, "." + os.path.basename(out) + ".flashify-partial")
        self.assertTrue(os.path.isdir(partial))
        return partial

    def test_resume_after_kill(self):
        src = self.big()
        whole = self.out("big-whole")
        self.convert(src, whole)
        out = self.out("big-resumed")
        partial = self.killed_run(src, out, "--resume")
        with open(os.path.join(self.tmp, ".big-resumed.flashify-journal")) as f:
            self.assertEqual(f.read().count("\ndone "), 2)
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertRegex(p.stderr, r"resumed: 2 of \d+ shard\(s\)")
        self.assertFalse(os.path.exists(partial))
        self.assertEqual(os.listdir(self.tmp).count(".big-resumed.flashify-journal"), 0)
        self.assertEqual(file_digests(out), file_digests(whole))

    def test_stale_partial_without_resume_is_replaced(self):
        src = self.big()
        out = self.out("stale")
        partial = self.killed_run(src, out)
        p = run([src, "-o", out], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("partial output", p.stderr)
        self.assertFalse(os.path.exists(partial))
        ref = self.out("stale-ref")
        self.convert(src, ref)
        self.assertEqual(file_digests(out), file_digests(ref))

    def test_resume_with_other_options_starts_over(self):
        src = self.big()
        out = self.out("changed")
        self.killed_run(src, out, "--resume", "--keep-norms")
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("starting over", p.stderr)
        self.assertNotIn("resumed:", p.stderr)
        ref = self.out("changed-ref")
        self.convert(src, ref)
        self.assertEqual(file_digests(out), file_digests(ref))

    def test_sigterm_leaves_nothing(self):
        src = self.big()
        out = self.out("term")
        proc = subprocess.Popen([FLASHIFY, src, "-o", out, "-q", "--threads", "1", "--memory", "1MiB"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = os.path.join(self.tmp, ".term.flashify-partial")
        deadline = time.time() + 30
        while not os.path.exists(partial) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
        if rc == 0:
            self.skipTest("the conversion finished before the signal")
        self.assertEqual(rc, 143)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(partial))


if __name__ == "__main__":
    unittest.main(verbosity=2)
