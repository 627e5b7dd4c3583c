"""The benchmark fixture generator (bench/gen_fixture) writes checkpoints that
a strict safetensors reader and the Hugging Face layout rules accept.

Checked here with an independent Python parser: every file obeys the
reference reader's rules (8-byte-padded JSON, contiguous offsets in writer
order, file length = 8+N+last end, byte size = shape x dtype), tensor names
and shapes are HF Llama's for the config written next to them, the hub
index maps every tensor to the shard that holds it and sums the tensor
bytes, and the values look trained (matrices std ~0.02, norm gains in
[0.5, 2.5]) and do not depend on the shard layout."""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

FLASHIFY = os.environ["FLASHIFY"]
GEN = os.environ.get("GEN_FIXTURE") or os.path.join(
    os.path.dirname(FLASHIFY), "bench", "gen_fixture")


def read_st(path):
    """Parses one safetensors file; returns {name: (info, bytes)}."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    assert n % 8 == 0, f"{path}: header length {n} not a multiple of 8"
    hdr = json.loads(blob[8:8 + n].decode("utf-8"))
    assert hdr.pop("__metadata__") == {"format": "pt"}, path
    items = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])
    # reference writer order: dtype descending, then name ascending (one dtype here)
    assert [k for k, _ in items] == sorted(hdr), f"{path}: not in writer order"
    end = 0
    out = {}
    for name, info in items:
        b, e = info["data_offsets"]
        assert b == end, f"{path}: {name} starts at {b}, expected {end}"
        size = {"BF16": 2, "F32": 4}[info["dtype"]]
        assert e - b == math.prod(info["shape"]) * size, f"{path}: {name} size"
        end = e
        out[name] = (info, blob[8 + n + b:8 + n + e])
    assert 8 + n + end == len(blob), f"{path}: trailing or missing bytes"
    return out


def values(info, raw):
    if info["dtype"] == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


def load_dir(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    tensors, where = {}, {}
    for f in files:
        for k, v in read_st(os.path.join(d, f)).items():
            assert k not in tensors, f"{k} in two shards"
            tensors[k], where[k] = v, f
    return files, tensors, where


def expected_shapes(cfg):
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    want = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want.update({p + "self_attn.q_proj.weight": [q, H], p + "self_attn.k_proj.weight": [kv, H],
                     p + "self_attn.v_proj.weight": [kv, H], p + "self_attn.o_proj.weight": [H, q],
                     p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H],
                     p + "mlp.down_proj.weight": [H, I], p + "input_layernorm.weight": [H],
                     p + "post_attention_layernorm.weight": [H]})
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = [V, H]
    return want


def gen(*args):
    r = subprocess.run([GEN, "--quiet", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"gen_fixture {args} failed: {r.stderr}"


def main():
    assert os.access(GEN, os.X_OK), f"gen_fixture not built at {GEN}"
    with tempfile.TemporaryDirectory() as tmp:
        one, sharded, f32 = (os.path.join(tmp, x) for x in ("one", "sharded", "f32"))
        gen("--preset", "tiny", one)
        gen("--preset", "tiny", "--untied", "--max-shard-size", "60KB", sharded)
        gen("--preset", "tiny", "--dtype", "f32", "--layers", "3", f32)

        for d in (one, sharded, f32):
            cfg = json.load(open(os.path.join(d, "config.json")))
            assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
            files, tensors, where = load_dir(d)
            want = expected_shapes(cfg)
            assert set(tensors) == set(want), set(tensors) ^ set(want)
            for k, (info, _) in tensors.items():
                assert info["shape"] == want[k], (k, info["shape"], want[k])
                assert info["dtype"] == ("F32" if cfg["torch_dtype"] == "float32" else "BF16")
            for k, (info, raw) in tensors.items():
                v = values(info, raw)
                if k.endswith("norm.weight"):
                    assert 0.5 <= min(v) and max(v) <= 2.5, (k, min(v), max(v))
                    assert max(v) - min(v) > 1.0, f"{k}: gains barely spread"
                else:
                    sd = math.sqrt(sum(x * x for x in v) / len(v))
                    assert 0.015 < sd < 0.025, f"{k}: std {sd}"
                    assert len(set(v)) > len(v) // 20, f"{k}: too few distinct values"

        # sharded: hub index, 5-digit names, and the same bytes as one file
        files, tensors, where = load_dir(sharded)
        assert len(files) > 1, files
        n = len(files)
        assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], files
        idx = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
        assert idx["weight_map"] == where
        assert idx["metadata"]["total_size"] == sum(len(raw) for _, raw in tensors.values())
        assert max(os.path.getsize(os.path.join(sharded, f)) for f in files) < 60000 + 8192
        _, single, _ = load_dir(one)
        for k in single:
            assert single[k][1] == tensors[k][1], f"{k}: bytes depend on sharding"
        assert not os.path.exists(os.path.join(one, "model.safetensors.index.json"))

        # determinism: same arguments, same bytes
        again = os.path.join(tmp, "again")
        gen("--preset", "tiny", again)
        a = open(os.path.join(one, "model.safetensors"), "rb").read()
        assert a == open(os.path.join(again, "model.safetensors"), "rb").read()
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL:", e, file=sys.stderr)
        sys.exit(1)
