"""test_hub_resume.py -- downloads that survive their process: a download
killed mid-transfer is resumed by the next process from the exact byte, an
interrupted one (SIGINT/SIGTERM) exits 130/143 keeping its partial file, and
two processes fetching the same repo at once transfer each blob once."""

import os
import signal
import subprocess
import time

from hubtest import (FLASHIFY, Env, WANTED, blob_bytes, check, check_layout, check_ok,
                     run_tests, sha256, stories_files)

BIG = 12 << 20


def big_repo(env):
    files = stories_files()
    files["model.safetensors"] = blob_bytes(BIG, 11)
    return env.hub.add_repo("org/big", files), files


def partial_path(env, files):
    return os.path.join(env.repo_dir("org/big"), "blobs",
                        sha256(files["model.safetensors"]) + ".incomplete")


def start(env):
    return subprocess.Popen([FLASHIFY, "download", "org/big"], env=env.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_for_bytes(path, n, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError("download ended early: %r" % (proc.communicate(),))
        time.sleep(0.01)
    raise AssertionError("no progress on %s" % path)


def test_killed_download_resumes_in_next_process():
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("slow", server="cdn", method="GET", chunk=256 << 10, delay=0.05)
        p = start(env)
        part = partial_path(env, files)
        wait_for_bytes(part, 2 << 20, p)
        p.kill()
        p.wait()
        have = os.path.getsize(part)
        check(0 < have < BIG, "partial holds %d bytes" % have)
        with open(part, "rb") as f:
            check(f.read() == files["model.safetensors"][:have], "partial bytes are wrong")
        env.hub.clear()
        r = env.download("org/big")
        check_ok(r, "second process")
        gets = env.hub.requests(server="cdn", method="GET")
        check(len(gets) == 1 and gets[0]["headers"].get("range") == "bytes=%d-" % have,
              "resume request %r, expected bytes=%d-" % ([g["headers"].get("range") for g in gets], have))
        check(gets[0]["status"] == 206, "resume status %r" % gets[0]["status"])
        check_layout(env, repo, {n: files[n] for n in WANTED})


def test_interrupt_keeps_partial_and_exit_code():
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with Env() as env:
            repo, files = big_repo(env)
            env.hub.add_fault("slow", server="cdn", method="GET", chunk=256 << 10, delay=0.05)
            p = start(env)
            part = partial_path(env, files)
            wait_for_bytes(part, 1 << 20, p)
            p.send_signal(sig)
            out, err = p.communicate(timeout=20)
            check(p.returncode == code, "%s: exit %d, expected %d (%s)" % (sig, p.returncode, code, err))
            check(os.path.getsize(part) > 0, "partial file removed on interrupt")
            check(not os.path.exists(os.path.join(env.repo_dir("org/big"), "blobs",
                                                  sha256(files["model.safetensors"]))),
                  "an unverified blob was moved into place")


def test_two_processes_share_the_lock():
    with Env() as env:
        repo, files = big_repo(env)
        env.hub.add_fault("slow", server="cdn", method="GET", chunk=1 << 20, delay=0.05, times=None)
        a = start(env)
        b = start(env)
        oa, ea = a.communicate(timeout=60)
        ob, eb = b.communicate(timeout=60)
        check(a.returncode == 0 and b.returncode == 0, "exits %d %d: %s %s"
              % (a.returncode, b.returncode, ea, eb))
        check(oa == ob, "different snapshots: %r %r" % (oa, ob))
        gets = env.hub.requests(server="cdn", method="GET")
        check(len(gets) == 1, "the blob was transferred %d times" % len(gets))
        check_layout(env, repo, {n: files[n] for n in WANTED})


if __name__ == "__main__":
    run_tests([test_killed_download_resumes_in_next_process,
               test_interrupt_keeps_partial_and_exit_code, test_two_processes_share_the_lock])
