"""mock_upload.py -- the write side of the mock Hub (docs/hub-protocol.md §10).

Behaves like the Hub as huggingface_hub's client source shows it
(hf_api.py create_repo / preupload_lfs_files / create_commit, _commit_api.py,
lfs.py), with the storage behaviour S3 is known for:

* POST /api/repos/create: 401 without a token, 403 for a read-only token or
  a namespace the token may not write, 409 (with the url) when the repo
  exists; a new repo starts with one commit holding .gitattributes;
* POST /api/models/{id}/branch/{b}: creates a branch from main (409: exists);
* POST /api/validate-yaml: the README front matter must be closed and made of
  "key: value" / "- item" lines;
* POST /api/models/{id}/preupload/{rev}: at most 256 files; uploadMode "lfs"
  for LFS patterns (*.safetensors, ...) or sizes >= lfs_threshold, else
  "regular"; shouldIgnore for hub.ignored paths; oid = the file's current
  sha256 (LFS) or git blob sha1 (regular) at rev;
* POST /{id}.git/info/lfs/objects/batch (Accept and Content-Type
  application/vnd.git-lfs+json): per object nothing (already stored), a
  basic upload (PUT on the storage host + a verify POST on the Hub with the
  token), or, at or above multipart_threshold, multipart: part URLs on the
  storage host, chunk_size, and a pre-signed completion URL on the Hub;
  every batch starts a new upload (nothing of an unfinished one is reused);
* PUT on the storage host (127.0.0.4): 400 for any Authorization header, 501
  for chunked encoding, 411 without Content-Length, 400 for a part whose size
  is not chunk_size (the last: the rest); answers an S3-style quoted md5 ETag;
* the multipart completion: 400 with Authorization, every part's ETag must be
  the one the storage host gave (verbatim), the object's sha256 and size are
  checked; the verify POST checks them for a basic upload;
* POST /api/models/{id}/commit/{rev}[?create_pr=1]: NDJSON (header, file,
  lfsFile, deletedFile); 412 when parentCommit is not the branch head, 400
  for an lfsFile the storage does not hold (or of another size), for a path
  with a .git component or an empty summary; a PR gets refs/pr/N.

Faults (MockHub.add_fault) apply to these too: server "storage" for the
PUTs; actions "drop" (after=K body bytes received, close without answering),
"status", "reset", "slow_body" (read the body slowly), "push_before" (a
concurrent commit lands on the branch first), "applied_then_reset" (the
commit is applied, then the connection is closed without an answer).
Python standard library only.
"""

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse

LFS_TYPE = "application/vnd.git-lfs+json"
LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx",
                "*.h5", "*.msgpack", "*.model", "*.tar.*", "*.zip", "*.npy", "*.pkl"]
GITATTRIBUTES = b"".join(b"%s filter=lfs diff=lfs merge=lfs -text\n" % p.encode()
                         for p in LFS_PATTERNS)
SECRET = b"mock-storage-signing-key"


class Upload:
    """One upload the batch endpoint handed out (basic or multipart)."""

    def __init__(self, uid, oid, size, chunk, repo_id):
        self.id = uid
        self.oid = oid
        self.size = size
        self.chunk = chunk          # 0: basic
        self.repo_id = repo_id
        self.parts = {}             # part number -> (file, md5 etag, size)
        self.done = False

    def nparts(self):
        return 1 if not self.chunk else (self.size + self.chunk - 1) // self.chunk

    def part_size(self, n):
        if not self.chunk:
            return self.size
        return min(self.chunk, self.size - (n - 1) * self.chunk)


class UploadState:
    """The storage and the write-side settings of one MockHub."""

    def __init__(self, hub):
        self.hub = hub
        self.dir = tempfile.mkdtemp(prefix="mock-hub-store-")
        self.objects = {}           # (repo id, sha256) -> size: what each repo's LFS storage holds
        self.discard = False        # bench: check the bytes, keep none of them
        self.uploads = {}
        self.lock = threading.Lock()
        self.next_id = 1
        self.lfs_threshold = 10 * 1024 * 1024
        self.multipart_threshold = 20 * 1024 * 1024
        self.chunk_size = 8 * 1024 * 1024
        self.read_only = set()      # tokens that may read but not write
        self.namespaces = {}        # token -> namespaces it may write (absent: any)
        self.ignored = set()        # paths preupload answers shouldIgnore for

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def object_path(self, oid):
        return os.path.join(self.dir, "objects", oid)

    def object_bytes(self, oid):
        if self.discard:
            return b""
        with open(self.object_path(oid), "rb") as f:
            return f.read()

    def sign(self, *parts):
        return hmac.new(SECRET, "/".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def new_upload(self, oid, size, repo_id):
        with self.lock:
            uid = "up%d" % self.next_id
            self.next_id += 1
            chunk = self.chunk_size if size >= self.multipart_threshold else 0
            u = Upload(uid, oid, size, chunk, repo_id)
            self.uploads[uid] = u
        os.makedirs(os.path.join(self.dir, "uploads", uid), exist_ok=True)
        return u

    def store(self, u, src):
        """Moves an assembled, checked object into the store (the repo's
        LFS storage now holds it); with discard, only records it."""
        if self.discard:
            if src:
                os.unlink(src)
        else:
            os.makedirs(os.path.join(self.dir, "objects"), exist_ok=True)
            os.replace(src, self.object_path(u.oid))
        with self.lock:
            self.objects[(u.repo_id, u.oid)] = u.size
            u.done = True
        shutil.rmtree(os.path.join(self.dir, "uploads", u.id), ignore_errors=True)

    def may_write(self, token, namespace):
        if token is None or token in self.read_only:
            return False
        allowed = self.namespaces.get(token)
        return allowed is None or namespace in allowed


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def is_lfs_path(path):
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(base, p) for p in LFS_PATTERNS)


# ---------------------------------------------------------------------------
# request plumbing (h is the BaseHTTPRequestHandler of mock_hub.py)

def read_body(h, limit=64 << 20):
    """The request body (bytes), or None after an error reply."""
    if h.headers.get("Transfer-Encoding"):
        h.close_connection = True
        h._error(501, "NotImplemented", "chunked transfer encoding is not supported")
        return None
    n = h.headers.get("Content-Length")
    if n is None or not n.isdigit():
        h.close_connection = True
        h._error(411, "MissingContentLength", "Content-Length required")
        return None
    n = int(n)
    if n > limit:
        h.close_connection = True
        h._error(413, "PayloadTooLarge", "request body too large")
        return None
    data = h.rfile.read(n)
    h._e["received"] = len(data)
    if len(data) < n:
        h.close_connection = True
        return None
    return data


def read_json(h):
    data = read_body(h)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        h._error(400, "BadRequest", "body is not JSON")
        return None
    h._e["json"] = obj
    return obj


def drain(h):
    """Reads and drops a request body so the connection stays usable."""
    n = h.headers.get("Content-Length")
    if n and n.isdigit():
        left = int(n)
        while left > 0:
            got = h.rfile.read(min(left, 1 << 20))
            if not got:
                break
            left -= len(got)


def write_auth(h, hub, repo_id):
    """An error already sent, or None when the token may write repo_id."""
    tok = h._token()
    if tok is None:
        return h._error(401, "Unauthorized", "Authorization header is required for this operation")
    if hub.valid_tokens is not None and tok not in hub.valid_tokens:
        return h._error(401, "Unauthorized", "Invalid credentials in Authorization header")
    st = hub.up
    if tok in st.read_only:
        return h._error(403, "Forbidden",
                        "This token is read-only: it cannot write to %s" % repo_id)
    if not st.may_write(tok, repo_id.split("/")[0]):
        return h._error(403, "Forbidden", "You don't have the rights to write to %s" % repo_id)
    repo = hub.repos.get(repo_id)
    if repo is not None and repo.disabled:
        return h._error(403, "Forbidden", "Access to this resource is disabled.")
    return None


def writable_repo(h, hub, rid):
    """The repo rid when the token may write it, else None (an error sent)."""
    if write_auth(h, hub, rid):
        return None
    repo = hub.repos.get(rid)
    if repo is None:
        h._error(404, "RepoNotFound", "Repository not found")
    return repo


# ---------------------------------------------------------------------------
# the Hub's write endpoints

def hub_post(h, hub, f):
    u = urllib.parse.urlsplit(h.path)
    parts = u.path.split("/")
    q = urllib.parse.parse_qs(u.query)
    if u.path == "/api/repos/create":
        return create_repo(h, hub)
    if u.path == "/api/validate-yaml":
        return validate_yaml(h)
    if u.path == "/api/complete_multipart":
        return complete_multipart(h, hub, q)
    m = re.match(r"^/([^/]+)/([^/]+)\.git/info/lfs/objects/(batch|verify)$", u.path)
    if m:
        rid = m.group(1) + "/" + m.group(2)
        return lfs_batch(h, hub, rid) if m.group(3) == "batch" else lfs_verify(h, hub, rid)
    if len(parts) >= 7 and parts[1] == "api" and parts[2] == "models":
        rid = parts[3] + "/" + parts[4]
        rev = urllib.parse.unquote("/".join(parts[6:]))
        if parts[5] == "preupload":
            return preupload(h, hub, rid, rev)
        if parts[5] == "commit":
            return commit(h, hub, rid, rev, q, f)
        if parts[5] == "branch":
            return create_branch(h, hub, rid, rev)
    drain(h)
    return h._error(404, "NotFound", "no such API")


def create_repo(h, hub):
    body = read_json(h)
    if body is None:
        return None
    name, org = body.get("name"), body.get("organization")
    if not isinstance(name, str) or not name:
        return h._error(400, "BadRequest", "name is required")
    tok = h._token()
    ns = org or "user"
    rid = "%s/%s" % (ns, name)
    if tok is None:
        return h._error(401, "Unauthorized", "You must be authenticated to create a repo")
    if tok in hub.up.read_only:
        return h._error(403, "Forbidden", "This token is read-only: it cannot create repos")
    if not hub.up.may_write(tok, ns):
        return h._error(403, "Forbidden",
                        "You don't have the rights to create a model under the namespace \"%s\"" % ns)
    url = "%s/%s" % (hub.endpoint, rid)
    if rid in hub.repos:
        body = json.dumps({"error": "You already created this model repo", "url": url}).encode()
        h._send(409, [("Content-Type", "application/json"), ("X-Error-Message",
                                                             "You already created this model repo")],
                body)
        return 409
    private = body.get("visibility") == "private" or body.get("private") is True
    repo = hub.add_repo(rid, {".gitattributes": GITATTRIBUTES}, lfs=[], private=private,
                        approved=[tok])
    repo.created = True
    return h._json({"url": url, "name": rid, "id": "mock-" + rid})


def create_branch(h, hub, rid, branch):
    if read_json(h) is None:
        return None
    repo = writable_repo(h, hub, rid)
    if repo is None:
        return None
    if branch in repo.branches:
        return h._error(409, "Conflict", "Reference already exists")
    repo.branches[branch] = repo.branches["main"]
    return h._json({})


def validate_yaml(h):
    body = read_json(h)
    if body is None:
        return None
    text = body.get("content", "")
    errors = []
    if text.startswith("---\n"):
        end = text.find("\n---", 3)
        if end < 0:
            errors.append({"message": "front matter is not closed"})
        else:
            for line in text[4:end].split("\n"):
                s = line.strip()
                if s and not s.startswith("- ") and not re.match(r"^[A-Za-z_][\w-]*:", s):
                    errors.append({"message": "invalid YAML line: %r" % line})
    if errors:
        payload = json.dumps({"errors": errors, "warnings": []}).encode()
        h._send(400, [("Content-Type", "application/json"),
                      ("X-Error-Message", "Invalid metadata in README.md")], payload)
        return 400
    return h._json({"errors": [], "warnings": []})


def preupload(h, hub, rid, rev):
    body = read_json(h)
    if body is None:
        return None
    repo = writable_repo(h, hub, rid)
    if repo is None:
        return None
    files = body.get("files")
    if not isinstance(files, list) or len(files) > 256:
        return h._error(400, "BadRequest", "files must be a list of at most 256 entries")
    out = []
    for e in files:
        path, size, sample = e.get("path"), e.get("size"), e.get("sample")
        if not isinstance(path, str) or not isinstance(size, int) or not isinstance(sample, str):
            return h._error(400, "BadRequest", "each file needs path, size and sample")
        try:
            raw = base64.b64decode(sample, validate=True)
        except (binascii.Error, ValueError):
            return h._error(400, "BadRequest", "sample is not base64")
        if len(raw) != min(size, 512):
            return h._error(400, "BadRequest", "sample of %s is %d bytes, expected %d"
                            % (path, len(raw), min(size, 512)))
        lfs = size > 0 and (is_lfs_path(path) or size >= hub.up.lfs_threshold)
        info = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": path in hub.up.ignored}
        if path in repo.files:
            info["oid"] = repo.sha256[path] if path in repo.lfs else repo.gitsha[path]
        out.append(info)
    return h._json({"files": out})


# ---------------------------------------------------------------------------
# LFS batch, storage, completion, verify

def lfs_batch(h, hub, rid):
    if LFS_TYPE not in (h.headers.get("Accept") or "") or \
            LFS_TYPE not in (h.headers.get("Content-Type") or ""):
        drain(h)
        return h._error(406, "NotAcceptable", "use %s" % LFS_TYPE)
    body = read_json(h)
    if body is None:
        return None
    err = write_auth(h, hub, rid)
    if err:
        return err
    if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
        return h._error(400, "BadRequest", "operation must be upload, hash_algo sha256")
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > 1000:
        return h._error(400, "BadRequest", "objects must be a list")
    st = hub.up
    out, transfer = [], "basic"
    for o in objects:
        oid, size = o.get("oid"), o.get("size")
        if not isinstance(oid, str) or not re.match(r"^[0-9a-f]{64}$", oid) or \
                not isinstance(size, int) or size < 0:
            out.append({"oid": str(oid), "size": size if isinstance(size, int) else -1,
                        "error": {"code": 422, "message": "invalid oid or size"}})
            continue
        if st.objects.get((rid, oid)) == size:
            out.append({"oid": oid, "size": size})
            continue
        u = st.new_upload(oid, size, rid)
        sig = st.sign(u.id)
        if u.chunk:
            transfer = "multipart"
            header = {"chunk_size": str(u.chunk)}
            for n in range(1, u.nparts() + 1):
                header[str(n)] = "%s/upload/%s/%d?X-Amz-Signature=%s" % (
                    hub.storage_base, u.id, n, st.sign(u.id, str(n)))
            action = {"upload": {"href": "%s/api/complete_multipart?uploadId=%s&signature=%s"
                                 % (hub.endpoint, u.id, sig), "header": header}}
        else:
            action = {"upload": {"href": "%s/upload/%s/1?X-Amz-Signature=%s"
                                 % (hub.storage_base, u.id, st.sign(u.id, "1"))},
                      "verify": {"href": "%s/%s.git/info/lfs/objects/verify" % (hub.endpoint, rid)}}
        out.append({"oid": oid, "size": size, "authenticated": True, "actions": action})
    payload = json.dumps({"transfer": transfer, "objects": out, "hash_algo": "sha256"}).encode()
    h._send(200, [("Content-Type", LFS_TYPE)], payload)
    return 200


def storage(h, hub, f):
    """PUT of a part (or a whole basic object) on the storage host."""
    if "Authorization" in h.headers:
        drain(h)
        return h._error(400, "TokenLeak", "Authorization header sent to the storage host")
    if h.command != "PUT":
        return h._error(405, "MethodNotAllowed", "PUT only")
    u = urllib.parse.urlsplit(h.path)
    m = re.match(r"^/upload/([^/]+)/(\d+)$", u.path)
    q = urllib.parse.parse_qs(u.query)
    st = hub.up
    up = st.uploads.get(m.group(1)) if m else None
    if up is None or q.get("X-Amz-Signature", [""])[0] != st.sign(up.id, m.group(2)):
        drain(h)
        return h._error(403, "SignatureDoesNotMatch", "bad or missing signature")
    n = int(m.group(2))
    if h.headers.get("Transfer-Encoding"):
        h.close_connection = True
        return h._error(501, "NotImplemented", "chunked transfer encoding is not supported")
    cl = h.headers.get("Content-Length")
    if cl is None or not cl.isdigit():
        h.close_connection = True
        return h._error(411, "MissingContentLength", "Content-Length required")
    cl = int(cl)
    if n < 1 or n > up.nparts() or cl != up.part_size(n):
        drain(h)
        return h._error(400, "InvalidPart", "part %d of %s has %d bytes, expected %d"
                        % (n, up.id, cl, up.part_size(n) if 1 <= n <= up.nparts() else -1))
    with st.lock:
        tmp_id = st.next_id
        st.next_id += 1
    path = os.path.join(st.dir, "uploads", up.id, "%d.tmp%d" % (n, tmp_id))
    md5, got = hashlib.md5(), 0
    inline = st.discard and not up.chunk     # bench: hash as it comes, keep nothing
    sha = hashlib.sha256() if inline else None
    drop = f.kw["after"] if f is not None and f.action == "drop" else None
    delay = f.kw.get("delay", 0.05) if f is not None and f.action == "slow_body" else 0
    try:
        out = open(os.devnull if inline else path, "wb")
    except OSError:          # the mock is shutting down under this request
        return None
    with out:
        while got < cl:
            want = min(cl - got, 1 << 20 if not delay else f.kw.get("chunk", 65536))
            if drop is not None:
                want = min(want, drop - got)
                if want <= 0:
                    break
            b = h.rfile.read(want)
            if not b:
                break
            out.write(b)
            md5.update(b)
            if sha is not None:
                sha.update(b)
            got += len(b)
            h._e["received"] = got
            if delay:
                time.sleep(delay)
    h._e["received"] = got
    if got < cl:
        # Dropped (a fault) or the client went away: no answer, no part.
        h._e["status"] = "drop" if drop is not None else "client-gone"
        h.close_connection = True
        if not inline:
            os.unlink(path)
        return None
    etag = '"%s"' % md5.hexdigest()
    if inline:
        with st.lock:
            up.parts[n] = (None, etag, cl, sha.hexdigest())
        h._send(200, [("ETag", etag)])
        return 200
    final = os.path.join(st.dir, "uploads", up.id, "%d" % n)
    try:
        os.replace(path, final)
    except OSError:          # the mock is shutting down under this request
        return None
    with st.lock:
        up.parts[n] = (final, etag, cl)
    h._send(200, [("ETag", etag)])
    return 200


def assemble(st, up):
    """The parts of up concatenated into one file; its path."""
    path = os.path.join(st.dir, "uploads", up.id, "object")
    with open(path, "wb") as out:
        for n in range(1, up.nparts() + 1):
            with open(up.parts[n][0], "rb") as p:
                shutil.copyfileobj(p, out, 1 << 20)
    return path


def check_object(h, st, up):
    """Assembles and checks up (sha256, size); an error sent or None."""
    missing = [n for n in range(1, up.nparts() + 1) if n not in up.parts]
    if missing:
        return h._error(400, "MissingParts", "parts %s of %s were not uploaded" % (missing, up.oid))
    if up.parts[1][0] is None:          # discard mode: hashed as it came
        path, size, digest = None, up.parts[1][2], up.parts[1][3]
    else:
        path = assemble(st, up)
        size = os.path.getsize(path)
        digest = file_sha256(path)
    if size != up.size or digest != up.oid:
        if path:
            os.unlink(path)
        return h._error(400, "ChecksumMismatch", "object is %d bytes with sha256 %s, expected %d "
                        "bytes with sha256 %s" % (size, digest, up.size, up.oid))
    st.store(up, path)
    return None


def complete_multipart(h, hub, q):
    if "Authorization" in h.headers:
        drain(h)
        return h._error(400, "TokenLeak", "Authorization header sent to the pre-signed completion URL")
    st = hub.up
    uid = q.get("uploadId", [""])[0]
    up = st.uploads.get(uid)
    if up is None or q.get("signature", [""])[0] != st.sign(uid) or not up.chunk:
        drain(h)
        return h._error(403, "SignatureDoesNotMatch", "bad or missing signature")
    body = read_json(h)
    if body is None:
        return None
    if up.done:
        return h._json({"oid": up.oid})
    parts = body.get("parts")
    if body.get("oid") != up.oid or not isinstance(parts, list) or len(parts) != up.nparts():
        return h._error(400, "BadRequest", "completion of %s: oid %r, %s parts, expected %d"
                        % (uid, body.get("oid"), len(parts) if isinstance(parts, list) else "no",
                           up.nparts()))
    for i, p in enumerate(parts):
        n = i + 1
        if p.get("partNumber") != n or n not in up.parts or p.get("etag") != up.parts[n][1]:
            return h._error(400, "InvalidPart", "part %d: etag %r does not match the stored %r"
                            % (n, p.get("etag"), up.parts.get(n, (None, None))[1]))
    err = check_object(h, st, up)
    if err:
        return err
    return h._json({"oid": up.oid})


def lfs_verify(h, hub, rid):
    body = read_json(h)
    if body is None:
        return None
    err = write_auth(h, hub, rid)
    if err:
        return err
    st = hub.up
    # The verify action's own headers are not sent by the client (lfs.py
    # builds the Hub headers only): find the upload by object and repo.
    with st.lock:
        cands = [u for u in st.uploads.values() if u.oid == body.get("oid") and not u.chunk
                 and u.size == body.get("size") and u.repo_id == rid and 1 in u.parts]
    up = cands[-1] if cands else None
    if up is None:
        return h._error(404, "NotFound", "no upload of %r with size %r"
                        % (body.get("oid"), body.get("size")))
    if not up.done:
        err = check_object(h, st, up)
        if err:
            return err
    return h._json({"oid": up.oid})


# ---------------------------------------------------------------------------
# the commit

def parse_commit(h, data):
    """(header, ops) from an NDJSON body, or None after an error reply."""
    try:
        lines = [json.loads(l) for l in data.decode("utf-8").split("\n") if l]
    except (ValueError, UnicodeDecodeError):
        h._error(400, "BadRequest", "the commit payload is not NDJSON")
        return None
    h._e["ndjson"] = lines
    if not lines or lines[0].get("key") != "header":
        h._error(400, "BadRequest", "the first line must be the header")
        return None
    header = lines[0].get("value") or {}
    if not header.get("summary"):
        h._error(400, "BadRequest", "the commit summary is empty")
        return None
    return header, lines[1:]


def apply_ops(h, hub, repo, ops):
    """{path: (bytes, is_lfs) or None (deleted)}, or None after an error reply."""
    st = hub.up
    changes = {}
    for op in ops:
        key, v = op.get("key"), op.get("value") or {}
        path = v.get("path")
        if not isinstance(path, str) or not path or path.startswith("/") or \
                any(c in (".git", "..", ".") for c in path.split("/")):
            h._error(400, "InvalidPath", "invalid path %r" % path)
            return None
        if key == "file":
            if v.get("encoding") != "base64":
                h._error(400, "BadRequest", "%s: encoding must be base64" % path)
                return None
            try:
                changes[path] = (base64.b64decode(v.get("content", ""), validate=True), False)
            except (binascii.Error, ValueError):
                h._error(400, "BadRequest", "%s: content is not base64" % path)
                return None
        elif key == "lfsFile":
            oid, size = v.get("oid"), v.get("size")
            if v.get("algo") != "sha256" or st.objects.get((repo.id, oid)) != size:
                h._error(400, "LfsObjectNotFound", "%s: LFS object %s of %r bytes is not in "
                         "storage" % (path, oid, size))
                return None
            changes[path] = (st.object_bytes(oid), True)
        elif key == "deletedFile":
            changes[path] = None
        else:
            h._error(400, "BadRequest", "unknown operation %r" % key)
            return None
    return changes


def commit(h, hub, rid, rev, q, f):
    if (h.headers.get("Content-Type") or "") != "application/x-ndjson":
        drain(h)
        return h._error(400, "BadRequest", "Content-Type must be application/x-ndjson")
    data = read_body(h, limit=512 << 20)
    if data is None:
        return None
    repo = writable_repo(h, hub, rid)
    if repo is None:
        return None
    if rev not in repo.branches:
        return h._error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
    parsed = parse_commit(h, data)
    if parsed is None:
        return None
    header, ops = parsed
    if f is not None and f.action == "push_before":
        repo.apply({"concurrent.txt": (b"pushed meanwhile\n", False)}, "concurrent push", rev)
    parent = header.get("parentCommit")
    pr = "create_pr" in q and q["create_pr"][0] in ("1", "true")
    # On a branch the parent must be its head; a PR starts from the parent
    # (create_commit's docstring), which must exist.
    if parent is not None and (parent not in repo.commits if pr else parent != repo.branches[rev]):
        return h._error(412, "PreconditionFailed",
                        "A commit has happened since. Please refresh and try again.")
    changes = apply_ops(h, hub, repo, ops)
    if changes is None:
        return None
    oid = repo.apply(changes, header["summary"], rev, pr=pr)
    h._e["commit"] = oid
    body = {"commitOid": oid, "commitUrl": "%s/%s/commit/%s" % (hub.endpoint, rid, oid),
            "pullRequestUrl": None}
    if pr:
        body["pullRequestUrl"] = "%s/%s/discussions/%d" % (hub.endpoint, rid, len(repo.prs))
    if f is not None and f.action == "applied_then_reset":
        h._e["status"] = "applied-reset"
        h.close_connection = True
        return None
    return h._json(body)
