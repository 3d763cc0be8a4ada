//! Training jobs in the store: their request, state, loss curve and result,
//! for the admin API and the dashboard. A job that was queued or running
//! when the hub stopped is marked `interrupted` on open (its child process
//! died with the hub; the operator queues it again).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{clamp_i64, sql, Store, StoreError};

pub(super) const TRAINING_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS train_jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_json  TEXT NOT NULL,
    status        TEXT NOT NULL,      -- queued, running, done, failed, cancelled, interrupted
    phase         TEXT NOT NULL DEFAULT '',
    progress_json TEXT,
    result_json   TEXT,
    error         TEXT,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
UPDATE train_jobs SET status = 'interrupted' WHERE status IN ('queued', 'running');
"#;

/// One training job as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainJobRow {
    /// Its id.
    pub id: u64,
    /// What it trains (base, set, hyperparameters, plan).
    pub request: serde_json::Value,
    /// queued, running, done, failed, cancelled or interrupted.
    pub status: String,
    /// What it is doing now: dataset, training, publishing, evaluating,
    /// rollout.
    pub phase: String,
    /// Steps, loss curve, validation losses, throughput.
    pub progress: Option<serde_json::Value>,
    /// The adapter, its lineage, the evaluation and the decision, once done.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Created (unix ms).
    pub created_ms: u64,
    /// Last change (unix ms).
    pub updated_ms: u64,
}

/// A job's new state; `None` fields keep what is stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainJobUpdate<'a> {
    /// The status.
    pub status: &'a str,
    /// The phase.
    pub phase: &'a str,
    /// The progress document.
    pub progress_json: Option<&'a str>,
    /// The result, when done.
    pub result_json: Option<&'a str>,
    /// The error, when failed.
    pub error: Option<&'a str>,
}

impl Store {
    pub(super) fn init_training(conn: &rusqlite::Connection) -> Result<(), StoreError> {
        conn.execute_batch(TRAINING_SCHEMA)
            .map_err(sql("training schema"))
    }

    /// Queues a job; returns its id.
    pub fn insert_train_job(&mut self, request_json: &str, now_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO train_jobs (request_json, status, created_ms, updated_ms)
                 VALUES (?1, 'queued', ?2, ?2)",
                params![request_json, clamp_i64(now_ms)],
            )
            .map_err(sql("insert training job"))?;
        Ok(self.conn.last_insert_rowid().max(0).unsigned_abs())
    }

    /// Records a job's progress or end.
    pub fn update_train_job(
        &mut self,
        id: u64,
        update: &TrainJobUpdate<'_>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE train_jobs SET status = ?2, phase = ?3,
                    progress_json = coalesce(?4, progress_json),
                    result_json = coalesce(?5, result_json), error = ?6, updated_ms = ?7
                 WHERE id = ?1",
                params![
                    clamp_i64(id),
                    update.status,
                    update.phase,
                    update.progress_json,
                    update.result_json,
                    update.error,
                    clamp_i64(now_ms)
                ],
            )
            .map_err(sql("update training job"))?;
        Ok(())
    }

    /// One job.
    pub fn train_job(&self, id: u64) -> Result<Option<TrainJobRow>, StoreError> {
        self.conn
            .query_row(
                &format!("{TRAIN_COLUMNS} WHERE id = ?1"),
                [clamp_i64(id)],
                train_row,
            )
            .optional()
            .map_err(sql("read training job"))
    }

    /// The newest `limit` jobs, newest first.
    pub fn train_jobs(&self, limit: u32) -> Result<Vec<TrainJobRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{TRAIN_COLUMNS} ORDER BY id DESC LIMIT ?1"))
            .map_err(sql("prepare training jobs"))?;
        let rows = stmt
            .query_map([limit], train_row)
            .map_err(sql("query training jobs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read training job"))
    }
}

const TRAIN_COLUMNS: &str = "SELECT id, request_json, status, phase, progress_json, result_json,
        error, created_ms, updated_ms FROM train_jobs";

fn train_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrainJobRow> {
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(TrainJobRow {
        id: r.get::<_, i64>(0)?.max(0).unsigned_abs(),
        request: json(r.get(1)?).unwrap_or(serde_json::Value::Null),
        status: r.get(2)?,
        phase: r.get(3)?,
        progress: json(r.get(4)?),
        result: json(r.get(5)?),
        error: r.get(6)?,
        created_ms: r.get::<_, i64>(7)?.max(0).unsigned_abs(),
        updated_ms: r.get::<_, i64>(8)?.max(0).unsigned_abs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_its_curve_and_is_interrupted_by_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path).expect("store");
        let id = store.insert_train_job(r#"{"model":1}"#, 5).expect("insert");
        store
            .update_train_job(
                id,
                &TrainJobUpdate {
                    status: "running",
                    phase: "training",
                    progress_json: Some(r#"{"step":3}"#),
                    ..TrainJobUpdate::default()
                },
                6,
            )
            .expect("update");
        // A later update without progress keeps the stored curve.
        store
            .update_train_job(
                id,
                &TrainJobUpdate {
                    status: "running",
                    phase: "evaluating",
                    ..TrainJobUpdate::default()
                },
                7,
            )
            .expect("update");
        let row = store.train_job(id).expect("read").expect("row");
        assert_eq!(row.phase, "evaluating");
        assert_eq!(row.progress, Some(serde_json::json!({"step": 3})));
        drop(store);
        let store = Store::open(&path).expect("reopen");
        let rows = store.train_jobs(10).expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "interrupted");
    }

    #[test]
    fn a_reader_of_the_live_database_does_not_interrupt_its_jobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hub.sqlite");
        let mut hub = Store::open(&path).expect("store");
        let id = hub.insert_train_job("{}", 5).expect("insert");
        let reader = Store::open_read_only(&path).expect("reader");
        assert!(reader.training_candidates().expect("reads").is_empty());
        assert_eq!(
            hub.train_job(id).expect("read").expect("row").status,
            "queued",
            "the trainer's read marked the hub's job interrupted"
        );
        drop(reader);
        let mut reader = Store::open_read_only(&path).expect("reader");
        assert!(reader.insert_train_job("{}", 6).is_err(), "read-only");
        drop(hub);
    }
}
