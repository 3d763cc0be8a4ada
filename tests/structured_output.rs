//! Structured output end to end on the real default model: JSON schemas
//! through the official `openai` client (every reply validated by the
//! `jsonschema` package), GBNF through llama-server's `grammar` field,
//! whole and streamed, and the refusals: a schema or grammar that cannot be
//! enforced, and fields whose meaning would be lost (`tools`, `logprobs`),
//! are 400s naming the parameter, never a silently unconstrained answer.

mod support;

use serde_json::{json, Value};
use support::{post, post_raw, Server};

fn ask(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Is the BrewStation 3000 a coffee machine?"}],
        "temperature": 0,
        "max_tokens": 16,
    });
    for (k, v) in extra.as_object().expect("fields") {
        body[k] = v.clone();
    }
    body
}

#[test]
fn json_schemas_through_the_official_client_validate_streamed_and_whole() {
    let server = Server::start(&[]);
    let stdout = support::python_check(
        &[
            ("openai", "openai>=1.40,<3"),
            ("jsonschema", "jsonschema>=4,<5"),
        ],
        "tests/structured_output.py",
        &server.base,
    );
    eprintln!("{stdout}");
    for name in ["object", "enum", "array", "nested", "required"] {
        assert!(stdout.contains(&format!("schema {name} ok")), "{stdout}");
    }
    assert!(stdout.contains("unsupported schema refused"), "{stdout}");
}

#[test]
fn a_gbnf_grammar_constrains_the_answer_and_a_broken_one_is_a_400() {
    let server = Server::start(&[]);
    let url = server.url("/v1/chat/completions");
    let grammar = r#"root ::= "yes" | "no""#;
    let (status, body) = post(&url, &ask(json!({"grammar": grammar})));
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(text == "yes" || text == "no", "{text:?}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");

    // The same unconstrained: the model says more than one word.
    let (status, free) = post(&url, &ask(json!({})));
    assert_eq!(status, 200, "{free}");
    let free = free["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(free != "yes" && free != "no", "{free:?}");

    // llama.cpp refuses to parse it: a 400, streamed or not.
    for stream in [false, true] {
        let (status, body) = post(
            &url,
            &ask(json!({"grammar": "root ::= (", "stream": stream})),
        );
        assert_eq!(status, 400, "stream {stream}: {body}");
        assert_eq!(body["error"]["code"], "invalid_grammar", "{body}");
    }

    // It parses, but after "a" no token can follow (llama.cpp would abort
    // the process if one were forced on it): an error, whole or as the
    // stream's last event, and the server goes on answering.
    let dead_end = ask(json!({"grammar": r#"root ::= "a" [^\x00-\U0010FFFF]"#}));
    let (status, body) = post(&url, &dead_end);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_grammar", "{body}");
    let mut streamed = dead_end.clone();
    streamed["stream"] = json!(true);
    let (status, bytes) = post_raw(
        &server.base,
        "/v1/chat/completions",
        Some("application/json"),
        streamed.to_string().as_bytes(),
    )
    .expect("streamed request");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("invalid_grammar"), "{text}");
    let (status, body) = post(&url, &ask(json!({"grammar": grammar})));
    assert_eq!(status, 200, "still serving: {body}");
}

#[test]
fn fields_that_cannot_be_honoured_are_refused_by_name() {
    let server = Server::start(&[]);
    let url = server.url("/v1/chat/completions");
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (extra, param) in [
        (json!({"tools": tool}), "tools"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"top_logprobs": 3}), "logprobs"),
        (json!({"logit_bias": {"15": 100}}), "logit_bias"),
        (json!({"n": 2}), "n"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""}),
            "response_format",
        ),
        (
            json!({"json_schema": {"type": "string", "pattern": "^[A-Z]+$"}}),
            "json_schema",
        ),
    ] {
        let (status, body) = post(&url, &ask(extra.clone()));
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
    }
    // Harmless unknown fields and empty tool lists stay accepted.
    let (status, body) = post(
        &url,
        &ask(json!({"tools": [], "user": "kiosk-7", "response_format": {"type": "text"}})),
    );
    assert_eq!(status, 200, "{body}");
}
