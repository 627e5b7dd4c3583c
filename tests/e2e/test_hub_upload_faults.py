"""test_hub_upload_faults.py -- what goes wrong while publishing: a
connection dropped mid-part and a 500 on a part are retried by reading the
part again; a 429 with Retry-After on the commit is waited out and the
commit happens once; a stale parent commit is reported with what to do;
a commit applied whose answer was lost is not applied twice; Ctrl-C leaves
the remote as it was, and the next run sends only what the storage lacks
(the bytes sent again are counted); a TLS peer that hangs up mid-body does
not end the process with SIGPIPE."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from hubtest import FLASHIFY, TOKEN, check, check_fail, check_ok, run_tests
from uploadtest import (CHUNK, UpEnv, blob, check_commit_ops, check_remote, received,
                        storage_puts, summary, upload_commits)


def shards(n_big=1):
    files = {"config.json": b'{"model_type": "llama"}', "README.md": b"# card\n"}
    for i in range(n_big):
        files["model-%05d.safetensors" % (i + 1)] = blob(4 * CHUNK + 777 * (i + 1), 10 + i)
    return files


def test_dropped_connection_mid_part_is_resent():
    with UpEnv() as env:
        files = shards()
        d = env.folder("out", files)
        env.hub.add_fault("drop", server="storage", method="PUT", path=r"/upload/up1/2\?",
                          after=300000)
        s = summary(env.upload(d, "me/m", "--json"))
        puts = [e for e in storage_puts(env) if "/up1/2?" in e["path"]]
        check([e["status"] for e in puts] == ["drop", 200], "part 2: %r" % [e["status"] for e in puts])
        check(puts[0]["received"] == 300000 and puts[1]["received"] == CHUNK, "part 2 bytes")
        check(s["bytes_resent"] == CHUNK, "bytes_resent %d, expected one part (%d)"
              % (s["bytes_resent"], CHUNK))
        # Sent: every part once, plus what the dropped attempt got out
        # (at least what the storage received, at most the part).
        size = len(files["model-00001.safetensors"])
        check(size + 300000 <= s["bytes_sent"] <= size + CHUNK, "bytes_sent %d for %d bytes"
              % (s["bytes_sent"], size))
        check_remote(env, "me/m", files)


def test_500_on_a_part_is_retried():
    with UpEnv() as env:
        files = shards()
        d = env.folder("out", files)
        env.hub.add_fault("status", server="storage", method="PUT", path=r"/upload/up1/3\?",
                          status=500, code="InternalError", message="We encountered an internal error")
        s = summary(env.upload(d, "me/m", "--json"))
        puts = [e for e in storage_puts(env) if "/up1/3?" in e["path"]]
        check([e["status"] for e in puts] == [500, 200], "part 3: %r" % [e["status"] for e in puts])
        check_remote(env, "me/m", files)
        check(s["commits"] == 1, "summary %r" % s)
        # A part that keeps failing: the upload fails (4) and commits nothing.
        env.hub.clear()
        files["model-00001.safetensors"] = blob(len(files["model-00001.safetensors"]), 77)
        env.folder("out", files)
        head = env.hub.repos["me/m"].branches["main"]
        env.hub.add_fault("status", server="storage", method="PUT", path=r"/upload/up\d+/1\?",
                          status=503, times=None)
        r = env.upload(d, "me/m")
        check_fail(r, 4, ["HTTP 503"], "a part that always fails")
        check(env.hub.repos["me/m"].branches["main"] == head, "committed after a failed part")


def test_429_with_retry_after_on_the_commit():
    with UpEnv() as env:
        files = shards()
        d = env.folder("out", files)
        env.hub.add_fault("status", server="hub", method="POST", path="/commit/", status=429,
                          code="RateLimited", message="slow down", headers={"Retry-After": "1"})
        s = summary(env.upload(d, "me/m", "--json"))
        posts = env.hub.requests(method="POST", path="/commit/")
        check([e["status"] for e in posts] == [429, 200], "commits %r" % [e["status"] for e in posts])
        # Retry-After is waited out as given (the tests scale the fixed
        # backoff by 0.01; a server's wait is never scaled).
        check(posts[1]["t"] - posts[0]["t"] >= 0.95, "waited only %.2f s"
              % (posts[1]["t"] - posts[0]["t"]))
        check(len(upload_commits(env, "me/m")) == 1 == s["commits"], "not exactly one commit")
        check_remote(env, "me/m", files)


def test_stale_parent_commit_is_reported():
    with UpEnv() as env:
        files = shards()
        d = env.folder("out", files)
        check_ok(env.upload(d, "me/m"), "first upload")
        repo = env.hub.repos["me/m"]
        files["config.json"] = b'{"model_type": "llama", "v": 2}'
        env.folder("out", files)
        env.hub.add_fault("push_before", server="hub", method="POST", path="/commit/")
        r = env.upload(d, "me/m")
        check_fail(r, 4, ["moved to %s" % repo.branches["main"], "run the upload again",
                          "--create-pr"], "stale parent")
        check(repo.history[-1][1] == "concurrent push", "the upload committed over the push")
        check(repo.files["config.json"] != files["config.json"], "the change landed anyway")
        # Run again: it builds on the new head.
        check_ok(env.upload(d, "me/m"), "run again")
        check(repo.files["config.json"] == files["config.json"], "second run did not land")


def test_commit_applied_but_answer_lost_is_not_applied_twice():
    with UpEnv() as env:
        files = shards()
        d = env.folder("out", files)
        env.hub.add_fault("applied_then_reset", server="hub", method="POST", path="/commit/")
        s = summary(env.upload(d, "me/m", "--json"))
        repo = env.hub.repos["me/m"]
        posts = env.hub.requests(method="POST", path="/commit/")
        check([e["status"] for e in posts] == ["applied-reset", 412],
              "commit attempts %r" % [e["status"] for e in posts])
        check(len(repo.history) == 1 and s["commit"] == repo.branches["main"],
              "history %r, summary %r" % (repo.history, s))
        check_remote(env, "me/m", files)


def wait_for(cond, timeout=30):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_interrupt_leaves_the_remote_and_the_next_run_resumes():
    with UpEnv() as env:
        files = {"config.json": b'{"model_type": "llama"}',
                 "a.safetensors": blob(4 * CHUNK + 1, 1),      # sent whole before the kill
                 "b.safetensors": blob(8 * CHUNK + 2, 2)}      # interrupted mid-way
        d = env.folder("out", files)
        # Objects get upload ids in path order: up1 = a, up2 = b.  b's parts
        # arrive slowly, so the kill lands while it is being sent.
        env.hub.add_fault("slow_body", server="storage", method="PUT", path="/upload/up2/",
                          times=None, chunk=65536, delay=0.02)
        p = subprocess.Popen([FLASHIFY, "upload", d, "me/m", "--jobs", "1"], env=env.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a_oid = __import__("hashlib").sha256(files["a.safetensors"]).hexdigest()
        ok = wait_for(lambda: ("me/m", a_oid) in env.hub.up.objects and
                      len(env.hub.requests(server="storage", path="/upload/up2/")) >= 2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        check(ok, "the upload never got to b.safetensors: %s" % err)
        check(p.returncode == 130, "exit %d after SIGINT: %s" % (p.returncode, err))
        check(TOKEN not in out + err, "token printed")
        repo = env.hub.repos["me/m"]
        check(not repo.history and set(repo.files) == {".gitattributes"},
              "the interrupted upload changed the repo: %r" % repo.history)
        first = received([e for e in storage_puts(env) if "/up2/" in e["path"]])
        check(0 < first < len(files["b.safetensors"]), "b sent %d bytes before the kill" % first)
        env.hub.clear()
        s = summary(env.upload(d, "me/m", "--json"))
        states = {f["path"]: f["state"] for f in s["files"]}
        check(states["a.safetensors"] == "stored", "a was sent again: %r" % states)
        second = received(storage_puts(env))
        check(second == len(files["b.safetensors"]) == s["bytes_sent"],
              "second run sent %d bytes (summary %d), expected b's %d"
              % (second, s["bytes_sent"], len(files["b.safetensors"])))
        print("     resent after the interrupt: %d bytes of b.safetensors (%d sent before the "
              "kill, of %d); a.safetensors (%d) not resent"
              % (first, first, len(files["b.safetensors"]), len(files["a.safetensors"])))
        check_remote(env, "me/m", files)
        (hdr, ops), = upload_commits(env, "me/m")
        check_commit_ops(ops, files)


def test_tls_peer_hanging_up_is_not_a_signal():
    """A commit body written over TLS to a peer that resets: retried, not
    ended by SIGPIPE (docs/hub-protocol.md §9)."""
    if not shutil.which("openssl"):
        print("     skip: no openssl command")
        return
    d = tempfile.mkdtemp(prefix="flashify-tls-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    env = UpEnv()
    env.hub.close()
    env.hub = __import__("mock_hub").MockHub(tls=(cert, key))
    env.hub.up.lfs_threshold = 1 << 30
    try:
        with env:
            files = {"config.json": b"{}", "notes.txt": blob(3 << 20, 5)}   # a 4 MiB commit body
            folder = env.folder("out", files)
            env.hub.add_fault("reset", server="hub", method="POST", path="/commit/", times=2)
            r = env.upload(folder, "me/tls", CURL_CA_BUNDLE=cert)
            check_ok(r, "commit over TLS after resets")
            check_remote(env, "me/tls", files, lfs=set())
            posts = env.hub.requests(method="POST", path="/commit/")
            check([e["status"] for e in posts] == ["reset", "reset", 200],
                  "commit attempts %r" % [e["status"] for e in posts])
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    run_tests([test_dropped_connection_mid_part_is_resent, test_500_on_a_part_is_retried,
               test_429_with_retry_after_on_the_commit, test_stale_parent_commit_is_reported,
               test_commit_applied_but_answer_lost_is_not_applied_twice,
               test_interrupt_leaves_the_remote_and_the_next_run_resumes,
               test_tls_peer_hanging_up_is_not_a_signal])
