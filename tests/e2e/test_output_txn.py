"""The output transaction (issue 11 items 1-5, 9, 18, 19; docs/output.md).

Each class of fault is driven through the real binary; where a window must
be hit exactly (a second run while the first is about to publish, an output
that appears just before the rename, a kill in the middle of the --force
swap) the fault shim (tests/fault/shim.c) stops or kills the process at the
chosen call.  Every case checks what a user would: the exit status, the one
line that says why, what is at the output path, that nothing of theirs
changed and that no hidden temporary file is left next to the output."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import build_model, tree_digest, write_checkpoint  # noqa: E402
from harness import (FAULT_SHIM, FLASHIFY, GEN_FIXTURE, check_output, describe, gen_fixture,  # noqa: E402
                     run, run_faulty, start_faulty, wait_stopped)

TERMINATING = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGPIPE"]


def setUpModule():
    if not os.access(FLASHIFY, os.X_OK):
        raise RuntimeError("FLASHIFY=%s is not an executable" % FLASHIFY)
    if not os.path.exists(FAULT_SHIM):
        raise RuntimeError("the fault shim %s is not built" % FAULT_SHIM)


def siblings(parent):
    """The hidden files flashify keeps next to an output while it works
    (each test has a directory of its own)."""
    return sorted(f for f in os.listdir(parent) if f.startswith(".") and ".flashify-" in f)


def snapshot(d):
    """{relative path: (mode, sha256 or link target)} of everything under d."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, d)] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[os.path.relpath(p, d)] = ("dir", st.st_mode & 0o7777)
            else:
                with open(p, "rb") as f:
                    out[os.path.relpath(p, d)] = (st.st_mode & 0o7777, hashlib.sha256(f.read()).hexdigest())
    return out


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-txn-")

    def tearDown(self):
        subprocess.run(["chmod", "-R", "u+rwx", self.tmp], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def source(self, name="src", seed=3, shards=1, **kw):
        d = self.path(name)
        if not os.path.exists(d):
            write_checkpoint(build_model("llama", dtype="F32", tied=False, seed=seed), d, shards=shards, **kw)
        return d

    def big_source(self, name="big"):
        """~13 MB in 4 shards (bench/gen_fixture), slow enough to stop."""
        d = self.path(name)
        if not os.path.exists(d):
            gen_fixture(d, "--layers", "3", "--hidden", "512", "--intermediate", "1536", "--heads", "8",
                        "--kv-heads", "2", "--head-dim", "64", "--vocab", "4096", "--untied",
                        "--max-shard-size", "4MB")
        return d

    def convert(self, src, out, *flags, rc=0, cwd=None, env=None):
        """A plain run (without fsync: these tests stop and kill processes,
        they do not crash machines, and fsync is slow on small VMs)."""
        p = subprocess.run([FLASHIFY, src, "-o", out, "-q", "--no-fsync", *flags], capture_output=True, text=True,
                           timeout=120, cwd=cwd, env=env)
        self.assertEqual(p.returncode, rc, describe(p))
        return p

    def one_line(self, p, *needles):
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, p.stderr)
        for n in needles:
            self.assertIn(n, lines[0])
        return lines[0]

    def assert_clean(self, parent, name=None):
        self.assertEqual(siblings(parent), [], "hidden files left next to the output")


class Lock(Base):
    def test_lock_held_until_published(self):
        """Item 1: a second run on the same -o while the first (--strict,
        verified) is about to rename must be refused, and must not touch the
        first one's temporary directory."""
        src = self.source()
        out = self.path("out")
        a = start_faulty([src, "-o", out, "-q", "--strict"], "rename:1:stop")
        try:
            wait_stopped(a)
            partial = self.path(".out.flashify-partial")
            before = snapshot(partial)
            b = run([src, "-o", out, "-q"])
            self.assertEqual(b.returncode, 1, describe(b))
            self.assertIn("another flashify is writing", b.stderr)
            self.assertEqual(snapshot(partial), before, "the second run touched the first one's output")
        finally:
            os.kill(a.pid, signal.SIGCONT)
            _, err = a.communicate(timeout=60)
        self.assertEqual(a.returncode, 0, err)
        check_output(self, src, out)
        self.assert_clean(self.tmp, "out")


class Publish(Base):
    def appear(self, what, rules):
        src = self.source()
        out = self.path("out-" + what)
        a = start_faulty([src, "-o", out, "-q"], rules)
        wait_stopped(a)
        os.mkdir(out)
        if what == "file":
            with open(os.path.join(out, "mine.txt"), "w") as f:
                f.write("the user's")
        mine = snapshot(out)
        os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=60)
        self.assertEqual(a.returncode, 1, err)
        self.assertIn("appeared during the run", err)
        self.assertEqual(snapshot(out), mine, "the output that appeared was changed")
        partial = self.path(".out-%s.flashify-partial" % what)
        self.assertTrue(os.path.isdir(partial), "the finished output must be kept for --resume")
        shutil.rmtree(out)
        p = run([src, "-o", out, "--resume"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("resumed: 1 of 1 shard(s)", p.stderr)
        check_output(self, src, out)
        self.assert_clean(self.tmp, "out-" + what)

    def test_output_appearing_during_run_is_not_replaced(self):
        """Item 3: without --force nothing that appeared is replaced, even
        an empty directory; with the file system's RENAME_NOREPLACE and
        with the fallback where it lacks it."""
        self.appear("file", "rename:1:stop")
        self.appear("empty", "rename:1:stop")
        self.appear("fallback", "renameat2:1:stop,renameat2:*:fail=EINVAL")

    def test_force_without_rename_exchange(self):
        """--force where the file system lacks RENAME_EXCHANGE: the old
        output moves aside, the new one in, the old one goes."""
        src, other = self.source(), self.source("other", seed=8)
        out = self.path("out")
        self.convert(other, out)
        p = run_faulty([src, "-o", out, "-q", "--force"], rules="renameat2:*:fail=EINVAL")
        self.assertEqual(p.returncode, 0, describe(p))
        check_output(self, src, out)
        self.assert_clean(self.tmp, "out")


class ForceRules(Base):
    """Item 2: --force replaces only an empty directory or an earlier
    flashify output, and never the working directory, its ancestors,
    $HOME or the hub cache."""

    def refused(self, out, needle, cwd=None, env=None, force=True):
        src = self.source()
        watched = self.path("world")
        before = snapshot(watched)
        p = self.convert(src, out, *(["--force"] if force else []), rc=1, cwd=cwd, env=env)
        self.one_line(p, needle)
        self.assertEqual(snapshot(watched), before, "something of the user's changed")
        self.assertTrue(os.path.isdir(self.source()), "the source is gone")
        return p

    def world(self):
        """A home with files, a project in it, the cwd inside the project."""
        home = self.path("world")
        for rel in ("notes.txt", "project/data.csv", "project/work/draft.md", "hf/hub/x.txt"):
            os.makedirs(os.path.dirname(os.path.join(home, rel)), exist_ok=True)
            with open(os.path.join(home, rel), "w") as f:
                f.write(rel)
        env = dict(os.environ, HOME=home, HF_HOME=os.path.join(home, "hf"))
        env.pop("HF_HUB_CACHE", None)
        env.pop("HUGGINGFACE_HUB_CACHE", None)
        return home, env

    def test_never_the_cwd_its_ancestors_home_or_cache(self):
        home, env = self.world()
        cwd = os.path.join(home, "project", "work")
        self.refused(".", "working directory", cwd=cwd, env=env)
        self.refused("..", "working directory", cwd=cwd, env=env)
        self.refused(os.path.join(home, "project"), "working directory", cwd=cwd, env=env)
        self.refused(home, "or contains it", env=env)
        self.refused(os.path.join(home, "hf"), "or contains it", env=env)
        self.refused(os.path.join(home, "hf", "hub", "out"), "Hugging Face cache", env=env, force=False)

    def test_only_earlier_outputs_or_empty_directories(self):
        home, _ = self.world()
        self.refused(os.path.join(home, "project"), "not a flashify model card")
        src = self.source()
        out = self.path("world", "earlier")
        self.convert(src, out)
        with open(os.path.join(out, "my-notes.txt"), "w") as f:
            f.write("added by the user")
        self.refused(out, "my-notes.txt")
        os.remove(os.path.join(out, "my-notes.txt"))
        link = self.path("world", "link")
        os.symlink(out, link)
        self.refused(link, "symbolic link")
        self.refused(os.path.join(home, "notes.txt"), "not a directory")
        # what may be replaced is replaced
        other = self.source("other", seed=8)
        self.convert(other, out, "--force")
        check_output(self, other, out)
        os.makedirs(self.path("empty"))
        self.convert(src, self.path("empty"), "--force")
        check_output(self, src, self.path("empty"))
        self.assert_clean(self.path("world"), "earlier")


class TempDir(Base):
    """Item 4: the temporary directory is private while it is written and
    reused only when this user's flashify made it."""

    def test_private_while_written(self):
        src = self.big_source()
        out = self.path("out")
        a = start_faulty([src, "-o", out, "-q"], "write@.flashify-partial/:2:stop")
        try:
            wait_stopped(a)
            self.assertEqual(os.stat(self.path(".out.flashify-partial")).st_mode & 0o777, 0o700)
            self.assertEqual(os.stat(self.path(".out.flashify-journal")).st_mode & 0o777, 0o600)
        finally:
            os.kill(a.pid, signal.SIGCONT)
            a.communicate(timeout=60)
        self.assertEqual(a.returncode, 0)

    def planted(self, setup, needle):
        src = self.source()
        out = self.path("out")
        setup(self.path(".out.flashify-partial"), self.path(".out.flashify-journal"))
        before = snapshot(self.tmp)
        for flags in ((), ("--resume",), ("--force",)):
            p = self.convert(src, out, *flags, rc=1)
            self.one_line(p, needle)
            self.assertEqual(snapshot(self.tmp), before, "a planted temporary directory was used or changed")
            self.assertFalse(os.path.exists(out))

    def test_planted_directory_refused(self):
        def plain(partial, journal):
            os.mkdir(partial, 0o700)
            with open(os.path.join(partial, "model.safetensors"), "wb") as f:
                f.write(b"planted")
        self.planted(plain, "no journal of this user's flashify records it")

    def test_journal_of_another_user_refused(self):
        def foreign(partial, journal):
            os.mkdir(partial, 0o777)
            with open(journal, "w") as f:
                f.write("flashify-journal 2\n")
            os.chmod(journal, 0o666)
            if os.geteuid() == 0:
                os.chown(journal, 65534, 65534)
                os.chown(partial, 65534, 65534)
        self.planted(foreign, "not this user's flashify journal")

    def test_journal_link_refused(self):
        def link(partial, journal):
            os.symlink(self.path("elsewhere"), journal)
        self.planted(link, "symbolic link")

    def test_loosened_partial_refused(self):
        src = self.big_source()
        out = self.path("out")
        p = run_faulty([src, "-o", out, "-q", "--resume"], rules="fsync@.flashify-partial/model-00002:1:kill")
        self.assertEqual(p.returncode, -9, describe(p))
        partial = self.path(".out.flashify-partial")
        os.chmod(partial, 0o777)
        p = self.convert(src, out, "--resume", rc=1)
        self.one_line(p, "that only it can write")
        self.assertTrue(os.path.isdir(partial))


class Modes(Base):
    def test_modes_follow_the_source(self):
        """Item 5: as cp gives them (the source's bits, less the umask)."""
        src = self.source("private")
        os.makedirs(os.path.join(src, "sub"))
        with open(os.path.join(src, "sub", "extra.json"), "w") as f:
            f.write("{}")
        for rel in os.listdir(src) + ["sub/extra.json"]:
            p = os.path.join(src, rel)
            if os.path.isfile(p):
                os.chmod(p, 0o600)
        os.chmod(os.path.join(src, "tokenizer.json"), 0o640)
        os.chmod(os.path.join(src, "sub"), 0o710)
        os.chmod(src, 0o700)
        out = self.path("out")
        self.convert(src, out)
        want = {"": 0o700, "sub": 0o710, "tokenizer.json": 0o640}
        for root, dirs, files in os.walk(out):
            for n in dirs + files + ([""] if root == out else []):
                rel = os.path.relpath(os.path.join(root, n), out) if n else ""
                got = os.stat(os.path.join(out, rel)).st_mode & 0o777
                self.assertEqual(got, want.get(rel, 0o600), "mode of %r" % rel)
        # never looser than the umask either
        pub = self.source("public")
        p = subprocess.run([FLASHIFY, pub, "-o", self.path("out-umask"), "-q"], capture_output=True,
                           preexec_fn=lambda: os.umask(0o077))
        self.assertEqual(p.returncode, 0, p.stderr)
        for root, dirs, files in os.walk(self.path("out-umask")):
            for n in dirs + files:
                self.assertEqual(os.stat(os.path.join(root, n)).st_mode & 0o077, 0, n)
        self.assertEqual(os.stat(self.path("out-umask")).st_mode & 0o777, 0o700)


class Resume(Base):
    """Item 9: --resume reuses a shard only when the journal's fingerprint
    of everything that decides the bytes matches and the shard still has
    its recorded sha256."""

    def killed(self, src, out, at=3, *flags):
        p = run_faulty([src, "-o", out, "-q", "--resume", *flags],
                       rules="fsync@.flashify-partial/model-%05d:1:kill" % at)
        self.assertEqual(p.returncode, -9, describe(p))
        return self.path("." + os.path.basename(out) + ".flashify-partial")

    def reference(self, src):
        ref = self.path("ref-" + os.path.basename(src))
        shutil.rmtree(ref, ignore_errors=True)
        self.convert(src, ref)
        return ref

    def same_bytes(self, out, ref):
        for f in sorted(os.listdir(ref)):
            if f != "README.md":
                with open(os.path.join(ref, f), "rb") as a, open(os.path.join(out, f), "rb") as b:
                    self.assertTrue(a.read() == b.read(), f)

    def test_corrupted_shard_is_rewritten(self):
        src = self.big_source()
        out = self.path("out")
        partial = self.killed(src, out)
        shard = os.path.join(partial, sorted(f for f in os.listdir(partial) if f.endswith(".safetensors"))[0])
        with open(shard, "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(8 + n)
            size = os.path.getsize(shard) - 8 - n
            f.write(bytes(size))                      # header and size kept, data zeroed
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertRegex(p.stderr, r"resumed: 1 of \d+ shard\(s\)")
        self.same_bytes(out, self.reference(src))

    def test_source_changed_in_place_starts_over(self):
        """Same names, sizes and modification times, other norm values: the
        fingerprint holds the values the fold uses."""
        src = self.source("src4", shards=4)
        out = self.path("out")
        partial = self.killed(src, out, 3)
        self.assertTrue(os.path.isdir(partial))
        with open(os.path.join(src, "model.safetensors.index.json")) as f:
            wm = json.load(f)["weight_map"]
        norm = "model.layers.0.input_layernorm.weight"
        shard = os.path.join(src, wm[norm])
        st = os.stat(shard)
        with open(shard, "r+b") as f:
            blob = f.read()
            n = int.from_bytes(blob[:8], "little")
            a, _ = json.loads(blob[8:8 + n])[norm]["data_offsets"]
            f.seek(8 + n + a)
            f.write(b"\x00\x00\x00\x40")              # its first gain becomes 2.0
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("starting over", p.stderr)
        check_output(self, src, out)

    def test_other_plan_starts_over(self):
        """A --plan with other contents (the same norms with gain 1+w
        instead of w): the journal's fingerprint holds the plan itself."""
        from test_custom_plan import made_up_model, plan_for
        src = self.path("foo")
        write_checkpoint(made_up_model("w", seed=4), src, shards=4)
        plans = {}
        for gain in ("w", "1+w"):
            plans[gain] = self.path("plan-%s.json" % gain)
            with open(plans[gain], "w") as f:
                json.dump(plan_for(gain), f)
        out = self.path("out")
        self.killed(src, out, 3, "--plan", plans["w"])
        p = run([src, "-o", out, "--resume", "--plan", plans["1+w"]])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertIn("starting over", p.stderr)
        check_output(self, src, out, plan=plan_for("1+w"))

    def test_killed_without_resume_is_not_reused(self):
        """A run started without --resume records no digests: a later
        --resume starts over rather than trust its shards."""
        src = self.big_source()
        out = self.path("out")
        p = run_faulty([src, "-o", out, "-q"], rules="fsync@.flashify-partial/model-00003:1:kill")
        self.assertEqual(p.returncode, -9, describe(p))
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertNotIn("resumed:", p.stderr)
        self.same_bytes(out, self.reference(src))
        self.assert_clean(self.tmp, "out")


class Interrupts(Base):
    """Item 18: every terminating signal, a kill at any step of the publish
    and a parent directory renamed mid-run leave nothing behind, or a state
    the next run repairs."""

    def test_every_signal_leaves_nothing(self):
        src = self.big_source()
        for name in TERMINATING:
            with self.subTest(signal=name):
                sig = getattr(signal, name)
                out = self.path("out-" + name)
                a = start_faulty([src, "-o", out, "-q"], "write@.flashify-partial/:3:stop")
                wait_stopped(a)
                os.kill(a.pid, sig)
                os.kill(a.pid, signal.SIGCONT)
                _, err = a.communicate(timeout=60)
                self.assertEqual(a.returncode, 128 + sig, err)
                self.assertFalse(os.path.exists(out))
                self.assert_clean(self.tmp, "out-" + name)

    def test_signal_during_strict_check(self):
        src = self.source()
        out = self.path("out")
        # the check reads the output back: stop at its first read of a shard
        a = start_faulty([src, "-o", out, "-q", "--strict"], "read@.flashify-partial/model.safetensors:1:stop")
        wait_stopped(a)
        os.kill(a.pid, signal.SIGTERM)
        os.kill(a.pid, signal.SIGCONT)
        a.communicate(timeout=60)
        self.assertEqual(a.returncode, 128 + signal.SIGTERM)
        self.assertFalse(os.path.exists(out))
        self.assert_clean(self.tmp, "out")

    def test_parent_renamed_mid_run(self):
        src = self.big_source()
        os.makedirs(self.path("parent"))
        out = self.path("parent", "out")
        a = start_faulty([src, "-o", out, "-q"], "write@.flashify-partial/:3:stop")
        wait_stopped(a)
        os.rename(self.path("parent"), self.path("moved"))
        os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=60)
        self.assertEqual(a.returncode, 5, err)
        self.assertIn("moved or replaced during the run", err)
        self.assertEqual(os.listdir(self.path("moved")), [], "the temporary directory stayed behind")
        self.assertFalse(os.path.exists(self.path("parent")))

    def swap_killed(self, rules, expect_note):
        """A --force run killed in its swap; the next run on the output,
        even one without --force that then refuses, finishes or undoes the
        swap and says so.  Returns the digests (old, after the repair, new)."""
        src, old_src = self.source(), self.source("old", seed=8)
        out = self.path("out")
        self.convert(old_src, out)
        old, new_ref = tree_digest(out), self.path("ref", "out")  # same name: same card
        os.makedirs(self.path("ref"))
        self.convert(src, new_ref)
        p = run_faulty([src, "-o", out, "-q", "--force"], rules=rules)
        self.assertEqual(p.returncode, -9, describe(p))
        p = run([self.source("third", seed=5), "-o", out])
        self.assertEqual(p.returncode, 1, describe(p))
        self.assertIn(expect_note, p.stderr)
        self.assertIn("already exists", p.stderr)
        now = tree_digest(out)
        p = run([src, "-o", out, "--force"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertEqual(tree_digest(out), tree_digest(new_ref))
        self.assert_clean(self.tmp)
        return old, now, tree_digest(new_ref)

    def test_kill_after_the_exchange(self):
        """Killed after RENAME_EXCHANGE swapped them: the new output is in
        place, the old one in the temporary name; the next run removes it."""
        old, now, new = self.swap_killed("rename:1:after-kill", "finished replacing it")
        self.assertEqual(now, new)

    def test_kill_between_the_two_renames_of_the_fallback(self):
        """Without RENAME_EXCHANGE, killed when the old output was moved
        aside and the new one not yet in: the next run puts the old back."""
        old, now, new = self.swap_killed("renameat2:*:fail=EINVAL,rename:1:after-kill",
                                         "restored the previous output")
        self.assertEqual(now, old)

    def points(self, args):
        """{rule prefix: how many such calls a successful run makes}: each
        fsync, rename, mkdir and unlink, and each write to the journal."""
        log = self.path("calls.log")
        if os.path.exists(log):
            os.remove(log)
        p = run_faulty(args, log=log)
        self.assertEqual(p.returncode, 0, describe(p))
        with open(log) as f:
            calls = [ln.split(" ", 1) for ln in f.read().splitlines()]
        out = {c: sum(1 for k, _ in calls if k == c) for c in ("fsync", "rename", "mkdir", "unlink")}
        out["write@.flashify-journal"] = sum(1 for k, p in calls if k == "write" and ".flashify-journal" in p)
        os.remove(log)
        return out

    def test_killed_at_every_step(self):
        """Kill the run before and after each fsync, rename, mkdir and
        unlink it makes, replacing an earlier output or making a new one:
        the output path holds the old output or the new one, whole, never a
        mix; the next run ends with the new output and nothing left behind."""
        src, old_src = self.source(), self.source("old", seed=8)
        os.makedirs(self.path("ref"))
        ref = self.path("ref", "out")                 # same name: same card
        self.convert(src, ref)
        new = tree_digest(ref)
        out = self.path("out")
        for force in (True, False):
            if force:
                self.convert(old_src, out)
            old = tree_digest(out) if force else None
            # --no-fsync: a kill loses nothing the page cache holds, so the
            # points that matter are the journal's records and the
            # renames, mkdirs and unlinks (every journal record is written
            # with one of those around it); fsyncs only cost time here.
            args = [src, "-o", out, "-q", "--no-fsync"] + (["--force"] if force else [])
            counts = self.points(args)
            shutil.rmtree(out)
            for cls, n in counts.items():
                for k in range(1, n + 1):
                    for how in ("kill", "after-kill"):
                        with self.subTest(force=force, call=cls, n=k, how=how):
                            try:
                                self.killed_once(args, out, old_src if force else None, "%s:%d:%s" % (cls, k, how),
                                                 (old, new) if force else (None, new), new)
                            finally:
                                for f in os.listdir(self.tmp):
                                    if f == "out" or f.startswith("."):
                                        subprocess.run(["rm", "-rf", self.path(f)])

    def killed_once(self, args, out, old_src, rules, allowed, new):
        if old_src:
            self.convert(old_src, out, "--no-fsync")
        p = run_faulty(args, rules=rules)
        self.assertIn(p.returncode, (0, -9), describe(p))
        self.assertIn(tree_digest(out) if os.path.exists(out) else None, allowed)
        p = run([args[0], "-o", out, "-q", "--no-fsync", "--force"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertEqual(tree_digest(out), new)
        self.assert_clean(self.tmp)


class Names(Base):
    """Item 19: output names up to the file system's limit, and clear
    messages for paths that cannot be outputs."""

    def test_long_output_names(self):
        src = self.source()
        for n in (237, 238, 250, 255):
            with self.subTest(length=n):
                name = ("é" * 200).encode()[:n - 3].decode("utf-8", "ignore")
                name = name + "x" * (n - len(name.encode()))
                self.assertEqual(len(name.encode()), n)
                out = self.path(name)
                self.convert(src, out)
                check_output(self, src, out)
                self.assertEqual(sorted(os.listdir(self.tmp)), sorted(["src", name]))
                shutil.rmtree(out)

    def test_long_name_resumes(self):
        src = self.big_source()
        name = "n" * 250
        out = self.path(name)
        p = run_faulty([src, "-o", out, "-q", "--resume"], rules="fsync@.flashify-partial/model-00003:1:kill")
        self.assertEqual(p.returncode, -9, describe(p))
        hidden = [f for f in os.listdir(self.tmp) if f.startswith(".")]
        self.assertEqual(len(hidden), 2, hidden)
        self.assertTrue(all(len(f.encode()) <= 255 for f in hidden))
        p = run([src, "-o", out, "--resume"], timeout=120)
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertRegex(p.stderr, r"resumed: 2 of \d+ shard")
        self.assertFalse(any(f.startswith(".") for f in os.listdir(self.tmp)))

    def test_unusable_paths(self):
        src = self.source()
        with open(self.path("afile"), "w") as f:
            f.write("x")
        p = self.convert(src, self.path("afile", "sub"), rc=1)
        self.one_line(p, "afile is not a directory")
        p = self.convert(src, self.path("missing", "sub"), rc=1)
        self.one_line(p, "does not exist")
        p = self.convert(src, "", rc=1)
        self.assertIn("--output needs a non-empty value", p.stderr)
        p = self.convert(src, self.path("n" * 256), rc=1)
        self.one_line(p, "longer than 255 bytes")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["afile", "src"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
