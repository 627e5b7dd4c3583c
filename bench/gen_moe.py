#!/usr/bin/env python3
"""gen_moe.py -- a Qwen3.5-MoE-shaped benchmark checkpoint with fused 3-D
experts (transformers 5 layout), a few GB, for bench_convert.sh --preset
qwen3_5_moe.

The config and the tensor names come from the test suite's own generator
(tests/e2e/zoo_qwen.py, written from docs/architectures.md §qwen3_5), run
with the sizes below; only the matrices' values differ: the test generator
draws every value in Python (far too slow for GBs), here each large matrix
is a tiling of one block of random BF16 values.  Norm gains, conv filters
and the other small vectors keep the generator's random values (never all
ones).  The experts are written fused, experts.gate_up_proj [E, 2I, H] and
experts.down_proj [E, H, I], as transformers 5 saves Qwen3.5-MoE; the MTP
block stays per expert as on the Hub.

Shape (scaled down from Qwen3.5-35B-A3B: hidden 2048, 256 experts of 512,
40 layers, vocab 248320): hidden 2048, 4 layers (3 Gated DeltaNet, 1 full
attention), 64 experts of 512 plus a shared expert, vocab 65536, untied:
about 2.4 GB, the size of the 1b preset.

Usage: bench/gen_moe.py [--experts N] [--layers N] [--vocab N] OUTDIR
"""

import argparse
import json
import os
import random
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import fixtures  # noqa: E402
import zoo_qwen  # noqa: E402

BLOCK_VALUES = 1 << 20          # one 2 MiB block of BF16 values, tiled


class Big:
    """A matrix recorded by shape only; its bytes are the tiled block."""
    __slots__ = ("dtype", "shape")

    def __init__(self, dtype, shape):
        self.dtype, self.shape = dtype, tuple(shape)


def lazy_mat(self, name, shape, dtype=None, scale=1.0):
    self.m.tensors[name] = Big(dtype or self.dtype, shape)


def fuse(tensors):
    """Per-expert Big matrices of the decoder layers -> gate_up_proj
    [E, 2I, H] and down_proj [E, H, I] (the MTP block keeps its own)."""
    pat = re.compile(r"^(model\.language_model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
    groups = {}
    for k in list(tensors):
        m = pat.match(k)
        if m:
            groups.setdefault(m.group(1), []).append((int(m.group(2)), m.group(3), tensors.pop(k)))
    for base, items in groups.items():
        E = 1 + max(e for e, _, _ in items)
        I, H = next(t.shape for _, kind, t in items if kind == "gate")
        tensors[base + ".gate_up_proj"] = Big("BF16", (E, 2 * I, H))
        tensors[base + ".down_proj"] = Big("BF16", (E, H, I))


def write(path, tensors, block):
    names = sorted(tensors, key=lambda k: (-fixtures.DTYPE_ORDER.index(tensors[k].dtype), k))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for k in names:
        t = tensors[k]
        n = fixtures.nbytes(t.dtype, t.shape)
        header[k] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for k in names:
            t = tensors[k]
            if not isinstance(t, Big):
                f.write(t.data)
                continue
            left = fixtures.nbytes(t.dtype, t.shape)
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("out")
    a = ap.parse_args()
    if os.path.exists(a.out):
        sys.exit("gen_moe.py: %s exists" % a.out)
    dims = dict(num_attention_heads=16, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
                linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
                num_experts=a.experts, num_experts_per_tok=8, moe_intermediate_size=512,
                shared_expert_intermediate_size=512, max_position_embeddings=262144)
    fixtures._Gen.mat = lazy_mat
    model = zoo_qwen.build("qwen3_5_moe", "BF16", None, False, a.seed, a.layers, 2048, a.vocab,
                           interval=4, experts="per_expert", qk="independent", dims=dims)
    fuse(model.tensors)
    rng = random.Random(a.seed)
    block = fixtures.encode_values("BF16", [rng.gauss(0.0, 0.02) for _ in range(BLOCK_VALUES)])
    os.makedirs(a.out)
    total = write(os.path.join(a.out, "model.safetensors"), model.tensors, block)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(model.config, f, indent=2)
        f.write("\n")
    print("gen_moe.py: %s: %d tensors, %.2f GB" % (a.out, len(model.tensors), total / 1e9))


if __name__ == "__main__":
    main()
