"""verify_fixtures.py -- source/output pairs for the `flashify verify` tests.

The correct output of a source is computed here, in Python, from
expect.expected() (exact rational arithmetic, independent of the converter),
and written with fixtures.write_checkpoint.  The teeth tests then break it
in one precise way and expect exit 3.

  write_source(dir, family, dtype, **opt)  -> fixtures.Model
  write_output(src_dir, out_dir, mutate=None, keep_tied=False,
               keep_norms=False, gain=None, readme=None) -> Expectation
  scale_row(t, row, factor), flip_bit(t, elem, bit), bump_ulps(t, elems, n)
  edit_config(dir, fn)                     -> config.json rewritten by fn
  forward_skipped(tc, src, out, needle)    -> verify passes, forward skipped
"""

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import (Model, Tensor, build_model, decode_values,  # noqa: E402
                      encode_values, read_checkpoint, write_checkpoint, DTYPE_BITS)
from expect import expected, expected_config, fold, gain_ratios  # noqa: E402


def tame(m):
    """Scales every matrix but the embedding by a power of two near
    1/sqrt(fan_in), as trained models are initialised.  fixtures.py draws
    U(-1, 1) weights, which makes attention saturate and the model chaotic:
    one rounding per weight then moves the logits by percents, which no
    real checkpoint does (stories260K BF16: 0.5 %)."""
    for name, t in list(m.tensors.items()):
        if len(t.shape) != 2 or t.dtype not in ("F32", "F16", "BF16", "F64") or name == m.embed_name:
            continue
        k = round(math.log2(t.shape[1]) / 2)
        vals = [v * 2.0 ** -k for v in decode_values(t.dtype, t.data)]
        m.tensors[name] = Tensor(t.dtype, t.shape, encode_values(t.dtype, vals))
    return m


def write_source(d, family, dtype="BF16", **opt):
    m = tame(build_model(family, dtype=dtype, **opt))
    write_checkpoint(m, d, extra_files=False)
    return m


def write_output(src_dir, out_dir, mutate=None, keep_tied=False, keep_norms=False,
                 gain=None, readme=None, config=None):
    """Writes the correct FlashNorm output of src_dir into out_dir.
    mutate(tensors, ex) may change the {name: Tensor} dict in place first;
    gain ("w" / "1+w") refolds every group with that gain instead of the
    family's; config(cfg) may edit config.json; readme is README.md text."""
    src = read_checkpoint(src_dir)
    ex = expected(src, keep_tied=keep_tied, keep_norms=keep_norms)
    tensors = dict(ex.tensors)
    if gain is not None:
        for norm, consumers in ex.groups:
            g = gain_ratios(src.tensors[norm], gain)
            for c in consumers:
                base = src.tensors[c] if c in src.tensors else src.tensors[ex.embed]
                tensors[c] = fold(base, g)
    if mutate:
        mutate(tensors, ex)
    cfg = expected_config(src.config, ex)
    if config:
        config(cfg)
    m = Model("out", cfg)
    m.tensors = tensors
    write_checkpoint(m, out_dir, extra_files=False)
    if readme is not None:
        with open(os.path.join(out_dir, "README.md"), "w") as f:
            f.write(readme)
    return ex


def _bits(t):
    nb = DTYPE_BITS[t.dtype] // 8
    return nb, [int.from_bytes(t.data[i:i + nb], "little") for i in range(0, len(t.data), nb)]


def _from_bits(t, nb, bits):
    return Tensor(t.dtype, t.shape, b"".join(b.to_bytes(nb, "little") for b in bits))


def scale_row(t, row, factor):
    """Tensor t (2-D float) with row `row` multiplied by `factor` (exact for
    powers of two away from overflow)."""
    vals = decode_values(t.dtype, t.data)
    cols = t.shape[1]
    for i in range(row * cols, (row + 1) * cols):
        vals[i] *= factor
    return Tensor(t.dtype, t.shape, encode_values(t.dtype, vals))


def flip_bit(t, elem, bit):
    nb, bits = _bits(t)
    bits[elem] ^= 1 << bit
    return _from_bits(t, nb, bits)


def bump_ulps(t, elems, n=1):
    """Moves each listed element n ulps away from zero (n=1: the smallest
    change another tool's rounding could make)."""
    nb, bits = _bits(t)
    for e in elems:
        bits[e] += n
    return _from_bits(t, nb, bits)


def exponent_top_bit(dtype):
    return {"BF16": 14, "F16": 14, "F32": 30, "F64": 62}[dtype]


def load_json(text):
    return json.loads(text)


def refold(src_dir, out_dir, gain=None, unfold=(), drop_kept=()):
    """The correct output of src_dir with one kind of mistake: every group
    refolded with `gain`, or the consumers whose names end with one of
    `unfold` left as in the source, or the kept norms named in `drop_kept`
    removed (as a folder that took them for foldable would write it)."""
    src = read_checkpoint(src_dir)
    ex = expected(src)
    ts = dict(ex.tensors)
    for norm, consumers in ex.groups:
        for c in consumers:
            base = src.tensors[c] if c in src.tensors else src.tensors[ex.embed]
            if any(c.endswith(u) for u in unfold):
                ts[c] = base
            elif gain:
                axis = "cols" if len(base.shape) == 2 else "last" if base.shape[-1] == len(src.tensors[norm].values()) \
                    else "middle"
                ts[c] = fold(base, gain_ratios(src.tensors[norm], gain), axis)
    for k in list(ts):
        if any(k.endswith(d + ".weight") for d in drop_kept):
            del ts[k]
    m = Model("out", expected_config(src.config, ex))
    m.tensors = ts
    write_checkpoint(m, out_dir, extra_files=False)


def c_vs_python(tc, src, out, tokens, *flags):
    """`flashify verify` passes on src/out, and the C pass's logits of src
    agree with ref_forward's to 1e-4 of the logit scale, on logits that are
    not degenerate; returns the JSON report."""
    import struct
    from harness import describe, run
    from ref_forward import ref_logits
    dump = src + ".logits"
    p = run(["verify", src, out, "--json", "--tokens", ",".join(map(str, tokens)), "--dump-logits", dump]
            + list(flags))
    tc.assertEqual(p.returncode, 0, describe(p))
    ref = ref_logits(read_checkpoint(src), tokens)
    V = len(ref[0])
    with open(dump, "rb") as f:
        got = struct.unpack("<%df" % (V * len(tokens)), f.read())
    worst = max(abs(got[t * V + v] - ref[t][v]) / max(1.0, max(map(abs, ref[t])))
                for t in range(len(tokens)) for v in range(V))
    tc.assertLess(worst, 1e-4, "C and Python reference differ by %.3g" % worst)
    tc.assertGreater(max(ref[0]) - min(ref[0]), 0.05, "degenerate logits")
    return json.loads(p.stdout)


def edit_config(d, fn):
    """Rewrites d/config.json after fn(cfg) has edited the parsed object in
    place (a source whose config the pass cannot run, or a variant)."""
    path = os.path.join(d, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    fn(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)


def forward_skipped(tc, src, out, needle):
    """`flashify verify src out` passes on the tensor check, with the forward
    check skipped and the reason naming `needle`."""
    from harness import describe, run
    p = run(["verify", src, out])
    tc.assertEqual(p.returncode, 0, describe(p))
    tc.assertIn("forward: skipped", p.stdout)
    tc.assertIn(needle, p.stdout)
    return p
