"""fixtures.py -- write (and read back) Hugging Face checkpoint directories.

Standard library only.  Independent of the converter: its own safetensors
writer and strict reader, its own exact float rounding, and a generator of
tiny models for every family flashify supports (docs/architectures.md), with
trained-looking norm weights so that a wrong fold shows.

Vocabulary:
  Tensor(dtype, shape, data)  -- raw little-endian bytes, as stored.
  Model(family, config, tensors) -- what a generator returns; write it with
  write_checkpoint(model, dir, ...) and read any directory back with
  read_checkpoint(dir).
"""

import hashlib
import json
import math
import os
import random
import struct
from fractions import Fraction

# ---------------------------------------------------------------- dtypes

# bits per element, for every dtype of the safetensors reference
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
# reference writer order: dtype descending (the enum order, reversed)
DTYPE_ORDER = list(DTYPE_BITS)

# (significand bits incl. the implicit one, min normal exponent, max
# exponent, exponent field width) of the IEEE-style float formats
FLOAT_FORMATS = {
    "F64": (53, -1022, 1023, 11),
    "F32": (24, -126, 127, 8),
    "BF16": (8, -126, 127, 8),
    "F16": (11, -14, 15, 5),
}
TORCH_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
               "F64": "float64"}


def round_ratio_bits(num, den, fmt):
    """Bit pattern of the rational num/den (den > 0) rounded ONCE to the
    nearest value of `fmt`, ties to even; overflow gives +-inf.  Pure integer
    arithmetic, no float involved."""
    p, emin, emax, ebits = FLOAT_FORMATS[fmt]
    if den <= 0:
        raise ValueError("den must be > 0")
    sign = 0
    if num < 0:
        sign, num = 1, -num
    sbit = sign << (ebits + p - 1)
    if num == 0:
        return sbit
    # e = floor(log2(num/den))
    e = num.bit_length() - den.bit_length()
    if e >= 0:
        if num < (den << e):
            e -= 1
    elif (num << -e) < den:
        e -= 1
    e = max(e, emin)              # below emin: subnormal, fixed quantum
    s = e - (p - 1)               # value = q * 2^s
    if s >= 0:
        n_, d_ = num, den << s
    else:
        n_, d_ = num << -s, den
    q, r = divmod(n_, d_)
    if 2 * r > d_ or (2 * r == d_ and (q & 1)):
        q += 1
    if q == (1 << p):             # carried into the next binade
        q >>= 1
        e += 1
    if e > emax:
        return sbit | (((1 << ebits) - 1) << (p - 1))
    if q >= (1 << (p - 1)):
        return sbit | ((e + ((1 << (ebits - 1)) - 1)) << (p - 1)) | (q - (1 << (p - 1)))
    return sbit | q               # subnormal (e == emin)


def round_fraction_bits(x, fmt):
    """round_ratio_bits for a Fraction, int or (exact) float.  A zero comes
    out as +0 (a Fraction has no signed zero)."""
    x = Fraction(x)
    return round_ratio_bits(x.numerator, x.denominator, fmt)


def bits_to_fraction(bits, fmt):
    """Exact value of a finite bit pattern (ValueError for inf/NaN)."""
    p, emin, emax, ebits = FLOAT_FORMATS[fmt]
    sign = -1 if bits >> (ebits + p - 1) & 1 else 1
    ef = (bits >> (p - 1)) & ((1 << ebits) - 1)
    m = bits & ((1 << (p - 1)) - 1)
    if ef == (1 << ebits) - 1:
        raise ValueError("not finite")
    if ef == 0:
        return sign * Fraction(m) * Fraction(2) ** (emin - (p - 1))
    return sign * Fraction(m + (1 << (p - 1))) * Fraction(2) ** (ef - ((1 << (ebits - 1)) - 1) - (p - 1))


def bf16_bits_from_double(x):
    """Second, independent BF16 rounding (bit manipulation of the double),
    used only to cross-check round_ratio_bits in the self-test."""
    (u,) = struct.unpack("<Q", struct.pack("<d", x))
    sign = u >> 63
    e = (u >> 52) & 0x7FF
    m = u & ((1 << 52) - 1)
    if e == 0x7FF:
        raise ValueError("not finite")
    if e == 0:
        if m == 0:
            return sign << 15
        sig, exp = m, -1022 - 52            # value = sig * 2^exp
    else:
        sig, exp = m | (1 << 52), e - 1023 - 52
    # target quantum: 2^(E-7) for normal E >= -126, else 2^-133
    E = exp + sig.bit_length() - 1
    qexp = max(E, -126) - 7
    shift = qexp - exp
    if shift <= 0:
        q = sig << -shift
    else:
        q = sig >> shift
        rem = sig & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
    if q >= 1 << 7:                         # normal (maybe carried)
        if q == 1 << 8:
            q >>= 1
            qexp += 1
        E2 = qexp + 7
        if E2 > 127:
            return (sign << 15) | 0x7F80
        return (sign << 15) | ((E2 + 127) << 7) | (q - 128)
    return (sign << 15) | q


def decode_values(dtype, data):
    """Python floats (exact) of a float tensor's bytes."""
    n = len(data) * 8 // DTYPE_BITS[dtype]
    if dtype == "F32":
        return list(struct.unpack("<%df" % n, data))
    if dtype == "F16":
        return list(struct.unpack("<%de" % n, data))
    if dtype == "F64":
        return list(struct.unpack("<%dd" % n, data))
    if dtype == "BF16":
        hs = struct.unpack("<%dH" % n, data)
        return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[h << 16 for h in hs])))
    raise ValueError("not a float dtype: " + dtype)


def encode_bits(dtype, bits):
    """Bytes of a list of bit patterns."""
    code = {"F32": "I", "F16": "H", "BF16": "H", "F64": "Q"}[dtype]
    return struct.pack("<%d%s" % (len(bits), code), *bits)


def encode_values(dtype, values):
    """Bytes of doubles rounded once to dtype (F32 via struct 'f', F16 via
    struct 'e', BF16 by our own rounding, F64 exact)."""
    n = len(values)
    if dtype == "F32":
        return struct.pack("<%df" % n, *values)
    if dtype == "F16":
        return struct.pack("<%de" % n, *values)
    if dtype == "F64":
        return struct.pack("<%dd" % n, *values)
    if dtype == "BF16":
        # bit manipulation of the double (cross-checked against the
        # rational rounding in the self-test), faster than Fractions, and
        # it keeps the sign of -0.0, which a Fraction cannot carry
        return encode_bits("BF16", [bf16_bits_from_double(v) for v in values])
    raise ValueError("not a float dtype: " + dtype)


# ---------------------------------------------------------------- tensors

class Tensor:
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, tuple(shape), bytes(data)
        if nbytes(dtype, shape) != len(self.data):
            raise ValueError("tensor size mismatch %s %s %d" % (dtype, shape, len(data)))

    def values(self):
        return decode_values(self.dtype, self.data)

    def __repr__(self):
        return "Tensor(%s, %s)" % (self.dtype, list(self.shape))


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def nbytes(dtype, shape):
    bits = numel(shape) * DTYPE_BITS[dtype]
    return bits // 8


def float_tensor(dtype, shape, values):
    return Tensor(dtype, shape, encode_values(dtype, values))


# ---------------------------------------------------------------- safetensors

def safetensors_bytes(tensors, metadata=None, order="reference"):
    """The bytes of a .safetensors file: u64 LE header length, JSON header
    (__metadata__ first, with format pt and any extra string entries such as
    aliases), padded with spaces to a multiple of 8, then the data."""
    meta = {"format": "pt"}
    if metadata:
        meta.update(metadata)
    names = list(tensors)
    if order == "reference":
        names.sort(key=lambda k: (-DTYPE_ORDER.index(tensors[k].dtype), k))
    elif order == "name":
        names.sort()
    header = {"__metadata__": meta}
    off = 0
    for k in names:
        t = tensors[k]
        header[k] = {"dtype": t.dtype, "shape": list(t.shape),
                     "data_offsets": [off, off + len(t.data)]}
        off += len(t.data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(tensors[k].data for k in names)


def write_safetensors(path, tensors, metadata=None, order="reference"):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata, order))


class FormatError(Exception):
    pass


def _no_dup_object(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise FormatError("duplicate key %r" % k)
        d[k] = v
    return d


def read_safetensors(path, strict=False):
    """(metadata, {name: Tensor}) of a .safetensors file, enforcing every
    rule of the reference reader (safetensors.md §1) plus duplicate keys.
    strict: also what a good writer guarantees -- header length a multiple
    of 8 padded with spaces only, __metadata__ with format pt, all data
    offsets in increasing order of the JSON entries is NOT required."""
    with open(path, "rb") as f:
        raw = f.read()
    where = os.path.basename(path)
    if len(raw) < 8:
        raise FormatError("%s: shorter than 8 bytes" % where)
    (n,) = struct.unpack("<Q", raw[:8])
    if n > 100_000_000 or 8 + n > len(raw):
        raise FormatError("%s: bad header length %d" % (where, n))
    htext = raw[8:8 + n]
    try:
        s = htext.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("%s: header not UTF-8" % where)
    if not s.startswith("{"):
        raise FormatError("%s: header does not start with {" % where)
    try:
        header = json.loads(s, object_pairs_hook=_no_dup_object)
    except ValueError as e:
        raise FormatError("%s: header JSON: %s" % (where, e))
    if strict:
        if n % 8:
            raise FormatError("%s: header length %d not a multiple of 8" % (where, n))
        tail = s[s.rfind("}") + 1:]
        if tail.strip(" "):
            raise FormatError("%s: header padding is not spaces: %r" % (where, tail))
    meta = header.pop("__metadata__", None)
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise FormatError("%s: __metadata__ not string->string" % where)
    if strict and (meta is None or meta.get("format") != "pt"):
        raise FormatError("%s: __metadata__ lacks format pt: %r" % (where, meta))
    data = raw[8 + n:]
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise FormatError("%s: %s: not an object" % (where, name))
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in DTYPE_BITS:
            raise FormatError("%s: %s: unknown dtype %r" % (where, name, dt))
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FormatError("%s: %s: bad shape" % (where, name))
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise FormatError("%s: %s: bad data_offsets" % (where, name))
        bits = numel(shape) * DTYPE_BITS[dt]
        if bits % 8 or offs[1] - offs[0] != bits // 8:
            raise FormatError("%s: %s: byte length does not match shape" % (where, name))
        entries.append((offs[0], offs[1], name, dt, shape))
    entries.sort()
    pos = 0
    tensors = {}
    for a, b, name, dt, shape in entries:
        if a != pos or b < a:
            raise FormatError("%s: %s: offsets not contiguous (%d != %d)" % (where, name, a, pos))
        pos = b
        tensors[name] = Tensor(dt, shape, data[a:b])
    if pos != len(data):
        raise FormatError("%s: file length %d != 8 + %d + %d" % (where, len(raw), n, pos))
    return (meta or {}), tensors


# ---------------------------------------------------------------- checkpoints

class Checkpoint:
    """A checkpoint directory as read back: config, logical tensors (aliases
    resolved), where each stored tensor lives, the aliases, the index."""

    def __init__(self):
        self.config = None
        self.tensors = {}      # logical name -> Tensor
        self.stored = {}       # stored name -> file
        self.aliases = {}      # alias name -> stored name
        self.index = None
        self.files = []        # safetensors file names
        self.metadata = {}     # file -> __metadata__


def read_checkpoint(d, strict=False):
    ck = Checkpoint()
    with open(os.path.join(d, "config.json")) as f:
        ck.config = json.load(f)
    ipath = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(ipath):
        with open(ipath) as f:
            ck.index = json.load(f, object_pairs_hook=_no_dup_object)
        # every shard the index names, and any other .safetensors file
        # there (an emptied shard kept for the layout), all validated
        files = sorted(set(ck.index["weight_map"].values()) |
                       {f for f in os.listdir(d) if f.endswith(".safetensors")})
    else:
        files = ["model.safetensors"]
    ck.files = files
    for fn in files:
        if os.path.isabs(fn) or ".." in fn.split("/"):
            raise FormatError("index names %r" % fn)
        meta, ts = read_safetensors(os.path.join(d, fn), strict=strict)
        ck.metadata[fn] = meta
        for k, t in ts.items():
            if k in ck.stored:
                raise FormatError("%s stored twice" % k)
            ck.stored[k] = fn
            ck.tensors[k] = t
        for k, v in meta.items():
            if k != "format":
                ck.aliases[k] = v
    for a, target in ck.aliases.items():
        if a in ck.tensors:
            continue   # a stored tensor wins (metadata may just describe it)
        if target not in ck.tensors:
            raise FormatError("alias %s -> missing %s" % (a, target))
        ck.tensors[a] = ck.tensors[target]
    return ck


CONTENT_FILES = {
    "tokenizer.json": '{"version":"1.0","model":{"type":"BPE","vocab":{"a":0,"b":1}}}\n',
    "tokenizer_config.json": '{"bos_token":"<s>","eos_token":"</s>","model_max_length":256}\n',
    "generation_config.json": '{\n  "bos_token_id": 1,\n  "eos_token_id": 2,\n  "do_sample": false\n}\n',
    "special_tokens_map.json": '{"bos_token":"<s>","eos_token":"</s>"}\n',
    "chat_template.jinja": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "LICENSE": "Apache License Version 2.0 (fixture)\n",
}
BINARY_FILES = {"tokenizer.model": bytes(range(256)) * 3}
# source weights in other formats: must not be copied
FORBIDDEN_FILES = {
    "pytorch_model.bin": b"PK\x03\x04 not really a zip" * 8,
    "original/consolidated.00.pth": b"PK\x03\x04 torch" * 8,
    "original/params.json": b'{"dim": 32}',
    "model.gguf": b"GGUF\x03\x00\x00\x00" + b"\x00" * 24,
}


def write_checkpoint(model, d, shards=1, shard_of=None, alias=None,
                     extra_files=True, forbidden_files=False, order="reference"):
    """Writes model into directory d (created).

    shards: number of .safetensors files; >1 writes the hub index.  By
      default tensors are dealt out round-robin in name order, which puts
      norms and the matrices reading them in different files; shard_of
      (name -> 0-based shard) overrides.
    alias: None, "embed" (only model.embed_tokens... stored, __metadata__
      names lm_head as an alias of it) or "head" (only lm_head.weight stored,
      the embedding recorded as an alias of it).  Needs a tied model.
    Returns the list of shard file names."""
    os.makedirs(d, exist_ok=True)
    tensors = dict(model.tensors)
    meta_by_shard = {}
    if alias:
        emb, head = model.embed_name, model.head_name
        if head in tensors:
            raise ValueError("alias needs a tied model")
        if alias == "embed":
            aliases = {head: emb}
        else:
            tensors = {(head if k == emb else k): v for k, v in tensors.items()}
            aliases = {emb: head}
    names = sorted(tensors)
    if shards == 1:
        files = ["model.safetensors"]
        assign = {k: 0 for k in names}
    else:
        files = ["model-%05d-of-%05d.safetensors" % (i + 1, shards) for i in range(shards)]
        assign = {k: (shard_of(k) if shard_of else i % shards) for i, k in enumerate(names)}
    for i, fn in enumerate(files):
        part = {k: tensors[k] for k in names if assign[k] == i}
        meta = None
        if alias:
            stored = emb if alias == "embed" else head
            if assign[stored] == i:
                meta = aliases
        write_safetensors(os.path.join(d, fn), part, meta, order)
    if shards > 1:
        index = {"metadata": {"total_size": sum(len(t.data) for t in tensors.values())},
                 "weight_map": {k: files[assign[k]] for k in names}}
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(model.config, f, indent=2)
        f.write("\n")
    if extra_files:
        for fn, text in CONTENT_FILES.items():
            with open(os.path.join(d, fn), "w") as f:
                f.write(text)
        for fn, data in BINARY_FILES.items():
            with open(os.path.join(d, fn), "wb") as f:
                f.write(data)
    if forbidden_files:
        for fn, data in FORBIDDEN_FILES.items():
            os.makedirs(os.path.dirname(os.path.join(d, fn)), exist_ok=True)
            with open(os.path.join(d, fn), "wb") as f:
                f.write(data)
    return files


def tree_digest(d):
    """{relative path: sha256} of every file under d (to prove d unchanged)."""
    out = {}
    for root, dirs, fs in os.walk(d):
        for fn in fs:
            p = os.path.join(root, fn)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------- models

class Model:
    def __init__(self, family, config):
        self.family = family
        self.config = config
        self.tensors = {}
        self.embed_name = "model.embed_tokens.weight"
        self.head_name = "lm_head.weight"
        self.text_prefix = "model."


class _Gen:
    """Deterministic tensor factory."""

    def __init__(self, model, seed, dtype, norm_dtype, gemma):
        self.m = model
        self.rng = random.Random(seed)
        self.dtype = dtype
        self.norm_dtype = norm_dtype or dtype
        self.gemma = gemma

    def mat(self, name, shape, dtype=None, scale=1.0):
        dt = dtype or self.dtype
        n = numel(shape)
        vals = [self.rng.uniform(-scale, scale) for _ in range(n)]
        # a few special values: signed zeros, a subnormal, a value at the
        # top of the dtype's precision
        p, emin, _, _ = FLOAT_FORMATS[dt]
        if n >= 8:
            vals[0] = 0.0
            vals[1] = -0.0
            vals[2] = math.ldexp(3, emin - 2)           # subnormal
            vals[3] = -math.ldexp(1, emin) * 1.5        # smallest normals
            vals[4] = 1.0 - math.ldexp(1, -p)           # rounds with g
        self.m.tensors[name] = float_tensor(dt, shape, vals)

    def norm(self, name, shape, dtype=None):
        dt = dtype or self.norm_dtype
        lo, hi = (-0.5, 1.5) if self.gemma else (0.5, 2.5)
        vals = [self.rng.uniform(lo, hi) for _ in range(numel(shape))]
        self.m.tensors[name] = float_tensor(dt, shape, vals)

    def bias(self, name, n, dtype=None):
        self.m.tensors[name] = float_tensor(dtype or self.dtype, (n,),
                                            [self.rng.uniform(-0.3, 0.3) for _ in range(n)])

    def vec(self, name, n, lo, hi, dtype):
        self.m.tensors[name] = float_tensor(dtype, (n,), [self.rng.uniform(lo, hi) for _ in range(n)])


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2",
            "gemma3_text", "gemma3", "olmo2", "granite", "smollm3", "mixtral",
            "qwen2_moe", "qwen3_moe", "deepseek_v3", "cohere"]

ARCH_CLASS = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM", "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration", "olmo2": "Olmo2ForCausalLM",
    "granite": "GraniteForCausalLM", "smollm3": "SmolLM3ForCausalLM",
    "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
    "cohere": "CohereForCausalLM",
}

# tie_word_embeddings our fixtures use when the caller does not choose:
# what the real checkpoints of the family typically ship
DEFAULT_TIED = {"gemma": True, "gemma2": True, "gemma3_text": True,
                "gemma3": True, "smollm3": True, "cohere": True,
                "llama": True, "qwen3": True}


# Families whose generators live in their own modules (tests/e2e/zoo_*.py,
# imported at the end of this file): family -> {"build": fn(family, dtype,
# norm_dtype, tied, seed, layers, hidden, vocab, **opt) -> Model,
# "arch_class": ..., "tied": default}.  register_family() adds one.
EXTRA_FAMILIES = {}


def register_family(family, build, arch_class, tied=False):
    EXTRA_FAMILIES[family] = {"build": build, "arch_class": arch_class, "tied": tied}
    if family not in FAMILIES:
        FAMILIES.append(family)
    ARCH_CLASS[family] = arch_class
    DEFAULT_TIED[family] = tied


def build_model(family, dtype="BF16", norm_dtype=None, tied=None, seed=1,
                layers=None, hidden=32, vocab=96, **opt):
    """A tiny model of `family`.  Options by family:
      deepseek_v3: q_lora_rank=None for the q_proj variant; fp8=True for
        F8_E4M3 consumers with weight_scale_inv.
      qwen2_moe / qwen3_moe: mlp_only_layers, decoder_sparse_step.
      gemma3: layout "language_model.model" (original) or
        "model.language_model" (transformers >= 4.52 save); mm_projector.
      llama: inv_freq=True adds rotary buffers (passed through);
        layout="model.text_model" (SmolVLM-style prefix);
        stray_text_config=True adds a text_config that must be ignored.
      MoE families (transformers 5, docs/architectures.md §v5):
        experts="fused": experts.gate_up_proj [E, 2I, H] (gate rows, then
          up rows) and experts.down_proj [E, H, I], as save_pretrained writes
          them with save_original_format=False (Mixtral renamed mlp.*);
        experts="fused_t": the grouped-GEMM layout [E, H, 2I] / [E, I, H];
        v5_keys=True: the expert count as num_local_experts;
        quant="mxfp4": fused experts stored as *_blocks / *_scales (U8);
        quant="compressed": per-expert weights as compressed-tensors
          weight_packed / weight_scale / weight_shape."""
    if family in EXTRA_FAMILIES:
        if tied is None:
            tied = EXTRA_FAMILIES[family]["tied"]
        return EXTRA_FAMILIES[family]["build"](family, dtype, norm_dtype, tied, seed, layers,
                                               hidden, vocab, **opt)
    if tied is None:
        tied = DEFAULT_TIED.get(family, False)
    H, V = hidden, vocab
    nh, nkv, hd = 4, 2, 8
    I = 48
    moe = family in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")
    L = layers or (3 if moe else 2)
    text_type = "gemma3_text" if family == "gemma3" else family
    gemma = family.startswith("gemma")
    cfg = {
        "architectures": [ARCH_CLASS[family]],
        "model_type": text_type,
        "hidden_size": H,
        "intermediate_size": I,
        "num_hidden_layers": L,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "head_dim": hd,
        "vocab_size": V,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "torch_dtype": TORCH_DTYPE[dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
        # Phi3's and SmolLM3's config classes default pad_token_id to ids
        # beyond a tiny vocabulary, which transformers refuses to load.
        "pad_token_id": 0,
        "transformers_version": "4.57.1",
    }
    if family in ("llama", "granite", "smollm3", "olmo2", "qwen3", "qwen3_moe", "gemma3_text", "gemma3", "cohere", "deepseek_v3"):
        cfg["attention_bias"] = False
    if family in ("llama", "granite", "smollm3"):
        cfg["mlp_bias"] = False
    if family == "mistral":
        cfg["sliding_window"] = 4096
    if family == "granite":
        cfg.update(embedding_multiplier=12.0, residual_multiplier=0.22,
                   attention_multiplier=0.0078125, logits_scaling=8.0)
    if family == "smollm3":
        cfg.update(no_rope_layers=[1] * L, use_sliding_window=False)
    if family == "phi3":
        cfg.update(rms_norm_eps=1e-5, partial_rotary_factor=1.0, original_max_position_embeddings=256)
    if family in ("gemma", "gemma2", "gemma3_text", "gemma3"):
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        del cfg["hidden_act"]
    if family == "gemma2":
        cfg.update(final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=8, sliding_window=4096)
    if family in ("gemma3_text", "gemma3"):
        cfg.update(query_pre_attn_scalar=8, sliding_window=512, rope_local_base_freq=10000.0,
                   final_logit_softcapping=None, attn_logit_softcapping=None)
    if family == "olmo2":
        cfg["rms_norm_eps"] = 1e-5
    if family == "cohere":
        cfg.update(use_qk_norm=True, layer_norm_eps=1e-5, logit_scale=0.0625)
        del cfg["rms_norm_eps"]
    if family == "mixtral":
        cfg.update(num_local_experts=3, num_experts_per_tok=2, router_aux_loss_coef=0.02)
    if family in ("qwen2_moe", "qwen3_moe"):
        cfg.update(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24,
                   decoder_sparse_step=opt.get("decoder_sparse_step", 1),
                   mlp_only_layers=opt.get("mlp_only_layers", [0]),
                   norm_topk_prob=family == "qwen3_moe")
        if family == "qwen2_moe":
            cfg.update(shared_expert_intermediate_size=40, qkv_bias=True)
    if family == "deepseek_v3":
        qlr = opt.get("q_lora_rank", 24)
        cfg.update(n_routed_experts=3, n_shared_experts=1, num_experts_per_tok=2,
                   moe_intermediate_size=16, first_k_dense_replace=1,
                   q_lora_rank=qlr, kv_lora_rank=16, qk_nope_head_dim=8,
                   qk_rope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                   routed_scaling_factor=2.5, moe_layer_freq=1, norm_topk_prob=True,
                   scoring_func="sigmoid", topk_method="noaux_tc")
        del cfg["head_dim"]
        cfg["num_key_value_heads"] = nh
        if opt.get("fp8"):
            cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                          "quant_method": "fp8", "weight_block_size": [128, 128]}

    model = Model(family, cfg)
    g = _Gen(model, seed, dtype, norm_dtype, gemma)

    # layout of the text model
    pre = "model."
    head = "lm_head.weight"
    if family == "llama" and opt.get("layout") == "model.text_model":
        pre = "model.text_model."
    if family == "gemma3":
        layout = opt.get("layout", "language_model.model")
        if layout == "language_model.model":
            pre, head, vpre = "language_model.model.", "language_model.lm_head.weight", ""
        else:
            pre, head, vpre = "model.language_model.", "lm_head.weight", "model."
        text_cfg = dict(cfg)
        del text_cfg["architectures"]
        for k in ("bos_token_id", "eos_token_id", "transformers_version", "torch_dtype"):
            text_cfg.pop(k, None)
        Hv = 16
        top = {
            "architectures": cfg["architectures"], "model_type": "gemma3",
            "text_config": text_cfg,
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": Hv,
                              "intermediate_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 8, "patch_size": 4,
                              "layer_norm_eps": 1e-6},
            "mm_tokens_per_image": 4, "boi_token_index": 3, "eoi_token_index": 4,
            "image_token_index": 5, "torch_dtype": cfg["torch_dtype"],
            "transformers_version": "4.57.1",
        }
        if opt.get("top_level_tie", False):
            top["tie_word_embeddings"] = tied
        model.config = top
    model.embed_name = pre + "embed_tokens.weight"
    model.head_name = head
    model.text_prefix = pre

    g.mat(pre + "embed_tokens.weight", (V, H))
    for i in range(L):
        p = "%slayers.%d." % (pre, i)
        # ---- attention
        if family == "deepseek_v3":
            qlr, klr = cfg["q_lora_rank"], cfg["kv_lora_rank"]
            nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            if qlr is None:
                g.mat(p + "self_attn.q_proj.weight", (nh * (nope + rope), H))
            else:
                g.mat(p + "self_attn.q_a_proj.weight", (qlr, H))
                g.norm(p + "self_attn.q_a_layernorm.weight", (qlr,))
                g.mat(p + "self_attn.q_b_proj.weight", (nh * (nope + rope), qlr))
            g.mat(p + "self_attn.kv_a_proj_with_mqa.weight", (klr + rope, H))
            g.norm(p + "self_attn.kv_a_layernorm.weight", (klr,))
            g.mat(p + "self_attn.kv_b_proj.weight", (nh * (nope + vd), klr))
            g.mat(p + "self_attn.o_proj.weight", (H, nh * vd))
        elif family == "phi3":
            g.mat(p + "self_attn.qkv_proj.weight", ((nh + 2 * nkv) * hd, H))
            g.mat(p + "self_attn.o_proj.weight", (H, nh * hd))
        else:
            g.mat(p + "self_attn.q_proj.weight", (nh * hd, H))
            g.mat(p + "self_attn.k_proj.weight", (nkv * hd, H))
            g.mat(p + "self_attn.v_proj.weight", (nkv * hd, H))
            g.mat(p + "self_attn.o_proj.weight", (H, nh * hd))
            if family in ("qwen2", "qwen2_moe"):
                g.bias(p + "self_attn.q_proj.bias", nh * hd)
                g.bias(p + "self_attn.k_proj.bias", nkv * hd)
                g.bias(p + "self_attn.v_proj.bias", nkv * hd)
            if family in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3"):
                g.norm(p + "self_attn.q_norm.weight", (hd,))
                g.norm(p + "self_attn.k_norm.weight", (hd,))
            if family == "olmo2":
                g.norm(p + "self_attn.q_norm.weight", (nh * hd,))
                g.norm(p + "self_attn.k_norm.weight", (nkv * hd,))
            if family == "cohere":
                g.norm(p + "self_attn.q_norm.weight", (nh, hd))
                g.norm(p + "self_attn.k_norm.weight", (nkv, hd))
            if family == "llama" and opt.get("inv_freq"):
                g.vec(p + "self_attn.rotary_emb.inv_freq", hd // 2, 0.001, 1.0, "F32")
        # ---- norms
        if family != "olmo2":
            g.norm(p + "input_layernorm.weight", (H,))
        if family != "cohere":
            g.norm(p + "post_attention_layernorm.weight", (H,))
        if family in ("gemma2", "gemma3_text", "gemma3"):
            g.norm(p + "pre_feedforward_layernorm.weight", (H,))
        if family in ("gemma2", "gemma3_text", "gemma3", "olmo2"):
            g.norm(p + "post_feedforward_layernorm.weight", (H,))
        # ---- MLP
        if family == "phi3":
            g.mat(p + "mlp.gate_up_proj.weight", (2 * I, H))
            g.mat(p + "mlp.down_proj.weight", (H, I))
        elif family == "mixtral":
            E = cfg["num_local_experts"]
            g.mat(p + "block_sparse_moe.gate.weight", (E, H))
            for j in range(E):
                g.mat(p + "block_sparse_moe.experts.%d.w1.weight" % j, (I, H))
                g.mat(p + "block_sparse_moe.experts.%d.w2.weight" % j, (H, I))
                g.mat(p + "block_sparse_moe.experts.%d.w3.weight" % j, (I, H))
        elif family in ("qwen2_moe", "qwen3_moe") and _qwen_sparse(cfg, i):
            E, Im = cfg["num_experts"], cfg["moe_intermediate_size"]
            g.mat(p + "mlp.gate.weight", (E, H))
            for j in range(E):
                g.mat(p + "mlp.experts.%d.gate_proj.weight" % j, (Im, H))
                g.mat(p + "mlp.experts.%d.up_proj.weight" % j, (Im, H))
                g.mat(p + "mlp.experts.%d.down_proj.weight" % j, (H, Im))
            if family == "qwen2_moe":
                Is = cfg["shared_expert_intermediate_size"]
                g.mat(p + "mlp.shared_expert.gate_proj.weight", (Is, H))
                g.mat(p + "mlp.shared_expert.up_proj.weight", (Is, H))
                g.mat(p + "mlp.shared_expert.down_proj.weight", (H, Is))
                g.mat(p + "mlp.shared_expert_gate.weight", (1, H))
        elif family == "deepseek_v3" and i >= cfg["first_k_dense_replace"]:
            E, Im = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
            g.mat(p + "mlp.gate.weight", (E, H))
            g.vec(p + "mlp.gate.e_score_correction_bias", E, 0.5, 2.0, "F32")
            for j in range(E):
                g.mat(p + "mlp.experts.%d.gate_proj.weight" % j, (Im, H))
                g.mat(p + "mlp.experts.%d.up_proj.weight" % j, (Im, H))
                g.mat(p + "mlp.experts.%d.down_proj.weight" % j, (H, Im))
            Is = Im * cfg["n_shared_experts"]
            g.mat(p + "mlp.shared_experts.gate_proj.weight", (Is, H))
            g.mat(p + "mlp.shared_experts.up_proj.weight", (Is, H))
            g.mat(p + "mlp.shared_experts.down_proj.weight", (H, Is))
        else:
            g.mat(p + "mlp.gate_proj.weight", (I, H))
            g.mat(p + "mlp.up_proj.weight", (I, H))
            g.mat(p + "mlp.down_proj.weight", (H, I))
    g.norm(pre + "norm.weight", (H,))
    if not tied:
        g.mat(head, (V, H))

    if family == "gemma3":
        # SigLIP vision tower: LayerNorms with bias, biased linears -- passed
        # through untouched.  Plus the multimodal projector.
        Hv, Iv = 16, 32
        vp = vpre + "vision_tower.vision_model."
        g.mat(vp + "embeddings.patch_embedding.weight", (Hv, 3, 4, 4))
        g.bias(vp + "embeddings.patch_embedding.bias", Hv)
        g.mat(vp + "embeddings.position_embedding.weight", (4, Hv))
        lp = vp + "encoder.layers.0."
        for ln in ("layer_norm1", "layer_norm2"):
            g.vec(lp + ln + ".weight", Hv, 0.5, 2.5, g.norm_dtype)
            g.bias(lp + ln + ".bias", Hv)
        for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"):
            g.mat(lp + lin + ".weight", (Hv, Hv))
            g.bias(lp + lin + ".bias", Hv)
        g.mat(lp + "mlp.fc1.weight", (Iv, Hv))
        g.bias(lp + "mlp.fc1.bias", Iv)
        g.mat(lp + "mlp.fc2.weight", (Hv, Iv))
        g.bias(lp + "mlp.fc2.bias", Hv)
        g.vec(vp + "post_layernorm.weight", Hv, 0.5, 2.5, g.norm_dtype)
        g.bias(vp + "post_layernorm.bias", Hv)
        if opt.get("mm_projector", True):
            mp = vpre + "multi_modal_projector."
            g.mat(mp + "mm_input_projection_weight", (Hv, H))
            g.norm(mp + "mm_soft_emb_norm.weight", (Hv,))

    if opt.get("experts") in ("fused", "fused_t"):
        _fuse_experts(model, cfg, transposed=opt["experts"] == "fused_t")
    if opt.get("v5_keys"):
        for old in ("num_experts", "n_routed_experts"):
            if old in cfg:
                cfg["num_local_experts"] = cfg.pop(old)
        cfg["transformers_version"] = "5.2.0"
    if opt.get("quant"):
        _quantize_experts(model, opt["quant"], g.rng)
    if opt.get("stray_text_config"):
        # a leftover of another model's config: only composite model types
        # read text_config (docs/architectures.md §composite)
        cfg["text_config"] = {"model_type": "gemma3_text", "num_hidden_layers": 7, "hidden_size": 64,
                              "rms_norm_eps": 0.5, "tie_word_embeddings": not tied,
                              "hidden_activation": "gelu_pytorch_tanh"}

    if opt.get("fp8"):
        # official DeepSeek-V3 layout: the projections in F8_E4M3 with a
        # 128x128-block F32 scale each; norms, embedding and head in BF16
        for k in list(model.tensors):
            t = model.tensors[k]
            if k.endswith("proj.weight") or k.endswith("proj_with_mqa.weight"):
                rows, cols = t.shape
                model.tensors[k] = Tensor("F8_E4M3", t.shape,
                                          bytes(g.rng.randrange(0, 0x7F) for _ in range(rows * cols)))
                sk = k[:-len("weight")] + "weight_scale_inv"
                sshape = (-(-rows // 128), -(-cols // 128))
                model.tensors[sk] = float_tensor("F32", sshape, [0.01] * numel(sshape))
    return model


def _expert_names(family):
    """(router, experts prefix, gate, up, down) of the per-expert layout."""
    if family == "mixtral":
        return "block_sparse_moe.gate", "block_sparse_moe.experts", "w1", "w3", "w2"
    return "mlp.gate", "mlp.experts", "gate_proj", "up_proj", "down_proj"


def _stack(dtype, mats, transpose):
    """The bytes of 2-D tensors [r, c] stacked into [E, r, c] (or [E, c, r])."""
    es = DTYPE_BITS[dtype] // 8
    out = bytearray()
    for t in mats:
        r, c = t.shape
        if not transpose:
            out += t.data
            continue
        for j in range(c):
            for i in range(r):
                k = (i * c + j) * es
                out += t.data[k:k + es]
    return bytes(out)


def _fuse_experts(model, cfg, transposed):
    """Per-expert gate/up/down -> experts.gate_up_proj and experts.down_proj
    (transformers 5 MergeModulelist + Concatenate, conversion_mapping.py);
    Mixtral's block_sparse_moe becomes mlp."""
    router, ex, gn, un, dn = _expert_names(model.family)
    L = cfg["num_hidden_layers"]
    ts = model.tensors
    for i in range(L):
        p = "%slayers.%d." % (model.text_prefix, i)
        if p + router + ".weight" not in ts:
            continue
        E = ts[p + router + ".weight"].shape[0]
        gates = [ts.pop("%s%s.%d.%s.weight" % (p, ex, j, gn)) for j in range(E)]
        ups = [ts.pop("%s%s.%d.%s.weight" % (p, ex, j, un)) for j in range(E)]
        downs = [ts.pop("%s%s.%d.%s.weight" % (p, ex, j, dn)) for j in range(E)]
        I, H = gates[0].shape
        dt = gates[0].dtype
        gu = [Tensor(dt, (2 * I, H), g.data + u.data) for g, u in zip(gates, ups)]
        gu_shape = (E, H, 2 * I) if transposed else (E, 2 * I, H)
        dn_shape = (E, I, H) if transposed else (E, H, I)
        if model.family == "mixtral":
            ts[p + "mlp.gate.weight"] = ts.pop(p + router + ".weight")
        ts[p + "mlp.experts.gate_up_proj"] = Tensor(dt, gu_shape, _stack(dt, gu, transposed))
        ts[p + "mlp.experts.down_proj"] = Tensor(dt, dn_shape, _stack(dt, downs, transposed))


def _quantize_experts(model, how, rng):
    """Stores the experts quantized: random bytes, passed through unchanged."""
    for k in [k for k in model.tensors if ".experts." in k]:
        t = model.tensors.pop(k)
        if how == "mxfp4":      # gpt-oss: *_blocks [.., in/32, 16], *_scales [.., in/32]
            lead, n_in = t.shape[:-1], t.shape[-1]
            nb = max(1, n_in // 32)
            model.tensors[k + "_blocks"] = Tensor("U8", lead + (nb, 16),
                                                  bytes(rng.randrange(256) for _ in range(numel(lead) * nb * 16)))
            model.tensors[k + "_scales"] = Tensor("U8", lead + (nb,),
                                                  bytes(rng.randrange(110, 130) for _ in range(numel(lead) * nb)))
        else:                   # compressed-tensors int4 pack-quantized
            base = k[:-len(".weight")]
            rows, cols = t.shape
            model.tensors[base + ".weight_packed"] = Tensor(
                "I32", (rows, cols // 8), bytes(rng.randrange(256) for _ in range(rows * cols // 2)))
            model.tensors[base + ".weight_scale"] = float_tensor("BF16", (rows, 1), [0.01] * rows)
            model.tensors[base + ".weight_shape"] = Tensor("I64", (2,), struct.pack("<2q", rows, cols))


def _qwen_sparse(cfg, i):
    """Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: sparse iff the layer is
    not in mlp_only_layers and (i+1) % decoder_sparse_step == 0."""
    return (i not in cfg.get("mlp_only_layers", [])) and cfg["num_experts"] > 0 \
        and (i + 1) % cfg["decoder_sparse_step"] == 0


# The zoo modules register their families (see EXTRA_FAMILIES) here and in
# expect.py and ref_forward.py, so they are imported once all three are
# complete, whichever of them a test imports first: each calls zoo_ready()
# as its last statement (importing a zoo module while expect.py is half
# run would find no EXTRA_LAYER_PLANS yet).
_ZOO_READY = set()


def _import_zoo():
    import glob
    import importlib
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "zoo_*.py"))):
        importlib.import_module(os.path.basename(path)[:-3])


def zoo_ready(module):
    if module in _ZOO_READY:
        return
    _ZOO_READY.add(module)
    if _ZOO_READY == {"fixtures", "expect", "ref_forward"}:
        _import_zoo()


zoo_ready("fixtures")
import expect  # noqa: E402,F401  (unless it is the one importing us)
import ref_forward  # noqa: E402,F401
