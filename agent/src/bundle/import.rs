//! Importing an offline bundle on a device: everything is checked before
//! anything is applied, then the blobs are handed to the [`Applier`] as if
//! they had been downloaded.
//!
//! [`prepare`] (no pointer, store or staging file changes): take the data
//! folder's [`ApplyLock`], read this device's signed state from the
//! bundle, trust it exactly as the MQTT session does ([`StateVerifier`]:
//! the pinned hub key, this fleet and device, a sane generation), refuse a
//! generation already processed, then for every kind the state changes:
//! the anti-rollback floor, the adapter's base model against the model
//! this device will run, and the blob copied into a private folder and
//! passed through [`verify()`] (the hub's signature on the reference,
//! exact size, SHA-256, GGUF header, adapter against its base model's
//! file). Any refusal removes that folder and leaves the device as it was.
//!
//! [`VerifiedBundle::apply`]: the verified blobs are renamed into
//! `staging/` and the state goes through [`Applier::apply`], the same
//! Verify → Install → Switch → HealthCheck → Commit (or Rollback) path as a
//! state from the hub, with the device runtime's health check. A kind that
//! fails its health check is switched back and reported, as over MQTT.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use outpost_protocol::{
    ApplyOutcome, ArtifactDigest, ArtifactKind, ArtifactRef, DesiredState, DeviceId, FailureReason,
    FleetId, Generation, ReportedState,
};

use super::reader::{BundleReader, ReadError};
use crate::apply::boot::{BootError, BootWatch};
use crate::apply::{
    below_floor, verify, Applier, ApplierConfig, ApplyError, ApplyLock, ArtifactBase,
    ArtifactFiles, FilesError, HealthCheck, HubKey, LockError, PointerError, PointerState,
    PointerStore, Rejection, SqlitePointers, StateVerifier, Untrusted, APPLY_ORDER,
};

/// The private folder blobs are checked in, inside the data folder (so on
/// the store's filesystem: handing them over is a rename).
const SCRATCH_PREFIX: &str = "bundle-import.";

/// The device a bundle is imported on.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// The agent's data folder (`pointers.sqlite`, `artifacts/`).
    pub data_dir: PathBuf,
    /// This device's fleet.
    pub fleet: FleetId,
    /// This device.
    pub device: DeviceId,
    /// The pinned hub key.
    pub hub_key: HubKey,
    /// See [`crate::AgentConfig::max_generation_jump`].
    pub max_generation_jump: u64,
}

/// Why a bundle was not imported. Nothing was applied; [`reason`](Self::reason)
/// is a stable label.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The archive itself is unreadable, truncated or malformed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The bundle holds no state for this device.
    #[error(
        "the bundle has no desired state for {device} (it was exported for {target}, devices: {devices}); \
         export one for this device (`outpost bundle export --device {device}`)"
    )]
    NotForThisDevice {
        /// This device.
        device: DeviceId,
        /// The header's target.
        target: String,
        /// The devices it lists.
        devices: String,
    },
    /// The state is not trusted (signature, target, generation).
    #[error("{0} (exported by another hub, or altered after export)")]
    Untrusted(#[from] Untrusted),
    /// This device already processed that generation.
    #[error("this device already processed {0}; nothing to import")]
    AlreadyApplied(Generation),
    /// This device processed a newer generation since the export.
    #[error("the bundle carries {offered}, but this device already processed {processed}; export a new bundle")]
    Stale {
        /// The bundle's generation.
        offered: Generation,
        /// The device's.
        processed: Generation,
    },
    /// One artifact failed its checks; nothing was applied.
    #[error("{kind} {name} {version}: {}: {}", .rejection.reason.as_str(), .rejection.detail)]
    Artifact {
        /// Its kind.
        kind: ArtifactKind,
        /// Its name.
        name: String,
        /// Its version.
        version: String,
        /// The check that failed.
        rejection: Rejection,
    },
    /// Another process applies in the data folder.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// The pointer database failed.
    #[error(transparent)]
    Pointers(#[from] PointerError),
    /// The artifact store failed.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The applier could not start.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The boot watchdog could not be armed for a new model.
    #[error("arming the boot watchdog for the imported model: {0}")]
    Boot(#[from] BootError),
    /// A file in the import folder could not be written or moved.
    #[error("bundle import folder {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Refusal {
    /// A stable label: the protocol's failure reason where one applies.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Read(ReadError::SizeMismatch { .. }) => FailureReason::SizeMismatch.as_str(),
            Refusal::Read(ReadError::Archive(_)) => "unreadable",
            Refusal::Read(_) => "malformed",
            Refusal::NotForThisDevice { .. } => "wrong_target",
            Refusal::Untrusted(u) => u.kind(),
            Refusal::AlreadyApplied(_) => "already_applied",
            Refusal::Stale { .. } => "stale",
            Refusal::Artifact { rejection, .. } => rejection.reason.as_str(),
            Refusal::Locked(_) => "locked",
            Refusal::Pointers(_)
            | Refusal::Files(_)
            | Refusal::Apply(_)
            | Refusal::Boot(_)
            | Refusal::Io { .. } => FailureReason::Storage.as_str(),
        }
    }
}

/// Removes the private import folder unless its files were handed over.
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the bundle import folder");
            }
        }
    }
}

/// A bundle whose state and blobs passed every check, with the data
/// folder locked until it is applied or dropped.
pub struct VerifiedBundle {
    target: ImportTarget,
    state: DesiredState,
    /// Verified blobs in the scratch folder, by digest.
    blobs: BTreeMap<ArtifactDigest, PathBuf>,
    active_model: Option<ArtifactDigest>,
    /// What serves now per kind (a slot left in trial counts as its
    /// previous version), with its store path.
    committed: Vec<(ArtifactRef, PathBuf)>,
    _scratch: Scratch,
    _lock: ApplyLock,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The generation imported.
    pub generation: Generation,
    /// The state the agent will report once it reaches the hub.
    pub reported: ReportedState,
    /// The kinds the bundle changed, with how each ended.
    pub outcomes: Vec<(ArtifactRef, ApplyOutcome)>,
}

impl Imported {
    /// Whether every kind the bundle changed was applied.
    pub fn all_applied(&self) -> bool {
        self.outcomes
            .iter()
            .all(|(_, outcome)| matches!(outcome, ApplyOutcome::Applied))
    }
}

/// Checks `bundle` for `target` without applying anything (see the module
/// doc).
pub fn prepare(target: &ImportTarget, bundle: &Path) -> Result<VerifiedBundle, Refusal> {
    let lock = ApplyLock::acquire(&target.data_dir)?;
    remove_abandoned_scratch(&target.data_dir);
    let file = File::open(bundle).map_err(|source| Refusal::Io {
        path: bundle.to_owned(),
        source,
    })?;
    let mut reader = BundleReader::new(BufReader::new(file))?;
    let Some(signed) = reader.state_for(&target.device)? else {
        let header = reader.header();
        return Err(Refusal::NotForThisDevice {
            device: target.device.clone(),
            target: header.target.clone(),
            devices: header
                .devices
                .iter()
                .take(20)
                .map(DeviceId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let pointers = read_pointers(&target.data_dir)?;
    let verifier = StateVerifier::new(
        target.hub_key,
        target.fleet.clone(),
        target.device.clone(),
        target.max_generation_jump,
    );
    let state = verifier.verify(signed, pointers.last_generation)?;
    match pointers.last_generation {
        Some(done) if done == state.generation => return Err(Refusal::AlreadyApplied(done)),
        Some(done) if done > state.generation => {
            return Err(Refusal::Stale {
                offered: state.generation,
                processed: done,
            })
        }
        _ => {}
    }
    // What serves once the applier starts: a slot a crash left in trial is
    // switched back first, so its previous version counts.
    let active = |kind| {
        pointers.slots.get(&kind).and_then(|s| {
            if s.trial {
                s.previous.as_ref()
            } else {
                Some(&s.current)
            }
        })
    };
    let files_root = target.data_dir.join("artifacts");
    let scratch = Scratch {
        dir: target
            .data_dir
            .join(format!("{SCRATCH_PREFIX}{}", std::process::id())),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Refusal::Io { path, source }
    };
    std::fs::create_dir_all(&scratch.dir).map_err(io(&scratch.dir))?;
    let mut blobs = BTreeMap::new();
    for kind in APPLY_ORDER {
        let Some(artifact) = state.artifacts.get(kind) else {
            continue;
        };
        if active(kind).is_some_and(|a| a.sha256 == artifact.sha256) {
            continue; // the reconciler skips it too
        }
        let refuse = |rejection: Rejection| Refusal::Artifact {
            kind,
            name: artifact.name.to_string(),
            version: artifact.version.to_string(),
            rejection,
        };
        if let Some(rejection) = below_floor(&pointers.floors, &state, kind, state.release(kind)) {
            return Err(refuse(rejection));
        }
        // The model this device runs once the bundle is in: the bundle's,
        // or the one the fleet committed before.
        let model = state
            .artifacts
            .get(ArtifactKind::Model)
            .or_else(|| active(ArtifactKind::Model));
        let base_path = match kind {
            ArtifactKind::Adapter => {
                if artifact.base_model != model.map(|m| m.sha256) {
                    return Err(refuse(Rejection::permanent(
                        FailureReason::BaseModelMismatch,
                        format!(
                            "trained on model {}, but this device will run {}; \
                             export the adapter with its model, or for devices on that model",
                            artifact
                                .base_model
                                .map_or_else(|| "none".into(), |d| d.to_string()),
                            model.map_or_else(
                                || "the model of its own configuration (no fleet model)".into(),
                                |m| format!("{} {} ({})", m.name, m.version, m.sha256)
                            ),
                        ),
                    )));
                }
                model.map(|m| {
                    blobs
                        .get(&m.sha256)
                        .cloned()
                        .unwrap_or_else(|| ArtifactFiles::store_path_in(&files_root, &m.sha256))
                })
            }
            _ => None,
        };
        let path = scratch.dir.join(artifact.sha256.to_string());
        let mut out = File::create(&path).map_err(io(&path))?;
        reader.copy_artifact(&artifact.sha256, artifact.size_bytes, &mut out)?;
        out.sync_all().map_err(io(&path))?;
        drop(out);
        // The very check a download passes before it may be installed.
        verify(artifact, &path, &target.hub_key, base_path.as_deref()).map_err(refuse)?;
        blobs.insert(artifact.sha256, path);
    }
    let committed = pointers
        .slots
        .values()
        .filter_map(|slot| {
            if slot.trial {
                slot.previous.clone()
            } else {
                Some(slot.current.clone())
            }
        })
        .map(|a| {
            let path = ArtifactFiles::store_path_in(&files_root, &a.sha256);
            (a, path)
        })
        .collect();
    Ok(VerifiedBundle {
        target: target.clone(),
        committed,
        active_model: active(ArtifactKind::Model).map(|m| m.sha256),
        state,
        blobs,
        _scratch: scratch,
        _lock: lock,
    })
}

/// Removes import folders an earlier import left when it was killed
/// (with the lock held, no other import is using one).
fn remove_abandoned_scratch(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(SCRATCH_PREFIX)) {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(%error, dir = %entry.path().display(), "cannot remove an abandoned bundle import folder");
            }
        }
    }
}

/// The pointer state, or the empty one of a device that never applied
/// anything (without creating its database).
fn read_pointers(data_dir: &Path) -> Result<PointerState, PointerError> {
    let db = data_dir.join("pointers.sqlite");
    if !db.exists() {
        return Ok(PointerState::default());
    }
    SqlitePointers::open(&db)?.load()
}

impl VerifiedBundle {
    /// The trusted desired state the bundle carries for this device.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// What the device serves now, per kind, with the installed file: the
    /// runtime that health-checks the import starts from these, as the
    /// agent does at start.
    pub fn committed(&self) -> &[(ArtifactRef, PathBuf)] {
        &self.committed
    }

    /// The artifacts the import changes (the others are active already).
    pub fn changes(&self) -> impl Iterator<Item = &ArtifactRef> {
        self.state
            .artifacts
            .iter()
            .filter(|a| self.blobs.contains_key(&a.sha256))
    }

    /// Applies the state through the [`Applier`] with `health` as the
    /// health check. `artifact_base` is the device's usual download base:
    /// every blob is staged, so nothing is downloaded.
    pub fn apply<H: HealthCheck>(
        self,
        health: H,
        artifact_base: ArtifactBase,
    ) -> Result<Imported, Refusal> {
        let root = self.target.data_dir.join("artifacts");
        let files = ArtifactFiles::open(&root)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Refusal::Io { path, source }
        };
        for (digest, path) in &self.blobs {
            let staged = files.staging_path(digest);
            std::fs::rename(path, &staged).map_err(io(&staged))?;
        }
        let staging_dir = files.staging_path(&ArtifactDigest::from_bytes([0; 32]));
        if let Some(dir) = staging_dir.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        let pointers = SqlitePointers::open(&self.target.data_dir.join("pointers.sqlite"))?;
        let mut applier = Applier::open(
            ApplierConfig {
                root: root.clone(),
                hub_key: self.target.hub_key,
                download: Default::default(),
                artifact_base,
            },
            pointers,
            health,
        )?;
        let generation = self.state.generation;
        let changed: Vec<ArtifactRef> = self.changes().cloned().collect();
        let reported = applier.apply(self.state.clone());
        // A blob the store already had was verified from there; its staged
        // copy is not needed.
        for digest in self.blobs.keys() {
            if ArtifactFiles::store_path_in(&root, digest).is_file() {
                files.discard_staged(digest)?;
            }
        }
        // The device serves a new model only after a restart, which the
        // boot watchdog guards as when the fleet switches the model.
        if let Some(model) = reported.active.get(ArtifactKind::Model) {
            if Some(model.sha256) != self.active_model {
                BootWatch::in_data_dir(&self.target.data_dir).arm(model)?;
            }
        }
        let outcomes = changed
            .into_iter()
            .map(|artifact| {
                let outcome = reported
                    .last_apply
                    .get(&artifact.kind)
                    .filter(|r| r.generation == generation && r.sha256 == artifact.sha256)
                    .map_or_else(
                        || ApplyOutcome::Failed {
                            reason: FailureReason::Other,
                            detail: outpost_protocol::redact("not applied").text,
                        },
                        |r| r.outcome.clone(),
                    );
                (artifact, outcome)
            })
            .collect();
        Ok(Imported {
            generation,
            reported,
            outcomes,
        })
    }
}
