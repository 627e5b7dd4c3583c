"""test_manpage.py -- docs/flashify.1 says what the code does (issue 15).

The option table (src/cli_opts.c OPTIONS, printed by the hidden
`flashify --list-options`) is the truth.  Against it:

- every shown option is one ".It Fl" entry of the man page's OPTIONS, with
  the same alias and value name, and the man page lists nothing else;
- the hidden options are exactly the ones named below (a new hidden option
  must be acknowledged here) and are not in the man page;
- every subcommand is in the SYNOPSIS and in COMMANDS;
- every environment variable the sources read is in ENVIRONMENT, and
  ENVIRONMENT names nothing the sources (or libcurl) do not read;
- every exit status of include/flashify/error.h is in EXIT STATUS;
- every example in EXAMPLES uses options that exist and apply to its
  command;
- groff renders the page without a warning, and --help lists the same
  shown options.

The comparison is run on doctored copies too (an option dropped from the
man page, an option added to it, a hidden option documented), so the test
is shown to fail when the two drift apart.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import ROOT, run, describe  # noqa: E402

MANPAGE = os.path.join(ROOT, "docs", "flashify.1")
# Options that are deliberately undocumented (tests and tools only).
HIDDEN = {"--dump-logits", "--list-options"}
# Read by libcurl itself, not by flashify's sources.
READ_BY_LIBCURL = {"https_proxy", "http_proxy", "no_proxy"}


def option_table():
    """{name: (alias or None, metavar or None, commands, hidden)} and the
    commands {name: "word" | "default"}, from --list-options."""
    p = run(["--list-options"])
    if p.returncode != 0:
        raise AssertionError(describe(p))
    options, commands = {}, {}
    for line in p.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "command":
            commands[f[1]] = f[2]
        elif f[0] == "option":
            none = lambda v: None if v == "-" else v  # noqa: E731
            options[f[1]] = (none(f[2]), none(f[3]), set(f[4].split(",")), f[5] == "hidden")
    return options, commands


def sections(text):
    """{".Sh" title: [lines]} of an mdoc source."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith(".Sh "):
            cur = line[4:].strip().strip('"')
            out[cur] = []
        elif cur:
            out[cur].append(line)
    return out


def man_options(text):
    """{long name: (alias or None, metavar or None)} from the ".It Fl"
    entries of OPTIONS; also returns problems with an entry's form."""
    found, problems = {}, []
    for line in sections(text).get("OPTIONS", []):
        if not line.startswith(".It Fl "):
            continue
        words = line.split()[1:]
        names, metavar = [], None
        i = 0
        while i < len(words):
            w = words[i]
            if w == "Fl" and i + 1 < len(words):
                names.append("-" + words[i + 1].replace("\\-", "-"))
                i += 2
            elif w == "Ar" and i + 1 < len(words):
                metavar = words[i + 1]
                i += 2
            else:
                i += 1
        longs = [n for n in names if n.startswith("--")]
        shorts = [n for n in names if not n.startswith("--")]
        if len(longs) != 1 or len(shorts) > 1:
            problems.append("entry %r should name one long option and at most one short one" % line)
            continue
        if longs[0] in found:
            problems.append("%s is documented twice" % longs[0])
        found[longs[0]] = (shorts[0] if shorts else None, metavar)
    return found, problems


def compare(options, text):
    """The differences between the table and the man page, as sentences."""
    man, problems = man_options(text)
    for name, (alias, metavar, _, hidden) in sorted(options.items()):
        if hidden:
            if name in man:
                problems.append("%s is a hidden option but the man page documents it" % name)
            continue
        if name not in man:
            problems.append("%s is in the option table but not in the man page" % name)
        elif man[name] != (alias, metavar):
            problems.append("%s is %s in the table but %s in the man page" % (name, (alias, metavar), man[name]))
    for name in sorted(set(man) - set(options)):
        problems.append("%s is in the man page but not in the option table" % name)
    return problems


def env_read_by_sources():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "src", "*.c")):
        with open(path) as f:
            src = f.read()
        names |= set(re.findall(r'\b(?:getenv|\w*env\w*)\(\s*"([A-Za-z_][A-Za-z0-9_]*)"', src))
        # src/cli_env.c reads the hub's variables from a table of V("NAME", field) rows
        names |= set(re.findall(r'\bV\(\s*"([A-Za-z_][A-Za-z0-9_]*)"', src))
    return names


class ManPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(MANPAGE) as f:
            cls.text = f.read()
        cls.options, cls.commands = option_table()
        cls.secs = sections(cls.text)

    def test_options_match_the_table(self):
        self.assertGreater(len(self.options), 20, "--list-options printed too little")
        self.assertEqual(compare(self.options, self.text), [])

    def test_hidden_options_are_the_known_ones(self):
        hidden = {n for n, o in self.options.items() if o[3]}
        self.assertEqual(hidden, HIDDEN, "hidden options changed: document them, or name them in HIDDEN")

    def test_the_comparison_catches_drift(self):
        # Dropped from the man page.
        entry = re.search(r"^\.It Fl -max-shard-size Ar SIZE\n", self.text, re.M)
        self.assertIsNotNone(entry)
        dropped = self.text.replace(entry.group(0), "")
        self.assertIn("--max-shard-size is in the option table but not in the man page",
                      compare(self.options, dropped))
        # Added to the man page (or: a row removed from the table).
        added = self.text.replace(".It Fl -no-fsync\n", ".It Fl -no-fsync\n.It Fl -frobnicate Ar N\n")
        self.assertIn("--frobnicate is in the man page but not in the option table",
                      compare(self.options, added))
        table = dict(self.options)
        del table["--no-fsync"]
        self.assertIn("--no-fsync is in the man page but not in the option table",
                      compare(table, self.text))
        # A row added to the table.
        table = dict(self.options, **{"--not-yet-an-option": (None, None, {"convert"}, False)})
        self.assertIn("--not-yet-an-option is in the option table but not in the man page",
                      compare(table, self.text))
        # A wrong value name, a wrong alias, a hidden option documented.
        self.assertTrue(any("--threads" in p for p in compare(
            self.options, self.text.replace(".It Fl -threads Ar N", ".It Fl -threads Ar COUNT"))))
        self.assertTrue(any("--force" in p for p in compare(
            self.options, self.text.replace(".It Fl f , Fl -force", ".It Fl -force"))))
        self.assertIn("--dump-logits is a hidden option but the man page documents it", compare(
            self.options, self.text.replace(".It Fl -json\n", ".It Fl -json\n.It Fl -dump-logits Ar FILE\n")))

    def test_subcommands(self):
        self.assertIn("convert", self.commands)
        words = [c for c, kind in self.commands.items() if kind == "word"]
        self.assertGreaterEqual(len(words), 3)
        for c in words:
            self.assertIn(".Cm %s" % c, self.secs["SYNOPSIS"], "%s is not in the SYNOPSIS" % c)
            self.assertTrue(any(l.startswith(".It Nm Cm %s" % c) for l in self.secs["COMMANDS"]),
                            "%s has no entry in COMMANDS" % c)

    def test_environment(self):
        documented = set()
        for line in self.secs["ENVIRONMENT"]:
            if line.startswith(".It "):
                documented |= set(re.findall(r"\bEv ([A-Za-z_][A-Za-z0-9_]*)", line))
        read = env_read_by_sources()
        self.assertIn("HF_ENDPOINT", read)      # the scan itself works
        self.assertIn("NO_COLOR", read)
        self.assertEqual(sorted(read - documented), [], "read by src/ but not in ENVIRONMENT")
        self.assertEqual(sorted(documented - read - READ_BY_LIBCURL), [],
                         "in ENVIRONMENT but read by nothing")

    def test_exit_status(self):
        with open(os.path.join(ROOT, "include", "flashify", "error.h")) as f:
            codes = {int(v) for v in re.findall(r"^\s*FL_E?\w+ = (\d+)", f.read(), re.M)}
        self.assertIn(3, codes)
        listed = {l[4:].split()[0] for l in self.secs["EXIT STATUS"] if l.startswith(".It ")}
        for c in codes:
            want = "128+" if c > 128 else str(c)
            self.assertTrue(any(x.startswith(want) for x in listed), "exit status %d not documented" % c)

    def test_examples_use_real_options(self):
        lines, inside = [], False
        for line in self.secs["EXAMPLES"]:
            if line.startswith(".Bd -literal"):
                inside = True
            elif line.startswith(".Ed"):
                inside = False
            elif inside and line.startswith("flashify"):
                lines.append(line)
        self.assertGreaterEqual(len(lines), 5)
        words = {c for c, kind in self.commands.items() if kind == "word"}
        by_alias = {o[0]: n for n, o in self.options.items() if o[0]}
        for line in lines:
            argv = shlex.split(line)[1:]
            cmd = argv[0] if argv and argv[0] in words else "convert"
            for a in argv:
                if not a.startswith("-"):
                    continue
                name = by_alias.get(a, a.split("=")[0])
                self.assertIn(name, self.options, "example %r: no option %s" % (line, a))
                self.assertIn(cmd, self.options[name][2], "example %r: %s does not apply to %s" % (line, a, cmd))

    def test_help_lists_the_shown_options(self):
        p = run(["--help"])
        self.assertEqual(p.returncode, 0, describe(p))
        for name, (alias, metavar, _, hidden) in self.options.items():
            pattern = r"^  (%s, )?%s( %s)?\s" % (re.escape(alias or ""), re.escape(name), re.escape(metavar or ""))
            found = re.search(pattern, p.stdout, re.M) is not None
            self.assertEqual(found, not hidden, "%s %s in --help" % (name, "missing" if not hidden else "shown"))

    @unittest.skipUnless(shutil.which("groff"), "groff is not installed")
    def test_renders_without_warnings(self):
        p = subprocess.run(["groff", "-mdoc", "-ww", "-Tutf8", MANPAGE], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "", "groff warns about the man page")
        plain = re.sub(r".\x08", "", p.stdout)
        for name, o in self.options.items():
            if not o[3]:
                self.assertTrue(name in plain, "%s does not show in the rendered page" % name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
