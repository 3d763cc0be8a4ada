//! Curating feedback into training data: the operator's corrections (the
//! right answer to a rated question) and the query that lists what the
//! fine-tuning dataset is built from ([`Store::training_candidates`]).
//!
//! A correction is keyed by the feedback it corrects ([`FeedbackKey`]) and
//! copies that row's question and answer: raw feedback is folded away by
//! retention after its age limit, an operator's correction is curated data
//! and stays. Writing a second correction for the same feedback replaces
//! the first.

use std::fmt;
use std::str::FromStr;

use outpost_protocol::{DeviceId, FeedbackId, OutboxEpoch, Rating, Seq};
use rusqlite::{params, OptionalExtension};
use serde::{Serialize, Serializer};

use super::ingest::stored_rating;
use super::{clamp_i64, corrupt, sql, Store, StoreError};

pub(super) const CURATION_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS feedback_corrections (
    device        TEXT NOT NULL,
    epoch         INTEGER NOT NULL,    -- the corrected feedback's id (as in `feedback`)
    feedback_seq  INTEGER NOT NULL,
    answer_seq    INTEGER NOT NULL,    -- the rated answer, to supersede its other ratings
    question      TEXT NOT NULL,       -- copied: retention may delete the feedback row
    answer        TEXT NOT NULL,       -- what the device answered
    correction    TEXT NOT NULL,       -- what it should have answered
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (device, epoch, feedback_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feedback_corrections_by_answer
    ON feedback_corrections (device, epoch, answer_seq);
"#;

/// Which feedback row: its device and feedback id. Written
/// `device/epoch/seq` (the epoch in decimal) in the admin API, so that a
/// 64-bit epoch survives JavaScript's numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedbackKey {
    /// The device that sent it.
    pub device: DeviceId,
    /// Its id on that device.
    pub id: FeedbackId,
}

impl fmt::Display for FeedbackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.device, self.id.epoch.0, self.id.seq.0)
    }
}

impl Serialize for FeedbackKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a feedback key did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feedback id {given:?} is not DEVICE/EPOCH/SEQ ({why}); copy it from GET /admin/feedback")]
pub struct FeedbackKeyError {
    given: String,
    why: String,
}

impl FromStr for FeedbackKey {
    type Err = FeedbackKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why: String| FeedbackKeyError {
            given: s.to_owned(),
            why,
        };
        let mut parts = s.split('/');
        let (Some(device), Some(epoch), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("three parts separated by `/`".into()));
        };
        let device = DeviceId::parse(device).map_err(|e| fail(e.to_string()))?;
        let epoch = epoch
            .parse::<u64>()
            .map_err(|e| fail(format!("epoch: {e}")))?;
        let seq = seq.parse::<u64>().map_err(|e| fail(format!("seq: {e}")))?;
        Ok(FeedbackKey {
            device,
            id: FeedbackId {
                epoch: OutboxEpoch(epoch),
                seq: Seq(seq),
            },
        })
    }
}

/// One feedback row as the admin API lists it, with its correction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRow {
    /// `device/epoch/seq`: what a correction names.
    pub id: FeedbackKey,
    /// `ThumbsUp`, `ThumbsDown` or `Handover`.
    pub rating: String,
    /// The question (redacted on the device).
    pub question: String,
    /// What the device answered (redacted on the device).
    pub answer: String,
    /// The operator's correct answer, if one was written.
    pub correction: Option<String>,
    /// Device clock (unix ms).
    pub at_unix_ms: u64,
}

/// A correction as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorrectionRow {
    /// The corrected feedback.
    pub feedback: FeedbackKey,
    /// Its question.
    pub question: String,
    /// What the device had answered.
    pub answer: String,
    /// The correct answer.
    pub correction: String,
    /// First written (unix ms, hub clock).
    pub created_ms: u64,
    /// Last replaced (unix ms, hub clock).
    pub updated_ms: u64,
}

/// Where a training candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateSource {
    /// A customer rated the device's answer thumbs-up.
    ThumbsUp,
    /// An operator wrote the correct answer.
    Correction,
}

/// A question and the answer to train on, as stored. The text is the raw
/// bytes of the row: a hand-edited or damaged database may hold text that
/// is not UTF-8, which the dataset builder counts and skips rather than
/// this query failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingCandidate {
    /// The feedback row it comes from.
    pub feedback: FeedbackKey,
    /// Thumbs-up or correction.
    pub source: CandidateSource,
    /// The question.
    pub question: Vec<u8>,
    /// The answer to train on: the device's (thumbs-up) or the operator's
    /// (correction).
    pub answer: Vec<u8>,
}

/// Longest correction accepted, in characters (a kiosk answer is one to
/// three sentences; this leaves room for a short procedure).
pub const MAX_CORRECTION_CHARS: usize = 4000;

impl Store {
    pub(super) fn init_curation(conn: &rusqlite::Connection) -> Result<(), StoreError> {
        conn.execute_batch(CURATION_SCHEMA)
            .map_err(sql("curation schema"))
    }

    /// Stores `correction` as the right answer to the feedback `key`
    /// (replacing an earlier correction of it); `None` when there is no
    /// such feedback. The caller validates the text.
    pub fn correct_feedback(
        &mut self,
        key: &FeedbackKey,
        correction: &str,
        now_ms: u64,
    ) -> Result<Option<CorrectionRow>, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let (epoch, seq) = key_i64(key);
        let changed = tx
            .execute(
                "INSERT INTO feedback_corrections
                    (device, epoch, feedback_seq, answer_seq, question, answer, correction,
                     created_ms, updated_ms)
                 SELECT device, epoch, feedback_seq, answer_seq, question, answer, ?4, ?5, ?5
                   FROM feedback WHERE device = ?1 AND epoch = ?2 AND feedback_seq = ?3
                 ON CONFLICT (device, epoch, feedback_seq) DO UPDATE SET
                    correction = excluded.correction, updated_ms = excluded.updated_ms",
                params![
                    key.device.as_str(),
                    epoch,
                    seq,
                    correction,
                    clamp_i64(now_ms)
                ],
            )
            .map_err(sql("write correction"))?;
        if changed == 0 {
            // No feedback row: it may still have a correction written
            // before retention folded the row away.
            let updated = tx
                .execute(
                    "UPDATE feedback_corrections SET correction = ?4, updated_ms = ?5
                     WHERE device = ?1 AND epoch = ?2 AND feedback_seq = ?3",
                    params![
                        key.device.as_str(),
                        epoch,
                        seq,
                        correction,
                        clamp_i64(now_ms)
                    ],
                )
                .map_err(sql("update correction"))?;
            if updated == 0 {
                return Ok(None);
            }
        }
        let row = correction_row(&tx, key)?;
        tx.commit().map_err(sql("commit correction"))?;
        Ok(row)
    }

    /// The correction of feedback `key`, if one was written.
    pub fn correction(&self, key: &FeedbackKey) -> Result<Option<CorrectionRow>, StoreError> {
        correction_row(&self.conn, key)
    }

    /// The newest `limit` feedback rows, newest first (hub clock), with
    /// their corrections; only those rated `rating` when given.
    pub fn feedback(
        &self,
        rating: Option<Rating>,
        limit: u32,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT f.device, f.epoch, f.feedback_seq, f.rating, f.question, f.answer,
                        c.correction, f.at_ms
                   FROM feedback f
                   LEFT JOIN feedback_corrections c ON c.device = f.device
                        AND c.epoch = f.epoch AND c.feedback_seq = f.feedback_seq
                  WHERE ?1 IS NULL OR f.rating = ?1
                  ORDER BY f.received_ms DESC, f.device, f.epoch, f.feedback_seq DESC
                  LIMIT ?2",
            )
            .map_err(sql("prepare feedback"))?;
        let rating = rating.map(|r| format!("{r:?}"));
        let rows = stmt
            .query_map(params![rating, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(sql("query feedback"))?;
        let mut out = Vec::new();
        for row in rows {
            let (device, epoch, seq, rating, question, answer, correction, at) =
                row.map_err(sql("read feedback"))?;
            out.push(FeedbackRow {
                id: key_from(&device, epoch, seq)?,
                rating,
                question,
                answer,
                correction,
                at_unix_ms: at.max(0).unsigned_abs(),
            });
        }
        Ok(out)
    }

    /// What the fine-tuning dataset is built from, in a fixed order
    /// (corrections, then thumbs-up, each by feedback id):
    /// - every correction, with its question and the corrected answer;
    /// - every thumbs-up answer whose rating is the last one given to that
    ///   answer (a customer who changed their mind to thumbs-down takes it
    ///   back) and which no operator corrected.
    pub fn training_candidates(&self) -> Result<Vec<TrainingCandidate>, StoreError> {
        let mut out = Vec::new();
        let mut corrections = self
            .conn
            .prepare_cached(
                "SELECT device, epoch, feedback_seq, question, correction
                   FROM feedback_corrections ORDER BY device, epoch, feedback_seq",
            )
            .map_err(sql("prepare corrections"))?;
        let rows = corrections
            .query_map([], |r| candidate(r, CandidateSource::Correction))
            .map_err(sql("query corrections"))?;
        for row in rows {
            out.push(row.map_err(sql("read correction"))??);
        }
        let mut thumbs = self
            .conn
            .prepare_cached(
                "SELECT f.device, f.epoch, f.feedback_seq, f.question, f.answer
                   FROM feedback f
                  WHERE f.rating = ?1
                    AND NOT EXISTS (SELECT 1 FROM feedback later
                         WHERE later.device = f.device AND later.epoch = f.epoch
                           AND later.answer_seq = f.answer_seq
                           AND later.feedback_seq > f.feedback_seq)
                    AND NOT EXISTS (SELECT 1 FROM feedback_corrections c
                         WHERE c.device = f.device AND c.epoch = f.epoch
                           AND c.answer_seq = f.answer_seq)
                  ORDER BY f.device, f.epoch, f.feedback_seq",
            )
            .map_err(sql("prepare thumbs-up"))?;
        let up = format!("{:?}", Rating::ThumbsUp);
        debug_assert_eq!(stored_rating(&up), Some(Rating::ThumbsUp));
        let rows = thumbs
            .query_map([up], |r| candidate(r, CandidateSource::ThumbsUp))
            .map_err(sql("query thumbs-up"))?;
        for row in rows {
            out.push(row.map_err(sql("read thumbs-up"))??);
        }
        Ok(out)
    }
}

fn key_i64(key: &FeedbackKey) -> (i64, i64) {
    (
        i64::from_ne_bytes(key.id.epoch.0.to_ne_bytes()),
        clamp_i64(key.id.seq.0),
    )
}

fn key_from(device: &str, epoch: i64, seq: i64) -> Result<FeedbackKey, StoreError> {
    Ok(FeedbackKey {
        device: DeviceId::parse(device).map_err(|e| corrupt("feedback")(e.to_string()))?,
        id: FeedbackId {
            epoch: OutboxEpoch(u64::from_ne_bytes(epoch.to_ne_bytes())),
            seq: Seq(seq.max(0).unsigned_abs()),
        },
    })
}

/// Text as stored, UTF-8 or not (see [`TrainingCandidate`]).
fn bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
    })
}

fn candidate(
    r: &rusqlite::Row<'_>,
    source: CandidateSource,
) -> rusqlite::Result<Result<TrainingCandidate, StoreError>> {
    let device: String = r.get(0)?;
    let key = match key_from(&device, r.get(1)?, r.get(2)?) {
        Ok(key) => key,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(TrainingCandidate {
        feedback: key,
        source,
        question: bytes(r, 3)?,
        answer: bytes(r, 4)?,
    }))
}

fn correction_row(
    conn: &rusqlite::Connection,
    key: &FeedbackKey,
) -> Result<Option<CorrectionRow>, StoreError> {
    let (epoch, seq) = key_i64(key);
    conn.query_row(
        "SELECT question, answer, correction, created_ms, updated_ms
           FROM feedback_corrections WHERE device = ?1 AND epoch = ?2 AND feedback_seq = ?3",
        params![key.device.as_str(), epoch, seq],
        |r| {
            Ok(CorrectionRow {
                feedback: key.clone(),
                question: r.get(0)?,
                answer: r.get(1)?,
                correction: r.get(2)?,
                created_ms: r.get::<_, i64>(3)?.max(0).unsigned_abs(),
                updated_ms: r.get::<_, i64>(4)?.max(0).unsigned_abs(),
            })
        },
    )
    .optional()
    .map_err(sql("read correction"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{redact, ActiveVersions, Feedback, FleetId, ProtocolVersion};

    fn feedback(seq: u64, answer_seq: u64, rating: Rating, q: &str, a: &str) -> Feedback {
        Feedback {
            id: FeedbackId {
                epoch: OutboxEpoch(u64::MAX - 1),
                seq: Seq(seq),
            },
            answer_seq: Seq(answer_seq),
            rating,
            question: redact(q).text,
            answer: redact(a).text,
            versions: ActiveVersions::default(),
            at_unix_ms: seq,
        }
    }

    fn store_with(rows: &[Feedback]) -> (Store, DeviceId) {
        let mut store = Store::open_in_memory().expect("store");
        let fleet = FleetId::parse("acme").expect("fleet");
        let device = DeviceId::parse("kiosk-1").expect("device");
        for f in rows {
            store
                .record_feedback(&fleet, &device, f, ProtocolVersion::CURRENT, f.id.seq.0)
                .expect("stored");
        }
        (store, device)
    }

    fn key(device: &DeviceId, seq: u64) -> FeedbackKey {
        FeedbackKey {
            device: device.clone(),
            id: FeedbackId {
                epoch: OutboxEpoch(u64::MAX - 1),
                seq: Seq(seq),
            },
        }
    }

    #[test]
    fn a_feedback_key_reads_back_what_it_writes_even_for_a_64_bit_epoch() {
        let device = DeviceId::parse("kiosk-1").expect("device");
        let k = key(&device, 7);
        let text = k.to_string();
        assert_eq!(text, format!("kiosk-1/{}/7", u64::MAX - 1));
        assert_eq!(text.parse::<FeedbackKey>().expect("parses"), k);
        for bad in ["kiosk-1/1", "kiosk-1/x/1", "kiosk 1/1/1", "a/1/2/3"] {
            let e = bad.parse::<FeedbackKey>().expect_err(bad);
            assert!(e.to_string().contains("GET /admin/feedback"), "{e}");
        }
    }

    #[test]
    fn candidates_are_corrections_and_uncorrected_thumbs_up_that_still_stand() {
        let (mut store, device) = store_with(&[
            feedback(
                1,
                10,
                Rating::ThumbsUp,
                "How often to descale?",
                "Every 4 weeks.",
            ),
            feedback(2, 11, Rating::ThumbsDown, "Water tank size?", "2 litres."),
            // Rated up, then down: taken back.
            feedback(3, 12, Rating::ThumbsUp, "Grind size?", "Fine."),
            feedback(4, 12, Rating::ThumbsDown, "Grind size?", "Fine."),
            // Rated up, but an operator corrected it: the correction wins.
            feedback(5, 13, Rating::ThumbsUp, "Warranty?", "One year."),
        ]);
        assert!(store
            .correct_feedback(&key(&device, 2), "1.8 litres.", 100)
            .expect("store")
            .is_some());
        assert!(store
            .correct_feedback(&key(&device, 5), "Two years.", 101)
            .expect("store")
            .is_some());
        let got: Vec<(u64, CandidateSource, String)> = store
            .training_candidates()
            .expect("candidates")
            .into_iter()
            .map(|c| {
                (
                    c.feedback.id.seq.0,
                    c.source,
                    String::from_utf8(c.answer).expect("utf-8"),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, CandidateSource::Correction, "1.8 litres.".to_owned()),
                (5, CandidateSource::Correction, "Two years.".to_owned()),
                (1, CandidateSource::ThumbsUp, "Every 4 weeks.".to_owned()),
            ]
        );
    }

    #[test]
    fn a_correction_of_missing_feedback_is_refused_and_a_second_one_replaces_the_first() {
        let (mut store, device) = store_with(&[feedback(1, 1, Rating::ThumbsDown, "Q?", "A.")]);
        assert_eq!(
            store
                .correct_feedback(&key(&device, 9), "x", 1)
                .expect("store"),
            None
        );
        store
            .correct_feedback(&key(&device, 1), "first", 5)
            .expect("store");
        let row = store
            .correct_feedback(&key(&device, 1), "second", 6)
            .expect("store")
            .expect("row");
        assert_eq!(
            (row.correction.as_str(), row.created_ms, row.updated_ms),
            ("second", 5, 6)
        );
        assert_eq!(row.question, "Q?");
        let listed = store.feedback(Some(Rating::ThumbsDown), 10).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].correction.as_deref(), Some("second"));
        assert!(store
            .feedback(Some(Rating::ThumbsUp), 10)
            .expect("list")
            .is_empty());
    }

    #[test]
    fn a_correction_outlives_the_feedback_row_it_corrects() {
        let (mut store, device) = store_with(&[feedback(1, 1, Rating::ThumbsDown, "Q?", "A.")]);
        store
            .correct_feedback(&key(&device, 1), "right", 5)
            .expect("store");
        store
            .conn
            .execute("DELETE FROM feedback", [])
            .expect("retention deletes raw feedback");
        let candidates = store.training_candidates().expect("candidates");
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].question, b"Q?");
        assert!(store
            .correct_feedback(&key(&device, 1), "righter", 6)
            .expect("store")
            .is_some());
    }

    #[test]
    fn text_that_is_not_utf8_is_handed_over_as_bytes_not_a_failure() {
        let (store, _) = store_with(&[feedback(1, 1, Rating::ThumbsUp, "Q?", "A.")]);
        store
            .conn
            .execute("UPDATE feedback SET answer = CAST(X'41FF42' AS TEXT)", [])
            .expect("corrupt");
        let candidates = store.training_candidates().expect("candidates");
        assert_eq!(candidates[0].answer, vec![0x41, 0xff, 0x42]);
    }
}
