//! The thin executor: performs the reconciler's actions with real files, the
//! resumable HTTP download and the pointer store, and feeds back outcomes.

use std::path::{Path, PathBuf};

use outpost_models::download::{download_with, DownloadError, DownloadOptions};
use outpost_models::{Expected, Sha256Digest};
use outpost_protocol::{ArtifactKind, ArtifactRef, DesiredState, FailureReason, ReportedState};

use super::files::{ArtifactFiles, FilesError};
use super::gc;
use super::lock::ApplyLock;
use super::pointers::{PointerError, PointerStore};
use super::reconciler::{Action, Event, Inventory, Location, Outcome, Reconciler};
use super::urls::ArtifactBase;
use super::verify::{verify, HubKey, Rejection};

/// The runtime's answer to "does this artifact work": it loads it and runs
/// a smoke set within limits. Implemented by the runtime; tests fake it.
pub trait HealthCheck {
    /// Checks `artifact`, installed at `path`. `Err` carries a detail for
    /// the failure report.
    fn check(&mut self, artifact: &ArtifactRef, path: &Path) -> Result<(), String>;

    /// Whether this device can take `artifact` at all, asked before it is
    /// downloaded: a refusal (say, a model with no room to be checked
    /// beside the running one) is reported and nothing is fetched.
    fn admit(&mut self, artifact: &ArtifactRef) -> Result<(), Rejection> {
        let _ = artifact;
        Ok(())
    }
}

/// Why the executor could not run at all (step failures are reported in
/// the [`ReportedState`] instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The pointer store failed to load.
    #[error(transparent)]
    Pointers(#[from] PointerError),
    /// The artifact folders could not be read or created.
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// How an [`Applier`] is set up.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// The artifact store's root folder.
    pub root: PathBuf,
    /// The hub's pinned signing key.
    pub hub_key: HubKey,
    /// Download timeouts.
    pub download: DownloadOptions,
    /// Where downloads may come from; any other URL is refused.
    pub artifact_base: ArtifactBase,
}

/// Drives a [`Reconciler`] against real files and a [`PointerStore`].
pub struct Applier<P, H> {
    files: ArtifactFiles,
    pointers: P,
    health: H,
    hub_key: HubKey,
    download: DownloadOptions,
    artifact_base: ArtifactBase,
    reconciler: Reconciler,
    /// The data folder's apply lock, when the owner handed it over: it
    /// lives as long as this applier (on the agent's apply thread).
    lock: Option<ApplyLock>,
}

impl<P: PointerStore, H: HealthCheck> Applier<P, H> {
    /// Loads the pointers and scans the store, then finishes anything a
    /// crash interrupted (a slot left in trial is switched back).
    pub fn open(config: ApplierConfig, mut pointers: P, health: H) -> Result<Self, ApplyError> {
        let files = ArtifactFiles::open(&config.root)?;
        let inventory = Inventory {
            pointers: pointers.load()?,
            installed: files.installed()?,
            staged: files.staged()?,
        };
        let mut applier = Self {
            files,
            pointers,
            health,
            hub_key: config.hub_key,
            download: config.download,
            artifact_base: config.artifact_base,
            reconciler: Reconciler::new(inventory),
            lock: None,
        };
        applier.drive(Event::Resume);
        applier.collect_garbage();
        Ok(applier)
    }

    /// Keeps `lock` for as long as this applier lives.
    pub fn hold(&mut self, lock: ApplyLock) {
        self.lock = Some(lock);
    }

    /// Processes a desired state to the end (or to a transient failure) and
    /// returns the state to report.
    pub fn apply(&mut self, desired: DesiredState) -> ReportedState {
        self.drive(Event::Desired(desired));
        self.collect_garbage();
        self.reported()
    }

    /// Retries what a transient failure stopped.
    pub fn resume(&mut self) -> ReportedState {
        self.drive(Event::Resume);
        self.collect_garbage();
        self.reported()
    }

    /// Removes what no pointer and no desired state in hand needs (see
    /// [`gc`]); run at start, after every commit and after every apply.
    fn collect_garbage(&mut self) {
        let keep = self.reconciler.referenced();
        let collected = gc::collect(
            &self.files,
            &keep,
            gc::PARTIAL_GRACE,
            std::time::SystemTime::now(),
        );
        if collected.bytes > 0 {
            tracing::info!(bytes = collected.bytes, "artifact store collected");
        }
        // The reconciler must not verify a file that is gone.
        self.reconciler
            .forget_files(collected.artifacts.into_iter().chain(collected.staged));
    }

    /// What to retain on `state/reported` now.
    pub fn reported(&self) -> ReportedState {
        self.reconciler.reported(crate::now_unix_ms())
    }

    /// The installed file serving `kind`, if any.
    pub fn active_path(&self, kind: ArtifactKind) -> Option<PathBuf> {
        self.reconciler
            .active(kind)
            .map(|a| self.files.store_path(&a.sha256))
    }

    /// The health check (the device runtime), to switch what it serves.
    pub fn health_mut(&mut self) -> &mut H {
        &mut self.health
    }

    /// The state machine, for inspection.
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// The pointer store (a test's way to look at disk).
    pub fn pointers_mut(&mut self) -> &mut P {
        &mut self.pointers
    }

    fn drive(&mut self, event: Event) {
        let mut actions = self.reconciler.handle(event, crate::now_unix_ms());
        loop {
            let mut outcome = None;
            for action in actions {
                outcome = self.perform(action);
            }
            let Some(outcome) = outcome else { return };
            actions = self
                .reconciler
                .handle(Event::Step(outcome), crate::now_unix_ms());
        }
    }

    fn perform(&mut self, action: Action) -> Option<Outcome> {
        tracing::debug!(?action, "apply step");
        let outcome = match action {
            Action::Download(artifact) => self.download(&artifact),
            Action::Verify {
                artifact,
                from,
                base_model,
            } => {
                let path = match from {
                    Location::Staging => self.files.staging_path(&artifact.sha256),
                    Location::Store => self.files.store_path(&artifact.sha256),
                };
                let base = base_model.map(|m| self.files.store_path(&m.sha256));
                match verify(&artifact, &path, &self.hub_key, base.as_deref()) {
                    Ok(verified) => Outcome::Verified(Box::new(verified)),
                    Err(rejection) => {
                        if from == Location::Staging && !rejection.transient {
                            if let Err(e) = self.files.discard_staged(&artifact.sha256) {
                                tracing::warn!(error = %e, "cannot remove a rejected download");
                            }
                        }
                        Outcome::Failed(rejection)
                    }
                }
            }
            Action::Install(verified) => match self.files.install(&verified) {
                Ok(_) => Outcome::Done,
                Err(e) => Outcome::Failed(storage(e)),
            },
            Action::Switch {
                artifact,
                generation,
            } => match self.pointers.switch(artifact.artifact(), generation) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(storage(e)),
            },
            Action::HealthCheck(artifact) => {
                let path = self.files.store_path(&artifact.sha256);
                match self.health.check(&artifact, &path) {
                    Ok(()) => Outcome::Done,
                    Err(detail) => {
                        Outcome::Failed(Rejection::permanent(FailureReason::HealthCheck, detail))
                    }
                }
            }
            Action::Commit {
                kind,
                report,
                release,
            } => match self.pointers.commit(kind, &report, release) {
                Ok(()) => {
                    // The pointer moved: the artifact before the previous
                    // one is no longer a rollback target.
                    self.collect_garbage();
                    Outcome::Done
                }
                Err(e) => Outcome::Failed(storage(e)),
            },
            Action::Rollback { kind, report } => match self.pointers.rollback(kind, &report) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(storage(e)),
            },
            Action::Record { kind, report } => {
                if let Err(e) = self.pointers.record(kind, &report) {
                    tracing::warn!(%kind, error = %e, "cannot store an apply report");
                }
                return None;
            }
            Action::Finish(generation) => {
                if let Err(e) = self.pointers.finish(generation) {
                    tracing::warn!(%generation, error = %e, "cannot mark a generation processed");
                }
                return None;
            }
        };
        Some(outcome)
    }

    fn download(&mut self, artifact: &ArtifactRef) -> Outcome {
        if let Err(why) = self.artifact_base.allows(artifact.url.as_str()) {
            return Outcome::Failed(Rejection::permanent(
                FailureReason::UrlNotAllowed,
                format!("{}: {why}", artifact.url),
            ));
        }
        if let Err(refusal) = self.health.admit(artifact) {
            tracing::warn!(detail = %refusal.detail, "the runtime cannot take this artifact");
            return Outcome::Failed(refusal);
        }
        let dest = self.files.staging_path(&artifact.sha256);
        let needed = gc::bytes_to_download(&self.files, artifact);
        if let Err(refusal) = gc::check_free_space(self.files.root(), artifact, needed) {
            tracing::warn!(detail = %refusal.detail, "download refused");
            return Outcome::Failed(refusal);
        }
        let expected = Expected {
            size: artifact.size_bytes,
            sha256: Sha256Digest::from_bytes(*artifact.sha256.as_bytes()),
        };
        match download_with(artifact.url.as_str(), &dest, &expected, &self.download) {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Failed(download_rejection(&e)),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> Rejection {
    Rejection::transient(FailureReason::Storage, e.to_string())
}

/// Maps a download error to the protocol's categories: wrong content is
/// permanent, a link or disk problem is worth retrying (the partial file is
/// kept and resumed).
fn download_rejection(e: &DownloadError) -> Rejection {
    let detail = e.to_string();
    match e {
        DownloadError::SizeMismatch { .. } | DownloadError::TooLarge { .. } => {
            Rejection::permanent(FailureReason::SizeMismatch, detail)
        }
        DownloadError::HashMismatch { .. } => {
            Rejection::permanent(FailureReason::DigestMismatch, detail)
        }
        DownloadError::Io { .. } => Rejection::transient(FailureReason::Storage, detail),
        _ => Rejection::transient(FailureReason::Download, detail),
    }
}
