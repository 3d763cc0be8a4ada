//! Rated answers and their corrections, for curating the fine-tuning
//! dataset: `GET /admin/feedback` lists what customers rated (with each
//! row's id and correction), `POST /admin/feedback/corrections` writes the
//! right answer to one of them.
//!
//! A correction is an operator's own text and never went through a
//! device's redactor, so one in which the redactor finds personal data is
//! refused here (the dataset builder checks again).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_protocol::{find_pii, Rating};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{check_admin, json_body};
use super::{ApiError, App};
use crate::store::{FeedbackKey, MAX_CORRECTION_CHARS};

/// Most feedback rows one request lists.
const MAX_FEEDBACK_LIMIT: u32 = 1000;

pub(super) async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&app, &headers)?;
    let rating = match query.get("rating").map(String::as_str) {
        None => None,
        Some("thumbs_up") => Some(Rating::ThumbsUp),
        Some("thumbs_down") => Some(Rating::ThumbsDown),
        Some("handover") => Some(Rating::Handover),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "rating {other:?} is not one of thumbs_up, thumbs_down, handover"
            )))
        }
    };
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_FEEDBACK_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be 1 to {MAX_FEEDBACK_LIMIT}"))
            })?,
    };
    let rows = app
        .ctx
        .store
        .call(move |s| s.feedback(rating, limit))
        .await?;
    Ok(Json(json!({ "feedback": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectionBody {
    /// `device/epoch/seq`, as `GET /admin/feedback` lists it.
    feedback: String,
    /// The answer the device should have given.
    answer: String,
}

/// The correction's text, trimmed, or why it is refused.
fn valid_correction(text: &str) -> Result<&str, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest(
            "`answer` is empty; write the answer the device should have given".into(),
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_CORRECTION_CHARS {
        return Err(ApiError::BadRequest(format!(
            "`answer` has {chars} characters, more than the {MAX_CORRECTION_CHARS} allowed; shorten it"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(ApiError::BadRequest(
            "`answer` holds control characters; send plain text (line breaks and tabs are fine)"
                .into(),
        ));
    }
    let found = find_pii(text);
    if !found.is_empty() {
        let mut kinds: Vec<&str> = found.iter().map(|f| f.kind.as_str()).collect();
        kinds.dedup();
        return Err(ApiError::BadRequest(format!(
            "`answer` contains personal data ({}); training data must not, so write it without",
            kinds.join(", ")
        )));
    }
    Ok(text)
}

pub(super) async fn correct(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_admin(&app, &headers)?;
    let body: CorrectionBody = json_body(&body)?;
    let key: FeedbackKey = body
        .feedback
        .parse()
        .map_err(|e: crate::store::FeedbackKeyError| ApiError::BadRequest(e.to_string()))?;
    let answer = valid_correction(&body.answer)?.to_owned();
    let now = crate::now_unix_ms();
    let k = key.clone();
    let (existed, row) = app
        .ctx
        .store
        .call(move |s| {
            let existed = s.correction(&k)?.is_some();
            s.correct_feedback(&k, &answer, now)
                .map(|row| (existed, row))
        })
        .await?;
    let row = row.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no feedback {key}; list the ids with GET /admin/feedback"
        ))
    })?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({ "correction": row }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::valid_correction;

    #[test]
    fn a_correction_with_personal_data_or_nothing_in_it_is_refused_with_the_reason() {
        assert_eq!(
            valid_correction("  Descale every 4 weeks.\n").expect("fine"),
            "Descale every 4 weeks."
        );
        for (text, says) in [
            ("   ", "is empty"),
            ("Mail bob@example.com for help.", "(email)"),
            ("Call +44 20 7946 0958.", "(phone)"),
            ("bell\u{7}", "control characters"),
        ] {
            let e = valid_correction(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
