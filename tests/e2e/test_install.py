"""test_install.py -- `cmake --install`, the installed files, and the Debian
package (issue 15).

- `DESTDIR=root cmake --install BUILD --prefix /usr` puts the binary, the
  compressed man page (the same text as docs/flashify.1), the bash and zsh
  completions (zsh's vendor-completions for /usr), the example model and
  the copyright file where Debian looks for them, and nothing outside
  DESTDIR; `--prefix /opt/...` moves all of it, zsh to site-functions.
- The installed binary prints its version (the one in CMakeLists.txt) and
  the cJSON, libcurl and OpenSSL versions it was built with, which must be
  what pkg-config says is installed; it converts the installed example
  model, and the output is checked against the independent Python
  expectation (harness.check_output).
- man finds the installed page through its man path and renders it.
- `cpack -G DEB` makes flashify_<version>-1_<arch>.deb whose Depends name
  the Debian package of every shared library the binary needs (found with
  dpkg -S, not taken from the package), whose files are those of the
  /usr install, and whose extracted binary runs the example too.
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import ROOT, FLASHIFY, check_output  # noqa: E402

BUILD = os.environ.get("FLASHIFY_BUILD") or os.path.dirname(os.path.abspath(FLASHIFY))
CMAKE = os.environ.get("CMAKE") or shutil.which("cmake")
CPACK = os.environ.get("CPACK") or shutil.which("cpack")

# What /usr gets, relative to it.
FILES_USR = [
    "bin/flashify",
    "share/man/man1/flashify.1.gz",
    "share/bash-completion/completions/flashify",
    "share/zsh/vendor-completions/_flashify",
    "share/flashify/examples/stories260K/config.json",
    "share/flashify/examples/stories260K/model.safetensors",
    "share/flashify/examples/PROVENANCE.md",
    "share/doc/flashify/copyright",
    "share/doc/flashify/README.md",
]


def project_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(flashify VERSION (\d+\.\d+\.\d+)", f.read()).group(1)


def sh(*args, env=None, cwd=None, timeout=300):
    p = subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s\n%s" % (" ".join(args), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p.stdout


def install(destdir, prefix):
    env = dict(os.environ, DESTDIR=destdir)
    out = sh(CMAKE, "--install", BUILD, "--prefix", prefix, env=env)
    return [l.split(": ", 1)[1] for l in out.splitlines() if ": " in l and l.startswith("-- ")
            and ("Installing" in l or "Up-to-date" in l)]


def tree(root):
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            found.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(found)


class Install(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="flashify-install-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def check_runs(self, binary, examples):
        """--version and the example conversion, with the installed files."""
        p = subprocess.run([binary, "--version"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "flashify " + project_version())
        if shutil.which("pkg-config"):
            for lib, pc in (("cJSON", "libcjson"), ("libcurl", "libcurl"), ("OpenSSL", "libcrypto")):
                want = sh("pkg-config", "--modversion", pc).strip()
                line = [l for l in lines if l.startswith(lib + " ")]
                self.assertEqual(len(line), 1, p.stdout)
                self.assertRegex(line[0], r"^%s \d+\.\d+\.\d+.*\(built with %s\)$" % (lib, re.escape(want)))
        src = os.path.join(examples, "stories260K")
        out = os.path.join(self.tmp, "stories260K-FlashNorm")
        p = subprocess.run([binary, src, "-o", out, "--strict", "-q"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        check_output(self, src, out)
        shutil.rmtree(out)

    def test_install_to_usr_with_destdir(self):
        root = os.path.join(self.tmp, "root")
        installed = install(root, "/usr")
        self.assertTrue(installed)
        for path in installed:
            self.assertTrue(path.startswith(root + "/usr/"), "installed outside DESTDIR/usr: " + path)
        files = tree(root)
        for f in FILES_USR:
            self.assertIn("usr/" + f, files)
        self.assertTrue(os.access(os.path.join(root, "usr/bin/flashify"), os.X_OK))
        with gzip.open(os.path.join(root, "usr/share/man/man1/flashify.1.gz"), "rt") as f, \
                open(os.path.join(ROOT, "docs", "flashify.1")) as g:
            self.assertEqual(f.read(), g.read(), "the installed man page is not docs/flashify.1")
        for f in ("config.json", "model.safetensors"):
            with open(os.path.join(root, "usr/share/flashify/examples/stories260K", f), "rb") as a, \
                    open(os.path.join(ROOT, "examples/stories260K", f), "rb") as b:
                self.assertEqual(a.read(), b.read())
        self.check_runs(os.path.join(root, "usr/bin/flashify"), os.path.join(root, "usr/share/flashify/examples"))
        # The bash completion registers itself.
        out = sh("bash", "--norc", "--noprofile", "-c",
                 'source "$1" && complete -p flashify', "x",
                 os.path.join(root, "usr/share/bash-completion/completions/flashify"))
        self.assertIn("flashify", out)

    def test_other_prefix(self):
        root = os.path.join(self.tmp, "root")
        install(root, "/opt/flashify-test")
        files = tree(root)
        self.assertTrue(all(f.startswith("opt/flashify-test/") for f in files), files)
        self.assertIn("opt/flashify-test/bin/flashify", files)
        self.assertIn("opt/flashify-test/share/zsh/site-functions/_flashify", files)
        self.assertNotIn("opt/flashify-test/share/zsh/vendor-completions/_flashify", files)

    @unittest.skipUnless(shutil.which("man"), "man is not installed")
    def test_man_finds_the_installed_page(self):
        root = os.path.join(self.tmp, "root")
        install(root, "/usr")
        mandir = os.path.join(root, "usr/share/man")
        env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat")
        where = sh("man", "--manpath=" + mandir, "-w", "flashify", env=env).strip()
        self.assertEqual(where, os.path.join(mandir, "man1/flashify.1.gz"))
        text = sh("man", "--manpath=" + mandir, "flashify", env=env)
        for word in ("SYNOPSIS", "--max-shard-size", "EXIT STATUS", "HF_TOKEN"):
            self.assertIn(word, re.sub(r".\x08", "", text))

    @unittest.skipUnless(shutil.which("dpkg-deb") and shutil.which("dpkg"), "no dpkg-deb")
    def test_debian_package(self):
        pkgdir = os.path.join(self.tmp, "pkg")
        sh(CPACK, "-G", "DEB", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-B", pkgdir, cwd=BUILD)
        debs = [f for f in os.listdir(pkgdir) if f.endswith(".deb")]
        arch = sh("dpkg", "--print-architecture").strip()
        self.assertEqual(debs, ["flashify_%s-1_%s.deb" % (project_version(), arch)])
        deb = os.path.join(pkgdir, debs[0])
        fields = sh("dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends")
        self.assertIn("Package: flashify", fields)
        self.assertIn("Version: %s-1" % project_version(), fields)
        depends = {d.strip().split()[0] for d in re.search(r"Depends: (.*)", fields).group(1).split(",")}
        # Every library the binary needs comes from a package it depends on.
        needed = re.findall(r"NEEDED\s+(\S+)", sh("objdump", "-p", FLASHIFY)) if shutil.which("objdump") else []
        for lib in needed:
            if lib.startswith(("libasan", "libubsan")):
                continue  # a sanitizer build
            path = sh("sh", "-c", "ldd \"$1\" | awk -v l=\"$2\" '$1 == l {print $3}'", "x", FLASHIFY, lib).strip()
            owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True)
            if owner.returncode != 0:
                continue  # a library not installed from a package
            pkg = owner.stdout.split(":")[0]
            self.assertIn(pkg, depends, "%s (from %s) is not in Depends: %s" % (lib, pkg, sorted(depends)))
        for want in ("libcjson1", "libcurl4", "libssl3"):
            self.assertIn(want, depends)
        # The same files as the /usr install.
        listed = sorted(re.sub(r"^\./", "", l.split()[-1]) for l in sh("dpkg-deb", "-c", deb).splitlines()
                        if not l.startswith("d"))
        usr = os.path.join(self.tmp, "usr-install")
        install(usr, "/usr")
        self.assertEqual(listed, tree(usr))
        for f in FILES_USR:
            self.assertIn("usr/" + f, listed)
        root = os.path.join(self.tmp, "x")
        sh("dpkg-deb", "-x", deb, root)
        self.assertEqual(tree(root), listed)
        self.check_runs(os.path.join(root, "usr/bin/flashify"), os.path.join(root, "usr/share/flashify/examples"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
