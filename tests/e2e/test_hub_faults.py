"""test_hub_faults.py -- every fault of hub-protocol.md §8 against
`flashify download`: survived with the right bytes, or reported with a clear
message and the documented exit code (2: the repo cannot be converted,
4: network, 5: local I/O)."""

import os
import resource
import signal

from hubtest import (Env, TOKEN, WANTED, blob_bytes, check, check_fail, check_layout,
                     check_ok, run_tests, sha256, stories_files)

BIG = 12 << 20   # > 10 MiB: Python's resume granularity; ours is the byte


def big_repo(env, name="org/big"):
    files = stories_files()
    files["model.safetensors"] = blob_bytes(BIG, 7)
    return env.hub.add_repo(name, files), files


def wanted(files):
    return {n: files[n] for n in WANTED}


def cdn_gets(env):
    return [e for e in env.hub.requests(server="cdn", method="GET")]


def test_drop_mid_body_resumes_at_exact_byte():
    for after in (3 << 20, 11 << 20 | 12345):
        with Env() as env:
            repo, files = big_repo(env)
            env.hub.add_fault("drop", server="cdn", method="GET", after=after, times=2)
            r = env.download("org/big")
            check_ok(r, "drop at %d" % after)
            check_layout(env, repo, wanted(files))
            gets = cdn_gets(env)
            check(len(gets) == 3, "expected 3 CDN GETs, got %r" % [(g["status"], g["headers"].get("range")) for g in gets])
            check("range" not in gets[0]["headers"], "first GET had a Range")
            # Second drop fires at the same absolute offset, so the second
            # GET brings nothing new and the third resumes from there too.
            for g in gets[1:]:
                check(g["headers"].get("range") == "bytes=%d-" % after,
                      "resumed with %r, expected bytes=%d-" % (g["headers"].get("range"), after))
            check(gets[-1]["status"] == 206, "last GET status %r" % gets[-1]["status"])


def test_drops_without_progress_give_up():
    with Env() as env:
        big_repo(env)
        env.hub.add_fault("drop", server="cdn", method="GET", after=3 << 20, times=None)
        r = env.download("org/big")
        check_fail(r, 4, ["model.safetensors", "no progress"], "endless drops")
        gets = cdn_gets(env)
        check(len(gets) == 7, "expected 1 + 1 + 5 GETs, got %d" % len(gets))
        part = [n for n in os.listdir(os.path.join(env.repo_dir("org/big"), "blobs"))
                if n.endswith(".incomplete")]
        check(len(part) == 1, "the partial file should be kept for the next run: %r" % part)


def test_redirect_chain_and_416():
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("hop", server="cdn", method="GET", times=1)
        r = env.download("org/big")
        check_ok(r, "Hub -> CDN -> CDN2")
        hops = env.hub.requests(server="cdn2")
        check(len(hops) == 1 and hops[0]["status"] == 200, "CDN2 log %r" % hops)
        for e in env.hub.requests():
            if e["server"] != "hub":
                check("authorization" not in e["headers"], "token sent to %s" % e["server"])
        check_layout(env, repo, wanted(files))
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("drop", server="cdn", method="GET", after=3 << 20, times=1)
        env.hub.add_fault("status", server="cdn", method="GET", status=416, times=1,
                          code="InvalidRange", message="range not satisfiable")
        r = env.download("org/big")
        check_ok(r, "416 on resume")
        gets = cdn_gets(env)
        check([g["headers"].get("range") for g in gets] == [None, "bytes=%d-" % (3 << 20), None],
              "ranges %r" % [g["headers"].get("range") for g in gets])
        check_layout(env, repo, wanted(files))


def test_200_instead_of_206_restarts_cleanly():
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("drop", server="cdn", method="GET", after=5 << 20, times=1)
        env.hub.add_fault("ignore_range", server="cdn", method="GET", times=1)
        r = env.download("org/big")
        check_ok(r, "200 to a Range request")
        check_layout(env, repo, wanted(files))
        gets = cdn_gets(env)
        check(gets[1]["headers"].get("range") == "bytes=%d-" % (5 << 20) and gets[1]["status"] == 200,
              "second GET: %r %r" % (gets[1]["headers"].get("range"), gets[1]["status"]))


def test_retry_after_and_ratelimit_are_honoured():
    with Env() as env:
        repo = env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("status", server="hub", path="/revision/", status=429, times=1,
                          code="RateLimited", headers={"Retry-After": "1"})
        env.hub.add_fault("status", server="hub", method="HEAD", path="/config.json$", status=429,
                          times=1, headers={"RateLimit": '"resolvers";r=0;t=0',
                                            "RateLimit-Policy": '"fixed window";"resolvers";q=3000;w=300'})
        r = env.download("org/tiny")
        check_ok(r, "429s")
        rev = env.hub.requests(path="/revision/")
        check([e["status"] for e in rev] == [429, 200], "revision statuses %r" % rev)
        check(rev[1]["t"] - rev[0]["t"] >= 0.95, "Retry-After: 1 not honoured (%.3f s)"
              % (rev[1]["t"] - rev[0]["t"]))
        heads = env.hub.requests(method="HEAD", path="/config.json$")
        check([e["status"] for e in heads] == [429, 200], "HEAD statuses %r" % heads)
        check(heads[1]["t"] - heads[0]["t"] >= 0.95, "RateLimit t=0 must wait 1 s (%.3f s)"
              % (heads[1]["t"] - heads[0]["t"]))
        check_layout(env, repo, wanted(stories_files()))
        # Rate limited for good: exit 4 with a message.
        env.hub.add_fault("status", server="hub", path="/revision/", status=429, times=None,
                          code="RateLimited", headers={"Retry-After": "0"})
        r = env.download("org/other")
        check_fail(r, 4, ["rate limited"], "persistent 429")


def test_transient_server_errors():
    with Env() as env:
        repo = env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("status", server="hub", path="/tree/", status=502, times=2)
        env.hub.add_fault("status", server="hub", method="HEAD", status=503, times=2)
        env.hub.add_fault("status", server="hub", method="GET", path="/resolve/", status=500, times=1)
        env.hub.add_fault("status", server="cdn", method="GET", status=408, times=1)
        env.hub.add_fault("reset", server="hub", path="/revision/", times=2)
        r = env.download("org/tiny")
        check_ok(r, "5xx, 408, reset")
        check_layout(env, repo, wanted(stories_files()))
        check([e["status"] for e in env.hub.requests(path="/revision/")] == ["reset", "reset", 200],
              "revision log")
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("status", server="hub", method="HEAD", status=503, times=None)
        r = env.download("org/tiny")
        check_fail(r, 4, ["503"], "persistent 503")
        counts = {}
        for e in env.hub.requests(method="HEAD"):
            counts[e["path"]] = counts.get(e["path"], 0) + 1
        check(max(counts.values()) == 6, "expected 1 + 5 retries of a HEAD: %r" % counts)
    with Env() as env:
        env.hub.close()  # nothing listens: connection refused
        r = env.download("org/tiny")
        check_fail(r, 4, [], "connection refused")


def test_stall_is_cut_by_the_low_speed_timeout():
    with Env() as env:
        repo = env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("stall", server="cdn", method="GET", seconds=4, times=1)
        r = env.download("org/tiny", HF_HUB_DOWNLOAD_TIMEOUT="1")
        check_ok(r, "stalled CDN")
        gets = cdn_gets(env)
        # >= 2: a heavily loaded CI machine may time out once more.
        check(len(gets) >= 2 and gets[-1]["status"] == 200, "expected a retry after the stall: %r"
              % [g["status"] for g in gets])
        check_layout(env, repo, wanted(stories_files()))


def test_wrong_bytes_are_rejected():
    with Env() as env:
        repo, files = big_repo(env)
        # Corrupt once: the blob is fetched again and then accepted.
        env.hub.add_fault("corrupt", server="cdn", method="GET", times=1)
        r = env.download("org/big")
        check_ok(r, "one corrupt transfer")
        check_layout(env, repo, wanted(files))
        check(len(cdn_gets(env)) == 2, "corrupt blob not re-fetched")
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("corrupt", server="cdn", method="GET", times=None)
        r = env.download("org/big")
        check_fail(r, 4, ["model.safetensors", "sha256", sha256(files["model.safetensors"])],
                   "always corrupt")
        blobs = os.listdir(os.path.join(env.repo_dir("org/big"), "blobs"))
        check(sha256(files["model.safetensors"]) not in blobs
              and not any(b.endswith(".incomplete") for b in blobs),
              "bad blob or partial kept: %r" % blobs)
        check(len(cdn_gets(env)) == 2, "expected exactly one retry")
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        # A git file with wrong bytes: its git blob sha1 catches it.
        env.hub.add_fault("corrupt", server="hub", method="GET", path="/config.json$", times=None)
        r = env.download("org/tiny")
        check_fail(r, 4, ["config.json", "git blob sha1"], "corrupt git file")
    with Env() as env:
        big_repo(env)
        env.hub.add_fault("short", server="cdn", method="GET", times=None)
        r = env.download("org/big")
        check_fail(r, 4, ["model.safetensors", "size"], "short body")


def test_access_errors():
    with Env() as env:
        env.hub.add_repo("org/gated", stories_files(), gated=True, approved=["hf_approved"])
        msg = "request access at %s/org/gated and set HF_TOKEN" % env.hub.endpoint
        r = env.download("org/gated", token=None)
        check_fail(r, 2, [msg], "gated, no token")
        check(env.hub.requests()[-1]["status"] == 401, "expected a 401")
        r = env.download("org/gated")
        check_fail(r, 2, [msg], "gated, unapproved token")
        check(env.hub.requests()[-1]["status"] == 403, "expected a 403: %r" % env.hub.requests()[-1])
        r = env.download("org/gated", token="hf_approved")
        check_ok(r, "gated, approved token")
        env.hub.add_repo("org/private", stories_files(), private=True)
        r = env.download("org/private", token=None)
        check_fail(r, 2, ["org/private", "not found", "HF_TOKEN"], "private, no token")
        r = env.download("org/missing")
        check_fail(r, 2, ["org/missing", "not found"], "missing repo")
        env.hub.add_fault("status", server="hub", path="/revision/", status=403, code="Forbidden",
                          message="Access to this resource is disabled.")
        r = env.download("org/gated", token="hf_approved")
        check_fail(r, 2, ["org/gated", "disabled"], "disabled repo")
        env.hub.valid_tokens = {"hf_good"}
        r = env.download("org/gated")
        check_fail(r, 2, ["Invalid credentials", "hf auth login"], "invalid token")


def test_metadata_faults():
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("no_linked_size", server="hub", method="HEAD", times=None)
        r = env.download("org/tiny")
        check_fail(r, 4, ["X-Linked-Size"], "302 without X-Linked-Size")
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("no_commit", server="hub", method="HEAD", path="/config.json$", times=None)
        r = env.download("org/tiny")
        check_fail(r, 4, ["X-Repo-Commit"], "HEAD without X-Repo-Commit")
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("no_etag", server="hub", method="HEAD", path="/config.json$", times=None)
        r = env.download("org/tiny")
        check_fail(r, 4, ["ETag"], "HEAD without an etag")
    with Env() as env:
        env.hub.add_repo("org/tiny", stories_files())
        env.hub.add_fault("status", server="hub", method="HEAD", path="/config.json$", status=404,
                          code="EntryNotFound", message="config.json does not exist", times=None)
        r = env.download("org/tiny")
        check_fail(r, 2, ["config.json not found"], "EntryNotFound")


def _fsize_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, resource.RLIM_INFINITY))


def test_disk_full_keeps_cache_consistent():
    import subprocess
    from hubtest import FLASHIFY
    with Env() as env:
        repo, files = big_repo(env)
        # RLIMIT_FSIZE stands in for a full disk: writes past 4 MiB fail.
        r = subprocess.run([FLASHIFY, "download", "org/big"], env=env.env(),
                           capture_output=True, text=True, timeout=60,
                           preexec_fn=_fsize_limit)
        check_fail(r, 5, ["cannot write"], "disk full")
        rd = env.repo_dir("org/big")
        part = os.path.join(rd, "blobs", sha256(files["model.safetensors"]) + ".incomplete")
        check(os.path.getsize(part) == 4 << 20, "partial file is %d bytes" % os.path.getsize(part))
        check(not os.path.exists(os.path.join(rd, "snapshots", repo.commit, "model.safetensors")),
              "pointer to an incomplete blob")
        env.hub.clear()
        r = env.download("org/big")
        check_ok(r, "after freeing space")
        check(cdn_gets(env)[0]["headers"].get("range") == "bytes=%d-" % (4 << 20),
              "did not resume the partial file")
        check_layout(env, repo, wanted(files))


if __name__ == "__main__":
    run_tests([test_drop_mid_body_resumes_at_exact_byte, test_drops_without_progress_give_up,
               test_redirect_chain_and_416, test_200_instead_of_206_restarts_cleanly,
               test_retry_after_and_ratelimit_are_honoured, test_transient_server_errors,
               test_stall_is_cut_by_the_low_speed_timeout, test_wrong_bytes_are_rejected,
               test_access_errors, test_metadata_faults, test_disk_full_keeps_cache_consistent])
