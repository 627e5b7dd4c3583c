#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses into tests/fuzz/corpus/.

Small valid and near-valid inputs, so the fuzzers start from the shapes
real checkpoints have.  Deterministic: rerunning rewrites the same files.
Standard library only.  Usage: python3 tests/fuzz/make_corpus.py"""
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "U8": 8, "I8": 8, "F8_E4M3": 8,
        "F8_E5M2": 8, "I16": 16, "F16": 16, "BF16": 16, "I32": 32, "F32": 32,
        "C64": 64, "F64": 64, "I64": 64, "U64": 64}
ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
         "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
         "I32", "U32", "F32", "C64", "F64", "I64", "U64"]


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * BITS[dtype] // 8


def st(tensors, meta=None, raw_header=None):
    """safetensors bytes; tensors: [(name, dtype, shape)] written in the
    reference order with deterministic non-zero data."""
    tensors = sorted(tensors, key=lambda t: (-ORDER.index(t[1]), t[0]))
    hdr = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    off = 0
    for name, dtype, shape in tensors:
        n = nbytes(dtype, shape)
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = raw_header if raw_header is not None else json.dumps(hdr, separators=(",", ":"))
    h = h.encode()
    h += b" " * (-len(h) % 8)
    data = bytes((i * 37 + 11) & 0xFF for i in range(off))
    if any(t[1] == "F32" for t in tensors):
        data = struct.pack("<%df" % (off // 4), *[0.5 + (i % 7) * 0.25 for i in range(off // 4)]) + data[off // 4 * 4:]
    return struct.pack("<Q", len(h)) + h + data


H, I, V = 4, 6, 8


def tiny_llama(layers=1, tied=False, prefix="model.", dtype="F32", norm_dtype=None, bias=False):
    t = [(prefix + "embed_tokens.weight", dtype, [V, H])]
    for i in range(layers):
        p = "%slayers.%d." % (prefix, i)
        t += [(p + "input_layernorm.weight", norm_dtype or dtype, [H]),
              (p + "self_attn.q_proj.weight", dtype, [H, H]),
              (p + "self_attn.k_proj.weight", dtype, [H, H]),
              (p + "self_attn.v_proj.weight", dtype, [H, H]),
              (p + "self_attn.o_proj.weight", dtype, [H, H]),
              (p + "post_attention_layernorm.weight", norm_dtype or dtype, [H]),
              (p + "mlp.gate_proj.weight", dtype, [I, H]),
              (p + "mlp.up_proj.weight", dtype, [I, H]),
              (p + "mlp.down_proj.weight", dtype, [H, I])]
        if bias:
            t += [(p + "self_attn.q_proj.bias", dtype, [H]), (p + "self_attn.k_proj.bias", dtype, [H]),
                  (p + "self_attn.v_proj.bias", dtype, [H])]
    t.append((prefix + "norm.weight", norm_dtype or dtype, [H]))
    if not tied:
        t.append(("lm_head.weight", dtype, [V, H]))
    return t


def config(model_type="llama", layers=1, tied=False, **extra):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": H,
         "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": 2,
         "num_key_value_heads": 2, "vocab_size": V, "rms_norm_eps": 1e-6,
         "tie_word_embeddings": tied, "torch_dtype": "float32"}
    c.update(extra)
    return json.dumps(c, indent=2).encode()


def write(harness, name, blob):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


def st_header_corpus():
    w = lambda n, b: write("fuzz_st_header", n, b)  # noqa: E731
    w("empty", st([]))
    w("empty-meta", st([], {"format": "pt"}))
    w("one-f32", st([("a", "F32", [2])], {"format": "pt"}))
    w("tiny-llama", st(tiny_llama(), {"format": "pt"}))
    w("dtypes", st([("t%d" % i, d, [2, 2]) for i, d in enumerate(BITS)], {"format": "pt", "k": "v"}))
    w("zero-and-scalar", st([("z", "F32", [0, 3]), ("s", "F64", []), ("e", "BF16", [1, 0, 5])]))
    w("alias-meta", st(tiny_llama(tied=True), {"format": "pt", "lm_head.weight": "model.embed_tokens.weight"}))
    w("escapes", st([("w\u00e9\n\"\\/\U0001F600", "F16", [3])], {"f\tmt": "p\u0001t"}))
    w("whitespace", st([], raw_header=' \t\r\n{"__metadata__":{"format":"pt"}}\n '))
    w("unknown-field", st([], raw_header='{"a":{"x":[1,{"y":null}],"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'))
    # near-valid
    w("hole", st([], raw_header='{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}'))
    w("dup", st([], raw_header='{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'))
    w("bad-number", st([], raw_header='{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}'))
    w("big-number", st([], raw_header='{"a":{"dtype":"U8","shape":[9007199254740992],"data_offsets":[0,9007199254740992]}}'))
    w("meta-number", st([], raw_header='{"__metadata__":{"a":0}}'))
    w("f4-odd", st([], raw_header='{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}'))
    w("length-past-eof", struct.pack("<Q", 1 << 40) + b"{}")


CI_SHARDS = {  # the shards fuzz_config_index.c writes
    "model.embed_tokens.weight": 1, "model.layers.0.input_layernorm.weight": 1,
    "model.layers.0.self_attn.q_proj.weight": 2, "model.layers.0.self_attn.k_proj.weight": 1,
    "model.layers.0.self_attn.v_proj.weight": 2, "model.layers.0.self_attn.o_proj.weight": 1,
    "model.layers.0.post_attention_layernorm.weight": 2, "model.layers.0.mlp.gate_proj.weight": 1,
    "model.layers.0.mlp.up_proj.weight": 2, "model.layers.0.mlp.down_proj.weight": 1,
    "model.norm.weight": 2, "lm_head.weight": 2,
}


def index(weight_map, total=1000):
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()


def config_index_corpus():
    w = lambda n, b: write("fuzz_config_index", n, b)  # noqa: E731
    wm = {k: "model-%05d-of-00002.safetensors" % v for k, v in CI_SHARDS.items()}
    sep = b"\n@@@\n"
    w("single-file", config())
    w("sharded", config() + sep + index(wm))
    w("sharded-sub", config() + sep + index(dict(wm, **{"model.embed_tokens.weight": "sub/model-00001-of-00002.safetensors"})))
    w("tied", config(tied=True))
    w("qwen2", config("qwen2"))
    w("mistral", config("mistral", layers=1))
    w("text-config", json.dumps({"model_type": "llava", "text_config": json.loads(config())}).encode())
    w("outside", config() + sep + index(dict(wm, **{"model.norm.weight": "../outside.safetensors"})))
    w("missing", config() + sep + index(dict(wm, **{"model.norm.weight": "model-00003-of-00003.safetensors"})))
    w("bad-layers", config(layers=2))
    w("hidden-mismatch", config(hidden_size=8))
    plan = {"model_type": "mymodel", "gain": "w",
            "layers": [{"norm": "input_layernorm", "consumers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]},
                       {"norm": "post_attention_layernorm", "consumers": ["mlp.gate_proj", "mlp.up_proj"]}],
            "keep": [{"norm": "self_attn.q_norm", "reason": "feeds RoPE"}],
            "tie_word_embeddings_default": False, "flashnorm_marker": True}
    psep = b"\n@@plan\n"
    w("plan", config("mymodel") + psep + json.dumps(plan, indent=2).encode())
    w("plan-sharded", config("mymodel") + sep + index(wm) + psep + json.dumps(dict(plan, gain="1+w")).encode())
    w("plan-experts", config("mymodel", num_local_experts=2) + psep + json.dumps(dict(
        plan, experts_key="num_local_experts",
        layers=[{"norm": "post_attention_layernorm", "consumers": ["mlp.experts.{e}.w1"]}])).encode())


def checkpoint_dir_corpus():
    w = lambda n, b: write("fuzz_checkpoint_dir", n, b)  # noqa: E731

    def enc(cfg, files):
        out = cfg
        for name, blob in files:
            out += b"\n@@@ " + name.encode() + b"\n" + blob
        return out
    t = tiny_llama()
    w("single", enc(config(), [("model.safetensors", st(t, {"format": "pt"}))]))
    a, b = t[::2], t[1::2]
    n1, n2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    wm = {x[0]: n1 for x in a}
    wm.update({x[0]: n2 for x in b})
    w("sharded", enc(config(), [(n1, st(a, {"format": "pt"})), (n2, st(b, {"format": "pt"})),
                                 ("model.safetensors.index.json", index(wm))]))
    tt = tiny_llama(tied=True)
    w("alias", enc(config(tied=True), [("model.safetensors", st(tt, {"format": "pt", "lm_head.weight": "model.embed_tokens.weight"}))]))
    head_only = [(("lm_head.weight" if x[0] == "model.embed_tokens.weight" else x[0]), x[1], x[2]) for x in tt]
    w("alias-head", enc(config(tied=True), [("model.safetensors", st(head_only, {"format": "pt", "model.embed_tokens.weight": "lm_head.weight"}))]))
    w("bf16-f32-norms", enc(config(layers=2), [("model.safetensors", st(tiny_llama(2, dtype="BF16", norm_dtype="F32"), {"format": "pt"}))]))
    w("qwen2-bias", enc(config("qwen2"), [("model.safetensors", st(tiny_llama(bias=True), {"format": "pt"}))]))
    w("symlink", enc(config(), [("real.safetensors", st(t, {"format": "pt"})), ("L:model.safetensors", b"real.safetensors")]))
    w("symlink-out", enc(config(), [("L:model.safetensors", b"../outside.safetensors")]))
    w("extra-files", enc(config(), [("model.safetensors", st(t)), ("tokenizer.json", b"{}"), ("sub/x.txt", b"x"),
                                    ("pytorch_model.bin", b"PK")]))
    w("sub-shard", enc(config(), [("sub/" + n1, st(a)), (n2, st(b)),
                                   ("model.safetensors.index.json", index(dict(wm, **{x[0]: "sub/" + n1 for x in a})))]))
    w("empty", b"")
    # One tiny model of every family the architecture table knows, from the
    # e2e fixture generator, so the plan's per-family paths are reached.
    sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
    import fixtures as F
    for fam in sorted(F.ARCH_CLASS):
        m = F.build_model(fam, dtype="BF16", hidden=8, vocab=16)
        w("family-" + fam, enc(json.dumps(m.config).encode(),
                               [("model.safetensors", F.safetensors_bytes(m.tensors))]))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    st_header_corpus()
    config_index_corpus()
    checkpoint_dir_corpus()
    for h in sorted(os.listdir(OUT)):
        print("%s: %d seeds" % (h, len(os.listdir(os.path.join(OUT, h)))))


if __name__ == "__main__":
    main()
