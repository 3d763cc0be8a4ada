//! The ROI view's arithmetic, shared by the dashboard (`GET
//! /admin/dashboard/roi`, and the page's own copy in `app.js` for instant
//! recomputation) and `outpost roi`:
//!
//! ```text
//! deflection       = answers neither escalated, handed over nor thumbed down
//!                    / questions (answers and failures)                       (telemetry)
//! monthly savings  = tickets/month × deflection × handle time (h) × agent cost/hour
//! payback months   = implementation cost / monthly savings
//! first-year ROI   = (12 × monthly savings − implementation cost) / implementation cost
//! ```

use serde::{Deserialize, Serialize};

/// The operator's inputs; defaults come from `[roi]` in the hub config and
/// the dashboard can save others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiInputs {
    /// Support tickets a month that the kiosks could take.
    pub tickets_per_month: f64,
    /// Minutes a person spends on one ticket.
    pub handle_time_minutes: f64,
    /// What an hour of a support agent costs (any currency).
    pub agent_cost_per_hour: f64,
    /// One-off cost of putting the kiosks in (same currency).
    pub implementation_cost: f64,
}

impl Default for RoiInputs {
    /// A small retail deployment: 2,000 tickets a month of 6 minutes at
    /// 30 an hour, 25,000 to implement.
    fn default() -> Self {
        Self {
            tickets_per_month: 2_000.0,
            handle_time_minutes: 6.0,
            agent_cost_per_hour: 30.0,
            implementation_cost: 25_000.0,
        }
    }
}

/// Why inputs were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RoiError {
    /// An input is negative, NaN or infinite.
    #[error("{field} must be a finite number of at least 0 (got {value})")]
    Invalid {
        /// The input's name.
        field: &'static str,
        /// What was given.
        value: f64,
    },
}

impl RoiInputs {
    /// Checks every input is finite and not negative.
    pub fn validate(self) -> Result<Self, RoiError> {
        for (field, value) in [
            ("tickets_per_month", self.tickets_per_month),
            ("handle_time_minutes", self.handle_time_minutes),
            ("agent_cost_per_hour", self.agent_cost_per_hour),
            ("implementation_cost", self.implementation_cost),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(RoiError::Invalid { field, value });
            }
        }
        Ok(self)
    }
}

/// The deflection measured from telemetry over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deflection {
    /// Questions asked: answer events and failures.
    pub answers: u64,
    /// Answers neither escalated, handed over ("talk to a person") nor
    /// thumbed down.
    pub deflected: u64,
}

impl Deflection {
    /// The deflected share (0–1); 0 without answers.
    pub fn rate(self) -> f64 {
        if self.answers == 0 {
            0.0
        } else {
            self.deflected.min(self.answers) as f64 / self.answers as f64
        }
    }
}

/// What the inputs and the measured deflection are worth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoiFigures {
    /// The deflection rate used (0–1).
    pub deflection_rate: f64,
    /// Tickets a month the kiosks take off people.
    pub tickets_deflected_per_month: f64,
    /// Agent hours a month saved.
    pub hours_saved_per_month: f64,
    /// Money a month saved.
    pub monthly_savings: f64,
    /// Months until the savings repay the implementation; `None` when
    /// nothing is saved.
    pub payback_months: Option<f64>,
    /// First-year return on the implementation cost (0.5 = 50 %); `None`
    /// when the implementation cost nothing.
    pub first_year_roi: Option<f64>,
}

/// The seed's formula, for a deflection rate in 0–1.
pub fn compute(inputs: &RoiInputs, deflection_rate: f64) -> RoiFigures {
    let rate = if deflection_rate.is_finite() {
        deflection_rate.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let deflected = inputs.tickets_per_month * rate;
    let hours = deflected * inputs.handle_time_minutes / 60.0;
    let monthly = hours * inputs.agent_cost_per_hour;
    RoiFigures {
        deflection_rate: rate,
        tickets_deflected_per_month: deflected,
        hours_saved_per_month: hours,
        monthly_savings: monthly,
        payback_months: (monthly > 0.0).then(|| inputs.implementation_cost / monthly),
        first_year_roi: (inputs.implementation_cost > 0.0)
            .then(|| (12.0 * monthly - inputs.implementation_cost) / inputs.implementation_cost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_seed_formula_gives_the_known_answers() {
        let inputs = RoiInputs {
            tickets_per_month: 2_000.0,
            handle_time_minutes: 6.0,
            agent_cost_per_hour: 30.0,
            implementation_cost: 25_000.0,
        };
        // 2000 × 0.6 = 1200 tickets × 0.1 h = 120 h × 30 = 3600 a month.
        let f = compute(&inputs, 0.6);
        assert!(close(f.tickets_deflected_per_month, 1_200.0));
        assert!(close(f.hours_saved_per_month, 120.0));
        assert!(close(f.monthly_savings, 3_600.0));
        // 25000 / 3600 = 6.94 months; (43200 − 25000) / 25000 = 72.8 %.
        assert!(close(
            f.payback_months.expect("savings"),
            25_000.0 / 3_600.0
        ));
        assert!(close(f.first_year_roi.expect("a cost"), 0.728));
    }

    #[test]
    fn no_savings_means_no_payback_and_a_total_loss() {
        let f = compute(&RoiInputs::default(), 0.0);
        assert_eq!(f.monthly_savings, 0.0);
        assert_eq!(f.payback_months, None);
        assert!(close(f.first_year_roi.expect("a cost"), -1.0));
        let free = RoiInputs {
            implementation_cost: 0.0,
            ..RoiInputs::default()
        };
        assert_eq!(compute(&free, 0.5).first_year_roi, None);
        assert_eq!(compute(&free, 0.5).payback_months, Some(0.0));
    }

    #[test]
    fn deflection_is_a_share_of_answers_and_is_clamped() {
        assert_eq!(Deflection::default().rate(), 0.0);
        let d = Deflection {
            answers: 8,
            deflected: 6,
        };
        assert!(close(d.rate(), 0.75));
        assert!(close(
            compute(&RoiInputs::default(), 7.0).deflection_rate,
            1.0
        ));
        assert!(close(
            compute(&RoiInputs::default(), f64::NAN).deflection_rate,
            0.0
        ));
    }

    #[test]
    fn negative_or_non_finite_inputs_are_refused_by_name() {
        let bad = RoiInputs {
            agent_cost_per_hour: -1.0,
            ..RoiInputs::default()
        };
        let e = bad.validate().expect_err("refused");
        assert!(e.to_string().contains("agent_cost_per_hour"), "{e}");
        let nan = RoiInputs {
            tickets_per_month: f64::INFINITY,
            ..RoiInputs::default()
        };
        assert!(nan.validate().is_err());
        assert!(RoiInputs::default().validate().is_ok());
    }
}
