"""Faults during a conversion (issue 7): Ctrl-C, a full disk.  Whatever
happens, nothing is left at the output path, no temporary directory stays
behind (unless --resume asked to keep finished shards), and the source is
untouched."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import Tensor, build_model, tree_digest, write_checkpoint  # noqa: E402
from harness import FLASHIFY, GEN_FIXTURE, describe, gen_fixture, run, run_faulty  # noqa: E402


def limit_file_size(max_bytes):
    """preexec_fn: files may not grow past max_bytes.  SIGXFSZ is ignored,
    so a write past the limit fails with EFBIG as on a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(GEN_FIXTURE):
            raise unittest.SkipTest("bench/gen_fixture not built")
        cls.tmp = tempfile.mkdtemp(prefix="flashify-faults-")
        cls.src = os.path.join(cls.tmp, "src")
        # ~40 MB in 5 shards of at most 8 MB each.
        gen_fixture(cls.src, "--layers", "6", "--hidden", "768", "--intermediate", "2048",
                    "--heads", "12", "--kv-heads", "4", "--head-dim", "64", "--vocab", "8192",
                    "--untied", "--max-shard-size", "8MB")
        cls.digest = tree_digest(cls.src)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def leftovers(self, name):
        return [f for f in os.listdir(self.tmp) if f != "src" and name in f]

    def tearDown(self):
        self.assertEqual(tree_digest(self.src), self.digest, "the source changed")

    def test_sigint_removes_everything(self):
        out = os.path.join(self.tmp, "int")
        proc = subprocess.Popen([FLASHIFY, self.src, "-o", out, "--threads", "1", "--memory", "1MiB"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        partial = os.path.join(self.tmp, ".int.flashify-partial")
        deadline = time.time() + 30
        while not os.path.exists(partial) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            self.skipTest("the conversion finished before the signal")
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("interrupted", err)
        self.assertEqual(self.leftovers("int"), [])

    def test_full_disk(self):
        out = os.path.join(self.tmp, "full")
        p = subprocess.run([FLASHIFY, self.src, "-o", out], capture_output=True, text=True,
                           preexec_fn=limit_file_size(3_000_000), timeout=120)
        self.assertEqual(p.returncode, 5, describe(p))
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(".safetensors", lines[0])
        self.assertRegex(lines[0], "too large|No space|reserve")
        self.assertEqual(self.leftovers("full"), [])

    def test_full_disk_then_resume(self):
        # With --resume the finished shards survive the failure, and the
        # next run (with room) completes what is missing.  The fixture's
        # last shard holds a 2 MB pass-through tensor, so a 1 MB file size
        # limit lets the first two shards finish and stops the third.
        m = build_model("llama", dtype="BF16", tied=False, seed=7)
        m.tensors["extra.buffer"] = Tensor("U8", (2_000_000,), bytes(range(256)) * 7812 + bytes(128))
        src = os.path.join(self.tmp, "room-src")
        write_checkpoint(m, src, shards=3, shard_of=lambda k: 2 if k == "extra.buffer" else sum(map(ord, k)) % 2,
                         extra_files=False)
        out = os.path.join(self.tmp, "room")
        p = subprocess.run([FLASHIFY, src, "-o", out, "--resume"], capture_output=True, text=True,
                           preexec_fn=limit_file_size(1_000_000), timeout=120)
        self.assertEqual(p.returncode, 5, describe(p))
        self.assertFalse(os.path.exists(out))
        partial = os.path.join(self.tmp, ".room.flashify-partial")
        self.assertTrue(os.path.isdir(partial), "--resume should keep the finished shards")
        self.assertIn("--resume", p.stderr)
        with open(os.path.join(self.tmp, ".room.flashify-journal")) as f:
            self.assertEqual(f.read().count("\ndone "), 2)
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("resumed: 2 of 3 shard(s)", p.stderr)
        ref = os.path.join(self.tmp, "room-ref")
        p = run([src, "-o", ref, "-q"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        for f in sorted(os.listdir(ref)):
            if f.endswith(".safetensors") or f.endswith(".json"):
                with open(os.path.join(ref, f), "rb") as a, open(os.path.join(out, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f)
        self.assertFalse(os.path.exists(partial))


class SourceFaults(unittest.TestCase):
    """Issue 11 item 19: a fault in the source is reported as the
    source's, with its kind, and found before the long work where it can
    be.  The fault shim (tests/fault/shim.c) makes the calls fail."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="flashify-srcfault-")
        cls.src = os.path.join(cls.tmp, "src")
        m = build_model("llama", dtype="BF16", tied=False, seed=9)
        write_checkpoint(m, cls.src, shards=2)
        cls.shard = os.path.join(cls.src, "model-00001-of-00002.safetensors")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def failed(self, rules, rc, *needles, log=None):
        out = os.path.join(self.tmp, "out")
        p = run_faulty([self.src, "-o", out, "-q"], rules=rules, log=log)
        self.assertEqual(p.returncode, rc, describe(p))
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        for n in needles:
            self.assertIn(n, lines[0])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["src"], "something was left behind")
        return lines[0]

    def test_eio_reading_the_source(self):
        """EIO from a source shard's data (copy_file_range, pread, the
        mapping), after its header was read fine."""
        log = os.path.join(self.tmp + "-calls.log")
        p = run_faulty([self.src, "-o", os.path.join(self.tmp, "probe"), "-q"], log=log)
        self.assertEqual(p.returncode, 0, describe(p))
        with open(log) as f:
            calls = f.read().splitlines()
        os.remove(log)
        shutil.rmtree(os.path.join(self.tmp, "probe"))
        first_write = next(i for i, ln in enumerate(calls) if ln.startswith("write ") and ".flashify-partial/" in ln)
        header_reads = sum(1 for ln in calls[:first_write] if ln.startswith("read ") and ln.endswith(self.shard))
        msg = self.failed("copy_file_range@model-00001:*:fail=EIO,mmap@model-00001:*:fail=EIO,"
                          "read@src/model-00001:%d+:fail=EIO" % (header_reads + 1),
                          5, self.shard, "read failed", "Input/output error")
        self.assertNotIn("write failed", msg)

    def test_sigbus_on_a_bad_sector(self):
        # the mapping succeeds, reading it raises SIGBUS, the file keeps its size
        msg = self.failed("mmap@src/model-00001:*:sigbus", 5, self.shard, "read error", "SIGBUS")
        self.assertNotIn("changed size", msg)
        self.assertNotIn("shrank", msg)

    def test_unreadable_file_found_before_the_shards(self):
        log = os.path.join(self.tmp, "..", os.path.basename(self.tmp) + "-calls.log")
        try:
            self.failed("open@src/tokenizer.json:*:fail=EACCES", 5, "tokenizer.json", "Permission denied",
                        log=log)
            with open(log) as f:
                calls = f.read()
            self.assertNotIn(".safetensors", "".join(ln for ln in calls.splitlines(True) if ln.startswith("write ")),
                             "shards were written before the unreadable file was found")
        finally:
            if os.path.exists(log):
                os.remove(log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
