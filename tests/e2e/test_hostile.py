"""Hostile checkpoints: every one must be refused cleanly (issue 7).

Each case starts from a valid tiny Llama checkpoint written by fixtures.py
(an independent writer), breaks one thing, runs `flashify SRC -o OUT`, and
checks what a user would: exit status 2, exactly one line on stderr that
names the offending file (and the tensor or key where there is one),
nothing at OUT, no temporary directory left next to it, and the source
directory byte for byte unchanged.  Controls (the unbroken checkpoint, a
Hugging Face cache layout with symlinked blobs) must convert, so a
failure is the input's fault and not a broken binary.

The corpus is generated here, nothing binary is checked in.  Run with
FLASHIFY=path/to/flashify; `-k substring` runs only matching cases."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures as F  # noqa: E402

FLASHIFY = os.environ["FLASHIFY"]
ST = "model.safetensors"
IDX = "model.safetensors.index.json"
CFG = "config.json"


# ---------------------------------------------------------------- building

def base_model(dtype="F32", tied=False):
    return F.build_model("llama", dtype=dtype, tied=tied, seed=7)


def write_base(d, shards=1, **kw):
    """A valid checkpoint in d; returns its safetensors file names."""
    return F.write_checkpoint(base_model(**kw), d, shards=shards)


def split_st(path):
    """(ordered [(name, info)], metadata, data bytes) of a file written by
    fixtures (valid, so a plain parse is fine)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    return list(hdr.items()), meta, blob[8 + n:]


def render(entries, meta=None, raw_meta=None):
    """Header text from [(name, info-or-raw-json-text)] in the given order;
    duplicates are possible because this is text, not a dict."""
    parts = []
    if raw_meta is not None:
        parts.append('"__metadata__":' + raw_meta)
    elif meta is not None:
        parts.append('"__metadata__":' + json.dumps(meta, separators=(",", ":")))
    for name, info in entries:
        v = info if isinstance(info, str) else json.dumps(info, separators=(",", ":"))
        parts.append(json.dumps(name) + ":" + v)
    return "{" + ",".join(parts) + "}"


def st_file(header, data=b"", length=None, pad=True):
    h = header.encode() if isinstance(header, str) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def put(path, blob):
    with open(path, "wb") as f:
        f.write(blob)


def rewrite_st(d, fn=ST, entries=None, meta=None, data=None, header=None,
               raw_meta=None, length=None, tail=b"", pad=True):
    """Rewrites shard fn of d from its own parts, with any part replaced.
    entries/data may be callables taking the current value."""
    path = os.path.join(d, fn)
    e0, m0, d0 = split_st(path)
    e = entries(e0) if callable(entries) else (e0 if entries is None else entries)
    m = m0 if meta is None else meta
    dd = data(d0) if callable(data) else (d0 if data is None else data)
    h = header if header is not None else render(e, m, raw_meta)
    put(path, st_file(h, dd, length, pad) + tail)


def edit_entry(name, **changes):
    """entries-callable: changes fields of one tensor's info."""
    def f(entries):
        out = []
        for k, info in entries:
            if k == name:
                info = dict(info)
                info.update(changes)
            out.append((k, info))
        return out
    return f


def offsets_of(d, name, fn=ST):
    for k, info in split_st(os.path.join(d, fn))[0]:
        if k == name:
            return info["data_offsets"]
    raise KeyError(name)


def edit_config(d, change=None, raw=None):
    path = os.path.join(d, CFG)
    if raw is not None:
        put(path, raw if isinstance(raw, bytes) else raw.encode())
        return
    with open(path) as f:
        cfg = json.load(f)
    change(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def edit_index(d, change):
    path = os.path.join(d, IDX)
    with open(path) as f:
        idx = json.load(f)
    change(idx)
    with open(path, "w") as f:
        json.dump(idx, f, indent=2)


NORM = "model.layers.0.input_layernorm.weight"
Q = "model.layers.0.self_attn.q_proj.weight"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def shard_holding(d, name):
    with open(os.path.join(d, IDX)) as f:
        return json.load(f)["weight_map"][name]


# ---------------------------------------------------------------- cases
# Each case: (name, builder(d) -> None, [substrings the error must contain]).
# The builder receives an empty directory d (the source).

CASES = []


def case(name, needles):
    def reg(fn):
        CASES.append((name, fn, needles))
        return fn
    return reg


def st_case(name, needles, **rewrite):
    """A single-file checkpoint whose model.safetensors is rewritten."""
    def build(d):
        write_base(d)
        kw = {k: (v(d) if k == "late" else v) for k, v in rewrite.items()}
        late = kw.pop("late", None)
        if late:
            kw.update(late)
        rewrite_st(d, **kw)
    CASES.append((name, build, needles))


# -- the container ----------------------------------------------------------

@case("truncated-data", [ST, "truncated"])
def _(d):
    write_base(d)
    p = os.path.join(d, ST)
    os.truncate(p, os.path.getsize(p) - 1)


@case("truncated-in-header", [ST])
def _(d):
    write_base(d)
    p = os.path.join(d, ST)
    os.truncate(p, 40)


@case("shorter-than-8-bytes", [ST])
def _(d):
    write_base(d)
    put(os.path.join(d, ST), b"\x10\x00\x00")


@case("empty-file", [ST])
def _(d):
    write_base(d)
    put(os.path.join(d, ST), b"")


st_case("header-length-past-eof", [ST], length=1 << 20)
st_case("header-length-2^63", [ST], length=1 << 63)
st_case("header-length-2^64-1", [ST], length=(1 << 64) - 1)
st_case("header-length-over-limit", [ST, "limit"], length=100_000_001)


st_case("header-length-zero", [ST], header="")
@case("non-utf8-name", [ST, "UTF-8"])
def _(d):
    write_base(d)
    e, m, data = split_st(os.path.join(d, ST))
    h = render(e, m).encode().replace(b'"model.norm.weight"', b'"model.norm.\xffweight"')
    put(os.path.join(d, ST), st_file(h, data))


@case("overlong-utf8", [ST, "UTF-8"])
def _(d):
    write_base(d)
    e, m, data = split_st(os.path.join(d, ST))
    h = render(e, m).encode().replace(b'"model.norm.weight"', b'"model.norm\xc0\xaeweight"')
    put(os.path.join(d, ST), st_file(h, data))


st_case("not-json", [ST], header="this is not json at all")
st_case("json-array", [ST], header="[1,2,3]")
st_case("json-string", [ST], header='"hello"')
st_case("truncated-json", [ST], late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2])[:-9]})
st_case("leading-garbage", [ST], late=lambda d: {"header": "x" + render(*split_st(os.path.join(d, ST))[:2])})
st_case("leading-bom", [ST], late=lambda d: {"header": "\ufeff" + render(*split_st(os.path.join(d, ST))[:2])})
st_case("trailing-garbage-in-header", [ST], late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]) + "}"})
st_case("trailing-bytes-after-data", [ST, "trailing"], tail=b"\x00" * 8)
st_case("trailing-polyglot-zip", [ST, "trailing"], tail=b"PK\x05\x06" + b"\x00" * 18)
st_case("single-quoted-json", [ST], late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('"', "'")})
st_case("nul-in-name", [ST, "NUL"],
        late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('"model.norm.weight"', '"model.norm.weight\\u0000x"')})
st_case("lone-surrogate-in-name", [ST, "surrogate"],
        late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('"model.norm.weight"', '"model.norm.weight\\ud800"')})

# -- keys ---------------------------------------------------------------------

st_case("duplicate-tensor", [ST, "duplicate", "model.norm.weight"],
        entries=lambda e: e + [x for x in e if x[0] == "model.norm.weight"])


@case("duplicate-tensor-disjoint-offsets", [ST, "duplicate", "model.norm.weight"])
def _(d):
    # The reference would keep the last one and report a misleading hole
    # (safetensors#401): here it is named as a duplicate.
    write_base(d)

    def f(e):
        info = dict(next(v for k, v in e if k == "model.norm.weight"))
        end = max(v["data_offsets"][1] for _, v in e)
        info["data_offsets"] = [end, end + 128]
        return e + [("model.norm.weight", info)]
    rewrite_st(d, entries=f, data=lambda x: x + b"\x00" * 128)


st_case("duplicate-metadata", [ST, "__metadata__"],
        late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('{"__metadata__":{"format":"pt"}', '{"__metadata__":{"format":"pt"},"__metadata__":{"format":"pt"}', 1)})
st_case("duplicate-metadata-key", [ST, "duplicate", "format"], raw_meta='{"format":"pt","format":"np"}')
st_case("duplicate-field-in-tensor", [ST, "duplicate", "dtype"],
        late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('"model.norm.weight":{"dtype":"F32"', '"model.norm.weight":{"dtype":"F32","dtype":"F32"')})
st_case("metadata-number", [ST, "__metadata__"], raw_meta='{"format":"pt","n":0}')
st_case("metadata-null", [ST, "__metadata__"], raw_meta='{"format":null}')
st_case("metadata-nested", [ST, "__metadata__"], raw_meta='{"format":{"a":"b"}}')
st_case("metadata-not-object", [ST, "__metadata__"], raw_meta='["format","pt"]')
st_case("tensor-named-metadata", [ST, "__metadata__"],
        raw_meta='{"dtype":"F32","shape":[0],"data_offsets":[0,0]}')
st_case("empty-tensor-name", [ST, "empty"], entries=lambda e: e + [("", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]})])
st_case("tensor-entry-not-object", [ST, "model.norm.weight"], entries=(lambda e: [(k, "[1,2]" if k == "model.norm.weight" else v) for k, v in e]))
st_case("missing-dtype", [ST, "model.norm.weight", "dtype"],
        entries=lambda e: [(k, {kk: vv for kk, vv in v.items() if kk != "dtype"} if k == "model.norm.weight" else v) for k, v in e])
st_case("missing-data-offsets", [ST, "model.norm.weight", "data_offsets"],
        entries=lambda e: [(k, {kk: vv for kk, vv in v.items() if kk != "data_offsets"} if k == "model.norm.weight" else v) for k, v in e])

# -- dtypes and shapes ----------------------------------------------------------

st_case("unknown-dtype", [ST, "model.norm.weight", "F12"], entries=edit_entry("model.norm.weight", dtype="F12"))
st_case("lowercase-dtype", [ST, "model.norm.weight", "f32"], entries=edit_entry("model.norm.weight", dtype="f32"))
st_case("dtype-number", [ST, "model.norm.weight", "dtype"], entries=edit_entry("model.norm.weight", dtype=32))
st_case("negative-shape", [ST, "model.norm.weight", "-32"], entries=edit_entry("model.norm.weight", shape=[-32]))
st_case("fractional-shape", [ST, "model.norm.weight", "32.5"], entries=edit_entry("model.norm.weight", shape=[32.5]))
st_case("float-shape", [ST, "model.norm.weight", "32.0"], entries=edit_entry("model.norm.weight", shape=[32.0]))
st_case("exponent-shape", [ST, "model.norm.weight"],
        late=lambda d: {"header": render(*split_st(os.path.join(d, ST))[:2]).replace('"model.norm.weight":{"dtype":"F32","shape":[32]', '"model.norm.weight":{"dtype":"F32","shape":[3.2e1]')})
st_case("huge-shape", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=[2 ** 64 + 32]))
st_case("shape-2^53+1", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=[2 ** 53 + 1]))
st_case("overflowing-shape-product", [ST, "model.norm.weight", "overflow"],
        entries=edit_entry("model.norm.weight", shape=[2 ** 32, 2 ** 32, 0]))
st_case("overflowing-bit-count", [ST, "model.norm.weight", "overflow"],
        entries=edit_entry("model.norm.weight", shape=[2 ** 40, 2 ** 22]))
st_case("shape-string", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=["32"]))
st_case("shape-not-array", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=32))
st_case("too-many-dims", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=[1] * 17 + [32]))
st_case("shape-size-mismatch", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", shape=[33]))
st_case("sub-byte-misaligned", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", dtype="F4", shape=[255]))

# -- offsets ----------------------------------------------------------------------


def _swap(d):
    b, e = offsets_of(d, "model.norm.weight")
    return {"entries": edit_entry("model.norm.weight", data_offsets=[e, b])}


def _shift(delta):
    def f(d):
        b, e = offsets_of(d, "model.norm.weight")
        return {"entries": edit_entry("model.norm.weight", data_offsets=[b + delta, e + delta])}
    return f


st_case("reversed-offsets", [ST, "model.norm.weight"], late=_swap)
st_case("overlapping-offsets", [ST], late=_shift(-4))
st_case("holey-offsets", [ST], late=_shift(4))
st_case("huge-offsets", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", data_offsets=[2 ** 62, 2 ** 62 + 128]))
st_case("offsets-past-u64", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", data_offsets=[2 ** 64, 2 ** 64 + 128]))
st_case("negative-offsets", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", data_offsets=[-128, 0]))
st_case("three-offsets", [ST, "model.norm.weight"], entries=edit_entry("model.norm.weight", data_offsets=[0, 64, 128]))
st_case("offsets-not-from-zero", [ST, "expected start 0"],
        entries=lambda e: [(k, dict(v, data_offsets=[v["data_offsets"][0] + 8, v["data_offsets"][1] + 8])) for k, v in e],
        data=lambda x: b"\x00" * 8 + x)

# -- nesting and size limits --------------------------------------------------------


@case("deeply-nested-json", [ST, "nested"])
def _(d):
    write_base(d)
    e, m, data = split_st(os.path.join(d, ST))
    h = render(e, m)
    deep = "[" * 200000 + "]" * 200000
    h = h.replace('"model.norm.weight":{', '"model.norm.weight":{"x":' + deep + ",", 1)
    put(os.path.join(d, ST), st_file(h, data))


@case("deeply-nested-metadata", [ST, "__metadata__"])
def _(d):
    write_base(d)
    rewrite_st(d, raw_meta='{"format":' + "{" * 5000 + "}" * 5000 + "}")


@case("a-million-empty-tensors", [ST, "1000000"])
def _(d):
    # A million zero-size tensors on top of the model's: over the tensor cap.
    write_base(d)
    e, m, data = split_st(os.path.join(d, ST))
    h = render(e, m)
    extra = ",".join('"e%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(1_000_000))
    put(os.path.join(d, ST), st_file(h[:-1] + "," + extra + "}", data))


@case("many-metadata-entries", ["model.norm.weight"])
def _(d):
    # 300k tensors and 300k __metadata__ entries (alias-shaped, to names that
    # do not exist), and the final norm missing so the plan refuses it.
    # Resolving aliases by a linear scan per entry took 17 minutes here.
    write_base(d)
    e, m, data = split_st(os.path.join(d, ST))
    e = [(k, v) for k, v in e if k != "model.norm.weight"]
    end = max(v["data_offsets"][1] for _, v in e)
    n = 300_000
    meta = dict(m)
    meta.update({"alias.%d" % i: "missing.%d" % i for i in range(n)})
    zero = {"dtype": "U8", "shape": [0]}
    e += [("zero.%d" % i, dict(zero, data_offsets=[end, end])) for i in range(n)]
    # drop the norm's bytes: re-pack the remaining tensors contiguously
    blobs, off, packed = [], 0, []
    for k, v in sorted(e, key=lambda kv: kv[1]["data_offsets"]):
        b0, b1 = v["data_offsets"]
        packed.append((k, dict(v, data_offsets=[off, off + b1 - b0])))
        blobs.append(data[b0:b1])
        off += b1 - b0
    put(os.path.join(d, ST), st_file(render(packed, meta), b"".join(blobs)))


# -- values -----------------------------------------------------------------------------


def _norm_value(v, name):
    def build(d):
        m = base_model()
        t = m.tensors[name]
        vals = t.values()
        vals[3] = v
        m.tensors[name] = F.Tensor("F32", t.shape, struct.pack("<%df" % len(vals), *vals))
        F.write_checkpoint(m, d)
    return build


CASES.append(("nan-in-norm", _norm_value(float("nan"), NORM), [NORM]))
CASES.append(("inf-in-final-norm", _norm_value(float("inf"), "model.norm.weight"), ["model.norm.weight"]))
CASES.append(("nan-in-consumer", _norm_value(float("nan"), Q), [Q]))

# -- config.json ------------------------------------------------------------------------


@case("no-config", [CFG])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, CFG))


@case("config-not-json", [CFG])
def _(d):
    write_base(d)
    edit_config(d, raw='{"model_type": "llama", ')


@case("config-array", [CFG])
def _(d):
    write_base(d)
    edit_config(d, raw="[]")


@case("config-non-utf8", [CFG, "UTF-8"])
def _(d):
    write_base(d)
    with open(os.path.join(d, CFG), "rb") as f:
        text = f.read()
    edit_config(d, raw=text.replace(b'"silu"', b'"si\xffu"'))


@case("config-duplicate-key", [CFG, "num_hidden_layers"])
def _(d):
    write_base(d)
    with open(os.path.join(d, CFG)) as f:
        text = f.read()
    edit_config(d, raw=text.replace('"num_hidden_layers": 2', '"num_hidden_layers": 2, "num_hidden_layers": 3'))


@case("config-nested-duplicate-key", [CFG, "rope_type"])
def _(d):
    # Python's json keeps the last, cJSON the first: refuse, at any depth.
    write_base(d)
    with open(os.path.join(d, CFG)) as f:
        text = f.read()
    edit_config(d, raw=text.replace('"rope_theta"', '"rope_scaling": {"rope_type": "linear", "factor": 2.0, "rope_type": "dynamic"}, "rope_theta"'))


@case("config-million-keys-one-duplicate", [CFG, "k999999"])
def _(d):
    # 14 MB of keys: duplicate detection must not be quadratic (this took
    # hours, deaf to SIGTERM, with a pairwise scan).
    write_base(d)
    with open(os.path.join(d, CFG)) as f:
        cfg = json.load(f)
    text = json.dumps(cfg)[:-1] + "".join(', "k%d": 0' % i for i in range(1_000_000)) + ', "k999999": 1}'
    edit_config(d, raw=text)


@case("config-is-directory", [CFG])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, CFG))
    os.mkdir(os.path.join(d, CFG))


def cfg_case(name, change, needles):
    def build(d):
        write_base(d)
        edit_config(d, change)
    CASES.append((name, build, [CFG] + needles))


cfg_case("config-missing-model-type", lambda c: c.pop("model_type"), ["model_type"])
cfg_case("config-model-type-number", lambda c: c.update(model_type=7), ["model_type"])
cfg_case("config-unknown-model-type", lambda c: c.update(model_type="not_a_model"), ["not_a_model"])
cfg_case("config-missing-layers", lambda c: c.pop("num_hidden_layers"), ["num_hidden_layers"])
cfg_case("config-layers-string", lambda c: c.update(num_hidden_layers="2"), ["num_hidden_layers"])
cfg_case("config-layers-float", lambda c: c.update(num_hidden_layers=2.5), ["num_hidden_layers"])
cfg_case("config-layers-negative", lambda c: c.update(num_hidden_layers=-1), ["num_hidden_layers"])
cfg_case("config-layers-absurd", lambda c: c.update(num_hidden_layers=10 ** 12), ["num_hidden_layers"])
cfg_case("config-layers-huge-float", lambda c: c.update(num_hidden_layers=1e308), ["num_hidden_layers"])
cfg_case("config-hidden-string", lambda c: c.update(hidden_size="32"), ["hidden_size"])
cfg_case("config-hidden-zero", lambda c: c.update(hidden_size=0), ["hidden_size"])
cfg_case("config-tie-string", lambda c: c.update(tie_word_embeddings="false"), ["tie_word_embeddings"])
cfg_case("config-text-config-array", lambda c: c.update(text_config=[]), ["text_config"])
# Sizes that disagree with the tensors: the error names a tensor.
# Named by the tensor the config promises (message from the fold plan).
CASES.append(("config-more-layers-than-tensors",
              lambda d: (write_base(d), edit_config(d, lambda c: c.update(num_hidden_layers=3))),
              ["model.layers.2"]))
cfg_case("config-hidden-disagrees", lambda c: c.update(hidden_size=64), ["64"])

# -- the index ----------------------------------------------------------------------------


def idx_case(name, change, needles, shards=2):
    def build(d):
        write_base(d, shards=shards)
        change(d)
    CASES.append((name, build, needles))


def _set_map(name, value):
    def change(d):
        edit_index(d, lambda i: i["weight_map"].__setitem__(name, value))
    return change


idx_case("index-dotdot", _set_map(NORM, "../" + SHARD1), [IDX, ".."])
idx_case("index-dotdot-inside", _set_map(NORM, "sub/../" + SHARD1), [IDX, ".."])
idx_case("index-absolute", _set_map(NORM, "/etc/passwd"), [IDX, "/etc/passwd"])
idx_case("index-absolute-safetensors", _set_map(NORM, "/tmp/x.safetensors"), [IDX, "absolute"])
idx_case("index-not-safetensors", _set_map(NORM, "config.json"), [IDX, "config.json"])
idx_case("index-missing-shard", _set_map(NORM, "model-00003-of-00003.safetensors"), ["model-00003-of-00003.safetensors"])
idx_case("index-wrong-shard", lambda d: _set_map(NORM, SHARD2 if shard_holding(d, NORM) == SHARD1 else SHARD1)(d), [NORM])
idx_case("index-tensor-not-in-any-shard", _set_map("model.layers.9.mlp.up_proj.weight", SHARD1), ["model.layers.9.mlp.up_proj.weight"])
idx_case("index-value-number", _set_map(NORM, 1), [IDX, NORM])
idx_case("index-not-json", lambda d: put(os.path.join(d, IDX), b'{"weight_map": {'), [IDX])
idx_case("index-no-weight-map", lambda d: edit_index(d, lambda i: i.pop("weight_map")), [IDX, "weight_map"])
idx_case("index-weight-map-array", lambda d: edit_index(d, lambda i: i.update(weight_map=[])), [IDX, "weight_map"])


@case("index-duplicate-weight-map", [IDX, "weight_map"])
def _(d):
    write_base(d, shards=2)
    with open(os.path.join(d, IDX)) as f:
        idx = json.load(f)
    text = json.dumps(idx)
    other = json.dumps({"weight_map": {NORM: SHARD1}})[1:-1]
    put(os.path.join(d, IDX), (text[:-1] + ", " + other + "}").encode())


@case("index-duplicate-key", [IDX, NORM])
def _(d):
    write_base(d, shards=2)
    with open(os.path.join(d, IDX)) as f:
        text = f.read()
    line = '"%s": "%s"' % (NORM, shard_holding(d, NORM))
    put(os.path.join(d, IDX), text.replace(line, line + ",\n    " + line).encode())


@case("tensor-in-two-shards", [NORM])
def _(d):
    write_base(d, shards=2)
    holder = shard_holding(d, NORM)
    other = SHARD2 if holder == SHARD1 else SHARD1
    # Append a copy of the norm to the other shard (a valid file by itself).
    e_src, _, data_src = split_st(os.path.join(d, holder))
    b, e = next(v["data_offsets"] for k, v in e_src if k == NORM)
    e2, m2, data2 = split_st(os.path.join(d, other))
    info = {"dtype": "F32", "shape": [32], "data_offsets": [len(data2), len(data2) + (e - b)]}
    put(os.path.join(d, other), st_file(render(e2 + [(NORM, info)], m2), data2 + data_src[b:e]))


@case("shard-symlink-outside", [SHARD2])
def _(d):
    write_base(d, shards=2)
    outside = os.path.join(os.path.dirname(d), os.path.basename(d) + "-outside")
    os.mkdir(outside)
    shutil.move(os.path.join(d, SHARD2), os.path.join(outside, SHARD2))
    os.symlink(os.path.join(outside, SHARD2), os.path.join(d, SHARD2))


@case("single-file-symlink-outside", [ST])
def _(d):
    write_base(d)
    outside = os.path.join(os.path.dirname(d), os.path.basename(d) + "-outside")
    os.mkdir(outside)
    shutil.move(os.path.join(d, ST), os.path.join(outside, ST))
    os.symlink(os.path.relpath(os.path.join(outside, ST), d), os.path.join(d, ST))


@case("other-file-symlink-outside", ["tokenizer.json", "outside"])
def _(d):
    # A link to a secret next to the checkpoint would be copied into the
    # output (and uploaded with it).
    write_base(d)
    secret = os.path.join(os.path.dirname(d), os.path.basename(d) + "-secret")
    put(secret, b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.remove(os.path.join(d, "tokenizer.json"))
    os.symlink(secret, os.path.join(d, "tokenizer.json"))


@case("subdir-symlink-outside", ["extra", "outside"])
def _(d):
    write_base(d)
    outside = os.path.join(os.path.dirname(d), os.path.basename(d) + "-home")
    os.mkdir(outside)
    put(os.path.join(outside, "id_rsa"), b"secret\n")
    os.symlink(outside, os.path.join(d, "extra"))


@case("config-is-fifo", [CFG])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, CFG))
    os.mkfifo(os.path.join(d, CFG))


@case("shard-is-fifo", [ST])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, ST))
    os.mkfifo(os.path.join(d, ST))


@case("shard-dangling-symlink", [ST])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, ST))
    os.symlink("nowhere.safetensors", os.path.join(d, ST))


# -- the files copied with the model (issue 11 items 6, 10, 19) --------------------------------

@case("other-files-too-deep", ["a/b/c/d/e/f/g/h/i", "levels deep"])
def _(d):
    # A file nine directories down: refused, not silently dropped.
    write_base(d)
    deep = os.path.join(d, "a", "b", "c", "d", "e", "f", "g", "h", "i")
    os.makedirs(deep)
    put(os.path.join(deep, "vocab.txt"), b"a\nb\n")


@case("other-file-is-fifo", ["tokenizer.json", "not a regular file"])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, "tokenizer.json"))
    os.mkfifo(os.path.join(d, "tokenizer.json"))


@case("other-file-dangling-link", ["tokenizer.json", "symbolic link to nothing"])
def _(d):
    write_base(d)
    os.remove(os.path.join(d, "tokenizer.json"))
    os.symlink("tokenizer-gone.json", os.path.join(d, "tokenizer.json"))


# -- the directory ----------------------------------------------------------------------------

@case("empty-directory", ["config.json"])
def _(d):
    pass


@case("only-pytorch-bin", [".bin"])
def _(d):
    m = base_model()
    with open(os.path.join(d, CFG), "w") as f:
        json.dump(m.config, f)
    put(os.path.join(d, "pytorch_model.bin"), b"PK\x03\x04 not really a zip" * 8)


@case("source-is-a-file", ["not a directory"])
def _(d):
    pass  # replaced by a file in run_case (see SOURCE_IS_FILE)


SOURCE_IS_FILE = {"source-is-a-file"}

# Controls: must convert (exit 0), so the refusals above are about the input.
CONTROLS = []


def control(name):
    def reg(fn):
        CONTROLS.append((name, fn))
        return fn
    return reg


@control("valid-single-file")
def _(d):
    write_base(d)


@control("valid-two-shards")
def _(d):
    write_base(d, shards=2)


@control("hf-cache-layout-symlinks")
def _(d):
    # <repo>/snapshots/<rev>/model.safetensors -> ../../blobs/<sha>: the
    # layout huggingface_hub downloads into, where symlinks leave the
    # snapshot directory legitimately.  d is <repo>/snapshots/<rev>.
    write_base(d)
    repo = os.path.dirname(os.path.dirname(d))
    blobs = os.path.join(repo, "blobs")
    os.makedirs(blobs, exist_ok=True)
    for fn in (ST, CFG, "tokenizer.json"):
        blob = os.path.join(blobs, "sha-" + fn)
        shutil.move(os.path.join(d, fn), blob)
        os.symlink(os.path.relpath(blob, d), os.path.join(d, fn))


@control("symlink-loops")
def _(d):
    # Each real directory is walked once: a loop is not unrolled (a 244 KB
    # source once became 52 MB), a link to the checkpoint itself is not
    # "outside" it.
    write_base(d)
    os.makedirs(os.path.join(d, "a", "b"))
    put(os.path.join(d, "a", "b", "x.txt"), b"x")
    os.symlink("..", os.path.join(d, "a", "b", "up"))
    os.symlink("../a", os.path.join(d, "a", "again"))
    os.symlink(".", os.path.join(d, "self"))


@control("sentence-transformers-layout")
def _(d):
    write_base(d)
    put(os.path.join(d, "modules.json"), b'[{"idx": 0, "path": ""}, {"idx": 1, "path": "1_Pooling"}]')
    os.makedirs(os.path.join(d, "1_Pooling"))
    put(os.path.join(d, "1_Pooling", "config.json"), b'{"pooling_mode_mean_tokens": true}')


# ---------------------------------------------------------------- running

def snapshot(d):
    """Every path under d with its kind and content hash (symlinks by target)."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, d)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir",)
            elif os.path.isfile(p):
                st = os.stat(p)
                if st.st_size > 64 << 20:
                    out[rel] = ("file", st.st_size, st.st_mtime_ns)
                else:
                    with open(p, "rb") as f:
                        out[rel] = ("file", F.hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = ("other",)
    return out


def run(src, out, timeout=60):
    t0 = time.monotonic()
    try:
        p = subprocess.run([FLASHIFY, src, "-o", out], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", "", time.monotonic() - t0
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"), time.monotonic() - t0


def run_case(tmp, name, build, needles):
    """Returns a list of problems (empty when the case behaves)."""
    work = os.path.join(tmp, name)
    os.mkdir(work)
    src = os.path.join(work, "src")
    os.mkdir(src)
    build(src)
    if name in SOURCE_IS_FILE:
        os.rmdir(src)
        put(src, b"{}")
    outdir = os.path.join(work, "out")
    os.mkdir(outdir)
    out = os.path.join(outdir, "model-FlashNorm")
    before = snapshot(work)
    rc, stdout, stderr, secs = run(src, out)
    problems = []
    if rc is None:
        return ["timed out (hang?)"]
    if rc != 2:
        problems.append("exit status %s, expected 2" % rc)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if len(lines) != 1:
        problems.append("stderr has %d lines, expected 1: %r" % (len(lines), stderr[-600:]))
    msg = lines[-1] if lines else ""
    for n in needles:
        if n not in msg:
            problems.append("error does not mention %r: %r" % (n, msg[:400]))
    if os.path.lexists(out):
        problems.append("something was left at the output path")
    left = os.listdir(outdir)
    if left:
        problems.append("left next to the output: %s" % left)
    after = snapshot(work)
    after.pop("out", None)
    before.pop("out", None)
    if after != before:
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        problems.append("source tree changed: %s" % changed[:5])
    if secs > 60:
        problems.append("took %.0f s" % secs)
    if not problems:
        shutil.rmtree(work)
    return problems, msg, secs


def run_control(tmp, name, build):
    work = os.path.join(tmp, "control-" + name)
    if name == "hf-cache-layout-symlinks":
        src = os.path.join(work, "models--t--tiny", "snapshots", "0123abcd")
    else:
        src = os.path.join(work, "src")
    os.makedirs(src)
    build(src)
    out = os.path.join(work, "out")
    rc, stdout, stderr, secs = run(src, out)
    if rc != 0 or not os.path.isdir(out):
        return ["control must convert: exit %s, stderr %r" % (rc, stderr[-600:])]
    shutil.rmtree(work)
    return []


def main():
    only = None
    if len(sys.argv) > 2 and sys.argv[1] == "-k":
        only = sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="flashify-hostile-")
    failed = []
    try:
        for name, build in CONTROLS:
            if only and only not in name:
                continue
            probs = run_control(tmp, name, build)
            print("%-40s %s" % ("control " + name, "ok" if not probs else "FAIL"))
            if probs:
                failed.append((name, probs))
        for name, build, needles in CASES:
            if only and only not in name:
                continue
            res = run_case(tmp, name, build, needles)
            probs, msg, secs = res if isinstance(res, tuple) else (res, "", 0)
            print("%-40s %s %5.2fs  %s" % (name, "ok  " if not probs else "FAIL", secs, msg[:150]))
            if probs:
                failed.append((name, probs))
    finally:
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print("\n%d of %d cases failed (work left in %s):" % (len(failed), len(CASES) + len(CONTROLS), tmp))
        for name, probs in failed:
            for p in probs:
                print("  %s: %s" % (name, p))
        return 1
    print("all %d hostile cases refused cleanly, %d controls converted" % (len(CASES), len(CONTROLS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
