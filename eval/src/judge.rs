//! A model as judge: each answer scored 1–5 on the seed's rubric
//! (accuracy, clarity, professionalism, helpfulness) and on groundedness in
//! the sources it cites, as JSON the caller constrains with [`schema`].
//!
//! The harness asks a [`Judge`] (the binary implements it over a local GGUF
//! through llama.cpp's grammar sampler) and keeps the scores beside the
//! reference-based ones. Because a small judge can be no judge at all, the
//! run can also check the judge itself ([`RunOptions::judge_check`]): for
//! each item with a reference it scores the reference answer and a
//! deliberately wrong one (another item's reference) against the same
//! sources; `judge.discrimination` is the share of items where the wrong
//! answer scored lower (accuracy + groundedness). Near 0.5 or below, the
//! judge's scores say nothing, and the report says so in numbers.
//!
//! [`RunOptions::judge_check`]: crate::RunOptions::judge_check

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The criteria, in the order the judge writes them.
pub const CRITERIA: [&str; 5] = [
    "accuracy",
    "clarity",
    "professionalism",
    "helpfulness",
    "groundedness",
];

/// One answer's scores, each 1–5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeScores {
    pub accuracy: u8,
    pub clarity: u8,
    pub professionalism: u8,
    pub helpfulness: u8,
    pub groundedness: u8,
}

/// Why a judge's reply is not scores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    #[error("the judge's reply is not the scores object: {0}")]
    NotScores(String),
    #[error("the judge gave {criterion} {value}; scores are 1 to 5")]
    OutOfRange { criterion: &'static str, value: u8 },
}

impl JudgeScores {
    /// Reads the judge's reply: exactly the five criteria, each 1–5.
    pub fn parse(reply: &str) -> Result<Self, JudgeError> {
        let scores: JudgeScores =
            serde_json::from_str(reply.trim()).map_err(|e| JudgeError::NotScores(e.to_string()))?;
        for criterion in CRITERIA {
            let value = scores.get(criterion);
            if !(1..=5).contains(&value) {
                return Err(JudgeError::OutOfRange { criterion, value });
            }
        }
        Ok(scores)
    }

    /// The score of `criterion` (one of [`CRITERIA`]; 0 for another name).
    pub fn get(&self, criterion: &str) -> u8 {
        match criterion {
            "accuracy" => self.accuracy,
            "clarity" => self.clarity,
            "professionalism" => self.professionalism,
            "helpfulness" => self.helpfulness,
            "groundedness" => self.groundedness,
            _ => 0,
        }
    }

    /// Accuracy plus groundedness (2–10): what a wrong answer must lose.
    pub fn correctness(&self) -> u8 {
        self.accuracy + self.groundedness
    }
}

/// The JSON schema of the reply, for the judge's grammar.
pub fn schema() -> Value {
    let score = json!({"type": "integer", "enum": [1, 2, 3, 4, 5]});
    let properties: serde_json::Map<String, Value> = CRITERIA
        .iter()
        .map(|c| ((*c).to_owned(), score.clone()))
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": CRITERIA,
        "additionalProperties": false,
    })
}

/// One chat message of the judge's prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeMessage {
    pub role: &'static str,
    pub content: String,
}

/// The rubric prompt for `answer` to `question`, given the `sources` the
/// answer was written from.
pub fn prompt(question: &str, answer: &str, sources: &[String]) -> Vec<JudgeMessage> {
    let mut listed = String::new();
    for (i, s) in sources.iter().enumerate() {
        listed.push_str(&format!(
            "[{}] {}\n",
            i + 1,
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    if listed.is_empty() {
        listed.push_str("(none)\n");
    }
    vec![
        JudgeMessage {
            role: "system",
            content: "You grade a customer-support answer. Score each criterion from 1 (bad) to 5 (excellent):\n\
                      accuracy: the answer is correct according to the sources;\n\
                      clarity: it is easy to understand;\n\
                      professionalism: its tone suits a support desk;\n\
                      helpfulness: it answers what was asked;\n\
                      groundedness: every claim in it is in the sources.\n\
                      A wrong or invented answer gets 1 for accuracy and groundedness.\n\
                      Reply with the JSON object of scores only."
                .to_owned(),
        },
        JudgeMessage {
            role: "user",
            content: format!("Sources:\n{listed}\nQuestion: {question}\n\nAnswer: {answer}"),
        },
    ]
}

/// Something that scores answers: a local model in the binary, a fake in
/// tests.
pub trait Judge {
    /// Why an answer could not be judged (the run stops).
    type Error: std::error::Error;

    /// Scores `answer` to `question` against `sources`.
    fn judge(
        &mut self,
        question: &str,
        answer: &str,
        sources: &[String],
    ) -> Result<JudgeScores, Self::Error>;
}

/// The judge's scores of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemJudgement {
    /// Of the pipeline's answer (answered items).
    pub answer: Option<JudgeScores>,
    /// Of the item's reference answer (with the judge check).
    pub reference: Option<JudgeScores>,
    /// Of another item's reference, given as this item's answer (with the
    /// judge check).
    pub wrong: Option<JudgeScores>,
}

/// Pearson's correlation of the pairs; `None` with fewer than 3 pairs or
/// when either side does not vary (a judge that gives one score to
/// everything agrees with nothing).
pub fn pearson(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let n = pairs.len() as f64;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    (sxx > 1e-12 && syy > 1e-12).then(|| sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_only_as_five_scores_in_range() {
        let ok = JudgeScores::parse(
            r#" {"accuracy": 5, "clarity": 4, "professionalism": 5, "helpfulness": 3, "groundedness": 2} "#,
        )
        .expect("valid");
        assert_eq!((ok.correctness(), ok.get("clarity")), (7, 4));
        for bad in [
            r#"{"accuracy": 5}"#,
            r#"{"accuracy": 6, "clarity": 4, "professionalism": 5, "helpfulness": 3, "groundedness": 2}"#,
            r#"{"accuracy": 0, "clarity": 4, "professionalism": 5, "helpfulness": 3, "groundedness": 2}"#,
            r#"{"accuracy": 5, "clarity": 4, "professionalism": 5, "helpfulness": 3, "groundedness": 2, "extra": 1}"#,
            "Accuracy: 5",
        ] {
            assert!(JudgeScores::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schema_requires_every_criterion_and_the_prompt_lists_the_sources() {
        let s = schema();
        assert_eq!(s["required"].as_array().map(Vec::len), Some(5));
        assert_eq!(
            s["properties"]["groundedness"]["enum"],
            json!([1, 2, 3, 4, 5])
        );
        let p = prompt("Q?", "A.", &["first  source\ntext".into(), "second".into()]);
        assert!(
            p[1].content.contains("[1] first source text\n[2] second"),
            "{}",
            p[1].content
        );
        assert!(prompt("Q?", "A.", &[])[1].content.contains("(none)"));
    }

    #[test]
    fn correlation_is_undefined_without_variation() {
        let r = pearson(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.5)]).expect("defined");
        assert!(r > 0.99, "{r}");
        assert_eq!(pearson(&[(1.0, 0.2), (1.0, 0.9), (1.0, 0.5)]), None);
        assert_eq!(pearson(&[(1.0, 0.2), (2.0, 0.9)]), None);
    }
}
