"""mock_hub.py — a loopback Hugging Face Hub + CDN + storage for flashify's tests.

Implements what docs/hub-protocol.md §8 asks of a faithful mock (the upload
endpoints, §10, are in mock_upload.py):

* the Hub on 127.0.0.1:P: /api/models/{id}[/revision/{rev}], the tree API
  with Link-header pagination, HEAD|GET /{id}/resolve/{rev}/{path} (git
  files served directly with ETag = git blob sha1; LFS files answered with a
  302 to the CDN carrying X-Linked-Etag = sha256 and X-Linked-Size; renamed
  repos answered with a relative 307), and the Hub's error replies
  (X-Error-Code, X-Error-Message and a JSON body);
* the CDN on 127.0.0.2:Q (another loopback address, so another origin), and
  a second CDN on 127.0.0.3 for two-hop redirects (fault "hop"): they
  serve blobs with Range support, an unrelated ETag, and rejects any request
  carrying Authorization with 400 (token-leak detector);
* faults toggled per test with add_fault(): a status (429 with Retry-After
  or RateLimit, 408, 5xx, 401/403/404 ...), a connection reset before the
  headers, a stall, a dropped connection after K body bytes, a 200 to a
  Range request, wrong bytes with the right length, a short body, a slow
  body, a redirect to a third host, a HEAD without X-Repo-Commit, etag or
  X-Linked-Size;
* a request log with every header, for assertions.

Python standard library only.  Use it in-process:

    hub = MockHub(); hub.add_repo("org/name", {"config.json": b"{}", ...})
    ... env HF_ENDPOINT=hub.endpoint ...
    hub.close()

or from the command line (bench): python3 mock_hub.py DIR ORG/NAME prints
the endpoint and serves the files of DIR until killed; python3 mock_hub.py
--upload [--discard] [--multipart-mib N] [--chunk-mib N] serves an empty
Hub that takes uploads.
"""

import hashlib
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mock_upload

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data):
    """The git object id of a blob: sha1("blob <len>\\0" + data)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id, files, lfs=None, commit=None, branches=None,
                 gated=False, private=False, approved=(), xet=(), license=None):
        self.id = repo_id
        if lfs is None:
            lfs = [p for p in files if p.endswith(".safetensors")]
        self.xet = set(xet)
        self.commit = commit or hashlib.sha1(("commit:" + repo_id).encode()).hexdigest()
        self.branches = {"main": self.commit}
        self.branches.update(branches or {})
        self.commits = set(self.branches.values())
        self.gated = gated
        self.private = private
        self.disabled = False
        self.license = license
        self.approved = set(approved)
        self.created = False
        self.history = []            # (commit, summary, {path: "lfs"/"regular"/"deleted"})
        self.prs = []                # {"commit", "files", "lfs"} per pull request
        self.branch_state = {}       # branch other than main -> (files, lfs)
        self._set_files(dict(files), set(lfs))

    def _set_files(self, files, lfs):
        self.files = files
        self.lfs = lfs
        self.sha256 = {p: hashlib.sha256(d).hexdigest() for p, d in self.files.items()}
        self.gitsha = {p: git_blob_sha1(d) for p, d in self.files.items()}
        self._md5 = {}

    def state(self, rev):
        """(files, lfs) at branch rev (main's for every other name)."""
        return self.branch_state.get(rev, (self.files, self.lfs))

    def apply(self, changes, summary, rev, pr=False):
        """Commits changes ({path: (bytes, is_lfs) or None}) on top of branch
        rev (a new PR from it when pr); returns the new commit id."""
        files, lfs = self.state(rev)
        files, lfs = dict(files), set(lfs)
        for path, c in changes.items():
            files.pop(path, None)
            lfs.discard(path)
            if c is not None:
                files[path] = c[0]
                if c[1]:
                    lfs.add(path)
        parent = self.branches[rev]
        h = hashlib.sha1(("%s\n%s\n%d\n" % (parent, summary, len(self.history))).encode())
        for path in sorted(files):
            h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        oid = h.hexdigest()
        self.commits.add(oid)
        self.history.append((oid, summary, {p: "deleted" if c is None else "lfs" if c[1]
                                            else "regular" for p, c in changes.items()}))
        if pr:
            self.prs.append({"commit": oid, "files": files, "lfs": lfs})
            branch = "refs/pr/%d" % len(self.prs)
            self.branches[branch] = oid
            self.branch_state[branch] = (files, lfs)
        elif rev == "main":
            self.branches["main"] = oid
            self._set_files(files, lfs)
        else:
            self.branches[rev] = oid
            self.branch_state[rev] = (files, lfs)
        return oid

    def etag(self, path):
        return self.sha256[path] if path in self.lfs else self.gitsha[path]

    def md5(self, path, prefix=b""):
        """The Hub's / CDN's own unrelated ETag, computed once per file: an
        md5 of 256 MiB per request would make the bench time the mock."""
        key = (path, prefix)
        if key not in self._md5:
            h = hashlib.md5(prefix)
            h.update(self.files[path])
            self._md5[key] = h.hexdigest()
        return self._md5[key]


class Fault:
    """One toggled fault: `action` applies to the first `times` requests
    matching server ("hub"/"cdn"), method and a regex on the raw path."""

    def __init__(self, action, server=None, method=None, path=None, times=1, **kw):
        self.action = action
        self.server = server
        self.method = method
        self.path = re.compile(path) if path else None
        self.times = times
        self.kw = kw
        self.hits = 0

    def matches(self, server, method, path):
        if self.times is not None and self.hits >= self.times:
            return False
        if self.server and self.server != server:
            return False
        if self.method and self.method != method:
            return False
        if self.path and not self.path.search(path):
            return False
        return True


class QuietServer(ThreadingHTTPServer):
    """Clients that hang up (killed downloads) are normal here."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class MockHub:
    def __init__(self, page_size=2, cdn_host="127.0.0.2", tls=None):
        """tls: (certfile, keyfile) to serve the Hub over https."""
        self.repos = {}
        self.renames = {}          # old id -> new id (resolve answers a relative 307)
        self.valid_tokens = None   # None: any token is valid; else a set
        self.page_size = page_size
        self.weak_etag = False
        self.faults = []
        self.log = []
        self.lock = threading.Lock()
        self.hub = QuietServer(("127.0.0.1", 0), _handler(self, "hub"))
        self.cdn = QuietServer((cdn_host, 0), _handler(self, "cdn"))
        # A second CDN host, for a redirect chain Hub -> CDN -> CDN2.
        self.cdn2 = QuietServer(("127.0.0.3", 0), _handler(self, "cdn2"))
        # The storage host of uploads (S3 in the real world), another origin.
        self.storage = QuietServer(("127.0.0.4", 0), _handler(self, "storage"))
        self.up = mock_upload.UploadState(self)
        self.servers = (self.hub, self.cdn, self.cdn2, self.storage)
        for s in self.servers:
            s.daemon_threads = True
        scheme = "http"
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.hub.socket = ctx.wrap_socket(self.hub.socket, server_side=True)
            scheme = "https"
        self.endpoint = "%s://127.0.0.1:%d" % (scheme, self.hub.server_address[1])
        self.cdn_base = "http://%s:%d" % (cdn_host, self.cdn.server_address[1])
        self.cdn2_base = "http://127.0.0.3:%d" % self.cdn2.server_address[1]
        self.storage_base = "http://127.0.0.4:%d" % self.storage.server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
                        for s in self.servers]
        for t in self.threads:
            t.start()

    # -- configuration -------------------------------------------------
    def add_repo(self, repo_id, files, **kw):
        r = Repo(repo_id, files, **kw)
        self.repos[repo_id] = r
        return r

    def add_fault(self, action, **kw):
        f = Fault(action, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def clear(self):
        with self.lock:
            self.faults = []
            self.log = []

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()
        self.up.close()

    # -- the request log -----------------------------------------------
    def requests(self, server=None, method=None, path=None):
        with self.lock:
            out = list(self.log)
        return [e for e in out
                if (server is None or e["server"] == server)
                and (method is None or e["method"] == method)
                and (path is None or re.search(path, e["path"]))]

    def _fault(self, server, method, path):
        with self.lock:
            for f in self.faults:
                if f.matches(server, method, path):
                    f.hits += 1
                    return f
        return None


def _handler(hub, server):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            # No Nagle: headers and a small body in two writes would
            # otherwise wait for the client's delayed ACK (40 ms).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        # -- plumbing ------------------------------------------------------
        def _record(self, status, extra=None):
            e = {"server": server, "method": self.command, "path": self.path,
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "status": status, "t": time.monotonic()}
            if extra:
                e.update(extra)
            with hub.lock:
                hub.log.append(e)
            return e

        def _send(self, status, headers=(), body=b""):
            self._e["status"] = status  # before the client can see the reply
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)
            return status

        def _error(self, status, code, msg, extra=()):
            body = json.dumps({"error": msg}).encode()
            hdrs = [("Content-Type", "application/json"), ("X-Error-Code", code),
                    ("X-Error-Message", msg)] + list(extra)
            self._send(status, hdrs, body)
            return status

        def _token(self):
            a = self.headers.get("Authorization")
            if a and a.startswith("Bearer "):
                return a[7:]
            return None

        # -- dispatch ------------------------------------------------------
        def do_HEAD(self):
            self._dispatch()

        def do_GET(self):
            self._dispatch()

        def do_PUT(self):
            self._dispatch()

        def do_POST(self):
            self._dispatch()

        def _dispatch(self):
            f = hub._fault(server, self.command, self.path)
            e = self._e = self._record(None)
            if f is not None and self._pre_fault(f, e):
                return
            try:
                if server == "storage":
                    mock_upload.storage(self, hub, f)
                elif server in ("cdn", "cdn2"):
                    self._cdn(f)
                elif self.command == "POST":
                    mock_upload.hub_post(self, hub, f)
                else:
                    self._hub(f)
            except (BrokenPipeError, ConnectionResetError):
                e["status"] = "client-gone"

        def _pre_fault(self, f, e):
            """Faults that replace the whole reply; True when handled."""
            a = f.action
            if a == "status":
                mock_upload.drain(self)  # a request body is read before the answer
                st = f.kw.get("status", 503)
                extra = list(f.kw.get("headers", {}).items())
                e["status"] = self._error(st, f.kw.get("code", "Mock"),
                                          f.kw.get("message", "mock fault %d" % st), extra)
                return True
            if a == "reset":
                e["status"] = "reset"
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
                return True
            if a == "stall":
                time.sleep(f.kw.get("seconds", 3))
                return False
            return False

        # -- the Hub -------------------------------------------------------
        def _auth(self, repo):
            """Returns an error status already sent, or None when allowed."""
            tok = self._token()
            if tok is not None and hub.valid_tokens is not None and tok not in hub.valid_tokens:
                return self._error(401, "Unauthorized",
                                   "Invalid credentials in Authorization header")
            if repo.private and tok is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            if repo.private and tok not in repo.approved:
                return self._error(404, "RepoNotFound", "Repository not found")
            if repo.gated and tok is None:
                return self._error(401, "GatedRepo",
                                   "Access to model %s is restricted. You must have access "
                                   "to it and be authenticated to access it." % repo.id)
            if repo.gated and tok not in repo.approved:
                return self._error(403, "GatedRepo",
                                   "Access to model %s is restricted and you are not in the "
                                   "authorized list." % repo.id)
            return None

        def _repo(self, ns, name):
            rid = ns + "/" + name
            return hub.repos.get(rid) or hub.repos.get(hub.renames.get(rid, ""))

        def _rev(self, repo, rev):
            if COMMIT_RE.match(rev) and rev in repo.commits:
                return rev
            return repo.branches.get(rev)

        def _hub(self, f):
            u = urllib.parse.urlsplit(self.path)
            parts = u.path.split("/")
            q = urllib.parse.parse_qs(u.query)
            if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models":
                rid = parts[3] + "/" + parts[4]
                if rid in hub.renames:
                    # The Hub redirects API calls of a renamed repo too.
                    loc = "/api/models/%s/%s" % (hub.renames[rid], "/".join(parts[5:]))
                    if u.query:
                        loc += "?" + u.query
                    return self._send(307, [("Location", loc)], b"")
                repo = self._repo(parts[3], parts[4])
                if repo is None:
                    return self._error(401 if self._token() is None else 404,
                                       "RepoNotFound", "Repository not found")
                err = self._auth(repo)
                if err:
                    return err
                rest = parts[5:]
                if not rest or rest[0] == "revision":
                    rev = urllib.parse.unquote(rest[1]) if len(rest) > 1 else "main"
                    sha = self._rev(repo, rev)
                    if sha is None:
                        return self._error(404, "RevisionNotFound",
                                           "Invalid rev id: %s" % rev)
                    body = {"id": repo.id, "sha": sha, "private": repo.private,
                            "gated": "manual" if repo.gated else False,
                            "disabled": repo.disabled,
                            "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
                    if repo.license:
                        body["cardData"] = {"license": repo.license}
                    return self._json(body)
                if rest[0] == "tree" and len(rest) >= 2:
                    rev = urllib.parse.unquote(rest[1])
                    sha = self._rev(repo, rev)
                    if sha is None:
                        return self._error(404, "RevisionNotFound",
                                           "Invalid rev id: %s" % rev)
                    return self._tree(repo, sha, q)
                return self._error(404, "NotFound", "no such API")
            # /{ns}/{name}/resolve/{rev}/{path...}
            if len(parts) >= 6 and parts[3] == "resolve":
                rid = parts[1] + "/" + parts[2]
                rev = urllib.parse.unquote(parts[4])
                path = urllib.parse.unquote("/".join(parts[5:]))
                if rid in hub.renames:
                    loc = "/%s/resolve/%s/%s" % (hub.renames[rid], parts[4], "/".join(parts[5:]))
                    return self._send(307, [("Location", loc)], b"Temporary Redirect")
                repo = hub.repos.get(rid)
                if repo is None:
                    return self._error(401 if self._token() is None else 404,
                                       "RepoNotFound", "Repository not found")
                err = self._auth(repo)
                if err:
                    return err
                sha = self._rev(repo, rev)
                if sha is None:
                    return self._error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
                if path not in repo.files:
                    return self._error(404, "EntryNotFound", "%s does not exist" % path,
                                       [("X-Repo-Commit", sha)])
                return self._resolve(repo, sha, path, f)
            return self._error(404, "NotFound", "not found")

        def _json(self, obj, headers=()):
            body = json.dumps(obj).encode()
            self._send(200, [("Content-Type", "application/json")] + list(headers), body)
            return 200

        def _tree(self, repo, sha, q):
            entries, dirs = [], set()
            for p in sorted(repo.files):
                segs = p.split("/")
                for i in range(1, len(segs)):
                    d = "/".join(segs[:i])
                    if d not in dirs:
                        dirs.add(d)
                        entries.append({"type": "directory", "oid": "0" * 40, "size": 0,
                                        "path": d})
                data = repo.files[p]
                e = {"type": "file", "oid": repo.gitsha[p], "size": len(data), "path": p}
                if p in repo.lfs:
                    e["lfs"] = {"oid": repo.sha256[p], "size": len(data), "pointerSize": 134}
                entries.append(e)
            start = int(q.get("cursor", ["0"])[0])
            page = entries[start:start + hub.page_size]
            hdrs = []
            if start + hub.page_size < len(entries):
                nxt = "%s/api/models/%s/tree/%s?recursive=true&expand=false&cursor=%d" % (
                    hub.endpoint, repo.id, sha, start + hub.page_size)
                hdrs.append(("Link", '<%s>; rel="next"' % nxt))
            return self._json(page, hdrs)

        def _resolve(self, repo, sha, path, f):
            data = repo.files[path]
            if path in repo.lfs:
                loc = "%s/blobs/%s?X-Amz-Signature=%s" % (
                    hub.cdn_base, repo.sha256[path], hashlib.md5(path.encode()).hexdigest())
                hdrs = [("Location", loc), ("X-Repo-Commit", sha),
                        ("X-Linked-Etag", '"%s"' % repo.sha256[path]),
                        ("X-Linked-Size", str(len(data))),
                        ("ETag", '"%s"' % repo.md5(path))]
                if path in repo.xet:
                    hdrs += [("X-Xet-Hash", hashlib.sha256(b"xet" + data).hexdigest()),
                             ("Link", '<%s/api/models/%s/xet-read-token/%s>; rel="xet-auth"'
                              % (hub.endpoint, repo.id, sha))]
                if f is not None and f.action == "no_linked_size":
                    hdrs = [h for h in hdrs if h[0] != "X-Linked-Size"]
                if f is not None and f.action == "no_commit":
                    hdrs = [h for h in hdrs if h[0] != "X-Repo-Commit"]
                if f is not None and f.action == "no_etag":
                    hdrs = [h for h in hdrs if h[0] not in ("X-Linked-Etag", "ETag")]
                self._send(302, hdrs, b"Found. Redirecting")
                return 302
            etag = repo.gitsha[path]
            etag = ('W/"%s"' if hub.weak_etag else '"%s"') % etag
            hdrs = [("X-Repo-Commit", sha), ("ETag", etag), ("Accept-Ranges", "bytes")]
            if f is not None and f.action == "no_commit":
                hdrs = [h for h in hdrs if h[0] != "X-Repo-Commit"]
            if f is not None and f.action == "no_etag":
                hdrs = [h for h in hdrs if h[0] != "ETag"]
            return self._body(data, hdrs, f)

        # -- bodies (Hub git files and the CDN) ------------------------------
        def _body(self, data, hdrs, f):
            total = len(data)
            rng = self.headers.get("Range")
            a = None
            m = re.match(r"bytes=(\d+)-$", rng or "")
            if m and not (f is not None and f.action == "ignore_range"):
                a = int(m.group(1))
                if a >= total:
                    return self._error(416, "RangeNotSatisfiable", "range past EOF",
                                       [("Content-Range", "bytes */%d" % total)])
            if f is not None and f.action == "corrupt":
                data = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
            if f is not None and f.action == "short":
                data = data[:total // 2]
                total = len(data)
            body = data[a:] if a is not None else data
            status = 206 if a is not None else 200
            drop = f is not None and f.action == "drop"
            self._e["status"] = "drop" if drop else status
            self.send_response(status)
            for k, v in hdrs:
                self.send_header(k, v)
            if a is not None:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (a, total - 1, total))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return status
            mv = memoryview(body)
            if f is not None and f.action == "drop":
                k = f.kw["after"] - (a or 0)
                if k > 0:
                    self.wfile.write(mv[:k])
                self.wfile.flush()
                self.close_connection = True
                return "drop"
            if f is not None and f.action == "slow":
                chunk, delay = f.kw.get("chunk", 65536), f.kw.get("delay", 0.05)
                for i in range(0, len(mv), chunk):
                    self.wfile.write(mv[i:i + chunk])
                    self.wfile.flush()
                    time.sleep(delay)
                return status
            step = 1 << 20
            for i in range(0, len(mv), step):
                self.wfile.write(mv[i:i + step])
            return status

        def _cdn(self, f):
            if "Authorization" in self.headers:
                # The token leaked to another host: fail loudly.
                return self._error(400, "TokenLeak", "Authorization header sent to the CDN")
            u = urllib.parse.urlsplit(self.path)
            m = re.match(r"^/blobs/([0-9a-f]{64})$", u.path)
            if not m or "X-Amz-Signature" not in u.query:
                return self._error(404, "NoSuchKey", "no such blob")
            if f is not None and f.action == "hop":
                # Another host again: the chain is Hub -> CDN -> CDN2.
                return self._send(302, [("Location", hub.cdn2_base + self.path)], b"")
            for repo in hub.repos.values():
                for p, h in repo.sha256.items():
                    if h == m.group(1):
                        data = repo.files[p]
                        hdrs = [("ETag", '"%s"' % repo.md5(p, b"cdn")),
                                ("Accept-Ranges", "bytes")]
                        return self._body(data, hdrs, f)
            return self._error(404, "NoSuchKey", "no such blob")

    return H


def serve_upload(args):
    """mock_hub.py --upload [--discard] [--multipart-mib N] [--chunk-mib N]:
    an empty Hub that takes uploads (any token may write)."""
    hub = MockHub(page_size=100)
    hub.up.lfs_threshold = 1 << 20
    hub.up.discard = "--discard" in args
    for flag, attr in (("--multipart-mib", "multipart_threshold"), ("--chunk-mib", "chunk_size")):
        if flag in args:
            setattr(hub.up, attr, int(args[args.index(flag) + 1]) << 20)
    print(hub.endpoint, hub.storage_base, flush=True)
    serve(hub)


def serve(hub):
    """Until killed."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    hub.close()


def main():
    import os
    if sys.argv[1] == "--upload":
        return serve_upload(sys.argv[2:])
    d, rid = sys.argv[1], sys.argv[2]
    files = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            files[os.path.relpath(p, d)] = open(p, "rb").read()
    hub = MockHub(page_size=100)
    repo = hub.add_repo(rid, files)
    print(hub.endpoint, hub.cdn_base, repo.commit, flush=True)
    serve(hub)


if __name__ == "__main__":
    main()
