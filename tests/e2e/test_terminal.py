"""test_terminal.py -- progress, colour, -q and --verbose as a user sees
them (issue 15).

flashify runs on a pseudo-terminal (Python's pty module) as it would in an
xterm, and on pipes as it would in a script:

- verify and --strict draw a progress line per phase ("writing", "tensor
  check", "forward pass (source)", "forward pass (output)"), each drawn
  with \\r and erased to the end of the line, and erased before the report;
- no progress line and no escape sequence at all when stderr is a pipe,
  when TERM=dumb or TERM is unset, or with -q;
- "error:" and "warning:" are coloured on a terminal, and not with
  NO_COLOR=1, TERM=dumb or a pipe (NO_COLOR="" keeps colour, as
  no-color.org says);
- -q leaves stderr empty on success for every command while results on
  stdout stay; --verbose prints one summary per long step; -q with
  --verbose is refused, by every command.
"""

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import build_model, write_checkpoint  # noqa: E402
from harness import FLASHIFY, ROOT, describe  # noqa: E402

STORIES = os.path.join(ROOT, "examples", "stories260K")
BIN = os.path.abspath(FLASHIFY)
ESC = "\x1b"
PHASES = ["tensor check", "forward pass (source)", "forward pass (output)"]


def on_pty(args, base=None, **env):
    """Runs flashify with stdin, stdout and stderr on a pseudo-terminal
    (environment: base or ours, updated with env); returns (exit code,
    everything it wrote)."""
    full = dict(base or os.environ, **env)
    for k, v in env.items():
        if v is None:
            del full[k]
    try:
        pid, fd = pty.fork()
    except OSError as e:  # a chroot or container without /dev/pts
        raise unittest.SkipTest("no pseudo-terminal: %s" % e)
    if pid == 0:
        try:
            os.execve(BIN, [BIN] + list(args), full)
        finally:
            os._exit(127)
    out = b""
    while True:
        r, _, _ = select.select([fd], [], [], 120)
        if not r:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def on_pipes(args, cwd=None, **env):
    full = dict(os.environ, **env)
    return subprocess.run([BIN] + list(args), capture_output=True, text=True, env=full,
                          timeout=120, cwd=cwd)


def progress_lines(text):
    """The progress lines drawn in place: after a \\r that does not end a
    line (the terminal turns \\n into \\r\\n)."""
    return re.findall(r"\r(?!\n)(flashify: [^\r\n\x1b]*)\x1b\[K", text)


class Terminal(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="flashify-term-")
        cls.out = os.path.join(cls.tmp, "stories-out")
        p = on_pipes([STORIES, "-o", cls.out, "-q"])
        assert p.returncode == 0, describe(p)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_verify_draws_each_phase_on_a_terminal(self):
        rc, text = on_pty(["verify", STORIES, self.out], TERM="xterm")
        self.assertEqual(rc, 0, text)
        lines = progress_lines(text)
        for phase in PHASES:
            self.assertTrue(any(l.startswith("flashify: %s " % phase) for l in lines),
                            "no progress line for %s in %r" % (phase, text))
        for l in lines:
            self.assertRegex(l, r"^flashify: [a-z ()]+ +\d+%  [\d.]+ [KMG]?i?B / [\d.]+ [KMG]?i?B  \S+( \S+)?  ETA \S+$")
        # Erased before the report, which is intact.
        report = text[text.index("flashify verify:"):]
        self.assertIn("\r\x1b[K", text[:text.index("flashify verify:")])
        self.assertNotIn(ESC, report)
        self.assertIn("result: EQUIVALENT", report)

    def test_strict_conversion_draws_writing_and_the_checks(self):
        out = os.path.join(self.tmp, "strict-out")
        rc, text = on_pty([STORIES, "-o", out, "--strict", "--force"], TERM="xterm-256color")
        self.assertEqual(rc, 0, text)
        phases = [l.split("  ")[0] for l in progress_lines(text)]
        seen = [p for p in ["writing"] + PHASES if any(x.startswith("flashify: " + p) for x in phases)]
        self.assertEqual(seen, ["writing"] + PHASES, text)
        order = [next(i for i, x in enumerate(phases) if x.startswith("flashify: " + p)) for p in seen]
        self.assertEqual(order, sorted(order), "phases out of order: %s" % phases)
        shutil.rmtree(out)

    def test_no_progress_without_a_live_terminal(self):
        cases = [("pipe", None, {}), ("TERM=dumb", "pty", {"TERM": "dumb"}),
                 ("TERM unset", "pty", {"TERM": None}), ("-q", "pty", {"TERM": "xterm"})]
        for name, how, env in cases:
            args = ["verify", STORIES, self.out] + (["-q"] if name == "-q" else [])
            if how is None:
                p = on_pipes(args, TERM="xterm")
                rc, text = p.returncode, p.stdout + p.stderr
                self.assertEqual(p.stderr, "", "verify wrote to a piped stderr")
            else:
                rc, text = on_pty(args, **env)
            self.assertEqual(rc, 0, text)
            self.assertEqual(progress_lines(text), [], name)
            self.assertNotIn(ESC, text, "escape sequences with %s" % name)
            self.assertIsNone(re.search(r"\r(?!\n)", text), "a bare \\r with %s" % name)
            self.assertIn("result: EQUIVALENT", text, "-q must keep the report on stdout")

    def test_colour(self):
        missing = os.path.join(self.tmp, "no-such-model")
        red = "\x1b[1;31merror:\x1b[0m "
        rc, text = on_pty([missing, "-o", os.path.join(self.tmp, "x")], TERM="xterm", NO_COLOR=None)
        self.assertEqual(rc, 2, text)
        self.assertIn("flashify: " + red, text)
        rc, text = on_pty([missing], TERM="xterm", NO_COLOR="")
        self.assertIn(red, text, "an empty NO_COLOR must not turn colour off")
        for env in ({"TERM": "xterm", "NO_COLOR": "1"}, {"TERM": "dumb", "NO_COLOR": None}):
            rc, text = on_pty([missing], **env)
            self.assertEqual(rc, 2, text)
            self.assertIn("flashify: error: ", text)
            self.assertNotIn(ESC, text, env)
        p = on_pipes([missing], TERM="xterm")
        self.assertIn("flashify: error: ", p.stderr)
        self.assertNotIn(ESC, p.stderr)

    def test_warning_colour_and_quiet(self):
        src = os.path.join(self.tmp, "gemma")
        if not os.path.isdir(src):
            write_checkpoint(build_model("gemma", dtype="BF16", seed=5), src)
        out = os.path.join(self.tmp, "gemma-out")
        rc, text = on_pty([src, "-o", out, "--force"], TERM="xterm")
        self.assertEqual(rc, 0, text)
        self.assertIn("flashify: \x1b[1;35mwarning:\x1b[0m Gemma norms", text)
        rc, text = on_pty([src, "-o", out, "--force"], TERM="xterm", NO_COLOR="1")
        self.assertIn("flashify: warning: Gemma norms", text)
        # No colour; the progress line still redraws (NO_COLOR is about colour).
        self.assertIsNone(re.search(r"\x1b\[[0-9;]*m", text), text)
        self.assertTrue(progress_lines(text))
        rc, text = on_pty([src, "-o", out, "--force", "-q"], TERM="xterm")
        self.assertEqual((rc, text), (0, ""), "-q printed on a terminal")
        shutil.rmtree(out)

    def test_quiet_for_every_command(self):
        out = os.path.join(self.tmp, "q-out")
        # The dry run's default output exists: its note is not an error.
        os.makedirs(os.path.join(self.tmp, "stories260K-FlashNorm"), exist_ok=True)
        for args, stdout_has in (([STORIES, "-o", out, "-q"], None),
                                 (["verify", STORIES, self.out, "-q"], "result: EQUIVALENT"),
                                 (["inspect", STORIES, "-q"], "model.norm.weight"),
                                 ([STORIES, "--dry-run", "-q"], "fold plan:")):
            p = on_pipes(args, cwd=self.tmp)
            self.assertEqual(p.returncode, 0, describe(p))
            self.assertEqual(p.stderr, "", "stderr with %s" % args)
            if stdout_has:
                self.assertIn(stdout_has, p.stdout)
            else:
                self.assertEqual(p.stdout, "")
        shutil.rmtree(out)

    def test_quiet_and_verbose_refused_everywhere(self):
        for args in ([STORIES], ["verify", STORIES, self.out], ["inspect", STORIES], ["download", "org/name"]):
            p = on_pipes(args + ["-q", "--verbose"])
            self.assertEqual(p.returncode, 1, describe(p))
            self.assertIn("--quiet and --verbose", p.stderr)

    def test_verbose_summaries(self):
        out = os.path.join(self.tmp, "v-out")
        p = on_pipes([STORIES, "-o", out, "--strict", "--verbose"])
        self.assertEqual(p.returncode, 0, describe(p))
        for phase in ["writing"] + PHASES:
            lines = [l for l in p.stderr.splitlines() if l.startswith("flashify: %s: " % phase)]
            self.assertEqual(len(lines), 1, "summary of %s in %r" % (phase, p.stderr))
            self.assertRegex(lines[0], r": [\d.]+ [KMG]?i?B in [\d.]+ s, [\d.]+ [KMG]?i?B/s$")
        self.assertNotIn("\r", p.stderr)
        shutil.rmtree(out)
        p = on_pipes(["verify", STORIES, self.out, "--verbose"])
        self.assertEqual(p.returncode, 0, describe(p))
        self.assertEqual([l.split(":")[1].strip() for l in p.stderr.splitlines()], PHASES)
        p = on_pipes(["inspect", STORIES, "--verbose"])
        self.assertEqual(p.returncode, 0, describe(p))


if __name__ == "__main__":
    unittest.main(verbosity=2)
