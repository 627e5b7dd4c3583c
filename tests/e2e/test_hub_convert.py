"""test_hub_convert.py -- `flashify ORG/NAME` end to end against the mock Hub:
the repo is downloaded into the HF cache and converted, and the output is
byte-identical to converting the same checkpoint from a local directory;
a second run and an offline run make no transfer; errors keep their exit
codes (2 for a repo that cannot be converted, 4 for the network)."""

import os
import subprocess

from hubtest import (FLASHIFY, ROOT, Env, check, check_fail, check_ok, run_tests,
                     stories_files)


def local_convert(env, src, out):
    r = subprocess.run([FLASHIFY, src, "-o", out, "-q"], env=env.env(), capture_output=True,
                       text=True, timeout=60)
    check_ok(r, "local conversion of %s" % src)


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def test_repo_id_converts_like_the_local_directory():
    for example in ("stories260K", "stories260K-bf16"):
        with Env() as env:
            src = os.path.join(ROOT, "examples", example)
            files = stories_files()
            for n in ("config.json", "generation_config.json", "model.safetensors"):
                with open(os.path.join(src, n), "rb") as f:
                    files[n] = f.read()
            env.hub.add_repo("org/" + example, files)
            ref = os.path.join(env.tmp, "ref")
            local_convert(env, src, ref)
            work = os.path.join(env.tmp, "work")
            os.makedirs(work)
            r = subprocess.run([FLASHIFY, "org/%s@main" % example], cwd=work, env=env.env(),
                               capture_output=True, text=True, timeout=60)
            check_ok(r, "flashify org/%s@main" % example)
            out = os.path.join(work, example + "-FlashNorm")
            check(os.path.isdir(out), "default output %s missing (have %s)" % (out, os.listdir(work)))
            for n in ("model.safetensors", "config.json"):
                check(same_file(os.path.join(ref, n), os.path.join(out, n)),
                      "%s: %s differs from the local conversion" % (example, n))
            check(not same_file(os.path.join(src, "model.safetensors"),
                                os.path.join(out, "model.safetensors")), "nothing was folded")
            # Again, into another directory: no transfer, then offline.
            env.hub.clear()
            out2 = os.path.join(env.tmp, "again")
            r = env.run("org/" + example, "-o", out2)
            check_ok(r, "second conversion")
            check(not env.hub.requests(path="/resolve/") and not env.hub.requests(server="cdn"),
                  "second conversion transferred files")
            check(same_file(os.path.join(ref, "model.safetensors"),
                            os.path.join(out2, "model.safetensors")), "second output differs")
            out3 = os.path.join(env.tmp, "offline")
            env.hub.clear()
            r = env.run("org/" + example, "-o", out3, "--offline")
            check_ok(r, "offline conversion")
            check(not env.hub.requests(), "offline conversion made requests")
            check(same_file(os.path.join(ref, "model.safetensors"),
                            os.path.join(out3, "model.safetensors")), "offline output differs")


def test_conversion_errors_keep_exit_codes():
    with Env() as env:
        env.hub.add_repo("org/gated", stories_files(), gated=True)
        out = os.path.join(env.tmp, "o")
        r = env.run("org/gated", "-o", out, token=None)
        check_fail(r, 2, ["request access at %s/org/gated and set HF_TOKEN" % env.hub.endpoint],
                   "gated")
        check(not os.path.exists(out), "output written for a gated repo")
        env.hub.add_repo("org/pickles", {"config.json": b"{}", "pytorch_model.bin": b"x"})
        r = env.run("org/pickles", "-o", out)
        check_fail(r, 2, ["safetensors"], "no safetensors")
        r = env.run("org/tiny", "-o", out, HF_ENDPOINT="http://127.0.0.1:1")
        check_fail(r, 4, [], "unreachable endpoint")
        # A local directory wins over a repo id of the same spelling.
        os.makedirs(os.path.join(env.tmp, "org"))
        os.symlink(os.path.join(ROOT, "examples", "stories260K"),
                   os.path.join(env.tmp, "org", "tiny"))
        r = subprocess.run([FLASHIFY, "org/tiny", "-o", out], cwd=env.tmp, env=env.env(),
                           capture_output=True, text=True, timeout=60)
        check_ok(r, "local org/tiny")
        check(not env.hub.requests(path="org/tiny"), "a local directory went to the Hub")


if __name__ == "__main__":
    run_tests([test_repo_id_converts_like_the_local_directory,
               test_conversion_errors_keep_exit_codes])
