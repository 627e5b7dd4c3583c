"""test_hub_publish.py -- publishing end to end against the mock Hub: a
folder uploaded with `flashify upload` and fetched back with `flashify
download` is byte-identical; the one-liner `flashify ORG/NAME --strict
--push-to-hub ME/NAME` downloads, converts, verifies and publishes the
very bytes it wrote, with a card naming the source as base_model and its
license; nothing is published when the check fails or no token is there."""

import json
import os

from hubtest import (ROOT, TOKEN, check, check_fail, check_ok, git_blob_sha1, run_tests, sha256,
                     stories_files)
from uploadtest import UpEnv, blob, check_remote, upload_commits


def tree(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def test_upload_then_download_is_byte_identical():
    with UpEnv() as env:
        files = {
            "config.json": open(os.path.join(ROOT, "examples", "stories260K", "config.json"),
                                "rb").read(),
            "model-00001-of-00002.safetensors": blob((5 << 20) + 3, 1),   # multipart
            "model-00002-of-00002.safetensors": blob(300001, 2),          # basic
            "model.safetensors.index.json": b'{"metadata": {}, "weight_map": '
                                            b'{"a": "model-00001-of-00002.safetensors", '
                                            b'"b": "model-00002-of-00002.safetensors"}}',
            "tokenizer.json": b'{"version": "1.0"}',
            "generation_config.json": b'{"bos_token_id": 1}',
            "README.md": b"---\ntags:\n- flashnorm\n---\n",
        }
        d = env.folder("out", files)
        check_ok(env.upload(d, "me/round"), "upload")
        r = env.download("me/round")
        check_ok(r, "download")
        snap = r.stdout.strip()
        got = tree(snap)
        # download fetches what a conversion needs (not README.md).
        want = {k: v for k, v in files.items() if k != "README.md"}
        check(set(got) == set(want), "downloaded %s, expected %s" % (sorted(got), sorted(want)))
        for k, v in want.items():
            check(got[k] == v, "%s differs after the round trip" % k)
        # The cache names each blob by the digest of the bytes uploaded.
        rd = env.repo_dir("me/round")
        for k, v in want.items():
            etag = sha256(v) if k.endswith(".safetensors") else git_blob_sha1(v)
            check(os.path.exists(os.path.join(rd, "blobs", etag)), "blob of %s missing" % k)


def src_repo(env, example="stories260K"):
    files = stories_files()
    src = os.path.join(ROOT, "examples", example)
    for n in ("config.json", "generation_config.json", "model.safetensors"):
        with open(os.path.join(src, n), "rb") as f:
            files[n] = f.read()
    env.hub.add_repo("org/" + example, files, license="apache-2.0")
    return files


def test_download_convert_verify_publish_one_liner():
    with UpEnv() as env:
        src_repo(env)
        out = os.path.join(env.tmp, "out")
        r = env.run("org/stories260K", "-o", out, "--strict", "--push-to-hub", "me/stories-FN",
                    "--json")
        check_ok(r, "the one-liner")
        check(TOKEN not in r.stdout + r.stderr, "token printed")
        lines = [l for l in r.stdout.splitlines() if l.startswith('{"repo"')]
        check(len(lines) == 1, "no upload summary on stdout: %s" % r.stdout)
        s = json.loads(lines[0])
        published = tree(out)
        repo = check_remote(env, "me/stories-FN", published)
        check(s["commit"] == repo.branches["main"] and s["commits"] == 1, "summary %r" % s)
        # Everything of the output, as the converter wrote it.
        check("model.safetensors" in published and "README.md" in published, sorted(published))
        card = published["README.md"].decode()
        front = card.split("---", 2)[1]
        check("\nbase_model: org/stories260K\n" in front, "base_model: %s" % front)
        check("\nlicense: apache-2.0\n" in front, "license: %s" % front)
        check("- flashnorm\n" in front, "tags: %s" % front)
        # The converter's digests were used: the upload read each LFS file
        # only to send it (bytes read = samples + inline files + the bytes sent).
        lfs_bytes = sum(len(v) for k, v in published.items() if k in repo.lfs)
        inline = sum(len(v) for k, v in published.items() if k not in repo.lfs)
        samples = sum(min(512, len(v)) for v in published.values())
        check(s["bytes_read"] == lfs_bytes + inline + samples + len(published["README.md"]),
              "bytes_read %d, expected %d (LFS %d + inline %d + samples %d + card check)"
              % (s["bytes_read"], lfs_bytes + inline + samples + len(published["README.md"]),
                 lfs_bytes, inline, samples))
        # Published after the download and the conversion, never before.
        t_create = env.hub.requests(path="/api/repos/create")[0]["t"]
        t_fetch = max(e["t"] for e in env.hub.requests(path="/resolve/"))
        check(t_fetch < t_create, "the upload started before the download finished")
        (hdr, ops), = upload_commits(env, "me/stories-FN")
        check(hdr["summary"].startswith("Upload FlashNorm checkpoint"), "summary %r" % hdr)


def test_nothing_is_published_when_the_check_fails_or_there_is_no_token():
    with UpEnv() as env:
        src_repo(env)
        out = os.path.join(env.tmp, "out")
        # A tolerance no F32 fold meets: --strict fails (3), nothing is sent.
        r = env.run("org/stories260K", "-o", out, "--strict", "--tolerance", "1e-12",
                    "--push-to-hub", "me/fail")
        check(r.returncode == 3, "exit %d, expected 3: %s" % (r.returncode, r.stderr))
        check("me/fail" not in env.hub.repos and not env.hub.requests(path="/api/repos/create"),
              "published a checkpoint that failed --strict")
        check(not os.path.exists(out), "output left after a failed check")
        env.hub.clear()
        r = env.run("org/stories260K", "-o", out, "--push-to-hub", "me/x", token=None)
        check_fail(r, 2, ["--push-to-hub needs a Hugging Face token"], "no token")
        check(not env.hub.requests(), "a conversion without a token talked to the Hub")
        r = env.run("org/stories260K", "-o", out, "--push-to-hub", "not a repo")
        check_fail(r, 1, ["--push-to-hub"], "bad repo id")
        r = env.run("org/stories260K", "-o", out, "--private")
        check_fail(r, 1, ["--push-to-hub"], "--private without --push-to-hub")
        check(not env.hub.requests(), "a refused command line talked to the Hub")
        # A local source: its card's license goes along.
        local = os.path.join(env.tmp, "local")
        os.makedirs(local)
        for n in ("config.json", "model.safetensors"):
            with open(os.path.join(ROOT, "examples", "stories260K", n), "rb") as f, \
                    open(os.path.join(local, n), "wb") as g:
                g.write(f.read())
        with open(os.path.join(local, "README.md"), "w") as f:
            f.write("---\nlicense: mit\nlanguage: en\n---\n# tiny\n")
        r = env.run(local, "-o", os.path.join(env.tmp, "lo"), "--push-to-hub", "me/local")
        check_ok(r, "local source")
        card = env.hub.repos["me/local"].files["README.md"].decode()
        check("\nlicense: mit\n" in card.split("---", 2)[1], "license of a local source: %s" % card)


def test_digests_made_while_writing_many_pieces():
    """The converter hashes each file as its workers write it, in file
    order, though they finish out of order: 4 threads and a 1 MiB budget
    cut every tensor into many pieces over 3 shards.  The storage checks
    every LFS object's sha256 against the bytes it receives, and the upload
    reads each file only to send it (no hashing pass of its own)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fixtures import build_model, write_checkpoint
    with UpEnv() as env:
        m = build_model("llama", dtype="BF16", tied=True, hidden=256, vocab=1024, layers=2, seed=91)
        src = os.path.join(env.tmp, "src")
        write_checkpoint(m, src, shards=3, extra_files=False)
        out = os.path.join(env.tmp, "out")
        r = env.run(src, "-o", out, "--threads", "4", "--memory", "1MiB", "--push-to-hub",
                    "me/pieces", "--json")
        check_ok(r, "a conversion in many pieces, published")
        published = tree(out)
        repo = check_remote(env, "me/pieces", published)
        shards = [k for k in published if k.endswith(".safetensors")]
        check(len(shards) == 3 and all(k in repo.lfs for k in shards), "shards %r" % shards)
        s = json.loads([l for l in r.stdout.splitlines() if l.startswith('{"repo"')][0])
        lfs_bytes = sum(len(v) for k, v in published.items() if k in repo.lfs)
        inline = sum(len(v) for k, v in published.items() if k not in repo.lfs)
        samples = sum(min(512, len(v)) for v in published.values())
        check(s["bytes_read"] == lfs_bytes + inline + samples + len(published["README.md"]),
              "bytes_read %d: the upload hashed the files again" % s["bytes_read"])


if __name__ == "__main__":
    run_tests([test_upload_then_download_is_byte_identical,
               test_download_convert_verify_publish_one_liner,
               test_nothing_is_published_when_the_check_fails_or_there_is_no_token,
               test_digests_made_while_writing_many_pieces])
