//! Evaluation jobs in the store: their request, state, progress and report,
//! for the admin API and for resuming after a restart (a job that was
//! queued or running when the hub stopped is marked `interrupted`; the
//! rollout that asked for it asks again).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{clamp_i64, sql, Store, StoreError};

pub(super) const EVAL_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS eval_jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout      TEXT,
    request_json TEXT NOT NULL,
    status       TEXT NOT NULL,      -- queued, running, done, failed, cancelled, interrupted
    progress     TEXT NOT NULL DEFAULT '',
    report_json  TEXT,
    error        TEXT,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL
);
UPDATE eval_jobs SET status = 'interrupted' WHERE status IN ('queued', 'running');
"#;

/// One evaluation job as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalJobRow {
    /// Its id.
    pub id: u64,
    /// The rollout that asked, if any.
    pub rollout: Option<String>,
    /// What it compares.
    pub request: serde_json::Value,
    /// queued, running, done, failed, cancelled or interrupted.
    pub status: String,
    /// What it is doing now, e.g. `candidate: running`.
    pub progress: String,
    /// The comparison, once done.
    pub report: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Created (unix ms).
    pub created_ms: u64,
    /// Last change (unix ms).
    pub updated_ms: u64,
}

/// A job's new state.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalJobUpdate<'a> {
    /// The status.
    pub status: &'a str,
    /// The progress text.
    pub progress: &'a str,
    /// The report, when done.
    pub report_json: Option<&'a str>,
    /// The error, when failed.
    pub error: Option<&'a str>,
}

impl Store {
    pub(super) fn init_evals(conn: &rusqlite::Connection) -> Result<(), StoreError> {
        conn.execute_batch(EVAL_SCHEMA).map_err(sql("eval schema"))
    }

    /// Queues a job; returns its id.
    pub fn insert_eval_job(
        &mut self,
        rollout: Option<&str>,
        request_json: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO eval_jobs (rollout, request_json, status, created_ms, updated_ms)
                 VALUES (?1, ?2, 'queued', ?3, ?3)",
                params![rollout, request_json, clamp_i64(now_ms)],
            )
            .map_err(sql("insert eval job"))?;
        Ok(self.conn.last_insert_rowid().max(0).unsigned_abs())
    }

    /// Records a job's progress or end.
    pub fn update_eval_job(
        &mut self,
        id: u64,
        update: &EvalJobUpdate<'_>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE eval_jobs SET status = ?2, progress = ?3,
                    report_json = coalesce(?4, report_json), error = ?5, updated_ms = ?6
                 WHERE id = ?1",
                params![
                    clamp_i64(id),
                    update.status,
                    update.progress,
                    update.report_json,
                    update.error,
                    clamp_i64(now_ms)
                ],
            )
            .map_err(sql("update eval job"))?;
        Ok(())
    }

    /// One job.
    pub fn eval_job(&self, id: u64) -> Result<Option<EvalJobRow>, StoreError> {
        self.conn
            .query_row(
                &format!("{EVAL_COLUMNS} WHERE id = ?1"),
                [clamp_i64(id)],
                eval_row,
            )
            .optional()
            .map_err(sql("read eval job"))
    }

    /// The newest `limit` jobs, newest first.
    pub fn eval_jobs(&self, limit: u32) -> Result<Vec<EvalJobRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{EVAL_COLUMNS} ORDER BY id DESC LIMIT ?1"))
            .map_err(sql("prepare eval jobs"))?;
        let rows = stmt
            .query_map([limit], eval_row)
            .map_err(sql("query eval jobs"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read eval job"))
    }
}

const EVAL_COLUMNS: &str = "SELECT id, rollout, request_json, status, progress, report_json, error,
        created_ms, updated_ms FROM eval_jobs";

fn eval_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EvalJobRow> {
    let json = |text: Option<String>| {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    Ok(EvalJobRow {
        id: r.get::<_, i64>(0)?.max(0).unsigned_abs(),
        rollout: r.get(1)?,
        request: json(r.get(2)?),
        status: r.get(3)?,
        progress: r.get(4)?,
        report: r.get::<_, Option<String>>(5)?.map(|t| json(Some(t))),
        error: r.get(6)?,
        created_ms: r.get::<_, i64>(7)?.max(0).unsigned_abs(),
        updated_ms: r.get::<_, i64>(8)?.max(0).unsigned_abs(),
    })
}
