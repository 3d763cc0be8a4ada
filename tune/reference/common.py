"""Shared by the reference scripts: load the base model straight from the
device's GGUF with transformers (which dequantizes it and undoes
llama.cpp's Q/K row permutation), render the fixed chat prompt, and read
last-position logits and greedy continuations."""

import os
import sys

import torch

# The fixed conversation every reference run evaluates.
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant at a museum kiosk."},
    {"role": "user", "content": "Where can I buy a ticket for the dinosaur exhibition?"},
]


def load_base(gguf_path):
    """The model and tokenizer from a GGUF file, f32 on the CPU, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def prompt_ids(tokenizer):
    """The fixed conversation through the tokenizer's own chat template."""
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, [int(i) for i in ids]


@torch.no_grad()
def last_logits(model, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0, -1].float()


@torch.no_grad()
def greedy(model, ids, n):
    """n greedy tokens (argmax each step, no stopping, no penalties)."""
    seq = list(ids)
    new = []
    for _ in range(n):
        nxt = int(torch.argmax(last_logits(model, seq)))
        seq.append(nxt)
        new.append(nxt)
    return new


def summary(model, tokenizer, ids, n_greedy=16):
    logits = last_logits(model, ids)
    top = torch.topk(logits, 50)
    cont = greedy(model, ids, n_greedy)
    return {
        "argmax": int(torch.argmax(logits)),
        "top50_ids": [int(i) for i in top.indices],
        "top50_logits": [float(v) for v in top.values],
        "logits": [round(float(v), 5) for v in logits],
        "greedy": cont,
        "greedy_text": tokenizer.decode(cont),
    }


def versions():
    import numpy
    import peft
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": numpy.__version__,
    }


def permute(w, n_head):
    """convert_hf_to_gguf.py's permute: Hugging Face rows -> llama.cpp rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """The inverse of permute: llama.cpp rows -> Hugging Face rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
