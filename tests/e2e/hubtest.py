"""hubtest.py -- shared plumbing for the tests/e2e/test_hub_*.py tests.

Each test starts its own MockHub (tests/hub/mock_hub.py) on free loopback
ports and runs the real `flashify download` / `flashify REPO` against it with
a fresh HF_HOME.  Expectations (etags, blob names, link targets) are computed
here from the bytes the mock serves, never by the code under test.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.environ.get("FLASHIFY_ROOT") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "hub"))

from mock_hub import MockHub, git_blob_sha1  # noqa: E402,F401

FLASHIFY = os.environ.get("FLASHIFY", os.path.join(ROOT, "build", "flashify"))
TOKEN = "hf_TestTokenDoNotLeak_0123456789"


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def blob_bytes(n, seed):
    """n deterministic pseudo-random bytes (fast: sha256 in counter mode)."""
    out = bytearray()
    i = 0
    block = hashlib.sha256(b"seed%d" % seed).digest() * 2048  # 64 KiB
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest() + block[32:]
        i += 1
    return bytes(out[:n])


def stories_files():
    """The real stories260K checkpoint (config, generation config, weights)
    plus files a converter must not fetch."""
    ex = os.path.join(ROOT, "examples", "stories260K")
    files = {}
    for n in ("config.json", "generation_config.json", "model.safetensors"):
        with open(os.path.join(ex, n), "rb") as f:
            files[n] = f.read()
    files["tokenizer.json"] = b'{"version": "1.0", "model": {"type": "BPE"}}'
    files["tokenizer_config.json"] = b'{"model_max_length": 512}'
    files["original/consolidated.00.pth"] = b"not wanted" * 10
    files["original/params.json"] = b'{"dim": 64}'
    files["pytorch_model.bin"] = b"legacy pickle, not wanted"
    files["model.onnx"] = b"onnx, not wanted"
    files["README.md"] = b"# tiny\n"
    return files


WANTED = ["config.json", "generation_config.json", "model.safetensors",
          "tokenizer.json", "tokenizer_config.json"]


class Env:
    """A mock hub plus a temporary HF_HOME; use as a context manager."""

    def __init__(self, page_size=2):
        self.hub = MockHub(page_size=page_size)
        self.tmp = tempfile.mkdtemp(prefix="flashify-hub-")
        self.home = os.path.join(self.tmp, "hf")
        self.cache = os.path.join(self.home, "hub")

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.hub.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, token=TOKEN, **extra):
        e = dict(os.environ)
        for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                  "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH",
                  "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                  "all_proxy"):
            e.pop(k, None)
        e.update(HF_ENDPOINT=self.hub.endpoint, HF_HOME=self.home,
                 FLASHIFY_HUB_BACKOFF_SCALE="0.01", HF_HUB_DOWNLOAD_TIMEOUT="5",
                 HF_HUB_ETAG_TIMEOUT="5", no_proxy="*")
        if token:
            e["HF_TOKEN"] = token
        e.update(extra)
        return e

    def run(self, *args, token=TOKEN, timeout=60, **extra):
        """Runs flashify with args; returns CompletedProcess (text)."""
        return subprocess.run([FLASHIFY] + list(args), env=self.env(token=token, **extra),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def download(self, repo, *args, **kw):
        return self.run("download", repo, *args, **kw)

    def repo_dir(self, repo_id):
        return os.path.join(self.cache, "models--" + repo_id.replace("/", "--"))


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_ok(r, what):
    check(r.returncode == 0, "%s: exit %d\nstdout: %s\nstderr: %s"
          % (what, r.returncode, r.stdout, r.stderr))


def check_fail(r, code, needles, what):
    check(r.returncode == code, "%s: exit %d, expected %d\nstdout: %s\nstderr: %s"
          % (what, r.returncode, code, r.stdout, r.stderr))
    for n in needles:
        check(n in r.stderr, "%s: %r not in stderr:\n%s" % (what, n, r.stderr))
    check(TOKEN not in r.stdout + r.stderr, "%s: the token was printed" % what)


def check_layout(env, repo, files, rev="main", other_blobs=()):
    """The cache holds `files` (path -> bytes) for `repo` exactly as
    huggingface_hub lays it out (hub-protocol.md §4), and blobs/ holds
    nothing else but other_blobs (etags of earlier commits).  Returns the
    snapshot directory."""
    rd = env.repo_dir(repo.id)
    with open(os.path.join(env.cache, "CACHEDIR.TAG"), "rb") as f:
        check(f.read().startswith(b"Signature: 8a477f597d28d172789f06886806bc55"),
              "CACHEDIR.TAG signature")
    if rev != repo.commit:
        with open(os.path.join(rd, "refs", rev), "rb") as f:
            ref = f.read()
        check(ref == repo.branches[rev].encode(), "refs/%s is %r, expected the bare commit %s"
              % (rev, ref, repo.branches[rev]))
    commit = repo.branches.get(rev, rev)
    snap = os.path.join(rd, "snapshots", commit)
    check(os.path.isdir(snap), "snapshot dir %s missing" % snap)
    expected_blobs = set()
    for path, data in files.items():
        etag = sha256(data) if path in repo.lfs else git_blob_sha1(data)
        expected_blobs.add(etag)
        link = os.path.join(snap, path)
        check(os.path.islink(link), "%s is not a symlink" % link)
        want = "../" * (path.count("/") + 2) + "blobs/" + etag
        check(os.readlink(link) == want, "%s -> %s, expected %s"
              % (path, os.readlink(link), want))
        with open(os.path.join(rd, "blobs", etag), "rb") as f:
            check(f.read() == data, "blob %s of %s has wrong bytes" % (etag, path))
    got_blobs = set(os.listdir(os.path.join(rd, "blobs")))
    check(got_blobs == expected_blobs | set(other_blobs), "blobs/ holds %s, expected %s"
          % (sorted(got_blobs), sorted(expected_blobs)))
    snap_files = set()
    for root, dirs, names in os.walk(snap):
        for n in names:
            snap_files.add(os.path.relpath(os.path.join(root, n), snap))
    check(snap_files == set(files), "snapshot holds %s, expected %s"
          % (sorted(snap_files), sorted(files)))
    check(os.path.isdir(os.path.join(env.cache, ".locks", "models--" + repo.id.replace("/", "--"))),
          ".locks/<repo> missing")
    return snap


def run_tests(tests):
    """Runs test functions in order; prints a summary; exits 1 on failure."""
    failed = 0
    for t in tests:
        t0 = time.monotonic()
        try:
            t()
            print("ok   %-45s %.2fs" % (t.__name__, time.monotonic() - t0))
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__)
            traceback.print_exc()
    sys.exit(1 if failed else 0)
