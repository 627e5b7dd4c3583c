"""test_hub_upload.py -- `flashify upload FOLDER REPO` against the mock Hub
(docs/hub-protocol.md §10): a first upload puts exactly the folder's bytes
in one commit on top of the branch head, over the LFS path (basic and
multipart), with the token only where it belongs and Content-Length on
every PUT; an unchanged folder sends and commits nothing; one changed shard
is the only thing sent; dry runs create and send nothing; branches, pull
requests, large folders in several commits; every refusal is one line with
the documented exit status."""

import hashlib
import json
import os

from hubtest import TOKEN, check, check_fail, check_ok, run_tests
from uploadtest import (CHUNK, UpEnv, blob, check_commit_ops, check_remote, is_lfs, parts_of,
                        received, storage_puts, summary, upload_commits)


def checkpoint_files():
    """A converter's output: config, card, tokenizer, two shards (one
    multipart), an index."""
    return {
        "config.json": b'{"model_type": "llama", "hidden_size": 64}\n',
        "README.md": b"---\nbase_model: org/src\ntags:\n- flashnorm\n---\n\n# src (FlashNorm)\n",
        "tokenizer.json": blob(70000, 1),                 # LFS by size
        "tokenizer_config.json": b'{"model_max_length": 512}',
        "model-00001-of-00002.safetensors": blob(3 * CHUNK + 12345, 2),   # 4 parts
        "model-00002-of-00002.safetensors": blob(200000, 3),              # basic
        "model.safetensors.index.json": b'{"metadata": {"total_size": 1}, "weight_map": {}}',
        "sub/dir/notes.txt": b"nested\n",
    }


def test_first_upload():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        env.folder("out", {".git/HEAD": b"ref: refs/heads/main\n",
                           ".cache/huggingface/upload/x.metadata": b"local state"})
        r = env.upload(d, "me/model", "--json")
        s = summary(r)
        check(s["created"] and s["commits"] == 1 and s["commit"], "summary %r" % s)
        repo = check_remote(env, "me/model", files)
        check(s["commit"] == repo.branches["main"], "summary commit is not the branch head")
        commits = upload_commits(env, "me/model")
        check(len(commits) == 1, "%d commits" % len(commits))
        header, ops = commits[0]
        # The parent is the new repo's first commit (the mock's id for it).
        first = hashlib.sha1(b"commit:me/model").hexdigest()
        check(header.get("parentCommit") == s["parent"] == first, "parentCommit %r, parent %r"
              % (header.get("parentCommit"), s["parent"]))
        check(sorted(op["value"]["path"] for op in ops) == sorted(files), "ops %r" % ops)
        check_commit_ops(ops, files)
        # LFS files first, regular files last (the documented commit order).
        kinds = [op["key"] for op in ops]
        check(kinds == sorted(kinds, key=lambda k: k != "lfsFile"), "op order %r" % kinds)
        # The wire: every storage PUT has Content-Length, no chunking, no token.
        puts = storage_puts(env)
        big = files["model-00001-of-00002.safetensors"]
        check(len(puts) == parts_of(big) + 2, "%d PUTs, expected %d" % (len(puts), parts_of(big) + 2))
        for e in puts:
            h = e["headers"]
            check("authorization" not in h, "token sent to storage: %s" % e["path"])
            check("transfer-encoding" not in h, "chunked PUT %s" % e["path"])
            check(int(h["content-length"]) == e["received"] and e["status"] == 200,
                  "PUT %s: Content-Length %s, received %s" % (e["path"], h.get("content-length"),
                                                          e.get("received")))
        check(sorted(int(e["headers"]["content-length"]) for e in puts)
              == sorted([CHUNK] * 3 + [12345, 200000, 70000]), "part sizes")
        for e in env.hub.requests(server="hub"):
            auth = e["headers"].get("authorization")
            if "complete_multipart" in e["path"]:
                check(auth is None, "token sent to the pre-signed completion URL")
            else:
                check(auth == "Bearer " + TOKEN, "hub request %s without the token" % e["path"])
        check(r.stdout.count("\n") == 1, "one JSON line")
        # Nothing of .git or .cache/huggingface went anywhere.
        for e in env.hub.requests():
            check(".git/HEAD" not in json.dumps(e.get("json", "")) and
                  "x.metadata" not in json.dumps(e.get("json", "")), "ignored file listed")


def test_human_output_and_unchanged_reupload():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        r = env.upload(d, "me/model")
        check_ok(r, "first upload")
        repo = env.hub.repos["me/model"]
        check(r.stdout.strip() == "%s/me/model/commit/%s" % (env.hub.endpoint, repo.branches["main"]),
              "stdout %r is not the commit URL" % r.stdout)
        check("published to me/model: 1 commit" in r.stderr, "no summary line: %s" % r.stderr)
        head = repo.branches["main"]
        env.hub.clear()
        r = env.upload(d, "me/model", "--json")
        s = summary(r)
        check(s["commits"] == 0 and s["bytes_sent"] == 0 and s["commit"] == head, "summary %r" % s)
        check(all(f["state"] == "unchanged" for f in s["files"]), "states %r" % s["files"])
        check(not storage_puts(env), "PUTs on an unchanged re-upload")
        check(not env.hub.requests(path="/commit/"), "a commit on an unchanged re-upload")
        check(not env.hub.requests(path="objects/batch"), "an LFS batch on an unchanged re-upload")
        check(repo.branches["main"] == head, "the branch moved")
        r = env.upload(d, "me/model")
        check_ok(r, "third upload")
        check("nothing to commit" in r.stderr, "no 'nothing to commit': %s" % r.stderr)
        check(r.stdout.strip() == "%s/me/model" % env.hub.endpoint, "stdout %r" % r.stdout)


def test_one_changed_shard_is_all_that_is_sent():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        check_ok(env.upload(d, "me/model"), "first upload")
        env.hub.clear()
        name = "model-00001-of-00002.safetensors"
        files[name] = blob(len(files[name]), 99)      # same size, other bytes
        env.folder("out", {name: files[name]})
        s = summary(env.upload(d, "me/model", "--json"))
        check(s["commits"] == 1 and s["bytes_sent"] == len(files[name]), "summary %r" % s)
        states = {f["path"]: f["state"] for f in s["files"]}
        check(states[name] == "send" and
              all(v == "unchanged" for k, v in states.items() if k != name), "states %r" % states)
        check(received(storage_puts(env)) == len(files[name]), "storage got other bytes")
        (header, ops), = upload_commits(env, "me/model")
        check([op["value"]["path"] for op in ops] == [name], "ops %r" % ops)
        check_commit_ops(ops, files)
        check_remote(env, "me/model", files)


def test_stored_object_is_not_sent_again():
    """The same bytes under a new name: the storage has them, only the
    commit is sent."""
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        check_ok(env.upload(d, "me/model"), "first upload")
        env.hub.clear()
        files["copy.safetensors"] = files["model-00002-of-00002.safetensors"]
        env.folder("out", {"copy.safetensors": files["copy.safetensors"]})
        s = summary(env.upload(d, "me/model", "--json"))
        states = {f["path"]: f["state"] for f in s["files"]}
        check(states["copy.safetensors"] == "stored" and s["bytes_sent"] == 0, "summary %r" % s)
        check(not storage_puts(env), "PUT of an object the storage holds")
        check_remote(env, "me/model", files)


def test_dry_run_creates_and_sends_nothing():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        r = env.upload(d, "me/new", "--dry-run")
        check_ok(r, "dry run, new repo")
        check("would create me/new" in r.stdout and "nothing was created or sent" in r.stdout,
              "dry-run listing: %s" % r.stdout)
        check("me/new" not in env.hub.repos, "a dry run created the repo")
        check(not env.hub.requests(method="POST", path="/api/repos/create"), "create was called")
        check_ok(env.upload(d, "me/new"), "real upload")
        env.hub.clear()
        env.folder("out", {"config.json": b'{"changed": true}'})
        r = env.upload(d, "me/new", "--dry-run", "--json")
        s = summary(r)
        states = {f["path"]: f["state"] for f in s["files"]}
        check(s["dry_run"] and states["config.json"] == "inline" and
              all(v == "unchanged" for k, v in states.items() if k != "config.json"), "%r" % s)
        check(not storage_puts(env) and not env.hub.requests(path="/commit/"),
              "a dry run sent something")
        check(not env.hub.requests(path="objects/batch"), "a dry run asked for upload URLs")


def test_branch_and_pull_request():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        check_ok(env.upload(d, "me/model"), "first upload")
        repo = env.hub.repos["me/model"]
        main = repo.branches["main"]
        env.folder("out", {"config.json": b'{"v": 2}'})
        files["config.json"] = b'{"v": 2}'
        r = env.upload(d, "me/model", "--revision", "dev", "-m", "v2 on dev")
        check_ok(r, "upload to a new branch")
        check(repo.branches["main"] == main, "main moved")
        check(repo.branches["dev"] != main and repo.history[-1][1] == "v2 on dev", "dev: %r"
              % repo.history[-1:])
        check(repo.state("dev")[0]["config.json"] == b'{"v": 2}', "dev lacks the change")
        env.folder("out", {"config.json": b'{"v": 3}'})
        r = env.upload(d, "me/model", "--create-pr")
        check_ok(r, "pull request")
        check(repo.branches["main"] == main, "main moved on --create-pr")
        check(len(repo.prs) == 1 and repo.prs[0]["files"]["config.json"] == b'{"v": 3}',
              "pull request: %r" % repo.prs)
        check(r.stdout.strip() == "%s/me/model/discussions/1" % env.hub.endpoint,
              "stdout %r is not the PR URL" % r.stdout)
        (hdr, _), = [c for c in upload_commits(env, "me/model") if "v2" not in c[0]["summary"]][-1:]
        check(hdr.get("parentCommit") == main, "the PR does not start from main's head")
        posts = env.hub.requests(method="POST", path="/commit/")
        check(posts[-1]["path"].endswith("?create_pr=1"), "PR commit URL %s" % posts[-1]["path"])
        r = env.upload(d, "me/model", "--create-pr", "--revision", "dev")
        check_fail(r, 1, ["--create-pr"], "--create-pr with --revision")


def test_large_folder_is_split_into_commits():
    with UpEnv() as env:
        files = {"w%03d.safetensors" % i: blob(70000 + i, 200 + i) for i in range(3)}
        files.update({"t/%03d.txt" % i: b"small file %d\n" % i for i in range(205)})
        files["config.json"] = b'{"model_type": "llama"}'
        d = env.folder("many", files)
        s = summary(env.upload(d, "me/many", "--json", "-m", "Big"))
        commits = upload_commits(env, "me/many")
        check(s["commits"] == 3 == len(commits), "%d commits (summary %d)" % (len(commits), s["commits"]))
        check([len(ops) for _, ops in commits] == [100, 100, 9], "sizes %r"
              % [len(ops) for _, ops in commits])
        check(all(op["key"] == "lfsFile" for op in commits[0][1][:3]), "LFS files not first")
        check(commits[-1][1][-1]["value"]["path"] == "config.json",
              "config.json is not the last file of the last commit")
        check([h["summary"] for h, _ in commits] == ["Big (%d of 3)" % k for k in (1, 2, 3)],
              "summaries %r" % [h["summary"] for h, _ in commits])
        repo = env.hub.repos["me/many"]
        oids = [hashlib.sha1(b"commit:me/many").hexdigest()] + [c[0] for c in repo.history]
        check([h["parentCommit"] for h, _ in commits] == oids[:3], "each commit builds on the last")
        check(s["commit"] == oids[3] == repo.branches["main"], "the head is the last commit")
        for _, ops in commits:
            check_commit_ops(ops, files)
        check_remote(env, "me/many", files)


def test_refusals_are_one_line_with_the_exit_status():
    with UpEnv() as env:
        files = checkpoint_files()
        d = env.folder("out", files)
        check_fail(env.upload(d, "me/model", token=None), 2,
                   ["needs a Hugging Face token with write access", "HF_TOKEN"], "no token")
        env.hub.up.read_only.add(TOKEN)
        check_fail(env.upload(d, "me/model"), 2, ["cannot write", "read-only"], "read-only token")
        env.hub.up.read_only.clear()
        env.hub.up.namespaces[TOKEN] = {"me"}
        check_fail(env.upload(d, "other-org/model"), 2, ["namespace 'other-org'"], "namespace")
        check("other-org/model" not in env.hub.repos, "repo created without rights")
        check_ok(env.upload(d, "me/model"), "own namespace")
        env.hub.repos["me/model"].disabled = True
        check_fail(env.upload(d, "me/model"), 2, ["disabled"], "disabled repo")
        env.hub.repos["me/model"].disabled = False
        bad = env.folder("bad", {"config.json": b"{}", ".cache/other/x": b"x"})
        check_fail(env.upload(bad, "me/model"), 2, [".cache", "rename or move"], "forbidden path")
        big = env.folder("big", {"config.json": b"{}"})
        with open(os.path.join(big, "huge.safetensors"), "wb") as f:
            f.truncate(50 * 10 ** 9 + 1)      # sparse: nothing is written
        check_fail(env.upload(big, "me/model"), 2, ["huge.safetensors", "50 GB", "--max-shard-size"],
                   "file over the Hub's limit")
        card = env.folder("card", {"README.md": b"---\nlicense mit\n---\n", "config.json": b"{}"})
        env.hub.clear()
        check_fail(env.upload(card, "me/model"), 2, ["README.md", "rejects its metadata"], "card")
        check(not env.hub.requests(path="preupload") and not storage_puts(env),
              "sent something after an invalid card")
        check_fail(env.upload(os.path.join(d, "config.json"), "me/model"), 1, ["not a directory"],
                   "a file as FOLDER")
        check_fail(env.upload(d, "me/model@dev"), 1, ["--revision"], "revision in the repo id")
        check_fail(env.upload(d, "not-a-repo-id"), 1, ["repo id"], "bad repo id")
        check_fail(env.upload(d, "me/model", HF_ENDPOINT="http://127.0.0.1:1"), 4, [],
                   "unreachable endpoint")
        empty = env.folder("empty", {})
        os.makedirs(empty, exist_ok=True)
        check_fail(env.upload(empty, "me/model"), 2, ["no files"], "empty folder")


if __name__ == "__main__":
    run_tests([test_first_upload, test_human_output_and_unchanged_reupload,
               test_one_changed_shard_is_all_that_is_sent, test_stored_object_is_not_sent_again,
               test_dry_run_creates_and_sends_nothing, test_branch_and_pull_request,
               test_large_folder_is_split_into_commits,
               test_refusals_are_one_line_with_the_exit_status])
