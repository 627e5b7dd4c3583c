#!/usr/bin/env python3
"""hub_throughput.py -- download throughput of `flashify download` against
`curl` fetching the same files from the same loopback mock Hub.

    bench/hub_throughput.py [--flashify build/flashify[,VAR=VALUE...] ...]
                            [--shards 4] [--mib 256] [--runs 3]

Starts tests/hub/mock_hub.py in its own process with a repo of config.json +
N safetensors shards (random bytes; LFS files, so every byte goes Hub 302 ->
CDN), then times, median of --runs (interleaved), each from an empty cache / directory:

  * flashify download, --jobs 1 and --jobs 4 (fresh HF_HOME each run: HEADs,
    transfer, sha256 of every byte while it arrives, rename, symlinks);
  * curl -L for the same /resolve URLs, one after another, and with
    --parallel --parallel-max 4 (no hashing, no cache).

Prints MiB/s and client CPU for each and the flashify/curl ratios.  Compare
builds or settings in one run, e.g.
    --flashify old/flashify --flashify build/flashify,FLASHIFY_HASH_THREAD=1
The mock shares the machine: on 2 cores, the client's CPU (sha256 is about
1 s/GiB of it) slows the server too.  Python standard library.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(fn):
    """(wall seconds, CPU seconds of the child processes) of one call."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = fn()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def interleaved(variants, runs):
    """{name: (median wall, median CPU, [(wall, cpu) per run])}.  Round k
    runs every variant once, so a load change on this shared machine hits
    all of them alike; medians, not the best, for the same reason (wall and
    CPU medians are taken separately)."""
    got = {k: [] for k in variants}
    for _ in range(runs):
        for k, fn in variants.items():
            got[k].append(timed(fn))
    out = {}
    for k, rs in got.items():
        walls = sorted(t for t, _ in rs)
        cpus = sorted(c for _, c in rs)
        out[k] = (walls[len(walls) // 2], cpus[len(cpus) // 2], rs)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashify", action="append",
                    help="binary to time, optionally followed by ,VAR=VALUE settings for it "
                         "(e.g. build/flashify,FLASHIFY_HASH_THREAD=1); repeat to compare "
                         "builds or settings; default build/flashify")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--mib", type=int, default=256, help="MiB per shard")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    bins = a.flashify or [os.path.join(ROOT, "build", "flashify")]

    tmp = tempfile.mkdtemp(prefix="hub-bench-")
    try:
        repo = os.path.join(tmp, "repo")
        os.makedirs(repo)
        shutil.copy(os.path.join(ROOT, "examples", "stories260K", "config.json"), repo)
        names = []
        for i in range(a.shards):
            n = "model-%05d-of-%05d.safetensors" % (i + 1, a.shards)
            with open(os.path.join(repo, n), "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(1 << 20))
            names.append(n)
        total = a.shards * a.mib * (1 << 20)

        mock = subprocess.Popen([sys.executable, "-B", os.path.join(ROOT, "tests", "hub", "mock_hub.py"),
                                 repo, "bench/model"], stdout=subprocess.PIPE, text=True)
        endpoint, cdn, commit = mock.stdout.readline().split()
        env = dict(os.environ, HF_ENDPOINT=endpoint, no_proxy="*")
        env.pop("HF_TOKEN", None)
        try:
            def run_flashify(spec, jobs):
                binary, *sets = spec.split(",")
                extra = dict(kv.split("=", 1) for kv in sets)

                def once():
                    home = os.path.join(tmp, "hf")
                    shutil.rmtree(home, ignore_errors=True)
                    t0 = time.monotonic()
                    subprocess.run([binary, "download", "bench/model", "-q", "--jobs", str(jobs)],
                                   env=dict(env, HF_HOME=home, **extra), check=True,
                                   stdout=subprocess.DEVNULL)
                    return time.monotonic() - t0
                return once

            urls = ["%s/bench/model/resolve/%s/%s" % (endpoint, commit, n) for n in names]

            def run_curl(parallel):
                def once():
                    out = os.path.join(tmp, "curl")
                    shutil.rmtree(out, ignore_errors=True)
                    os.makedirs(out)
                    cmd = ["curl", "-sSfL", "--no-progress-meter"]
                    if parallel:
                        cmd += ["--parallel", "--parallel-max", "4"]
                    for u, n in zip(urls, names):
                        cmd += ["-o", os.path.join(out, n), u]
                    t0 = time.monotonic()
                    subprocess.run(cmd, env=env, check=True)
                    return time.monotonic() - t0
                return once

            # One untimed fetch first: the mock computes its own (unrelated)
            # ETags on first use, which no variant should be timed for.
            run_curl(True)()
            def label(b, what):
                return "flashify%s %s" % ("" if len(bins) == 1 else "[%d]" % bins.index(b), what)
            variants = {}
            for b in bins:
                variants[label(b, "--jobs 1")] = run_flashify(b, 1)
            variants["curl sequential"] = run_curl(False)
            for b in bins:
                variants[label(b, "--jobs 4")] = run_flashify(b, 4)
            variants["curl --parallel 4"] = run_curl(True)
            res = interleaved(variants, a.runs)
        finally:
            mock.terminate()
            mock.wait()
        mib = total / (1 << 20)
        print("%d shards x %d MiB = %.0f MiB over loopback (Hub 302 -> CDN), median of %d"
              % (a.shards, a.mib, mib, a.runs))
        for k, (t, cpu, runs) in res.items():
            print("  %-24s %7.2f s  %8.1f MiB/s   client CPU %.2f s (%.2f s/GiB)   runs: %s"
                  % (k, t, mib / t, cpu, cpu / (mib / 1024),
                     ", ".join("%.2f s/%.2f cpu" % r for r in runs)))
        for i, b in enumerate(bins):
            if len(bins) > 1:
                print("[%d] = %s" % (i, b))
            print("ratio flashify%s/curl (throughput): sequential %.2f, parallel %.2f"
                  % ("" if len(bins) == 1 else "[%d]" % i,
                     res["curl sequential"][0] / res[label(b, "--jobs 1")][0],
                     res["curl --parallel 4"][0] / res[label(b, "--jobs 4")][0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
