#!/usr/bin/env python3
"""PyTorch + PEFT LoRA training throughput on the CPU, the peer for
Outpost's trainer benchmark: the same GGUF model (transformers dequantizes it
to f32), sequence length, rank, targets, batch and thread count.

fp32, AdamW (lr 1e-4) on the LoRA factors only, loss on every token of a
fixed-length batch of repeated text. The first step (warm-up: allocator,
kernels) is not counted. Prints one JSON object."""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
           "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

TEXT = (
    "The museum opens at nine in the morning and closes at six in the evening. "
    "Tickets for the dinosaur exhibition are sold at the front desk and at the kiosk by the stairs. "
)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="default: 2 x rank")
    ap.add_argument("--targets", default="q,k,v,o")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="including the uncounted warm-up step")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first is warm-up)")

    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = common.load_base(args.gguf)
    targets = [MODULES[t.strip()] for t in args.targets.split(",")]
    model = get_peft_model(
        model,
        LoraConfig(r=args.rank, lora_alpha=args.alpha or 2 * args.rank, target_modules=targets,
                   lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"),
    )
    model.train()

    ids = tokenizer(TEXT * (args.seq_len // 8 + 1), add_special_tokens=False)["input_ids"][: args.seq_len]
    if len(ids) < args.seq_len:
        sys.exit(f"the text gives {len(ids)} tokens, fewer than --seq-len {args.seq_len}")
    batch = torch.tensor([ids] * args.batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))

    counted = times[1:]
    tokens = args.batch * args.seq_len
    print(json.dumps({
        "tokens_per_s": tokens * len(counted) / sum(counted),
        "step_s_median": statistics.median(counted),
        "step_s": counted,
        "warmup_step_s": times[0],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "trainable_params": sum(p.numel() for p in trainable),
        "versions": common.versions(),
        "settings": {"gguf": os.path.basename(args.gguf), "seq_len": args.seq_len, "rank": args.rank,
                     "alpha": args.alpha or 2 * args.rank, "targets": targets, "batch": args.batch,
                     "threads": args.threads, "steps": args.steps, "dtype": "float32",
                     "optimizer": "AdamW lr=1e-4", "loss": "all tokens"},
    }))


if __name__ == "__main__":
    main()
