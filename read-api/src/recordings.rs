//! A recording's file, `GET /v1.0/recordings/{id}/file` (`audio/wav`, 16-bit stereo, 16 kHz: left = what the
//! far end sent, right = what the platform sent), streamed from the recordings store.

use crate::page::ReadState;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::sync::Arc;
use uuid::Uuid;
use vbin_http::extract::{CustomerCaller, Path};
use vbin_http::ApiError;
use vbin_storage::wav::{patch_header, HEADER_LEN};
use vbin_storage::StorageError;

/// `GET /v1.0/recordings/{id}/file`: the WAV file, streamed (404 while it is recording, when
/// nothing was stored, or after it was deleted).
pub async fn get_recording_file(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::invalid("recording id must be a UUID"))?;
    let file: Option<String> = sqlx::query_scalar(
        "SELECT file FROM recording_files WHERE recording_id = $1 AND customer_id = $2",
    )
    .bind(id)
    .bind(c.customer_id.as_uuid())
    .fetch_optional(s.db(c.customer_id.as_uuid()).await)
    .await
    .map_err(|e| ApiError::unavailable("reading the read model", e))?;
    let Some(file) = file else {
        return Err(ApiError::not_found("recording file"));
    };
    let Some(store) = &s.store else {
        return Err(ApiError::not_found("recording file"));
    };
    let (size, mut stream) = match store.read(&file).await {
        Ok(r) => r,
        Err(StorageError::NotFound) => return Err(ApiError::not_found("recording file")),
        Err(e) => return Err(ApiError::unavailable("reading the recordings store", e)),
    };
    // The stored header has placeholder sizes (written before the length was known): set the
    // real ones from the object's size.
    let mut head = BytesMut::new();
    while head.len() < HEADER_LEN {
        match stream.next().await {
            Some(Ok(b)) => head.extend_from_slice(&b),
            Some(Err(e)) => return Err(ApiError::unavailable("reading the recordings store", e)),
            None => break,
        }
    }
    patch_header(&mut head, size);
    let first = futures::stream::once(async move { Ok::<Bytes, StorageError>(head.freeze()) });
    let body = Body::from_stream(first.chain(stream));
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.wav\""),
            ),
        ],
        body,
    )
        .into_response())
}
