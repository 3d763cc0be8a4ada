//! The device-facing routes: artifact downloads (resumable with `Range`)
//! behind the device's credentials.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use outpost_protocol::ArtifactDigest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{secret_matches, ApiError, App, AppState};
use crate::artifacts::{parse_range, ByteRange};

/// Compared against when the username is unknown, so an unknown and a
/// known user take the same time.
const NO_SUCH_USER: &[u8] = b"\0no such user";

/// Lets a download through when downloads are open, when it carries HTTP
/// Basic credentials of a listed user (a device id and its MQTT password,
/// or the hub's own broker user), or the admin token as a bearer (the
/// hub's own tools).
fn check_download(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.download_credentials.is_empty() {
        return Ok(());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::DownloadUnauthorized)?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or(ApiError::DownloadUnauthorized)?;
    let allowed = if scheme.eq_ignore_ascii_case("basic") {
        basic_allowed(app, rest.trim())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        app.admin_token
            .as_ref()
            .is_some_and(|t| secret_matches(rest.trim().as_bytes(), t.expose().as_bytes()))
    } else {
        false
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::DownloadUnauthorized)
    }
}

fn basic_allowed(app: &AppState, encoded: &str) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let expected = std::str::from_utf8(user)
        .ok()
        .and_then(|u| app.download_credentials.get(u));
    let matches = secret_matches(
        password,
        expected.map_or(NO_SUCH_USER, |s| s.expose().as_bytes()),
    );
    matches && expected.is_some()
}

pub(super) async fn download(
    State(app): State<App>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_download(&app, &headers)?;
    // Parsing the digest first also keeps the path inside the store.
    let digest: ArtifactDigest = digest
        .parse()
        .map_err(|_| ApiError::NotFound("no such artifact".into()))?;
    let path = app.artifacts.path_for(&digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("no artifact {digest}")))
        }
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    }
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    response
        .body(Body::from_stream(ReaderStream::new(file.take(len))))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
