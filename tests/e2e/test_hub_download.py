"""test_hub_download.py -- `flashify download REPO` against the mock Hub:
the cache layout file by file, file selection, pagination, revisions, a
renamed repo, no transfer on a second run, offline runs, token hygiene."""

import json
import os

from hubtest import (Env, TOKEN, WANTED, blob_bytes, check, check_fail, check_layout, git_blob_sha1,
                     check_ok, run_tests, stories_files)


def wanted(files, names=WANTED):
    return {n: files[n] for n in names}


def test_layout_and_headers():
    with Env() as env:
        files = stories_files()
        repo = env.hub.add_repo("org/tiny", files)
        r = env.download("org/tiny", "--verbose")
        check_ok(r, "download")
        snap = check_layout(env, repo, wanted(files))
        check(r.stdout.strip() == snap, "printed %r, expected %r" % (r.stdout, snap))
        check(TOKEN not in r.stdout + r.stderr, "token printed with --verbose")
        heads = env.hub.requests(method="HEAD")
        check(len(heads) == len(WANTED), "%d HEADs, expected %d" % (len(heads), len(WANTED)))
        for e in heads:
            check(e["headers"].get("accept-encoding") == "identity",
                  "HEAD %s had Accept-Encoding %r" % (e["path"], e["headers"].get("accept-encoding")))
        for e in env.hub.requests(server="hub"):
            check(e["headers"].get("authorization") == "Bearer " + TOKEN,
                  "hub request %s without the token" % e["path"])
        cdn = env.hub.requests(server="cdn")
        check(len(cdn) == 1 and cdn[0]["status"] == 200, "CDN log: %r" % cdn)
        for e in cdn:
            check("authorization" not in e["headers"], "token leaked to the CDN")
        for e in env.hub.requests():
            check("original/" not in e["path"] and ".bin" not in e["path"]
                  and ".onnx" not in e["path"] and "README" not in e["path"],
                  "fetched an unwanted file: %s" % e["path"])
        rd = env.repo_dir("org/tiny")
        leftovers = [n for n in os.listdir(os.path.join(rd, "blobs")) if "incomplete" in n]
        check(not leftovers, "left %s" % leftovers)


def test_second_run_no_transfer_and_offline():
    with Env() as env:
        files = stories_files()
        repo = env.hub.add_repo("org/tiny", files)
        r1 = env.download("org/tiny")
        check_ok(r1, "first run")
        env.hub.clear()
        r2 = env.download("org/tiny")
        check_ok(r2, "second run")
        check(r2.stdout == r1.stdout, "second run printed another snapshot")
        check(not env.hub.requests(path="/resolve/"), "second run touched /resolve: %r"
              % [e["path"] for e in env.hub.requests(path="/resolve/")])
        check(not env.hub.requests(server="cdn"), "second run used the CDN")
        # A commit revision that is cached: no request at all.
        env.hub.clear()
        r3 = env.download("org/tiny@" + repo.commit)
        check_ok(r3, "commit revision")
        check(not env.hub.requests(), "a cached commit made requests: %r"
              % [e["path"] for e in env.hub.requests()])
        # Offline: no request at all, same snapshot.
        env.hub.clear()
        r4 = env.download("org/tiny", HF_HUB_OFFLINE="1")
        check_ok(r4, "HF_HUB_OFFLINE=1")
        check(r4.stdout == r1.stdout, "offline run gave another snapshot")
        r5 = env.download("org/tiny", "--offline")
        check_ok(r5, "--offline")
        check(not env.hub.requests(), "offline runs made requests: %r" % env.hub.log)
        # Offline for a repo that is not cached: a network error (4).
        r6 = env.download("org/other", HF_HUB_OFFLINE="1")
        check_fail(r6, 4, ["org/other", "offline"], "offline, not cached")
        # The Hub down: fall back to the cache, as Python does.
        env.hub.add_fault("status", server="hub", status=503, times=None)
        r7 = env.download("org/tiny")
        check_ok(r7, "hub down, cached")
        check(r7.stdout == r1.stdout, "fallback gave another snapshot")


def test_reuses_blobs_and_python_caches():
    with Env() as env:
        files = stories_files()
        env.hub.add_repo("org/tiny", files)
        check_ok(env.download("org/tiny"), "first commit")
        # A new commit on main that only changes config.json: the weights'
        # blob is reused, only config.json travels.
        files2 = dict(files)
        files2["config.json"] = files["config.json"].replace(b"}", b', "note": "v2"}', 1)
        check(files2["config.json"] != files["config.json"], "config not changed")
        repo2 = env.hub.add_repo("org/tiny", files2, commit="c" * 40)
        env.hub.clear()
        r = env.download("org/tiny")
        check_ok(r, "second commit")
        check(r.stdout.strip().endswith("/snapshots/" + "c" * 40), "snapshot %r" % r.stdout)
        check(not env.hub.requests(server="cdn"), "the unchanged weights were transferred again")
        gets = env.hub.requests(method="GET", path="/resolve/")
        check([g["path"].rsplit("/", 1)[1] for g in gets] == ["config.json"],
              "transferred %r" % [g["path"] for g in gets])
        with open(os.path.join(env.repo_dir("org/tiny"), "refs", "main")) as f:
            check(f.read() == "c" * 40, "refs/main not moved to the new commit")
        check_layout(env, repo2, wanted(files2),
                     other_blobs=[git_blob_sha1(files["config.json"])])
    with Env() as env:
        # A cache written by hand exactly as huggingface_hub writes it
        # (hub-protocol.md §4): flashify reuses it without a transfer.
        files = stories_files()
        repo = env.hub.add_repo("org/py", files)
        rd = env.repo_dir("org/py")
        os.makedirs(os.path.join(rd, "blobs"))
        os.makedirs(os.path.join(rd, "refs"))
        snap = os.path.join(rd, "snapshots", repo.commit)
        os.makedirs(snap)
        with open(os.path.join(rd, "refs", "main"), "w") as f:
            f.write(repo.commit)
        for n in WANTED:
            etag = repo.etag(n)
            with open(os.path.join(rd, "blobs", etag), "wb") as f:
                f.write(files[n])
            os.symlink("../../blobs/" + etag, os.path.join(snap, n))
        r = env.download("org/py")
        check_ok(r, "Python-made cache")
        check(r.stdout.strip() == snap, "snapshot %r, expected %r" % (r.stdout, snap))
        check(not env.hub.requests(path="/resolve/") and not env.hub.requests(server="cdn"),
              "a Python-made cache was downloaded again")
        r = env.download("org/py", HF_HUB_OFFLINE="1")
        check_ok(r, "Python-made cache, offline")
        # Without symlinks (HF_HUB_DISABLE_SYMLINKS / Windows): regular files.
        os.unlink(os.path.join(snap, "config.json"))
        with open(os.path.join(snap, "config.json"), "wb") as f:
            f.write(files["config.json"])
        env.hub.clear()
        check_ok(env.download("org/py"), "regular file in snapshots/")
        check(not env.hub.requests(path="/resolve/"), "a regular-file pointer was re-fetched")


def test_sharded_index_selects_shards():
    with Env() as env:
        files = stories_files()
        del files["model.safetensors"]
        files["model-00001-of-00002.safetensors"] = blob_bytes(300000, 1)
        files["model-00002-of-00002.safetensors"] = blob_bytes(200000, 2)
        files["consolidated.safetensors"] = blob_bytes(1000, 3)  # not in the index
        files["model.safetensors.index.json"] = json.dumps({
            "metadata": {"total_size": 500000},
            "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                           "b.weight": "model-00002-of-00002.safetensors",
                           "c.weight": "model-00002-of-00002.safetensors"}}).encode()
        repo = env.hub.add_repo("org/sharded", files)
        r = env.download("org/sharded")
        check_ok(r, "sharded")
        names = [n for n in WANTED if n != "model.safetensors"] + [
            "model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"]
        check_layout(env, repo, wanted(files, names))
        check(not env.hub.requests(path="consolidated"), "fetched consolidated.safetensors")


def test_no_safetensors_and_unsafe_names():
    with Env() as env:
        env.hub.add_repo("org/pickles", {"config.json": b"{}", "pytorch_model.bin": b"x"})
        r = env.download("org/pickles")
        check_fail(r, 2, ["org/pickles", "safetensors"], "no safetensors")
        env.hub.add_repo("org/noconfig", {"model.safetensors": b"x" * 10})
        r = env.download("org/noconfig")
        check_fail(r, 2, ["config.json"], "no config.json")
        for i, bad in enumerate(["../evil.json", "/etc/evil.json", "a\\b.json", "x\x01.json",
                                 "a/../../b.json", "./config.json"]):
            files = stories_files()
            files[bad] = b"{}"
            env.hub.add_repo("org/evil%d" % i, files)
            r = env.download("org/evil%d" % i)
            check_fail(r, 2, ["unsafe file name"], "unsafe name %r" % bad)
            check(not os.path.exists(os.path.join(env.tmp, "evil.json")), "wrote outside")
        # The index may not point outside the repo either.
        files = stories_files()
        files["model.safetensors.index.json"] = json.dumps(
            {"weight_map": {"a": "../../../x.safetensors"}}).encode()
        env.hub.add_repo("org/evilindex", files)
        r = env.download("org/evilindex")
        check_fail(r, 2, ["unsafe file"], "unsafe index entry")


def test_pagination_revisions_and_rename():
    with Env(page_size=2) as env:
        files = stories_files()
        repo = env.hub.add_repo("org/tiny", files, branches={"v1.0": "a" * 40,
                                                             "refs/pr/1": "b" * 40})
        repo.branches["v1.0"] = repo.commit  # tags map to the same commit
        repo.branches["refs/pr/1"] = repo.commit
        r = env.download("org/tiny@v1.0")
        check_ok(r, "@v1.0")
        trees = env.hub.requests(path="/tree/")
        check(len(trees) >= 5, "expected several tree pages, got %d" % len(trees))
        check(any("cursor=" in e["path"] for e in trees), "no paginated request")
        for e in trees:
            check("recursive=true" in e["path"] and "expand=false" in e["path"],
                  "tree query %s" % e["path"])
        check_layout(env, repo, wanted(files), rev="v1.0")
        r = env.download("org/tiny", "--revision", "refs/pr/1")
        check_ok(r, "--revision refs/pr/1")
        check(env.hub.requests(path="/revision/refs%2Fpr%2F1$"), "revision not percent-encoded")
        with open(os.path.join(env.repo_dir("org/tiny"), "refs", "refs", "pr", "1")) as f:
            check(f.read() == repo.commit, "refs/refs/pr/1")
        r = env.download("org/tiny@nope")
        check_fail(r, 2, ["revision 'nope' not found"], "missing revision")
    with Env() as env:
        files = stories_files()
        repo = env.hub.add_repo("neworg/tiny", files)
        env.hub.renames["oldorg/tiny"] = "neworg/tiny"
        env.hub.weak_etag = True
        r = env.download("oldorg/tiny")
        check_ok(r, "renamed repo")
        heads = env.hub.requests(method="HEAD")
        check(any(e["path"].startswith("/oldorg/") and e["status"] == 307 for e in heads),
              "no 307 from the old name")
        check(any(e["path"].startswith("/neworg/") for e in heads), "relative Location not followed")
        api = env.hub.requests(path="^/api/models/oldorg/tiny/")
        check(api and all(e["status"] == 307 for e in api), "API of the old name: %r" % api)
        rd = os.path.join(env.cache, "models--oldorg--tiny")
        with open(os.path.join(rd, "blobs", git_blob_sha1(files["config.json"])),
                  "rb") as f:
            check(f.read() == files["config.json"], "weak etag blob")


def test_xet_and_token_sources():
    with Env() as env:
        files = stories_files()
        repo = env.hub.add_repo("org/xet", files, xet=["model.safetensors"], gated=True,
                                approved=[TOKEN])
        # Token from $HF_HOME/token (with a trailing newline to strip).
        os.makedirs(env.home, exist_ok=True)
        with open(os.path.join(env.home, "token"), "w") as f:
            f.write(TOKEN + "\n")
        r = env.download("org/xet", token=None)
        check_ok(r, "token from HF_HOME/token")
        check_layout(env, repo, wanted(files))
        for e in env.hub.requests(server="cdn"):
            check("authorization" not in e["headers"], "token leaked to the CDN")
        env.hub.clear()
        os.unlink(os.path.join(env.home, "token"))
        r = env.download("org/xet", "--token", TOKEN, token=None)
        check_ok(r, "--token")
        check(env.hub.requests()[0]["headers"].get("authorization") == "Bearer " + TOKEN,
              "--token not sent")
        # HUGGING_FACE_HUB_TOKEN, and HF_TOKEN_PATH pointing elsewhere.
        env.hub.clear()
        r = env.download("org/xet", token=None, HUGGING_FACE_HUB_TOKEN=TOKEN)
        check_ok(r, "HUGGING_FACE_HUB_TOKEN")
        check(env.hub.requests()[0]["headers"].get("authorization") == "Bearer " + TOKEN,
              "HUGGING_FACE_HUB_TOKEN not sent")
        tp = os.path.join(env.tmp, "elsewhere-token")
        with open(tp, "w") as f:
            f.write("  " + TOKEN + "\r\n")
        env.hub.clear()
        r = env.download("org/xet", token=None, HF_TOKEN_PATH=tp)
        check_ok(r, "HF_TOKEN_PATH")
        check(env.hub.requests()[0]["headers"].get("authorization") == "Bearer " + TOKEN,
              "HF_TOKEN_PATH token not sent (or not trimmed)")
        # HF_HUB_CACHE moves the cache, HF_HOME stays for the token.
        other = os.path.join(env.tmp, "other-cache")
        r = env.download("org/xet", HF_HUB_CACHE=other)
        check_ok(r, "HF_HUB_CACHE")
        check(r.stdout.strip().startswith(os.path.join(other, "models--org--xet", "snapshots")),
              "HF_HUB_CACHE ignored: %r" % r.stdout)


def test_tls_is_verified():
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("openssl"):
        print("skip test_tls_is_verified: no openssl command")
        return
    d = tempfile.mkdtemp()
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    env = Env()
    env.hub.close()
    env.hub = __import__("mock_hub").MockHub(tls=(cert, key))
    with env:
        repo = env.hub.add_repo("org/tiny", stories_files())
        check(env.hub.endpoint.startswith("https://"), env.hub.endpoint)
        r = env.download("org/tiny", CURL_CA_BUNDLE="", SSL_CERT_FILE="")
        check_fail(r, 4, ["certificate"], "self-signed certificate accepted")
        r = env.download("org/tiny", CURL_CA_BUNDLE=cert)
        check_ok(r, "CURL_CA_BUNDLE")
        r = env.download("org/tiny", SSL_CERT_FILE=cert, CURL_CA_BUNDLE="")
        check_ok(r, "SSL_CERT_FILE")
        check_layout(env, repo, wanted(stories_files()))
    shutil.rmtree(d, ignore_errors=True)


def test_repo_id_grammar():
    with Env() as env:
        for bad in ["org//x", "org/x/y", "org/x--y", "org/x..y", "org/x.git", "-org/x",
                    "org/", "/x", "org/" + "x" * 97]:
            r = env.download(bad)
            check(r.returncode in (1, 2), "%r accepted: exit %d" % (bad, r.returncode))
            check(not env.hub.requests(), "%r reached the hub" % bad)


if __name__ == "__main__":
    run_tests([test_layout_and_headers, test_second_run_no_transfer_and_offline,
               test_reuses_blobs_and_python_caches, test_sharded_index_selects_shards, test_no_safetensors_and_unsafe_names,
               test_pagination_revisions_and_rename, test_xet_and_token_sources,
               test_tls_is_verified, test_repo_id_grammar])
