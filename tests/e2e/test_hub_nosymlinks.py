"""test_hub_nosymlinks.py -- HF_HUB_DISABLE_SYMLINKS (hub-protocol.md §4,
file_download.py _create_symlink): snapshots/ holds regular files instead of
symlinks.  A blob downloaded by this run is moved there (blobs/ keeps no
copy); a blob already in blobs/ is copied and stays.  Second runs, offline
runs and conversions read those files like the symlinked ones."""

import os
import shutil
import subprocess

from hubtest import (FLASHIFY, ROOT, WANTED, Env, blob_bytes, check, check_layout, check_ok,
                     git_blob_sha1, run_tests, sha256, stories_files)


def etag(repo, path, data):
    return sha256(data) if path in repo.lfs else git_blob_sha1(data)


def file_mode():
    """What a freshly created file gets here: 0666 & ~umask."""
    um = os.umask(0)
    os.umask(um)
    return 0o666 & ~um


def check_plain_layout(env, repo, files, kept_blobs):
    """snapshots/<commit>/ holds exactly `files` as regular, unshared files
    with the right bytes and mode; blobs/ holds exactly kept_blobs (etags),
    each with the bytes of its file; refs/main names the commit."""
    rd = env.repo_dir(repo.id)
    snap = os.path.join(rd, "snapshots", repo.commit)
    for path, data in files.items():
        p = os.path.join(snap, path)
        check(not os.path.islink(p) and os.path.isfile(p), "%s is not a regular file" % p)
        with open(p, "rb") as f:
            check(f.read() == data, "%s has wrong bytes" % path)
        st = os.stat(p)
        check(st.st_nlink == 1, "%s shares its inode (%d links)" % (path, st.st_nlink))
        check(st.st_mode & 0o777 == file_mode(), "%s has mode %o, expected %o"
              % (path, st.st_mode & 0o777, file_mode()))
    got = set()
    for root, _, names in os.walk(snap):
        got |= {os.path.relpath(os.path.join(root, n), snap) for n in names}
    check(got == set(files), "snapshot holds %s, expected %s" % (sorted(got), sorted(files)))
    blobs = set(os.listdir(os.path.join(rd, "blobs")))
    check(blobs == set(kept_blobs), "blobs/ holds %s, expected %s"
          % (sorted(blobs), sorted(kept_blobs)))
    by_etag = {etag(repo, p, d): d for p, d in files.items()}
    for b in kept_blobs:
        with open(os.path.join(rd, "blobs", b), "rb") as f:
            check(f.read() == by_etag[b], "blob %s has wrong bytes" % b)
    with open(os.path.join(rd, "refs", "main"), "rb") as f:
        check(f.read() == repo.commit.encode(), "refs/main")
    return snap


def test_new_blobs_are_moved():
    with Env() as env:
        repo = env.hub.add_repo("org/plain", stories_files())
        files = {n: repo.files[n] for n in WANTED}
        r = env.download("org/plain", HF_HUB_DISABLE_SYMLINKS="1")
        check_ok(r, "download without symlinks")
        snap = check_plain_layout(env, repo, files, kept_blobs=())
        check(r.stdout.strip() == snap, "printed %r, expected %s" % (r.stdout, snap))
        # The files are the cache: nothing is fetched again, online or not.
        env.hub.clear()
        r = env.download("org/plain", HF_HUB_DISABLE_SYMLINKS="1")
        check_ok(r, "second run")
        check(not env.hub.requests(path="/resolve/") and not env.hub.requests(server="cdn"),
              "second run transferred: %r" % [e["path"] for e in env.hub.requests()])
        r = env.download("org/plain", "--offline")
        check_ok(r, "offline run")
        check(r.stdout.strip() == snap, "offline printed %r" % r.stdout)
        check_plain_layout(env, repo, files, kept_blobs=())


def test_existing_blobs_are_copied():
    with Env() as env:
        repo = env.hub.add_repo("org/plain", stories_files())
        files = {n: repo.files[n] for n in WANTED}
        check_ok(env.download("org/plain"), "download with symlinks")
        check_layout(env, repo, files)
        shutil.rmtree(os.path.join(env.repo_dir("org/plain"), "snapshots"))
        env.hub.clear()
        r = env.download("org/plain", HF_HUB_DISABLE_SYMLINKS="yes")
        check_ok(r, "copy from blobs/")
        check(not env.hub.requests(server="cdn") and not env.hub.requests(method="GET",
                                                                          path="/resolve/"),
              "blobs already cached were transferred again")
        check_plain_layout(env, repo, files,
                           kept_blobs={etag(repo, n, d) for n, d in files.items()})


def test_two_processes_transfer_each_file_once():
    # The blob is moved away, so the process that waited for the lock must
    # find the snapshot file instead of fetching it again.
    with Env() as env:
        files = stories_files()
        files["model.safetensors"] = blob_bytes(12 << 20, 31)
        repo = env.hub.add_repo("org/plain", files)
        env.hub.add_fault("slow", server="cdn", method="GET", chunk=1 << 20, delay=0.05,
                          times=None)
        e = env.env(HF_HUB_DISABLE_SYMLINKS="1")
        procs = [subprocess.Popen([FLASHIFY, "download", "org/plain"], env=e,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        check(all(p.returncode == 0 for p in procs), "exits %r: %r"
              % ([p.returncode for p in procs], [o[1] for o in outs]))
        check(outs[0][0] == outs[1][0], "different snapshots: %r" % [o[0] for o in outs])
        check(len(env.hub.requests(server="cdn", method="GET")) == 1,
              "the LFS blob was transferred %d times"
              % len(env.hub.requests(server="cdn", method="GET")))
        for n in WANTED:
            if n not in repo.lfs:
                k = len(env.hub.requests(server="hub", method="GET", path="/resolve/.*/" + n + "$"))
                check(k == 1, "%s was transferred %d times" % (n, k))
        check_plain_layout(env, repo, {n: files[n] for n in WANTED}, kept_blobs=())


def test_false_values_keep_symlinks():
    for v in ("0", "false", ""):
        with Env() as env:
            repo = env.hub.add_repo("org/plain", stories_files())
            check_ok(env.download("org/plain", HF_HUB_DISABLE_SYMLINKS=v), "value %r" % v)
            check_layout(env, repo, {n: repo.files[n] for n in WANTED})


def test_conversion_reads_plain_files():
    with Env() as env:
        src = os.path.join(ROOT, "examples", "stories260K")
        repo = env.hub.add_repo("org/plain", stories_files())
        ref = os.path.join(env.tmp, "ref")
        r = subprocess.run([FLASHIFY, src, "-o", ref, "-q"], env=env.env(),
                           capture_output=True, text=True, timeout=60)
        check_ok(r, "local conversion")
        out = os.path.join(env.tmp, "out")
        r = env.run("org/plain", "-o", out, "-q", HF_HUB_DISABLE_SYMLINKS="True")
        check_ok(r, "conversion without symlinks")
        check_plain_layout(env, repo, {n: repo.files[n] for n in WANTED}, kept_blobs=())
        for n in ("model.safetensors", "config.json"):
            with open(os.path.join(ref, n), "rb") as a, open(os.path.join(out, n), "rb") as b:
                check(a.read() == b.read(), "%s differs from the local conversion" % n)


if __name__ == "__main__":
    run_tests([test_new_blobs_are_moved, test_existing_blobs_are_copied,
               test_two_processes_transfer_each_file_once, test_false_values_keep_symlinks, test_conversion_reads_plain_files])
