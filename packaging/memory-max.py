#!/usr/bin/env python3
"""MemoryMax= for outpost-device.service, computed from the model it will run.

    MemoryMax = weights + kv + prefix_cache + embedder + headroom
      weights      = size of the generator GGUF file (llama.cpp maps it; every
                     page is touched while decoding, and mapped pages count
                     towards the service's cgroup)
      kv           = n_layer * ctx_total * (n_head_kv * key_length
                                            + n_head_kv * value_length) * 2 bytes
                     (llama.cpp's default F16 K and V caches), ctx_total =
                     [engine] ctx_per_slot * parallel
      prefix_cache = [engine] prefix_cache_mb MiB (saved prompt prefixes)
      embedder     = size of the embedding GGUF, when one is given
      headroom     = 256 MiB + 25% of (weights + kv): llama.cpp's compute
                     buffers (ubatch-sized), the tokenizer, tokio, HTTP, SQLite
                     and the knowledge base's page cache
    rounded up to a whole 64 MiB.

The model's shape comes from the GGUF header ({arch}.block_count,
{arch}.attention.head_count[_kv], {arch}.embedding_length,
{arch}.attention.key_length / value_length), read here without running the
binary: the package may be built for another architecture.

      extra        = --extra-mib (the hub: 512 MiB for itself beside one
                     evaluation child at --ctx-total 2048)

Usage: memory-max.py --model FILE.gguf [--embedder FILE.gguf] [--config device.toml]
                     [--ctx-total N] [--extra-mib N] [--explain]
Prints the figure in bytes (and with --explain the terms, on stderr).
"""

import argparse
import os
import struct
import sys
import tomllib

MIB = 1024 * 1024
# GGUF value types (ggml/include/gguf.h)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GgufError(Exception):
    pass


def gguf_metadata(path):
    """The key/value metadata of a GGUF file (arrays are skipped, not kept)."""
    with open(path, "rb") as f:
        def read(n):
            data = f.read(n)
            if len(data) != n:
                raise GgufError(f"{path}: the file ends inside its header (truncated download?)")
            return data

        def unpack(fmt):
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def string():
            return read(unpack("<Q")).decode("utf-8", "replace")

        def value(kind, keep=True):
            if kind in SCALARS:
                return unpack(SCALARS[kind])
            if kind == STRING:
                return string()
            if kind == ARRAY:
                item, count = unpack("<I"), unpack("<Q")
                if item in SCALARS:
                    f.seek(struct.calcsize(SCALARS[item]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(item, keep=False)
                return None
            raise GgufError(f"{path}: unknown GGUF value type {kind}")

        if read(4) != b"GGUF":
            raise GgufError(f"{path}: not a GGUF file (no GGUF magic)")
        version = unpack("<I")
        if version < 2:
            raise GgufError(f"{path}: GGUF version {version} is too old; re-convert the model")
        unpack("<Q")  # tensor count
        meta = {}
        for _ in range(unpack("<Q")):
            key = string()
            meta[key] = value(unpack("<I"))
        return meta


def kv_bytes(meta, ctx_total):
    arch = meta.get("general.architecture")
    if not arch:
        raise GgufError("the GGUF has no general.architecture")

    def get(key, default=None):
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise GgufError(f"the GGUF has no {arch}.{key}")
        return v

    n_layer = get("block_count")
    n_embd = get("embedding_length")
    n_head = get("attention.head_count")
    n_head_kv = get("attention.head_count_kv", n_head)
    k_len = get("attention.key_length", n_embd // n_head)
    v_len = get("attention.value_length", n_embd // n_head)
    shape = dict(arch=arch, n_layer=n_layer, n_head_kv=n_head_kv, k_len=k_len, v_len=v_len)
    return n_layer * ctx_total * n_head_kv * (k_len + v_len) * 2, shape


def engine_settings(config):
    """ctx_per_slot, parallel and prefix_cache_mb from a device.toml (defaults when absent)."""
    engine = {}
    if config:
        with open(config, "rb") as f:
            engine = tomllib.load(f).get("engine", {})
    return engine.get("ctx_per_slot", 2048), engine.get("parallel", 4), engine.get("prefix_cache_mb", 256)


def memory_max(model, embedder=None, config=None, ctx_total=None, extra_mib=0):
    ctx_per_slot, parallel, prefix_mb = engine_settings(config)
    ctx_total = ctx_total or ctx_per_slot * parallel
    weights = os.path.getsize(model)
    kv, shape = kv_bytes(gguf_metadata(model), ctx_total)
    emb = os.path.getsize(embedder) if embedder else 0
    headroom = 256 * MIB + (weights + kv) // 4
    total = weights + kv + prefix_mb * MIB + emb + headroom + extra_mib * MIB
    step = 64 * MIB
    total = -(-total // step) * step
    terms = dict(weights=weights, kv=kv, prefix_cache=prefix_mb * MIB, embedder=emb, headroom=headroom,
                 extra=extra_mib * MIB, ctx_total=ctx_total, **shape)
    return total, terms


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--model", required=True, help="the generator GGUF the device runs")
    p.add_argument("--embedder", help="the embedding GGUF, when the device serves a knowledge base")
    p.add_argument("--config", help="device.toml whose [engine] gives ctx_per_slot, parallel, prefix_cache_mb")
    p.add_argument("--ctx-total", type=int, help="total context tokens instead of ctx_per_slot * parallel")
    p.add_argument("--extra-mib", type=int, default=0, help="MiB added for the rest of the process (the hub)")
    p.add_argument("--explain", action="store_true", help="print the terms on stderr")
    a = p.parse_args()
    try:
        total, terms = memory_max(a.model, a.embedder, a.config, a.ctx_total, a.extra_mib)
    except (OSError, GgufError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"memory-max.py: {e}")
    if a.explain:
        mib = {k: (f"{v / MIB:.0f} MiB" if k in ("weights", "kv", "prefix_cache", "embedder", "headroom", "extra") else v)
               for k, v in terms.items()}
        print(f"memory-max.py: {mib} -> {total // MIB} MiB", file=sys.stderr)
    print(total)


if __name__ == "__main__":
    main()
