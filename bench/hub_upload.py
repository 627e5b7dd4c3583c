#!/usr/bin/env python3
"""hub_upload.py -- upload throughput of `flashify upload` against `curl -T`
of the same files to the same loopback mock Hub, and the bytes flashify
reads per byte it publishes.

    bench/hub_upload.py [--flashify build/flashify ...] [--shards 4] [--mib 256]
                        [--runs 3] [--multipart-mib 64 --chunk-mib 16]

Starts tests/hub/mock_hub.py --upload --discard in its own process (the
storage host hashes each PUT as it arrives and keeps no bytes, the same
work for every client), writes N random shards + config.json, then times,
median of --runs, interleaved round by round, each into a fresh repo so
that every byte is sent:

  * flashify upload --jobs 1 and --jobs 4: create, preupload, sha256 of
    every byte (a read pass), LFS batch, one PUT per file (the mock answers
    "basic" below --multipart-mib), verify, commit;
  * curl -T FILE URL for the same files to the same pre-signed storage URLs
    (fetched from the batch endpoint beforehand, untimed), one after the
    other and with --parallel --parallel-max 4: the PUTs alone.

With --multipart-mib M the mock answers multipart from M MiB on (parts of
--chunk-mib MiB); curl has no counterpart for that (a slice per PUT), so
only flashify runs then.  Bytes read come from flashify's --json summary and
are checked against the rchar of /proc/PID/io sampled while it runs.
Python standard library only.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKEN = "hf_bench_token"


def timed(fn):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t, extra = fn()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), extra


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def api(endpoint, path, body, lfs=False):
    ctype = "application/vnd.git-lfs+json" if lfs else "application/json"
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + TOKEN,
                                          "Content-Type": ctype, "Accept": ctype})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def sha256_file(p):
    import hashlib
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def run_sampling_io(cmd, env):
    """Runs cmd; (wall seconds, stdout, the last rchar seen in /proc/PID/io)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rchar = 0
    while p.poll() is None:
        try:
            with open("/proc/%d/io" % p.pid) as f:
                for line in f:
                    if line.startswith("rchar:"):
                        rchar = int(line.split()[1])
        except OSError:
            pass
        time.sleep(0.01)
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError("%s: exit %d\n%s" % (cmd, p.returncode, err.decode()))
    return time.monotonic() - t0, out.decode(), rchar


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashify", action="append")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--mib", type=int, default=256, help="MiB per shard")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--multipart-mib", type=int, default=0)
    ap.add_argument("--chunk-mib", type=int, default=16)
    a = ap.parse_args()
    bins = a.flashify or [os.path.join(ROOT, "build", "flashify")]
    tmp = tempfile.mkdtemp(prefix="hub-upload-bench-")
    mock = None
    try:
        folder = os.path.join(tmp, "out")
        os.makedirs(folder)
        shutil.copy(os.path.join(ROOT, "examples", "stories260K", "config.json"), folder)
        names = []
        for i in range(a.shards):
            n = "model-%05d-of-%05d.safetensors" % (i + 1, a.shards)
            with open(os.path.join(folder, n), "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(1 << 20))
            names.append(n)
        paths = [os.path.join(folder, n) for n in names]
        total = sum(os.path.getsize(p) for p in paths)
        published = total + os.path.getsize(os.path.join(folder, "config.json"))
        oids = [sha256_file(p) for p in paths]      # also warms the page cache

        cmd = [sys.executable, "-B", os.path.join(ROOT, "tests", "hub", "mock_hub.py"),
               "--upload", "--discard", "--multipart-mib", str(a.multipart_mib or 1 << 20),
               "--chunk-mib", str(a.chunk_mib)]
        mock = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        endpoint, storage = mock.stdout.readline().split()
        env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, no_proxy="*",
                   HF_HOME=os.path.join(tmp, "hf"))
        counter = [0]

        def fresh_repo():
            counter[0] += 1
            return "bench/run-%d" % counter[0]

        def run_flashify(binary, jobs):
            def once():
                t, out, rchar = run_sampling_io(
                    [binary, "upload", folder, fresh_repo(), "--jobs", str(jobs), "--json", "-q"],
                    env)
                s = json.loads(out)
                assert s["commits"] == 1 and s["bytes_lfs_new"] == total, s
                return t, (s["bytes_read"], s["bytes_sent"], rchar)
            return once

        def run_curl(parallel):
            def once():
                rid = fresh_repo()
                api(endpoint, "/api/repos/create", {"name": rid.split("/")[1],
                                                    "organization": "bench"})
                objs = api(endpoint, "/%s.git/info/lfs/objects/batch" % rid,
                           {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                            "objects": [{"oid": o, "size": os.path.getsize(p)}
                                        for o, p in zip(oids, paths)]}, lfs=True)["objects"]
                c = ["curl", "-sSf", "--no-progress-meter", "-o", "/dev/null"]
                if parallel:
                    c += ["--parallel", "--parallel-max", "4"]
                for p, o in zip(paths, objs):
                    c += ["-T", p, o["actions"]["upload"]["href"]]
                t0 = time.monotonic()
                subprocess.run(c, env=env, check=True)
                return time.monotonic() - t0, None
            return once

        variants = {}
        for i, b in enumerate(bins):
            tag = "" if len(bins) == 1 else "[%d]" % i
            variants["flashify%s --jobs 1" % tag] = run_flashify(b, 1)
            variants["flashify%s --jobs 4" % tag] = run_flashify(b, 4)
        if not a.multipart_mib:
            variants["curl -T sequential"] = run_curl(False)
            variants["curl -T --parallel 4"] = run_curl(True)
        got = {k: [] for k in variants}
        for _ in range(a.runs):
            for k, fn in variants.items():
                got[k].append(timed(fn))
        mib = total / (1 << 20)
        mode = ("multipart from %d MiB, %d MiB parts" % (a.multipart_mib, a.chunk_mib)
                if a.multipart_mib else "one PUT per file")
        print("%d shards x %d MiB = %.0f MiB over loopback to the mock storage (%s), median of %d"
              % (a.shards, a.mib, mib, mode, a.runs))
        for k, rs in got.items():
            t, cpu = median([r[0] for r in rs]), median([r[1] for r in rs])
            line = "  %-26s %7.2f s  %8.1f MiB/s   client CPU %.2f s" % (k, t, mib / t, cpu)
            if rs[0][2]:
                read, sent, rchar = rs[len(rs) // 2][2]
                line += ("   read/published %.3f (rchar %.3f), sent/published %.3f"
                         % (read / published, rchar / published, sent / published))
            print(line)
        if not a.multipart_mib:
            for i, b in enumerate(bins):
                tag = "" if len(bins) == 1 else "[%d]" % i
                seq = median([r[0] for r in got["curl -T sequential"]])
                par = median([r[0] for r in got["curl -T --parallel 4"]])
                print("ratio flashify%s/curl -T (throughput): sequential %.2f, parallel %.2f"
                      % (tag, seq / median([r[0] for r in got["flashify%s --jobs 1" % tag]]),
                         par / median([r[0] for r in got["flashify%s --jobs 4" % tag]])))
    finally:
        if mock:
            mock.terminate()
            mock.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
