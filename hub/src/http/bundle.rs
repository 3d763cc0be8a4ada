//! `GET /admin/bundle?device=…|tag=…`: an offline bundle of the stored
//! desired states of a device or of every device carrying a tag, with the
//! artifacts they name (see [`crate::bundle`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use outpost_protocol::DeviceId;
use tokio_util::io::ReaderStream;

use super::admin::check_admin;
use super::{ApiError, App};
use crate::assign::{Tag, Target};
use crate::bundle::{write_bundle, BundleContents, BundleError};

pub(super) async fn export(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_admin(&app, &headers)?;
    let target = match (query.get("device"), query.get("tag")) {
        (Some(d), None) => {
            Target::Device(DeviceId::parse(d).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        (None, Some(t)) => {
            Target::Tag(Tag::parse(t).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `device` and `tag`".into(),
            ))
        }
    };
    let devices = match &target {
        Target::Device(d) => vec![d.clone()],
        Target::Tag(t) => {
            let tag = t.as_str().to_owned();
            app.ctx
                .store
                .call(move |s| s.devices_with_tag(&tag))
                .await?
        }
    };
    let mut states = Vec::with_capacity(devices.len());
    for device in devices {
        let d = device.clone();
        match app.ctx.store.call(move |s| s.desired(&d)).await? {
            // Signed as for `state/desired`: the same bytes the device
            // would verify had it been online.
            Some(state) => {
                states.push(app.ctx.signer.sign_desired(&app.ctx.fleet, &device, &state))
            }
            None => tracing::info!(%device, "no desired state; left out of the bundle"),
        }
    }
    if states.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no device of {target} has a desired state; assign artifacts first \
             (`outpost fleet assign`, or `outpost bundle export --artifact`)"
        )));
    }
    let contents = BundleContents {
        target: target.to_string(),
        states,
        hub_key: app.ctx.signer.public_key_hex(),
        created_unix_ms: crate::now_unix_ms(),
    };
    let devices = contents.states.len();
    let scratch = app.artifacts.scratch_path("bundle");
    let app2 = app.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = (|| {
            let file = std::fs::File::create(&scratch).map_err(|source| BundleError::Io {
                path: scratch.clone(),
                source,
            })?;
            write_bundle(&file, &scratch, &contents, |d| app2.artifacts.path_for(d))?;
            // Served from the open handle; the name goes at once, so
            // nothing is left behind by a client that stops reading.
            let reader = std::fs::File::open(&scratch).map_err(|source| BundleError::Io {
                path: scratch.clone(),
                source,
            })?;
            let len = reader
                .metadata()
                .map_err(|source| BundleError::Io {
                    path: scratch.clone(),
                    source,
                })?
                .len();
            Ok((reader, len))
        })();
        let _ = std::fs::remove_file(&scratch);
        result
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (reader, len) = written.map_err(|e| match e {
        BundleError::MissingArtifact { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })?;
    tracing::info!(%target, devices, bytes = len, "offline bundle exported");
    let file_name = format!("outpost-{}.bundle", target.to_string().replace(':', "-"));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .body(Body::from_stream(ReaderStream::new(
            tokio::fs::File::from_std(reader),
        )))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
