//! The kiosk: `GET /` serves the customer page (one self-contained HTML
//! file, no external assets, so it works with the network unplugged), and
//! the page's buttons post to `POST /v1/feedback` (thumbs up / down on an
//! answer) and `POST /v1/handover` ("Talk to a person").
//!
//! The page is public; its API calls go through the same key check as every
//! other route, so a kiosk page is meant for devices without an `api_key`
//! (bound to loopback, or on a kiosk's own network).
//!
//! Its Content-Security-Policy allows exactly the page's own inline script
//! and style blocks, by their sha256 (computed from the page once, at first
//! use), and no `'unsafe-inline'`: markup injected into the page (an answer
//! that smuggled HTML past `textContent`, an extension) cannot run script or
//! add style.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::answers::fleet_feedback;
use crate::feedback::{FeedbackError, FeedbackStore, Rating};

const PAGE: &str = include_str!("kiosk.html");

/// Only the page's own inline script and style run, and it may talk only to
/// this server: no fonts, images, frames or scripts from anywhere.
static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        block_hashes(PAGE, "script"),
        block_hashes(PAGE, "style"),
    )
});

/// The CSP source list of every inline `<tag>` block in `page`:
/// `'sha256-<base64>'` of the exact text between the tags, as browsers hash
/// it; `'none'` when there is no such block.
fn block_hashes(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        sources.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    if sources.is_empty() {
        "'none'".into()
    } else {
        sources.join(" ")
    }
}

/// Longest answer id accepted; the answer API makes short ones.
const MAX_ANSWER_ID_CHARS: usize = 128;
/// Longest free-text comment accepted with a rating.
const MAX_COMMENT_CHARS: usize = 2000;

pub(super) async fn page(State(app): State<AppState>) -> Response {
    app.metrics.request("kiosk_page");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.as_str(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// A validated `POST /v1/feedback` body.
#[derive(Debug, PartialEq)]
struct ValidFeedback {
    answer_id: String,
    rating: Rating,
    comment: Option<String>,
}

impl ValidFeedback {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body = json_object(body)?;
        let answer_id = answer_id(&body)?.ok_or_else(|| {
            ApiError::invalid(
                "answer_id",
                "answer_id is required: the id of the rated answer",
            )
        })?;
        let rating = match body.get("rating").and_then(Value::as_str) {
            Some("up") => Rating::Up,
            Some("down") => Rating::Down,
            _ => {
                return Err(ApiError::invalid(
                    "rating",
                    "rating must be \"up\" or \"down\"",
                ))
            }
        };
        let comment = match body.get("comment") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if c.chars().count() > MAX_COMMENT_CHARS => {
                return Err(ApiError::invalid(
                    "comment",
                    format!("comment is longer than {MAX_COMMENT_CHARS} characters"),
                ))
            }
            Some(Value::String(c)) => Some(c.trim().to_string()).filter(|c| !c.is_empty()),
            Some(_) => return Err(ApiError::invalid("comment", "comment must be a string")),
        };
        Ok(Self {
            answer_id,
            rating,
            comment,
        })
    }
}

/// The body as a JSON object; an empty body is an empty object.
pub(super) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A body that could not be read: over `max_body_bytes`, or cut off.
pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request_too_large"
    } else {
        "invalid_body"
    };
    ApiError::new(status, kind, rejection.body_text())
}

/// `answer_id` when present and non-empty.
fn answer_id(body: &serde_json::Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("answer_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if id.is_empty() => Ok(None),
        Some(Value::String(id)) if id.chars().count() > MAX_ANSWER_ID_CHARS => Err(
            ApiError::invalid("answer_id", "answer_id is too long to be an answer id"),
        ),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(_) => Err(ApiError::invalid("answer_id", "answer_id must be a string")),
    }
}

fn store(app: &AppState) -> Result<&FeedbackStore, ApiError> {
    app.feedback().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "feedback_disabled",
            "feedback is not enabled on this device: start it with a feedback database \
             ([answer] feedback_db)",
        )
    })
}

impl From<FeedbackError> for ApiError {
    fn from(e: FeedbackError) -> Self {
        match e {
            FeedbackError::UnknownAnswer { .. } => ApiError {
                param: Some("answer_id".into()),
                ..ApiError::new(StatusCode::NOT_FOUND, "unknown_answer", e.to_string())
            },
            FeedbackError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "feedback_unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::error!(error = %e, "feedback database failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "feedback_store",
                    "the feedback could not be stored",
                )
            }
        }
    }
}

/// `POST /v1/feedback`: `{"answer_id", "rating": "up"|"down", "comment"?}`.
pub(super) async fn feedback(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.metrics.request("feedback");
    let store = store(&app).map_err(|e| app.fail(e))?;
    let body = body.map_err(|e| app.fail(body_error(e)))?;
    let valid = ValidFeedback::parse(&body).map_err(|e| app.fail(e))?;
    let row = store
        .record_feedback(&valid.answer_id, valid.rating, valid.comment)
        .await
        .map_err(|e| app.fail(e.into()))?;
    to_fleet(&app, store, &valid.answer_id, valid.rating).await;
    Ok(Json(json!({"stored": true, "id": row.id})).into_response())
}

/// Hands a stored rating of `answer_id` to the fleet's sink, when there is
/// one and the rating has a protocol form ([`fleet_feedback`]). Never
/// fails the request: the rating is already stored on the device.
async fn to_fleet(app: &AppState, store: &FeedbackStore, answer_id: &str, rating: Rating) {
    let Some(sink) = &app.answers else { return };
    let answer = match store.rated_answer(answer_id).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "the rated answer could not be read for the fleet");
            return;
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Some((event, feedback)) =
        fleet_feedback(rating, &answer, app.config.share_feedback_text, now_ms)
    {
        sink.rated(event, feedback).await;
    }
}

/// `POST /v1/handover`: `{"answer_id"?}`. The customer always gets the
/// hand-over message, even when the device keeps no feedback database or the
/// write fails (`"stored": false`): asking for a person must never end in an
/// error screen.
pub(super) async fn handover(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.metrics.request("handover");
    let body = body.map_err(|e| app.fail(body_error(e)))?;
    let body = json_object(&body).map_err(|e| app.fail(e))?;
    let answer_id = answer_id(&body).map_err(|e| app.fail(e))?;
    let stored = match app.feedback() {
        None => false,
        Some(store) => match store.record_handover(answer_id.clone()).await {
            Ok(_) => {
                // After an answer, the fleet learns it did not resolve the
                // question; before any, there is no version to charge.
                if let Some(id) = &answer_id {
                    to_fleet(&app, store, id, Rating::Handover).await;
                }
                true
            }
            Err(e) => {
                app.fail(ApiError::from(e));
                false
            }
        },
    };
    Ok(Json(json!({
        "message": app.config.handover_message,
        "stored": stored,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_bodies_are_validated_field_by_field() {
        let ok = ValidFeedback::parse(br#"{"answer_id": "ans-1", "rating": "up"}"#).unwrap();
        assert_eq!(
            ok,
            ValidFeedback {
                answer_id: "ans-1".into(),
                rating: Rating::Up,
                comment: None
            }
        );
        let with_comment =
            ValidFeedback::parse(br#"{"answer_id": "a", "rating": "down", "comment": " meh "}"#)
                .unwrap();
        assert_eq!(with_comment.comment.as_deref(), Some("meh"));

        for (body, param) in [
            (
                &br#"{"answer_id": "a", "rating": "handover"}"#[..],
                "rating",
            ),
            (br#"{"answer_id": "a", "rating": 1}"#, "rating"),
            (br#"{"answer_id": "a"}"#, "rating"),
            (br#"{"rating": "up"}"#, "answer_id"),
            (br#"{"answer_id": 7, "rating": "up"}"#, "answer_id"),
            (
                br#"{"answer_id": "a", "rating": "up", "comment": 3}"#,
                "comment",
            ),
        ] {
            let e = ValidFeedback::parse(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
        }
        let long = json!({"answer_id": "a", "rating": "up", "comment": "x".repeat(2001)});
        let e = ValidFeedback::parse(long.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("comment"));
        let e = ValidFeedback::parse(b"{nope").unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
    }

    #[test]
    fn an_unknown_answer_is_a_404_naming_the_answer_id() {
        let e = ApiError::from(FeedbackError::UnknownAnswer { id: "x".into() });
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.kind, "unknown_answer");
        assert_eq!(e.body()["error"]["param"], "answer_id");
    }

    #[test]
    fn the_policy_allows_the_page_blocks_by_hash_and_nothing_inline_else() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        // One script and one style block, each allowed by its own hash.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        let script = csp
            .split("; ")
            .find(|d| d.starts_with("script-src "))
            .unwrap();
        let style = csp
            .split("; ")
            .find(|d| d.starts_with("style-src "))
            .unwrap();
        assert!(script.starts_with("script-src 'sha256-"), "{script}");
        assert!(style.starts_with("style-src 'sha256-"), "{style}");
        assert_eq!(script.matches("'sha256-").count(), 1);
        // No attribute a browser would need 'unsafe-inline' for.
        for attribute in [
            " style=\"",
            " onclick=",
            " onload=",
            " onsubmit=",
            "javascript:",
        ] {
            assert!(!PAGE.contains(attribute), "the page uses {attribute:?}");
        }
    }

    #[test]
    fn block_hashes_match_the_browser_definition() {
        // sha256("alert(1)"), base64: the example of the CSP specification's kind.
        assert_eq!(
            block_hashes("<p><script>alert(1)</script>", "script"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(block_hashes("<p>no script</p>", "script"), "'none'");
        assert_eq!(
            block_hashes("<style>a</style><style>b</style>", "style")
                .matches("'sha256-")
                .count(),
            2
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in [
            "http://",
            "https://",
            "//fonts",
            "<link rel=\"stylesheet\"",
            "src=",
        ] {
            assert!(!PAGE.contains(needle), "the kiosk page contains {needle:?}");
        }
        for id in ["question", "ask", "handover", "transcript"] {
            assert!(
                PAGE.contains(&format!("id=\"{id}\"")),
                "the kiosk page lacks #{id}"
            );
        }
    }
}
