//! The upstream's daily budget: what upstream answers cost today (UTC), at
//! the configured prices, kept in a small file so a restart does not give
//! the day a fresh budget.
//!
//! The check is made before a question goes upstream and the cost charged
//! when its answer is done, so a day can end one answer over budget. A
//! spend file that cannot be read is taken as a spent budget (and logged):
//! money is the one thing the router fails closed on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Per-million-token prices of the upstream model, in any currency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prices {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
}

impl Prices {
    /// What `prompt` and `completion` tokens cost, in millionths of the
    /// currency (rounded to the nearest).
    pub fn cost_micros(&self, prompt: u32, completion: u32) -> u64 {
        // per-Mtok price × tokens / 1e6 tokens × 1e6 micros = price × tokens
        let micros =
            self.prompt_per_mtok * prompt as f64 + self.completion_per_mtok * completion as f64;
        micros.round().max(0.0) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Spend {
    /// Days since the Unix epoch (UTC).
    day: u64,
    spent_micros: u64,
}

#[derive(Debug)]
pub struct Budget {
    per_day_micros: Option<u64>,
    spend: Spend,
    file: Option<PathBuf>,
    /// The spend file was unreadable: nothing goes upstream until tomorrow.
    spent_unknown_day: Option<u64>,
}

impl Budget {
    /// A budget of `per_day_micros` (`None`: unlimited), its spend kept in
    /// `file` when given, read from it now.
    pub fn open(per_day_micros: Option<u64>, file: Option<PathBuf>, now_ms: u64) -> Self {
        let today = now_ms / DAY_MS;
        let mut budget = Self {
            per_day_micros,
            spend: Spend {
                day: today,
                spent_micros: 0,
            },
            file,
            spent_unknown_day: None,
        };
        if let Some(path) = &budget.file {
            match read(path) {
                Ok(Some(spend)) if spend.day == today => budget.spend = spend,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "the upstream spend file is unreadable; no upstream answers until tomorrow (UTC) — delete the file to reset");
                    budget.spent_unknown_day = Some(today);
                }
            }
        }
        budget
    }

    /// Whether a question may still go upstream at `now_ms`.
    pub fn allows(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        if self.spent_unknown_day == Some(self.spend.day) {
            return false;
        }
        self.per_day_micros
            .is_none_or(|limit| self.spend.spent_micros < limit)
    }

    /// Adds `micros` to today's spend and saves it.
    pub fn charge(&mut self, micros: u64, now_ms: u64) {
        self.roll(now_ms);
        self.spend.spent_micros = self.spend.spent_micros.saturating_add(micros);
        if let Some(path) = &self.file {
            if let Err(e) = write(path, &self.spend) {
                tracing::warn!(file = %path.display(), error = %e, "could not save the upstream spend");
            }
        }
    }

    /// Today's spend so far.
    pub fn spent_micros(&self) -> u64 {
        self.spend.spent_micros
    }

    fn roll(&mut self, now_ms: u64) {
        let today = now_ms / DAY_MS;
        if today > self.spend.day {
            self.spend = Spend {
                day: today,
                spent_micros: 0,
            };
        }
    }
}

fn read(path: &Path) -> std::io::Result<Option<Spend>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written beside and renamed over, so a crash leaves the old or the new
/// spend, never half a file.
fn write(path: &Path, spend: &Spend) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(spend)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 20_000 * DAY_MS + DAY_MS / 2;

    #[test]
    fn prices_are_per_million_tokens() {
        let p = Prices {
            prompt_per_mtok: 0.15,
            completion_per_mtok: 0.60,
        };
        // 1,000 prompt tokens at 0.15/M = 0.00015 = 150 micros; 100 at 0.6/M = 60.
        assert_eq!(p.cost_micros(1000, 100), 210);
        assert_eq!(Prices::default().cost_micros(1000, 1000), 0);
    }

    #[test]
    fn the_days_spend_survives_a_restart_and_resets_the_next_day() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("spend.json");
        let mut b = Budget::open(Some(1000), Some(file.clone()), NOON);
        assert!(b.allows(NOON));
        b.charge(600, NOON);
        b.charge(500, NOON + 1);
        assert!(!b.allows(NOON + 2), "1,100 of 1,000 spent");

        let mut restarted = Budget::open(Some(1000), Some(file.clone()), NOON + 3);
        assert_eq!(restarted.spent_micros(), 1100);
        assert!(!restarted.allows(NOON + 3), "a restart is not a new budget");
        assert!(restarted.allows(NOON + DAY_MS), "a new day is");
        assert_eq!(restarted.spent_micros(), 0);
    }

    #[test]
    fn an_unreadable_spend_file_spends_the_day_and_no_limit_means_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("spend.json");
        std::fs::write(&file, b"{not json").expect("write");
        let mut b = Budget::open(Some(1000), Some(file), NOON);
        assert!(!b.allows(NOON));
        assert!(b.allows(NOON + DAY_MS));

        let mut unlimited = Budget::open(None, None, NOON);
        unlimited.charge(u64::MAX, NOON);
        assert!(unlimited.allows(NOON));
    }
}
