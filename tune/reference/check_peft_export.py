#!/usr/bin/env python3
"""Checks an adapter Outpost exported with write_peft against the PEFT
original it was imported from: every tensor equal to the original's (names
compared with PEFT's adapter-name segment removed), PEFT loads the export
with PeftModel.from_pretrained, and its last-position logits on the
reference prompt match the original's recorded in reference.json. Prints one
JSON object; exits 1 when a check fails."""

import argparse
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def tensors(folder):
    from safetensors.torch import load_file

    out = {}
    for name, t in load_file(os.path.join(folder, "adapter_model.safetensors")).items():
        out[name.replace(".default.", ".")] = t.float()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--original", required=True, help="the folder make_peft_adapter.py wrote")
    ap.add_argument("--exported", required=True, help="the folder write_peft wrote")
    ap.add_argument("--max-abs-logit-diff", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from peft import PeftModel

    torch.set_num_threads(args.threads)
    failures = []
    original, exported = tensors(args.original), tensors(args.exported)
    if set(original) != set(exported):
        failures.append(f"tensor names differ: only original {sorted(set(original) - set(exported))[:4]}, "
                        f"only exported {sorted(set(exported) - set(original))[:4]}")
    max_tensor_diff = 0.0
    for name in sorted(set(original) & set(exported)):
        a, b = original[name], exported[name]
        if a.shape != b.shape:
            failures.append(f"{name}: shape {tuple(b.shape)}, original {tuple(a.shape)}")
            continue
        max_tensor_diff = max(max_tensor_diff, float((a - b).abs().max()))
    if max_tensor_diff != 0.0:
        failures.append(f"tensors differ from the original by up to {max_tensor_diff}")

    with open(os.path.join(args.original, "reference.json")) as f:
        reference = json.load(f)
    model, _ = common.load_base(args.gguf)
    model = PeftModel.from_pretrained(model, args.exported)
    model.eval()
    logits = common.last_logits(model, reference["prompt_ids"])
    want = torch.tensor(reference["adapter"]["logits"])
    max_logit_diff = float((logits - want).abs().max())
    argmax = int(torch.argmax(logits))
    if max_logit_diff > args.max_abs_logit_diff:
        failures.append(f"logits differ from the original adapter's by {max_logit_diff}")
    if argmax != reference["adapter"]["argmax"]:
        failures.append(f"argmax {argmax}, original adapter {reference['adapter']['argmax']}")

    print(json.dumps({
        "ok": not failures,
        "failures": failures,
        "tensors": len(exported),
        "max_tensor_abs_diff": max_tensor_diff,
        "max_logit_abs_diff": max_logit_diff,
        "argmax": argmax,
        "argmax_original": reference["adapter"]["argmax"],
    }))
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
