#!/usr/bin/env python3
"""fixture_digests.py -- convert every test fixture and print a digest of
each output, so two builds can be shown to write the same bytes.

    python3 scripts/fixture_digests.py FLASHIFY > digests.txt

Each line is "<case> <sha256 over the output tree>" (file names and
contents; the model card's "flashify <version>" line is part of it, so
compare builds of the same version).  Cases: every family of
tests/e2e/fixtures.py in F32/BF16/F16, tied and untied, sharded with an
alias, --keep-tied, --keep-norms, --max-shard-size, and the bundled
stories260K models.  A case the binary refuses prints its exit status and
stderr digest instead, so refusals are compared too.  Standard library
only; uses no code of flashify."""

import hashlib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import fixtures  # noqa: E402


def tree_sha(d):
    h = hashlib.sha256()
    for root, dirs, files in os.walk(d):
        dirs.sort()
        for fn in sorted(files):
            p = os.path.join(root, fn)
            h.update(os.path.relpath(p, d).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def cases():
    for fam in fixtures.FAMILIES:
        for dt in ("F32", "BF16", "F16"):
            yield "%s-%s" % (fam, dt), dict(family=fam, dtype=dt), {}, []
        yield fam + "-tied", dict(family=fam, tied=True), {}, []
        yield fam + "-untied", dict(family=fam, tied=False), {}, []
        yield fam + "-keep-norms", dict(family=fam), {}, ["--keep-norms"]
        yield fam + "-keep-tied", dict(family=fam, tied=True), {}, ["--keep-tied"]
        yield fam + "-shards", dict(family=fam), dict(shards=3), []
        yield fam + "-reshard", dict(family=fam), {}, ["--max-shard-size", "20KB"]
        yield fam + "-f32norm", dict(family=fam, norm_dtype="F32"), {}, []
    yield "llama-alias-embed", dict(family="llama", tied=True), dict(shards=2, alias="embed"), []
    yield "llama-alias-head", dict(family="llama", tied=True), dict(shards=2, alias="head"), []
    yield "deepseek-q_proj", dict(family="deepseek_v3", q_lora_rank=None), {}, []
    yield "gemma3-v5layout", dict(family="gemma3", layout="model.language_model"), {}, []
    yield "qwen2_moe-dense0", dict(family="qwen2_moe", mlp_only_layers=[1], decoder_sparse_step=2), {}, []


def main():
    flashify = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        for m in ("stories260K", "stories260K-bf16"):
            out = os.path.join(tmp, m + "-out")
            r = subprocess.run([flashify, os.path.join(ROOT, "examples", m), "-o", out, "-q"],
                               capture_output=True)
            print(m, tree_sha(out) if r.returncode == 0 else "rc=%d" % r.returncode, flush=True)
        for name, build, write, flags in cases():
            src = os.path.join(tmp, name)
            out = os.path.join(tmp, name + "-out")
            try:
                model = fixtures.build_model(**build)
                fixtures.write_checkpoint(model, src, **write)
            except Exception as e:  # a combination the generator does not make
                print(name, "fixture-error", type(e).__name__, flush=True)
                continue
            r = subprocess.run([flashify, src, "-o", out, "-q", "--no-fsync"] + flags,
                               capture_output=True)
            if r.returncode == 0:
                print(name, tree_sha(out), flush=True)
            else:
                print(name, "rc=%d" % r.returncode,
                      hashlib.sha256(r.stderr.replace(tmp.encode(), b"TMP")).hexdigest()[:16],
                      flush=True)


if __name__ == "__main__":
    main()
