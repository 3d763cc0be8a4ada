"""The official openai Python client against `outpost serve`.

Usage: python openai_client.py BASE_URL
Prints one line per check and exits non-zero on the first failure.
"""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

# A plain chat.
reply = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=32,
)
text = reply.choices[0].message.content
assert "Paris" in text, text
assert reply.choices[0].finish_reason in ("stop", "length"), reply
assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0, reply.usage
print("plain chat ok:", repr(text))

# A streamed chat, with usage in the last chunk.
pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
assert len(pieces) > 1, pieces
assert streamed == text, (streamed, text)
assert finish in ("stop", "length"), finish
assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens, usage
print("streamed chat ok:", len(pieces), "pieces")

# An error: the client raises BadRequestError carrying our OpenAI-shaped body.
try:
    client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        temperature=5,
    )
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    assert e.body["code"] == "invalid_request", e.body
    assert e.body["param"] == "temperature", e.body
    print("error case ok:", e.body["message"])
else:
    raise AssertionError("temperature=5 was accepted")

models = client.models.list()
assert len(models.data) == 1, models
print("models ok:", models.data[0].id)
