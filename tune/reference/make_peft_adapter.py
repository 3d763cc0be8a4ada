#!/usr/bin/env python3
"""Makes a reference PEFT LoRA adapter for the device's GGUF model and
records what it does, for the Rust import test (tune/tests/peft_import.rs).

The base model is loaded by transformers straight from the GGUF (dequantized
to f32, Q/K rows back in Hugging Face order), wrapped in a PEFT LoRA on
q/k/v/o, and given seeded random lora_B factors (PEFT initialises B to zero,
which would change nothing). Random factors rather than a short training
run: they are deterministic, take seconds, and touch every row of every
adapted projection, so a wrong row order anywhere shows. q/k factors get a
larger scale (--qk-gain) so that the Q/K part of the update alone moves the
logits clearly: the test must fail when the importer skips the Q/K row
permutation, and v/o updates would otherwise dominate the change. With the
defaults (std 0.04, q/k x4, alpha/r = 2) on SmolLM2-135M-Instruct the first
token stays "The" but the greedy reply turns from "The museum has an
extensive dinosaur exhibit..." into "The dinosaur exhibition is just a short
walk from your home.": a visible change that is still fluent text.

Writes to --out: adapter_model.safetensors, adapter_config.json (PEFT's
save_pretrained), and reference.json: the prompt's token ids, last-position
logits (full vocabulary), the top 50 and the argmax, and a 16-token greedy
continuation, without the adapter, with it, and with its q/k factors laid
out as an importer that skips the permutation would read them.
"""

import argparse
import hashlib
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the base model GGUF")
    ap.add_argument("--out", required=True, help="folder for the adapter and reference.json")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--b-std", type=float, default=0.04, help="std of the random lora_B entries (v, o)")
    ap.add_argument("--qk-gain", type=float, default=4.0, help="factor on the q/k lora_B std")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = common.load_base(args.gguf)
    cfg = model.config
    text, ids = common.prompt_ids(tokenizer)
    base = common.summary(model, tokenizer, ids)

    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(args.seed)
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not hasattr(module, "lora_B") or "default" not in getattr(module, "lora_B", {}):
                continue
            b = module.lora_B["default"].weight
            std = args.b_std * (args.qk_gain if name.endswith(("q_proj", "k_proj")) else 1.0)
            b.copy_(torch.randn(b.shape, generator=gen) * std)
    peft_model.eval()
    adapted = common.summary(peft_model, tokenizer, ids)

    os.makedirs(args.out, exist_ok=True)
    peft_model.save_pretrained(args.out)

    # What llama.cpp would compute from an importer that forgot the Q/K
    # permutation: its GGUF-order B would be Hugging Face's B as is, which in
    # Hugging Face order is unpermute(B).
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in heads and hasattr(module, "lora_B"):
                w = module.lora_B["default"].weight
                w.copy_(common.unpermute(w.clone(), heads[leaf]))
    skipped = common.summary(peft_model, tokenizer, ids)

    reference = {
        "gguf": os.path.basename(args.gguf),
        "gguf_sha256": sha256(args.gguf),
        "messages": common.MESSAGES,
        "prompt_text": text,
        "prompt_ids": ids,
        "rank": args.rank,
        "alpha": args.alpha,
        "seed": args.seed,
        "b_std": args.b_std,
        "qk_gain": args.qk_gain,
        "n_head": cfg.num_attention_heads,
        "n_head_kv": cfg.num_key_value_heads,
        "versions": common.versions(),
        "base": base,
        "adapter": adapted,
        "adapter_without_qk_permute": skipped,
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f)

    d_ok = torch.tensor(adapted["logits"]) - torch.tensor(base["logits"])
    d_bad = torch.tensor(skipped["logits"]) - torch.tensor(base["logits"])
    cos = float(torch.nn.functional.cosine_similarity(d_ok, d_bad, dim=0))
    print(
        json.dumps(
            {
                "out": args.out,
                "argmax_base": base["argmax"],
                "argmax_adapter": adapted["argmax"],
                "argmax_without_qk_permute": skipped["argmax"],
                "delta_norm": float(d_ok.norm()),
                "cosine_delta_vs_skipped_permute": cos,
                "greedy_base": base["greedy_text"],
                "greedy_adapter": adapted["greedy_text"],
                "greedy_without_qk_permute": skipped["greedy_text"],
            }
        )
    )


if __name__ == "__main__":
    main()
