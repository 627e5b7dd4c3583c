"""uploadtest.py -- plumbing for the upload tests (test_hub_upload*.py,
test_hub_publish.py) on top of hubtest.py.

Expectations are computed here from the files the test wrote (sha256, git
blob ids, part counts), never taken from flashify's output; the remote
state is read from the mock's own records (repo files, commit history, the
NDJSON it received, the storage log)."""

import base64
import hashlib
import json
import math
import os

from hubtest import TOKEN, Env, check, git_blob_sha1, sha256  # noqa: F401

CHUNK = 1 << 20          # multipart part size in these tests
MULTIPART = 3 << 20      # objects from this size go multipart
LFS_MIN = 64 << 10       # files from this size are LFS (and *.safetensors)


class UpEnv(Env):
    """A mock Hub whose LFS and multipart thresholds are small."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.hub.up.lfs_threshold = LFS_MIN
        self.hub.up.multipart_threshold = MULTIPART
        self.hub.up.chunk_size = CHUNK

    def upload(self, folder, repo, *args, **kw):
        return self.run("upload", folder, repo, *args, **kw)

    def folder(self, name, files):
        """Writes files ({relpath: bytes}) under tmp/name; returns the path."""
        d = os.path.join(self.tmp, name)
        for rel, data in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        return d


def is_lfs(rel, data):
    return len(data) > 0 and (rel.endswith(".safetensors") or len(data) >= LFS_MIN)


def parts_of(data):
    return math.ceil(len(data) / CHUNK) if len(data) >= MULTIPART else 1


def check_remote(env, repo_id, files, extra=(".gitattributes",), lfs=None):
    """The repo's main branch holds exactly `files` (plus `extra`), byte for
    byte, the LFS ones (is_lfs, or the set `lfs`) as LFS."""
    repo = env.hub.repos.get(repo_id)
    check(repo is not None, "%s was not created" % repo_id)
    want = set(files) | set(extra)
    check(set(repo.files) == want, "%s holds %s, expected %s"
          % (repo_id, sorted(repo.files), sorted(want)))
    for rel, data in files.items():
        check(repo.files[rel] == data, "%s: %s has other bytes" % (repo_id, rel))
        want_lfs = is_lfs(rel, data) if lfs is None else rel in lfs
        check((rel in repo.lfs) == want_lfs, "%s: %s LFS is %s"
              % (repo_id, rel, rel in repo.lfs))
    return repo


def upload_commits(env, repo_id):
    """The commit requests the Hub accepted for repo_id: [(header, ops)]."""
    out = []
    for e in env.hub.requests(method="POST", path="/api/models/%s/commit/" % repo_id):
        if e.get("commit"):
            lines = e["ndjson"]
            out.append((lines[0]["value"], lines[1:]))
    return out


def check_commit_ops(ops, files):
    """Each op is the right kind and carries the right bytes or digest."""
    for op in ops:
        v = op["value"]
        data = files[v["path"]]
        if op["key"] == "lfsFile":
            check(v["oid"] == sha256(data) and v["size"] == len(data) and v["algo"] == "sha256",
                  "lfsFile %s: %r" % (v["path"], v))
        else:
            check(op["key"] == "file" and v["encoding"] == "base64", "op %r" % op)
            check(base64.b64decode(v["content"]) == data, "file %s: other content" % v["path"])


def storage_puts(env):
    return env.hub.requests(server="storage", method="PUT")


def received(entries):
    return sum(e.get("received", 0) for e in entries)


def summary(r):
    """The --json summary (stdout)."""
    check(r.returncode == 0, "exit %d\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr))
    check(TOKEN not in r.stdout + r.stderr, "the token was printed")
    return json.loads(r.stdout)


def digest_of(data, lfs):
    return sha256(data) if lfs else git_blob_sha1(data)


def blob(n, seed):
    """n deterministic bytes, different per seed."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d/%d" % (seed, i)).digest() * 64
        i += 1
    return bytes(out[:n])
