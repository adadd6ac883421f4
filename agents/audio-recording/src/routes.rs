//! The routes this agent contributes: upload (a job), live capture (WebSocket), list, read,
//! transcript (json, txt, srt, vtt), the original audio, search and delete, each behind
//! `agent:audio_recording` and the caller's client scope, audited.

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::core::services::permissions::Permit;
use agentdesk_agent_sdk::core::storage::StoredFile;
use agentdesk_agent_sdk::http::extractors::{AppJson, AppMultipart, AppQuery, Authorized};
use agentdesk_agent_sdk::http::problem::{ApiError, ApiResult, Problem};
use agentdesk_agent_sdk::http::{
    attachment_response, bad_multipart, clean_filename, read_head, store_upload,
    unsupported_media_type, with_head,
};
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use sea_orm::ActiveModelTrait;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::decode::{SNIFF_BYTES, sniff};
use crate::formats;
use crate::process::TranscribeArgs;
use crate::recordings::{self, NewRecording, Recording, SearchHit, audit_view};
use crate::transcribe::Transcript;
use crate::{NAME, TRANSCRIBE};

agentdesk_agent_sdk::requirements! {
    /// `agent:audio_recording` `read`, within the caller's client scope.
    AudioRead = "agent:audio_recording", "read", SomeClients;
    /// `agent:audio_recording` `record`, within the caller's client scope.
    AudioRecord = "agent:audio_recording", "record", SomeClients;
    /// `agent:audio_recording` `delete`, within the caller's client scope.
    AudioDelete = "agent:audio_recording", "delete", SomeClients;
}

/// The routes this agent contributes, over any state that holds the core.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
{
    let upload = OpenApiRouter::new()
        .routes(routes!(upload, list))
        .layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(get_recording, delete_recording))
        .routes(routes!(transcript))
        .routes(routes!(audio))
        .routes(routes!(crate::live::live))
        .merge(upload)
}

/// Creates a stored recording's row and its transcription job in one transaction, audited as
/// `action`; the stored file is removed again when that fails.
pub(crate) async fn create_recording(
    core: &Core,
    permit: &Permit,
    new: NewRecording<'_>,
    stored: &StoredFile,
    action: &str,
) -> Result<recordings::Model, ApiError> {
    let mut job = NewJob::new(
        NAME,
        TRANSCRIBE,
        serde_json::to_value(TranscribeArgs {
            recording_id: new.id,
        })
        .map_err(agentdesk_agent_sdk::core::Error::internal)?,
    );
    job.act_for(permit.actor());
    job.client_id = Some(new.client_id);
    job.max_attempts = 3;
    let result = async {
        let txn = core.db.begin().await?;
        let job = core.enqueue(&txn, job).await?;
        let new = NewRecording {
            job_id: job.id,
            ..new
        };
        let row = new.row(stored).insert(&txn).await?;
        let record = permit
            .audit(action, Outcome::Success)
            .resource("recording", row.id)
            .client(Some(row.client_id))
            .changes(serde_json::json!({"before": null, "after": audit_view(&row)}));
        core.append(&txn, record).await?;
        txn.commit().await?;
        Ok::<_, agentdesk_agent_sdk::core::Error>(row)
    }
    .await;
    match result {
        Ok(row) => {
            core.wake_workers().await;
            Ok(row)
        }
        Err(e) => {
            // Nothing refers to the stored file; do not leave it behind.
            let _ = core.storage.delete(&stored.key).await;
            Err(e.into())
        }
    }
}

/// Upload a recording for a client: multipart field `file`. Whatever its name, its bytes must
/// be audio this server reads (WAV, MP3, OGG/Vorbis, FLAC, AAC/M4A); it is decoded and
/// transcribed by a job.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/recordings", tag = "audio_recording",
    params(("client_id" = Uuid, Path, description = "The client")),
    request_body(content = agentdesk_agent_sdk::http::FileUpload, content_type = "multipart/form-data", description = "field `file`: the audio"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The recording, queued for transcription", body = Recording),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not audio this server reads", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No `file` field", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn upload(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRecord>,
    Path(client_id): Path<Uuid>,
    AppMultipart(mut multipart): AppMultipart,
) -> ApiResult<Response> {
    core.scoped_client(&permit, client_id).await?;
    let limit = core.settings.max_upload_mb * 1024 * 1024;
    let mut stored = None;
    while let Some(field) = multipart.next_field().await.map_err(bad_multipart)? {
        if field.name() != Some("file") {
            continue;
        }
        let filename = clean_filename(field.file_name(), "recording");
        let mut body = field.map_err(std::io::Error::other);
        let head = read_head(&mut body, SNIFF_BYTES).await?;
        let Some(container) = sniff(&head) else {
            return Err(unsupported_media_type(
                "the file is no audio this server reads (WAV, MP3, OGG/Vorbis, FLAC, AAC/M4A)",
            ));
        };
        stored = Some((
            filename,
            container,
            store_upload(&core, "recordings", with_head(head, body), limit).await?,
        ));
        break;
    }
    let (filename, container, stored) = stored.ok_or_else(|| {
        agentdesk_agent_sdk::core::Error::invalid(
            "file",
            "a multipart field named `file` is required",
        )
    })?;
    let new = NewRecording {
        id: Uuid::now_v7(),
        client_id,
        filename: &filename,
        source: recordings::source::UPLOAD,
        content_type: container.content_type(),
        created_by: permit.user().id,
        job_id: Uuid::nil(),
    };
    let row = create_recording(&core, &permit, new, &stored, "recording.upload").await?;
    let mut response =
        (StatusCode::ACCEPTED, AppJson(Recording::from(row.clone()))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/recordings/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Page options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Rows per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// A client's recordings, newest first.
#[utoipa::path(get, path = "/api/v1/clients/{client_id}/recordings", tag = "audio_recording",
    params(("client_id" = Uuid, Path, description = "The client"), ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of recordings", body = Page<Recording>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRead>,
    Path(client_id): Path<Uuid>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<AppJson<Page<Recording>>> {
    let request = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    core.scoped_client(&permit, client_id).await?;
    Ok(AppJson(recordings::list(&core, client_id, request).await?))
}

/// A recording: status, duration, language.
#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "audio_recording",
    params(("id" = Uuid, Path, description = "The recording")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The recording", body = Recording),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such recording in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get_recording(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<AppJson<Recording>> {
    Ok(AppJson(
        recordings::scoped(&core, &permit, id).await?.into(),
    ))
}

/// The transcript's formats.
const TRANSCRIPT_FORMATS: [&str; 4] = ["json", "txt", "srt", "vtt"];

fn transcript_format_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::choice_schema(&TRANSCRIPT_FORMATS)
}

/// Which form of the transcript.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranscriptQuery {
    /// `json` (default), `txt`, `srt` or `vtt`.
    #[param(schema_with = transcript_format_schema)]
    pub format: Option<String>,
}

/// The transcript of a recording that is `ready`: JSON segments, plain text, SubRip or WebVTT.
#[utoipa::path(get, path = "/api/v1/recordings/{id}/transcript", tag = "audio_recording",
    params(("id" = Uuid, Path, description = "The recording"), TranscriptQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The transcript",
            content((Transcript = "application/json"), (String = "text/plain"), (String = "application/x-subrip"), (String = "text/vtt"))),
        (status = 404, description = "No such recording in scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not transcribed (yet)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn transcript(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRead>,
    Path(id): Path<Uuid>,
    AppQuery(query): AppQuery<TranscriptQuery>,
) -> ApiResult<Response> {
    let format = query.format.unwrap_or_else(|| "json".into());
    if !TRANSCRIPT_FORMATS.contains(&format.as_str()) {
        return Err(agentdesk_agent_sdk::core::Error::invalid(
            "format",
            format!("must be one of {}", TRANSCRIPT_FORMATS.join(", ")),
        )
        .into());
    }
    let recording = recordings::scoped(&core, &permit, id).await?;
    if recording.status != recordings::status::READY {
        return Err(agentdesk_agent_sdk::core::Error::Conflict(format!(
            "the recording is {}; its transcript exists once it is ready",
            recording.status
        ))
        .into());
    }
    let transcript = recordings::transcript(&core, &recording).await?;
    let (content_type, body) = match format.as_str() {
        "txt" => ("text/plain; charset=utf-8", formats::txt(&transcript)),
        "srt" => (
            "application/x-subrip; charset=utf-8",
            formats::srt(&transcript),
        ),
        "vtt" => ("text/vtt; charset=utf-8", formats::vtt(&transcript)),
        _ => return Ok(AppJson(transcript).into_response()),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The original audio file (the download is audited).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/audio", tag = "audio_recording",
    params(("id" = Uuid, Path, description = "The recording")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The audio as uploaded (a live capture: 16 kHz mono WAV)", body = Vec<u8>, content_type = "audio/*"),
        (status = 404, description = "No such recording in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn audio(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let recording = recordings::scoped(&core, &permit, id).await?;
    let stream = core.storage.get_stream(&recording.storage_key).await?;
    // Recordings of a client's voice leave the system here: who took which is worth a record.
    let record = permit
        .audit("recording.download", Outcome::Success)
        .resource("recording", id)
        .client(Some(recording.client_id))
        .changes(
            serde_json::json!({"sha256": recording.sha256, "size_bytes": recording.size_bytes}),
        );
    core.audit_alone(record).await?;
    Ok(attachment_response(
        stream,
        &recording.content_type,
        recording.size_bytes,
        &recording.filename,
    ))
}

/// Search options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (all of them).
    #[param(required = true, min_length = 1)]
    pub q: Option<String>,
    /// Only this client's recordings.
    pub client_id: Option<Uuid>,
    /// Hits per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::number_cursor_schema)]
    pub cursor: Option<String>,
}

/// Ranked full-text search over the transcripts of the recordings in the caller's scope: each
/// hit is a time span of a recording.
#[utoipa::path(get, path = "/api/v1/recordings/search", tag = "audio_recording", params(SearchQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of hits, best first", body = Page<SearchHit>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No query", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn search(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioRead>,
    AppQuery(query): AppQuery<SearchQuery>,
) -> ApiResult<AppJson<Page<SearchHit>>> {
    let request = PageRequest::parse(query.limit, None)?;
    let q = query.q.unwrap_or_default();
    if let Some(client) = query.client_id {
        core.scoped_client(&permit, client).await?;
    }
    Ok(AppJson(
        recordings::search(
            &core,
            permit.scope(),
            query.client_id,
            &q,
            request.limit,
            query.cursor.as_deref(),
        )
        .await?,
    ))
}

/// Delete a recording: its audio, its transcript and their index entries.
#[utoipa::path(delete, path = "/api/v1/recordings/{id}", tag = "audio_recording",
    params(("id" = Uuid, Path, description = "The recording")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such recording in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete_recording(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<AudioDelete>,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let recording = recordings::scoped(&core, &permit, id).await?;
    let txn = core.db.begin().await?;
    recordings::delete_rows(&txn, id).await?;
    let record = permit
        .audit("recording.delete", Outcome::Success)
        .resource("recording", id)
        .client(Some(recording.client_id))
        .changes(serde_json::json!({"before": audit_view(&recording), "after": null}));
    core.append(&txn, record).await?;
    txn.commit()
        .await
        .map_err(|e| ApiError::from(agentdesk_agent_sdk::core::Error::from(e)))?;
    if let Err(e) = core.storage.delete(&recording.storage_key).await {
        tracing::warn!(error = %e, key = %recording.storage_key, "could not delete a recording's file");
    }
    Ok(StatusCode::NO_CONTENT)
}
