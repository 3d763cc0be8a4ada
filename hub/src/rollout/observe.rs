//! From what the hub knows about each cohort device (its presence, its
//! reported state, its telemetry window) to controller [`Event`]s, without
//! I/O.
//!
//! The hub re-reads the store on every tick rather than forwarding each
//! device message as it arrives: nothing is lost across a hub restart or a
//! full channel, and a tick costs a few indexed queries. The price is
//! repetition, so [`Observer`] feeds an event only when its input changed
//! since it was last fed: a device still reporting the candidate after a
//! halt would otherwise be sent its rollback again on every tick. The
//! observer's memory is not persisted; after a restart each device's facts
//! are fed once more, which the controller absorbs (its events are
//! idempotent apart from that one re-sent rollback).

use std::collections::{BTreeMap, HashMap};

use outpost_protocol::{
    ApplyOutcome as Reported, ArtifactRef, ArtifactSet, DeviceId, FailureReason, Generation,
    ReportedState,
};

use super::controller::{ApplyOutcome, Arm, Controller, Event, Running, Window};

/// What the store says about one cohort device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFacts {
    /// Its presence is `online`.
    pub online: bool,
    /// Its last reported state.
    pub reported: Option<ReportedState>,
}

/// What a device runs of the rollout's kinds: every changed kind on the
/// candidate, every one on its baseline, or neither (mid-apply, or an
/// operator assigned something else).
pub fn running(
    candidate: &[ArtifactRef],
    baseline: &[ArtifactRef],
    active: &ArtifactSet,
) -> Option<Running> {
    let runs = |refs: &[ArtifactRef]| {
        candidate.iter().all(|c| {
            let wanted = refs.iter().find(|r| r.kind == c.kind);
            matches!((wanted, active.get(c.kind)), (Some(w), Some(a)) if w.sha256 == a.sha256)
        })
    };
    if runs(candidate) {
        Some(Running::Candidate)
    } else if runs(baseline) {
        Some(Running::Baseline)
    } else {
        None
    }
}

/// How the install gate counts a device's failure: refusals (the device
/// would not take it: signature, compatibility, rollback floor, URL) are
/// `Rejected`; the rest (download, storage, health check incl. the smoke
/// evaluation) are `Failed`.
pub fn install_outcome(reason: FailureReason) -> ApplyOutcome {
    match reason {
        FailureReason::BadSignature
        | FailureReason::BaseModelMismatch
        | FailureReason::Unsupported
        | FailureReason::Rollback
        | FailureReason::UrlNotAllowed => ApplyOutcome::Rejected,
        _ => ApplyOutcome::Failed,
    }
}

/// The apply event a reported state means for a device, if any.
pub fn apply_event(
    device: &DeviceId,
    candidate: &[ArtifactRef],
    baseline: &[ArtifactRef],
    reported: &ReportedState,
    candidate_sent: bool,
) -> Option<Event> {
    let now = running(candidate, baseline, &reported.active);
    if now == Some(Running::Baseline) && candidate_sent {
        let failed = candidate.iter().find_map(|c| {
            let report = reported.last_apply.get(&c.kind)?;
            match &report.outcome {
                Reported::Failed { reason, .. } if report.sha256 == c.sha256 => Some(*reason),
                _ => None,
            }
        });
        if let Some(reason) = failed {
            return Some(Event::ApplyFailed {
                device: device.clone(),
                outcome: install_outcome(reason),
            });
        }
    }
    now.map(|running| Event::Applied {
        device: device.clone(),
        running,
    })
}

/// What was last fed for one device.
#[derive(Debug, Clone, Default, PartialEq)]
struct Fed {
    online: Option<bool>,
    reported: Option<(Option<Generation>, u64, bool)>,
    window: Option<(usize, Arm, Window)>,
}

/// Turns facts into events, each only when it changed (see module docs).
#[derive(Debug, Default)]
pub struct Observer {
    fed: HashMap<DeviceId, Fed>,
}

impl Observer {
    /// The events for `controller` from this tick's `facts` and telemetry
    /// `windows` (each device's window over the open stage, for the arm it
    /// is in).
    pub fn events(
        &mut self,
        controller: &Controller,
        facts: &BTreeMap<DeviceId, DeviceFacts>,
        windows: &BTreeMap<DeviceId, (Arm, Window)>,
    ) -> Vec<Event> {
        let candidate = &controller.plan().candidate;
        let stage = controller.window();
        let mut events = Vec::new();
        for view in controller.devices() {
            let fed = self.fed.entry(view.id.clone()).or_default();
            let Some(device) = facts.get(view.id) else {
                continue;
            };
            if fed.online != Some(device.online) {
                fed.online = Some(device.online);
                events.push(if device.online {
                    Event::Online {
                        device: view.id.clone(),
                    }
                } else {
                    Event::Offline {
                        device: view.id.clone(),
                    }
                });
            }
            if let Some(reported) = &device.reported {
                let sent = view.candidate_sent_ms.is_some();
                let key = (reported.generation, reported.at_unix_ms, sent);
                if fed.reported != Some(key) {
                    fed.reported = Some(key);
                    events.extend(apply_event(
                        view.id,
                        candidate,
                        view.baseline,
                        reported,
                        sent,
                    ));
                }
            }
            if let (Some(stage), Some((arm, window))) = (stage, windows.get(view.id)) {
                let key = (stage, *arm, *window);
                if fed.window != Some(key) {
                    fed.window = Some(key);
                    events.push(Event::Telemetry {
                        device: view.id.clone(),
                        stage,
                        arm: *arm,
                        window: *window,
                    });
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests;
