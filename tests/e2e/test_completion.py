"""test_completion.py -- the bash and zsh completions (issue 15).

The build generates them from the option table (scripts/gen_completions.py
runs `flashify --list-options`).  The bash one is loaded into a real bash
and driven the way bash drives it (COMP_WORDS, COMP_CWORD, then the
function named by `complete -p flashify`), in a directory holding a
model directory, a directory with a space, a .safetensors file and a text
file, and the candidates are checked: subcommands, each command's options
(exactly the shown rows of the table that apply to it, never a hidden
one), directories only where a directory is wanted, sizes with their
units after a number (also as --opt=value, split at '=' or not), nothing
for a number or a repo id.  The zsh one, when zsh is installed, is loaded
by compinit in an interactive zsh on a pseudo-terminal and a few
completions are typed with TAB.
"""

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import FLASHIFY, run, describe  # noqa: E402

BUILD = os.environ.get("FLASHIFY_BUILD") or os.path.dirname(os.path.abspath(FLASHIFY))
BASH_COMPLETION = os.path.join(BUILD, "completions", "flashify")
ZSH_COMPLETION = os.path.join(BUILD, "completions", "_flashify")

# Drives the completion function as bash does for one command line: the
# words, the index of the word being completed, then the function that
# `complete -p flashify` names, with (command, current word, previous word).
DRIVER = r'''
source "$1"; shift
spec=$(complete -p flashify) || exit 3
func=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$spec")
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$func" flashify "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
'''


def table():
    p = run(["--list-options"])
    assert p.returncode == 0, describe(p)
    words, options = [], {}
    for line in p.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "command" and f[2] == "word":
            words.append(f[1])
        elif f[0] == "option":
            options[f[1]] = {"alias": None if f[2] == "-" else f[2], "commands": set(f[4].split(",")),
                             "hidden": f[5] == "hidden"}
    return words, options


class Bash(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="flashify-completion-")
        for d in ("modelA", "dir with space"):
            os.mkdir(os.path.join(cls.tmp, d))
        for f in ("m.safetensors", "notes.txt"):
            open(os.path.join(cls.tmp, f), "w").close()
        cls.words, cls.options = table()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def complete(self, *words):
        p = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "driver", BASH_COMPLETION] + list(words),
                           cwd=self.tmp, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "", "the completion printed errors")
        return [w for w in p.stdout.split("\n") if w]

    def test_installed_file_exists(self):
        self.assertTrue(os.path.isfile(BASH_COMPLETION), "the build did not generate %s" % BASH_COMPLETION)

    def test_subcommands_and_sources(self):
        got = self.complete("flashify", "")
        for w in ("inspect", "verify", "download", "modelA", "dir with space"):
            self.assertIn(w, got)
        self.assertNotIn("notes.txt", got)
        self.assertNotIn("m.safetensors", got)
        self.assertNotIn("convert", got, "convert is the default, not a word on the command line")
        self.assertEqual(sorted(self.complete("flashify", "ve")), ["verify"])
        # Past the first word, no subcommand names; past SOURCE, nothing.
        got = self.complete("flashify", "--force", "")
        self.assertEqual(sorted(got), ["dir with space", "modelA"])
        self.assertEqual(self.complete("flashify", "src", "--force", ""), [])
        self.assertEqual(self.complete("flashify", "verify", "a", "b", ""), [])
        self.assertEqual(self.complete("flashify", "inspect", "a", ""), [])

    def test_long_option_prefix(self):
        self.assertEqual(self.complete("flashify", "--max-sh"), ["--max-shard-size"])
        self.assertEqual(self.complete("flashify", "src", "--keep-"), ["--keep-tied", "--keep-norms"])
        self.assertEqual(self.complete("flashify", "verify", "--to"), ["--tokens", "--tolerance"])

    def test_each_command_offers_exactly_its_options(self):
        self.assertGreater(len(self.options), 20)
        for cmd in ["convert"] + self.words:
            want = {n for n, o in self.options.items() if cmd in o["commands"] and not o["hidden"]}
            words = ["flashify"] + ([cmd] if cmd != "convert" else ["src"]) + ["--"]
            self.assertEqual(set(self.complete(*words)), want, "options offered for %s" % cmd)
        verify = self.complete("flashify", "verify", "a", "--")
        self.assertIn("--json", verify)
        self.assertNotIn("--force", verify)
        self.assertNotIn("--dump-logits", verify, "a hidden option was offered")
        self.assertNotIn("--list-options", self.complete("flashify", "--"))
        longs = sorted(n for n, o in self.options.items()
                       if "convert" in o["commands"] and not o["hidden"] and n.startswith("--"))
        self.assertEqual(sorted(self.complete("flashify", "src", "-"))[:3], longs[:3])
        self.assertIn("-q", self.complete("flashify", "inspect", "-"))

    def test_directory_values(self):
        for words in (["flashify", "-o", ""], ["flashify", "src", "--output", ""], ["flashify", "verify", "a", ""]):
            self.assertEqual(sorted(self.complete(*words)), ["dir with space", "modelA"], words)
        self.assertEqual(self.complete("flashify", "-o", "mod"), ["modelA"])

    def test_file_and_inspect_values(self):
        self.assertEqual(sorted(self.complete("flashify", "src", "--plan", "")),
                         ["dir with space", "m.safetensors", "modelA", "notes.txt"])
        self.assertEqual(sorted(self.complete("flashify", "inspect", "")),
                         ["dir with space", "m.safetensors", "modelA"])

    def test_size_values(self):
        units = ["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"]
        self.assertEqual(sorted(self.complete("flashify", "src", "--max-shard-size", "5")),
                         sorted("5" + u for u in units))
        self.assertEqual(sorted(self.complete("flashify", "src", "--max-shard-size", "2.5G")),
                         ["2.5GB", "2.5GiB"])
        # --opt=value as bash splits it by default ("=" in COMP_WORDBREAKS) ...
        self.assertIn("5GB", self.complete("flashify", "src", "--max-shard-size", "=", "5"))
        self.assertIn("48MiB", self.complete("flashify", "src", "--memory", "="))
        # ... and as one word when COMP_WORDBREAKS lacks "=".
        self.assertIn("--memory=16MiB", self.complete("flashify", "src", "--memory=16"))
        examples = self.complete("flashify", "src", "--memory", "")
        self.assertTrue(examples and all(re.fullmatch(r"[0-9.]+[KMGT]i?B", e) for e in examples), examples)

    def test_values_without_completion(self):
        self.assertEqual(self.complete("flashify", "src", "--threads", ""), [])
        self.assertEqual(self.complete("flashify", "src", "--tokens", ""), [])
        self.assertEqual(self.complete("flashify", "download", ""), [])
        # After a value-taking option's value, options again.
        self.assertIn("--force", self.complete("flashify", "src", "--threads", "4", "--fo"))

    def test_after_double_dash_no_options(self):
        self.assertEqual(self.complete("flashify", "--", "-"), [])


class Zsh(unittest.TestCase):
    """compinit loads _flashify from $fpath; TAB completes in a real zsh."""

    def setUp(self):
        if not shutil.which("zsh"):
            self.skipTest("zsh is not installed")
        self.tmp = tempfile.mkdtemp(prefix="flashify-zsh-")
        os.mkdir(os.path.join(self.tmp, "modelA"))
        open(os.path.join(self.tmp, "notes.txt"), "w").close()
        try:
            self.pid, self.fd = pty.fork()
        except OSError as e:  # a chroot or container without /dev/pts
            shutil.rmtree(self.tmp)
            self.skipTest("no pseudo-terminal: %s" % e)
        if self.pid == 0:
            os.chdir(self.tmp)
            env = dict(os.environ, TERM="dumb", HOME=self.tmp, PS1="%% ")
            os.execvpe("zsh", ["zsh", "-f", "-i"], env)
        self.buf = b""
        # ^X prints the edited line between @@ marks and clears it.
        self.send("fpath=(%s $fpath); autoload -Uz compinit; compinit -u -D\n" % os.path.dirname(ZSH_COMPLETION))
        self.send("_show() { print -r -- \"@@${BUFFER}@@\"; BUFFER=; zle reset-prompt }; zle -N _show; bindkey '^X' _show\n")
        self.send("print READY$((6*7))\n")
        self.wait_for(rb"READY42")

    def tearDown(self):
        try:
            os.write(self.fd, b"exit\n")
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        shutil.rmtree(self.tmp)

    def send(self, text):
        os.write(self.fd, text.encode())

    def wait_for(self, pattern, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.buf, re.S)
            if m:
                self.buf = self.buf[m.end():]
                return m
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                try:
                    self.buf += os.read(self.fd, 65536)
                except OSError:
                    break
        self.fail("zsh did not print %r; got %r" % (pattern, self.buf[-2000:]))

    def tab(self, line):
        """The listing zsh shows and the line after TAB."""
        self.send(line + "\t")
        time.sleep(0.3)
        self.send("\x18")
        m = self.wait_for(rb"(.*)@@(.*?)@@")
        return m.group(1).decode(errors="replace"), m.group(2).decode(errors="replace")

    def test_completes(self):
        self.assertTrue(os.path.isfile(ZSH_COMPLETION))
        _, line = self.tab("flashify --max-sh")
        self.assertEqual(line, "flashify --max-shard-size=")
        _, line = self.tab("flashify verify --js")
        self.assertEqual(line.rstrip(), "flashify verify --json")
        listing, _ = self.tab("flashify ")
        for w in ("inspect", "verify", "download", "modelA/"):
            self.assertIn(w, listing)
        self.assertNotIn("notes.txt", listing)
        listing, _ = self.tab("flashify src --max-shard-size 5")
        self.assertIn("5GiB", listing)
        listing, _ = self.tab("flashify verify -")
        self.assertIn("--tolerance", listing)
        self.assertNotIn("--force", listing)
        self.assertNotIn("--dump-logits", listing)


if __name__ == "__main__":
    unittest.main(verbosity=2)
