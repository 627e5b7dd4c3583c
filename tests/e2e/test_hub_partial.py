"""test_hub_partial.py -- partial files left in blobs/ by an earlier run.

The digest is computed while the bytes arrive (a thread reads back what the
transfer wrote), so on resume it must start from the bytes already on disk,
not from what the process assumes they are: a good prefix is resumed with
Range and accepted, a prefix with wrong bytes is caught by the final check,
deleted and fetched again from byte 0, a complete partial costs no transfer,
an oversized one is restarted.  Each case runs for an LFS file (sha256,
served by the CDN) and a git file (sha1 over "blob <total>\\0" + data, whose
header needs the full size even when only the tail is transferred), and
with the digest computed inline and on the hasher thread
(FLASHIFY_HASH_THREAD=0 / 1; unset, flashify picks by the cores free)."""

import os

from hubtest import (Env, WANTED, blob_bytes, check, check_layout, check_ok, git_blob_sha1,
                     run_tests, sha256, stories_files)

BIG = 12 << 20
GIT = 3 << 20
MODES = ("0", "1")   # FLASHIFY_HASH_THREAD: inline, hasher thread


def repo_with_partials(env, lfs_part=None, git_part=None):
    """A repo whose model.safetensors (LFS) and tokenizer.json (git file)
    are big; lfs_part / git_part(data) give the bytes to leave in each
    one's blobs/<etag>.incomplete (None: no partial)."""
    files = stories_files()
    files["model.safetensors"] = blob_bytes(BIG, 21)
    files["tokenizer.json"] = blob_bytes(GIT, 22)
    repo = env.hub.add_repo("org/part", files)
    blobs = os.path.join(env.repo_dir("org/part"), "blobs")
    os.makedirs(blobs)
    for fn, name, etag in ((lfs_part, "model.safetensors", sha256(files["model.safetensors"])),
                           (git_part, "tokenizer.json", git_blob_sha1(files["tokenizer.json"]))):
        if fn is not None:
            with open(os.path.join(blobs, etag + ".incomplete"), "wb") as f:
                f.write(fn(files[name]))
    return repo, files


def flip(data, at):
    """data with the byte at `at` changed."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def ranges(env, server, name):
    """(Range header, status) of each GET of `name` (the CDN serves LFS
    blobs by sha256, so for it every GET counts)."""
    reqs = env.hub.requests(server=server, method="GET",
                            path=None if server == "cdn" else "/" + name + "$")
    return [(e["headers"].get("range"), e["status"]) for e in reqs]


def no_partials(env):
    blobs = os.listdir(os.path.join(env.repo_dir("org/part"), "blobs"))
    check(not any(b.endswith(".incomplete") for b in blobs), "partial left: %r" % blobs)


def test_good_prefix_is_resumed():
    for mode in MODES:
        a, b = (5 << 20) + 3, (1 << 20) + 7
        with Env() as env:
            repo, files = repo_with_partials(env, lambda d: d[:a], lambda d: d[:b])
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "resume both, mode %s" % mode)
            check(ranges(env, "cdn", "model.safetensors") == [("bytes=%d-" % a, 206)],
                  "LFS GETs %r" % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json") == [("bytes=%d-" % b, 206)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})
            no_partials(env)


def test_bad_prefix_is_caught_and_fetched_again():
    for mode in MODES:
        a, b = (5 << 20) + 3, (1 << 20) + 7
        with Env() as env:
            repo, files = repo_with_partials(env, lambda d: flip(d[:a], a - 1000),
                                             lambda d: flip(d[:b], 17))
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "bad prefixes")
            check(ranges(env, "cdn", "model.safetensors") == [("bytes=%d-" % a, 206), (None, 200)],
                  "LFS GETs %r" % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json") == [("bytes=%d-" % b, 206), (None, 200)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})
            no_partials(env)


def test_complete_and_oversized_partials():
    for mode in MODES:
        with Env() as env:
            # A complete, correct LFS partial (a run killed just before the
            # rename) costs no transfer; an oversized git partial restarts.
            repo, files = repo_with_partials(env, lambda d: d, lambda d: d + b"extra")
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "complete / oversized")
            check(ranges(env, "cdn", "model.safetensors") == [], "LFS GETs %r"
                  % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json") == [(None, 200)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})
            no_partials(env)
        with Env() as env:
            # Complete length, wrong bytes: rejected without a request, then
            # fetched once from byte 0.
            repo, files = repo_with_partials(env, lambda d: flip(d, BIG // 2),
                                             lambda d: flip(d, GIT - 1))
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "complete but wrong")
            check(ranges(env, "cdn", "model.safetensors") == [(None, 200)], "LFS GETs %r"
                  % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json") == [(None, 200)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})


def test_200_to_a_resumed_request_restarts_the_digest():
    for mode in MODES:
        a, b = (5 << 20) + 3, (1 << 20) + 7
        with Env() as env:
            repo, files = repo_with_partials(env, lambda d: d[:a], lambda d: d[:b])
            env.hub.add_fault("ignore_range", server="cdn", method="GET", times=1)
            env.hub.add_fault("ignore_range", server="hub", method="GET", path="/tokenizer.json$",
                              times=1)
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "200 to Range")
            check(ranges(env, "cdn", "model.safetensors") == [("bytes=%d-" % a, 200)],
                  "LFS GETs %r" % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json") == [("bytes=%d-" % b, 200)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})


def test_corrupt_then_drop_in_one_run():
    # One process: wrong bytes of the right length (caught, fetched again
    # from 0 on a fresh digest), then a drop mid-body on that second GET
    # (resumed at the exact byte, the digest carrying on).
    after, gafter = (3 << 20) + 5, (1 << 20) + 9
    for mode in MODES:
        with Env() as env:
            repo, files = repo_with_partials(env)
            env.hub.add_fault("corrupt", server="cdn", method="GET", times=1)
            env.hub.add_fault("drop", server="cdn", method="GET", after=after, times=1)
            env.hub.add_fault("corrupt", server="hub", method="GET", path="/tokenizer.json$", times=1)
            env.hub.add_fault("drop", server="hub", method="GET", path="/tokenizer.json$",
                              after=gafter, times=1)
            r = env.download("org/part", FLASHIFY_HASH_THREAD=mode)
            check_ok(r, "corrupt then drop, mode %s" % mode)
            check(ranges(env, "cdn", "model.safetensors")
                  == [(None, 200), (None, "drop"), ("bytes=%d-" % after, 206)],
                  "LFS GETs %r" % ranges(env, "cdn", "model.safetensors"))
            check(ranges(env, "hub", "tokenizer.json")
                  == [(None, 200), (None, "drop"), ("bytes=%d-" % gafter, 206)],
                  "git file GETs %r" % ranges(env, "hub", "tokenizer.json"))
            check_layout(env, repo, {n: files[n] for n in WANTED})
            no_partials(env)


if __name__ == "__main__":
    run_tests([test_good_prefix_is_resumed, test_bad_prefix_is_caught_and_fetched_again,
               test_complete_and_oversized_partials,
               test_200_to_a_resumed_request_restarts_the_digest,
               test_corrupt_then_drop_in_one_run])
