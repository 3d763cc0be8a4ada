"""Structured output through the official openai Python client.

Usage: python structured_output.py BASE_URL
Every schema of the suite is asked for with `response_format` json_schema,
whole and streamed; each reply must parse as JSON and validate against its
schema (checked with the `jsonschema` package, not with Outpost's code).
Prints one line per check and exits non-zero on the first failure.
"""
import json
import sys

import jsonschema
import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

# Bounded strings and arrays keep every document inside max_tokens.
SHORT = {"type": "string", "maxLength": 24}
SUITE = {
    "object": (
        "Describe the BrewStation 3000 coffee machine.",
        {
            "type": "object",
            "properties": {"name": SHORT, "cups": {"type": "integer"}},
            "required": ["name", "cups"],
            "additionalProperties": False,
        },
    ),
    "enum": (
        "Is the water tank empty, full or half full?",
        {
            "type": "object",
            "properties": {"level": {"enum": ["empty", "half", "full"]}},
            "required": ["level"],
            "additionalProperties": False,
        },
    ),
    "array": (
        "List three coffee drinks.",
        {
            "type": "object",
            "properties": {
                "drinks": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3}
            },
            "required": ["drinks"],
            "additionalProperties": False,
        },
    ),
    "nested": (
        "Give a support ticket for a machine that shows error E03.",
        {
            "type": "object",
            "properties": {
                "ticket": {
                    "type": "object",
                    "properties": {
                        "code": {"enum": ["E01", "E02", "E03"]},
                        "urgent": {"type": "boolean"},
                        "steps": {"type": "array", "items": SHORT, "maxItems": 2},
                    },
                    "required": ["code", "urgent"],
                    "additionalProperties": False,
                }
            },
            "required": ["ticket"],
            "additionalProperties": False,
        },
    ),
    "required": (
        "Rate the machine from 1 to 5 and say whether you would buy it.",
        {
            "type": "object",
            "properties": {
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "buy": {"type": "boolean"},
                "comment": SHORT,
            },
            "required": ["stars", "buy"],
            "additionalProperties": False,
        },
    ),
}

for name, (question, schema) in SUITE.items():
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": question + " Answer in JSON."}]
    whole = client.chat.completions.create(
        model="default", messages=messages, temperature=0, max_tokens=160, response_format=fmt
    )
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop", (name, whole.choices[0].finish_reason, text)
    jsonschema.validate(json.loads(text), schema)
    pieces = []
    for chunk in client.chat.completions.create(
        model="default",
        messages=messages,
        temperature=0,
        max_tokens=160,
        response_format=fmt,
        stream=True,
    ):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    streamed = "".join(pieces)
    assert streamed == text, (name, streamed, text)
    jsonschema.validate(json.loads(streamed), schema)
    print(f"schema {name} ok: {json.dumps(json.loads(text))}")

# json_object: any JSON object.
reply = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
    temperature=0,
    max_tokens=96,
    response_format={"type": "json_object"},
)
text = reply.choices[0].message.content
if reply.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(text), dict), text
else:
    assert text.lstrip().startswith("{"), text
print("json_object ok:", " ".join(text.split()))

# A schema the grammar cannot enforce is a 400 naming the keyword, never an
# unconstrained answer.
try:
    client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Your e-mail?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "mail",
                "schema": {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}},
            },
        },
    )
except openai.BadRequestError as e:
    assert e.body["param"] == "response_format", e.body
    assert "email" in e.body["message"], e.body
    print("unsupported schema refused:", e.body["message"])
else:
    raise AssertionError("format: email was accepted")
