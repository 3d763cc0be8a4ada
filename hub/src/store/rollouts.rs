//! Staged rollouts in the store: the persisted controller of each rollout,
//! its append-only audit log, and the labels (`production`, `canary`) that
//! name what each cohort runs.
//!
//! One rule keeps a hub crash harmless: a controller step — its new state,
//! its audit entries, the desired states it assigns and the labels it
//! moves — is one transaction ([`Store::rollout_step`]). A kill -9 before
//! the commit loses the step and the restarted hub takes it again from the
//! same persisted state; after the commit every desired state is stored and
//! is published on the hub's next connect even if the publish itself was
//! lost. No device can be sent a stage the store does not show.
//!
//! The audit table refuses `UPDATE` and `DELETE` with triggers, so even a
//! bug elsewhere in the hub cannot rewrite why a rollout did what it did.

use outpost_protocol::{
    ActiveVersions, ArtifactDigest, ArtifactKind, ArtifactRef, DesiredState, DeviceId, Rating,
    ReportedState, RolloutId, TelemetryEvent, TelemetryPayload,
};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{audit_assignment, clamp_i64, corrupt, sql, write_desired, Store, StoreError};
use crate::assign::{next_desired, Assignment, Change};
use crate::rollout::controller::{AuditEntry, Window};
use crate::rollout::stats::P95;

pub(super) const ROLLOUT_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rollouts (
    id              TEXT PRIMARY KEY,
    phase           TEXT NOT NULL,
    controller_json TEXT NOT NULL,   -- the serialized rollout::Controller
    finished        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout    TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    from_phase TEXT NOT NULL,
    to_phase   TEXT NOT NULL,
    entry_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_audit_by_rollout ON rollout_audit (rollout, id);
CREATE TRIGGER IF NOT EXISTS rollout_audit_is_append_only_update
    BEFORE UPDATE ON rollout_audit
    BEGIN SELECT RAISE(ABORT, 'the rollout audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS rollout_audit_is_append_only_delete
    BEFORE DELETE ON rollout_audit
    BEGIN SELECT RAISE(ABORT, 'the rollout audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS labels (
    label         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    artifact_json TEXT NOT NULL,
    rollout       TEXT,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (label, kind)
) WITHOUT ROWID;
"#;

/// A label move a step makes: `label` now names `artifact` for its kind, or
/// nothing when `artifact` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMove {
    /// `production` or `canary`.
    pub label: &'static str,
    /// The kind.
    pub kind: ArtifactKind,
    /// What it names now.
    pub artifact: Option<ArtifactRef>,
}

/// One controller step to commit.
#[derive(Debug)]
pub struct RolloutStep<'a> {
    /// The rollout.
    pub id: &'a RolloutId,
    /// Its phase name after the step (for listing without decoding).
    pub phase: &'a str,
    /// The controller after the step.
    pub controller_json: &'a str,
    /// Whether the rollout reached a terminal phase.
    pub finished: bool,
    /// Audit entries to append.
    pub audit: &'a [AuditEntry],
    /// Desired states to assign: the device and its changes.
    pub assignments: &'a [(DeviceId, Assignment)],
    /// Labels to move.
    pub labels: &'a [LabelMove],
    /// Hub clock.
    pub now_ms: u64,
}

/// What a committed step assigned.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Stored desired states, to publish.
    pub assigned: Vec<(DeviceId, DesiredState)>,
    /// Devices whose assignment was refused, with why (the rest of the
    /// step committed).
    pub refused: Vec<(DeviceId, String)>,
}

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRollout {
    /// Its id.
    pub id: RolloutId,
    /// Phase name.
    pub phase: String,
    /// The serialized controller.
    pub controller_json: String,
    /// Terminal.
    pub finished: bool,
    /// Created (unix ms, hub clock).
    pub created_ms: u64,
    /// Last step (unix ms).
    pub updated_ms: u64,
}

/// A slice of one device's canary-gate window ([`Store::rollout_window`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowSlice {
    /// Questions on the versions asked for: answers and failures.
    pub answers: u64,
    /// Of those, escalated by the device or handed over by the customer
    /// ("talk to a person"), once per answer.
    pub escalations: u64,
    /// Ratings of answers on those versions.
    pub rated: u64,
    /// Of those, thumbs down.
    pub thumbs_down: u64,
    /// Questions that failed.
    pub errors: u64,
    /// Each answer's latency.
    pub latencies_ms: Vec<u64>,
}

impl WindowSlice {
    /// Adds `other` to this slice.
    pub fn add(&mut self, other: WindowSlice) {
        self.answers += other.answers;
        self.escalations += other.escalations;
        self.rated += other.rated;
        self.thumbs_down += other.thumbs_down;
        self.errors += other.errors;
        self.latencies_ms.extend(other.latencies_ms);
    }

    /// The window the controller judges. A rating can arrive for an answer
    /// received before the window opened; the counts are clamped so the
    /// window stays consistent rather than refused.
    pub fn window(&self) -> Window {
        let rated = self.rated.min(self.answers);
        Window {
            answers: self.answers,
            escalations: self.escalations.min(self.answers),
            rated,
            thumbs_down: self.thumbs_down.min(rated),
            errors: self.errors.min(self.answers),
            latency: P95::of(&self.latencies_ms),
        }
    }
}

/// What a rollout needs to know of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortFacts {
    /// The device.
    pub id: DeviceId,
    /// Its tags.
    pub tags: Vec<String>,
    /// Presence is `online`.
    pub online: bool,
    /// Its last reported state.
    pub reported: Option<ReportedState>,
    /// What the hub last assigned it.
    pub desired: Option<DesiredState>,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    /// Its position in the log (increasing).
    pub id: u64,
    /// The entry as the controller wrote it.
    pub entry: serde_json::Value,
}

/// One label as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelRow {
    /// `production` or `canary`.
    pub label: String,
    /// Kind label.
    pub kind: String,
    /// What it names.
    pub artifact: serde_json::Value,
    /// The rollout that moved it last.
    pub rollout: Option<String>,
    /// When (unix ms).
    pub updated_ms: u64,
}

impl Store {
    pub(super) fn init_rollouts(conn: &rusqlite::Connection) -> Result<(), StoreError> {
        conn.execute_batch(ROLLOUT_SCHEMA)
            .map_err(sql("rollout schema"))
    }

    /// Whether a rollout with this id was ever stored (ids are never reused:
    /// desired states and telemetry carry them).
    pub fn rollout_exists(&self, id: &RolloutId) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM rollouts WHERE id = ?1",
                [id.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("read rollout"))
    }

    /// Commits one controller step atomically (see the module docs).
    /// Assignments use [`next_desired`] (their releases come from
    /// [`Store::change_for`]); a device whose assignment is refused is
    /// returned in [`StepOutcome::refused`] and the rest commits.
    pub fn rollout_step(&mut self, step: &RolloutStep<'_>) -> Result<StepOutcome, StoreError> {
        let mut outcome = StepOutcome::default();
        let tx = self.conn.transaction().map_err(sql("begin rollout step"))?;
        for (device, assignment) in step.assignments {
            let mut plan = |_: &DeviceId, previous: Option<&DesiredState>| {
                next_desired(previous, assignment, step.now_ms)
            };
            match write_desired(&tx, device, step.now_ms, &mut plan)? {
                Ok(state) => outcome.assigned.push((device.clone(), state)),
                Err(e) => outcome.refused.push((device.clone(), e.to_string())),
            }
        }
        if !outcome.assigned.is_empty() {
            let target = format!("rollout {}", step.id);
            audit_assignment(&tx, &target, &outcome.assigned, step.now_ms)?;
        }
        for entry in step.audit {
            let json = serde_json::to_string(entry)
                .map_err(|e| corrupt("rollout_audit")(e.to_string()))?;
            tx.execute(
                "INSERT INTO rollout_audit (rollout, at_ms, from_phase, to_phase, entry_json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    step.id.as_str(),
                    clamp_i64(entry.at_ms),
                    entry.from,
                    entry.to,
                    json
                ],
            )
            .map_err(sql("append rollout audit"))?;
        }
        for label in step.labels {
            match &label.artifact {
                Some(artifact) => {
                    let json = serde_json::to_string(artifact)
                        .map_err(|e| corrupt("labels")(e.to_string()))?;
                    tx.execute(
                        "INSERT INTO labels (label, kind, artifact_json, rollout, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (label, kind) DO UPDATE SET
                            artifact_json = excluded.artifact_json,
                            rollout = excluded.rollout, updated_ms = excluded.updated_ms",
                        params![
                            label.label,
                            label.kind.as_str(),
                            json,
                            step.id.as_str(),
                            clamp_i64(step.now_ms)
                        ],
                    )
                    .map_err(sql("move label"))?;
                }
                None => {
                    tx.execute(
                        "DELETE FROM labels WHERE label = ?1 AND kind = ?2",
                        params![label.label, label.kind.as_str()],
                    )
                    .map_err(sql("remove label"))?;
                }
            }
        }
        tx.execute(
            "INSERT INTO rollouts (id, phase, controller_json, finished, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (id) DO UPDATE SET phase = excluded.phase,
                controller_json = excluded.controller_json,
                finished = excluded.finished, updated_ms = excluded.updated_ms",
            params![
                step.id.as_str(),
                step.phase,
                step.controller_json,
                step.finished,
                clamp_i64(step.now_ms)
            ],
        )
        .map_err(sql("write rollout"))?;
        tx.commit().map_err(sql("commit rollout step"))?;
        Ok(outcome)
    }

    /// One stored rollout.
    pub fn rollout(&self, id: &RolloutId) -> Result<Option<StoredRollout>, StoreError> {
        self.conn
            .query_row(
                &format!("{ROLLOUT_COLUMNS} WHERE id = ?1"),
                [id.as_str()],
                raw_rollout,
            )
            .optional()
            .map_err(sql("read rollout"))?
            .map(parse_rollout)
            .transpose()
    }

    /// Every rollout, newest first; `unfinished_only` for the ones to resume.
    pub fn rollouts(&self, unfinished_only: bool) -> Result<Vec<StoredRollout>, StoreError> {
        let filter = if unfinished_only {
            " WHERE finished = 0"
        } else {
            ""
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "{ROLLOUT_COLUMNS}{filter} ORDER BY created_ms DESC, id"
            ))
            .map_err(sql("prepare rollouts"))?;
        let rows = stmt
            .query_map([], raw_rollout)
            .map_err(sql("query rollouts"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(parse_rollout(row.map_err(sql("read rollout row"))?)?);
        }
        Ok(out)
    }

    /// A rollout's audit log, oldest first, at most `limit` rows after
    /// position `after`.
    pub fn rollout_audit(
        &self,
        id: &RolloutId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, entry_json FROM rollout_audit
                 WHERE rollout = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(sql("prepare audit"))?;
        let rows = stmt
            .query_map(params![id.as_str(), clamp_i64(after), limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql("query audit"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(sql("read audit row"))?;
            out.push(AuditRow {
                id: id.max(0).unsigned_abs(),
                entry: serde_json::from_str(&json)
                    .map_err(|e| corrupt("rollout_audit")(e.to_string()))?,
            });
        }
        Ok(out)
    }

    /// Every label.
    pub fn labels(&self) -> Result<Vec<LabelRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT label, kind, artifact_json, rollout, updated_ms FROM labels
                 ORDER BY label, kind",
            )
            .map_err(sql("prepare labels"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(sql("query labels"))?;
        let mut out = Vec::new();
        for row in rows {
            let (label, kind, json, rollout, updated) = row.map_err(sql("read label"))?;
            out.push(LabelRow {
                label,
                kind,
                artifact: serde_json::from_str(&json)
                    .map_err(|e| corrupt("labels")(e.to_string()))?,
                rollout,
                updated_ms: updated.max(0).unsigned_abs(),
            });
        }
        Ok(out)
    }

    /// Every device carrying any of `tags`, with what a rollout needs to
    /// know of it.
    pub fn cohort_facts(&self, tags: &[String]) -> Result<Vec<CohortFacts>, StoreError> {
        Ok(self
            .fleet_facts()?
            .into_iter()
            .filter(|d| d.tags.iter().any(|t| tags.contains(t)))
            .collect())
    }

    /// Every device's presence, tags, reported and desired state.
    pub fn fleet_facts(&self) -> Result<Vec<CohortFacts>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.device, d.presence, d.reported_json, s.state_json,
                        (SELECT group_concat(tag, char(10)) FROM device_tags t
                          WHERE t.device = d.device)
                   FROM devices d LEFT JOIN desired s ON s.device = d.device
                  ORDER BY d.device",
            )
            .map_err(sql("prepare cohort"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(sql("query cohort"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, presence, reported, desired, tags) = row.map_err(sql("read cohort row"))?;
            out.push(CohortFacts {
                id: DeviceId::parse(&id).map_err(|e| corrupt("devices")(e.to_string()))?,
                online: presence == "online",
                reported: reported
                    .map(|j| serde_json::from_str(&j))
                    .transpose()
                    .map_err(|e| corrupt("devices")(e.to_string()))?,
                desired: desired
                    .map(|j| serde_json::from_str(&j))
                    .transpose()
                    .map_err(|e| corrupt("desired")(e.to_string()))?,
                tags: tags
                    .map(|t| t.split('\n').map(str::to_owned).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// One device's answers and ratings received in `[from_ms, until_ms)`
    /// (hub clock) on exactly `versions` (each kind named must match the
    /// answer's active version): a slice of a canary-gate window, which the
    /// rollout service adds up tick by tick. Received time, not the
    /// device's clock: kiosk clocks drift, and an answer on the candidate
    /// cannot predate its assignment anyway. Store jobs run one at a time,
    /// so with `until_ms` taken inside the job every row below it is
    /// committed and every later row is at or above it: consecutive slices
    /// neither miss nor repeat a row.
    pub fn rollout_window(
        &self,
        device: &DeviceId,
        from_ms: u64,
        until_ms: u64,
        versions: &[(ArtifactKind, ArtifactDigest)],
    ) -> Result<WindowSlice, StoreError> {
        let matches = |active: &ActiveVersions| {
            versions.iter().all(|(kind, digest)| {
                let got = match kind {
                    ArtifactKind::Model => active.model,
                    ArtifactKind::Adapter => active.adapter,
                    ArtifactKind::PromptSet => active.prompt_set,
                    ArtifactKind::KnowledgeBase => active.knowledge_base,
                    // Not attributed in telemetry: every answer matches.
                    _ => return true,
                };
                got == Some(*digest)
            })
        };
        let mut slice = WindowSlice::default();
        let range = params![device.as_str(), clamp_i64(from_ms), clamp_i64(until_ms)];
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT event_json FROM telemetry WHERE device = ?1
                    AND kind IN ('answer', 'answer_failed')
                    AND received_ms >= ?2 AND received_ms < ?3",
            )
            .map_err(sql("prepare window"))?;
        let rows = stmt
            .query_map(range, |r| r.get::<_, String>(0))
            .map_err(sql("query window"))?;
        for row in rows {
            let json = row.map_err(sql("read window row"))?;
            let event: TelemetryEvent =
                serde_json::from_str(&json).map_err(|e| corrupt("telemetry")(e.to_string()))?;
            match event.payload {
                TelemetryPayload::Answer(answer) if matches(&answer.versions) => {
                    slice.answers += 1;
                    slice.escalations += u64::from(answer.escalated);
                    slice.latencies_ms.push(u64::from(answer.latency_ms));
                }
                TelemetryPayload::AnswerFailed(failure) if matches(&failure.versions) => {
                    slice.answers += 1;
                    slice.errors += 1;
                }
                _ => {}
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                // An answer's first rating only: a customer who changes
                // their mind (or taps twice) is one vote, and counting the
                // first keeps consecutive slices from counting it twice.
                // Likewise its first hand-over, which is an escalation
                // unless the device escalated the answer itself (its
                // event, joined, says so).
                "SELECT f.rating, f.versions_json, t.event_json FROM feedback f
                   LEFT JOIN telemetry t ON t.device = f.device AND t.epoch = f.epoch
                        AND t.seq = f.answer_seq
                  WHERE f.device = ?1 AND f.received_ms >= ?2 AND f.received_ms < ?3
                    AND NOT EXISTS (SELECT 1 FROM feedback e
                          WHERE e.device = f.device AND e.epoch = f.epoch
                            AND e.answer_seq = f.answer_seq
                            AND (e.rating = 'Handover') = (f.rating = 'Handover')
                            AND e.feedback_seq < f.feedback_seq)",
            )
            .map_err(sql("prepare window feedback"))?;
        let rows = stmt
            .query_map(range, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(sql("query window feedback"))?;
        for row in rows {
            let (rating, json, answer) = row.map_err(sql("read window feedback"))?;
            let active: ActiveVersions =
                serde_json::from_str(&json).map_err(|e| corrupt("feedback")(e.to_string()))?;
            if !matches(&active) {
                continue;
            }
            match super::ingest::stored_rating(&rating) {
                Some(Rating::Handover) => {
                    let escalated = answer
                        .and_then(|j| serde_json::from_str::<TelemetryEvent>(&j).ok())
                        .is_some_and(
                            |e| matches!(e.payload, TelemetryPayload::Answer(a) if a.escalated),
                        );
                    slice.escalations += u64::from(!escalated);
                }
                Some(rating) => {
                    slice.rated += 1;
                    slice.thumbs_down += u64::from(rating == Rating::ThumbsDown);
                }
                None => {}
            }
        }
        Ok(slice)
    }

    /// The release of the artifact `artifact` names (by kind, name and
    /// version), for a rollout's assignment; `None` if the hub never
    /// published it.
    pub fn change_for(&self, artifact: &ArtifactRef) -> Result<Option<Change>, StoreError> {
        Ok(self
            .artifact_with_release(artifact.kind, &artifact.name, &artifact.version)?
            .filter(|(record, _)| record.sha256 == artifact.sha256)
            .map(|(_, release)| Change {
                artifact: artifact.clone(),
                release,
            }))
    }
}

const ROLLOUT_COLUMNS: &str =
    "SELECT id, phase, controller_json, finished, created_ms, updated_ms FROM rollouts";

type RawRollout = (String, String, String, bool, i64, i64);

fn raw_rollout(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRollout> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn parse_rollout(raw: RawRollout) -> Result<StoredRollout, StoreError> {
    let (id, phase, controller_json, finished, created, updated) = raw;
    Ok(StoredRollout {
        id: RolloutId::parse(&id).map_err(|e| corrupt("rollouts")(e.to_string()))?,
        phase,
        controller_json,
        finished,
        created_ms: created.max(0).unsigned_abs(),
        updated_ms: updated.max(0).unsigned_abs(),
    })
}

#[cfg(test)]
mod tests;
