//! Recordings and their transcript segments in the database: rows, the API shape, scoped reads,
//! storing a transcript, deletion and full-text search. Client scope is part of every query.

use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::permissions::{ClientScope, Permit};
use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::search::{TextIndex, index_text};
use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{
    ConnectionTrait, DatabaseBackend, QueryOrder, QuerySelect, Statement, Value as SqlValue,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::decode::AudioError;
use crate::transcribe::{Segment, Transcript};

/// A row of `recordings`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "recordings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub filename: String,
    pub source: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub storage_key: String,
    pub content_type: String,
    pub duration_s: Option<f64>,
    pub sample_rate: Option<i32>,
    pub channels: Option<i32>,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub language: Option<String>,
    pub model: Option<String>,
    pub job_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub transcribed_at: Option<DateTime<Utc>>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Recording statuses.
pub mod status {
    /// Stored; its transcription job waits.
    pub const QUEUED: &str = "queued";
    /// Being decoded and transcribed.
    pub const PROCESSING: &str = "processing";
    /// Transcribed.
    pub const READY: &str = "ready";
    /// Could not be transcribed; `error` says why.
    pub const FAILED: &str = "failed";
}

/// Where a recording came from.
pub mod source {
    /// An uploaded file.
    pub const UPLOAD: &str = "upload";
    /// A live capture over WebSocket.
    pub const LIVE: &str = "live";
}

/// A recording as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Recording {
    /// UUID v7.
    pub id: Uuid,
    /// The client it belongs to.
    pub client_id: Uuid,
    /// The uploaded file's name (`live-….wav` for a live capture).
    pub filename: String,
    /// `upload` or `live`.
    pub source: String,
    /// Size of the original file.
    pub size_bytes: i64,
    /// SHA-256 of the original, hex.
    pub sha256: String,
    /// Media type of the original.
    pub content_type: String,
    /// Duration in seconds, once decoded.
    pub duration_s: Option<f64>,
    /// The original's sample rate, once decoded.
    pub sample_rate: Option<i32>,
    /// The original's channels, once decoded.
    pub channels: Option<i32>,
    /// `queued`, `processing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed: `audio_unsupported`, `audio_corrupt`, `audio_too_long`, `model_missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AudioError>,
    /// The spoken language, once transcribed.
    pub language: Option<String>,
    /// The speech model that transcribed it.
    pub model: Option<String>,
    /// The transcription job.
    pub job_id: Option<Uuid>,
    /// Who uploaded or recorded it.
    pub created_by: Option<Uuid>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// When the transcript was made.
    pub transcribed_at: Option<DateTime<Utc>>,
}

impl From<Model> for Recording {
    fn from(m: Model) -> Self {
        let error = m.error_code.map(|code| AudioError {
            code,
            message: m.error_message.unwrap_or_default(),
        });
        Self {
            id: m.id,
            client_id: m.client_id,
            filename: m.filename,
            source: m.source,
            size_bytes: m.size_bytes,
            sha256: m.sha256,
            content_type: m.content_type,
            duration_s: m.duration_s,
            sample_rate: m.sample_rate,
            channels: m.channels,
            status: m.status,
            error,
            language: m.language,
            model: m.model,
            job_id: m.job_id,
            created_by: m.created_by,
            created_at: m.created_at,
            transcribed_at: m.transcribed_at,
        }
    }
}

/// One search hit: a time span of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// The recording.
    pub recording_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// Start of the segment, in seconds.
    pub start: f64,
    /// End of the segment, in seconds.
    pub end: f64,
    /// An HTML-escaped excerpt with hits in `<mark>`.
    pub snippet: String,
    /// Relevance; higher is better.
    pub score: f64,
}

/// Finds a recording by id, if it exists, without scope checks.
pub async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<Option<Model>, Error> {
    Ok(Entity::find_by_id(id).one(conn).await?)
}

/// A recording the permit's scope covers; 404 otherwise (with a denied event when it exists).
pub async fn scoped(core: &Core, permit: &Permit, id: Uuid) -> Result<Model, Error> {
    let found = find(core.db.reader(), id).await?;
    agentdesk_agent_sdk::scoped_row(core, permit, "recording", id, found, |m| m.client_id).await
}

/// A client's recordings, newest first.
pub async fn list(
    core: &Core,
    client_id: Uuid,
    request: PageRequest,
) -> Result<Page<Recording>, Error> {
    let mut query = Entity::find()
        .filter(Column::ClientId.eq(client_id))
        .order_by_desc(Column::Id)
        .limit(request.limit + 1);
    if let Some(after) = request.after {
        query = query.filter(Column::Id.lt(after));
    }
    let rows = query.all(core.db.reader()).await?;
    Ok(Page::from_rows(rows, request, |m| m.id).map(Recording::from))
}

/// The transcript of a recording, from its segments.
pub async fn transcript(core: &Core, recording: &Model) -> Result<Transcript, Error> {
    let rows = core
        .db
        .reader()
        .query_all_raw(Statement::from_sql_and_values(
            core.db.backend(),
            "SELECT start_s, end_s, text FROM recording_segments WHERE recording_id = $1 ORDER BY number",
            [recording.id.into()],
        ))
        .await?;
    let segments = rows
        .iter()
        .map(|r| {
            Ok(Segment {
                start: r.try_get("", "start_s")?,
                end: r.try_get("", "end_s")?,
                text: r.try_get("", "text")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    Ok(Transcript {
        language: recording.language.clone(),
        segments,
    })
}

/// Marks a recording `processing` (its job has started).
pub async fn mark_processing(conn: &impl ConnectionTrait, id: Uuid) -> Result<(), Error> {
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status::PROCESSING))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.is_in([status::QUEUED, status::PROCESSING]))
        .exec(conn)
        .await?;
    Ok(())
}

/// Facts of the decoded original.
#[derive(Debug, Clone, Copy)]
pub struct AudioFacts {
    /// Duration in seconds.
    pub duration_s: f64,
    /// The original's sample rate.
    pub sample_rate: u32,
    /// The original's channels.
    pub channels: u16,
}

/// Segments written per INSERT statement.
const SEGMENT_BATCH: usize = 100;

/// Stores a transcript (replacing any from an earlier attempt) and marks the recording `ready`.
/// Returns `false` when the recording is gone (deleted meanwhile).
pub async fn store_transcript(
    conn: &impl ConnectionTrait,
    recording: &Model,
    facts: AudioFacts,
    transcript: &Transcript,
    model: &str,
) -> Result<bool, Error> {
    if !lock_row(conn, recording.id).await? {
        return Ok(false);
    }
    let backend = conn.get_database_backend();
    conn.execute_raw(Statement::from_sql_and_values(
        backend,
        "DELETE FROM recording_segments WHERE recording_id = $1",
        [recording.id.into()],
    ))
    .await?;
    for (batch_index, batch) in transcript.segments.chunks(SEGMENT_BATCH).enumerate() {
        let mut sql = String::from(
            "INSERT INTO recording_segments (recording_id, client_id, number, start_s, end_s, text, search_text) VALUES ",
        );
        let mut values: Vec<SqlValue> = Vec::with_capacity(batch.len() * 7);
        for (i, segment) in batch.iter().enumerate() {
            let base = i * 7;
            if i > 0 {
                sql.push(',');
            }
            let placeholders: Vec<String> = (1..=7).map(|k| format!("${}", base + k)).collect();
            sql.push_str(&format!("({})", placeholders.join(", ")));
            let number = batch_index * SEGMENT_BATCH + i + 1;
            values.push(recording.id.into());
            values.push(recording.client_id.into());
            values.push(i32::try_from(number).unwrap_or(i32::MAX).into());
            values.push(segment.start.into());
            values.push(segment.end.into());
            values.push(segment.text.clone().into());
            values.push(index_text(&segment.text).into());
        }
        conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
    }
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status::READY))
        .col_expr(Column::ErrorCode, Expr::value(None::<String>))
        .col_expr(Column::ErrorMessage, Expr::value(None::<String>))
        .col_expr(Column::DurationS, Expr::value(Some(facts.duration_s)))
        .col_expr(
            Column::SampleRate,
            Expr::value(Some(facts.sample_rate as i32)),
        )
        .col_expr(
            Column::Channels,
            Expr::value(Some(i32::from(facts.channels))),
        )
        .col_expr(Column::Language, Expr::value(transcript.language.clone()))
        .col_expr(Column::Model, Expr::value(Some(model.to_owned())))
        .col_expr(Column::TranscribedAt, Expr::value(Some(Utc::now())))
        .filter(Column::Id.eq(recording.id))
        .exec(conn)
        .await?;
    Ok(true)
}

/// Marks a recording failed with `error` (and what is known of the audio). Returns `false` when
/// the recording is gone.
pub async fn store_failure(
    conn: &impl ConnectionTrait,
    id: Uuid,
    error: &AudioError,
    facts: Option<AudioFacts>,
) -> Result<bool, Error> {
    if !lock_row(conn, id).await? {
        return Ok(false);
    }
    let mut update = Entity::update_many()
        .col_expr(Column::Status, Expr::value(status::FAILED))
        .col_expr(Column::ErrorCode, Expr::value(Some(error.code.clone())))
        .col_expr(
            Column::ErrorMessage,
            Expr::value(Some(error.message.clone())),
        );
    if let Some(facts) = facts {
        update = update
            .col_expr(Column::DurationS, Expr::value(Some(facts.duration_s)))
            .col_expr(
                Column::SampleRate,
                Expr::value(Some(facts.sample_rate as i32)),
            )
            .col_expr(
                Column::Channels,
                Expr::value(Some(i32::from(facts.channels))),
            );
    }
    update.filter(Column::Id.eq(id)).exec(conn).await?;
    Ok(true)
}

/// Locks the recording's row for the rest of the transaction (PostgreSQL; SQLite's writer is
/// alone anyway); `false` when it does not exist.
async fn lock_row(conn: &impl ConnectionTrait, id: Uuid) -> Result<bool, Error> {
    let backend = conn.get_database_backend();
    let lock = if backend == DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    Ok(conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            format!("SELECT id FROM recordings WHERE id = $1{lock}"),
            [id.into()],
        ))
        .await?
        .is_some())
}

/// Deletes the recording's rows (segments and their index entries first).
pub async fn delete_rows(conn: &impl ConnectionTrait, id: Uuid) -> Result<(), Error> {
    conn.execute_raw(Statement::from_sql_and_values(
        conn.get_database_backend(),
        "DELETE FROM recording_segments WHERE recording_id = $1",
        [id.into()],
    ))
    .await?;
    Entity::delete_by_id(id).exec(conn).await?;
    Ok(())
}

/// The index over transcript segments.
const SEGMENTS: TextIndex = TextIndex {
    table: "recording_segments",
    fts_table: "recording_segments_fts",
    columns: &["recording_id", "start_s", "end_s"],
};

/// Ranked full-text search over the transcript segments of recordings in `scope` (and of
/// `client_id`, when given).
pub async fn search(
    core: &Core,
    scope: &ClientScope,
    client_id: Option<Uuid>,
    query: &str,
    limit: u64,
    cursor: Option<&str>,
) -> Result<Page<SearchHit>, Error> {
    let page = agentdesk_agent_sdk::search::search(
        core, &SEGMENTS, scope, client_id, query, limit, cursor,
    )
    .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for hit in page.items {
        items.push(SearchHit {
            recording_id: hit.row.try_get("", "recording_id")?,
            client_id: hit.client_id,
            start: hit.row.try_get("", "start_s")?,
            end: hit.row.try_get("", "end_s")?,
            snippet: hit.snippet,
            score: hit.score,
        });
    }
    Ok(Page {
        items,
        next_cursor: page.next_cursor,
    })
}

/// A new recording row, as stored.
pub struct NewRecording<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// The file name to show.
    pub filename: &'a str,
    /// `upload` or `live`.
    pub source: &'a str,
    /// The media type of the stored original.
    pub content_type: &'a str,
    /// Who made it.
    pub created_by: Uuid,
    /// Its transcription job.
    pub job_id: Uuid,
}

impl NewRecording<'_> {
    /// The row to insert.
    pub fn row(&self, stored: &agentdesk_agent_sdk::core::storage::StoredFile) -> ActiveModel {
        use sea_orm::Set;
        ActiveModel {
            id: Set(self.id),
            client_id: Set(self.client_id),
            filename: Set(self.filename.to_owned()),
            source: Set(self.source.to_owned()),
            size_bytes: Set(i64::try_from(stored.size).unwrap_or(i64::MAX)),
            sha256: Set(stored.sha256.clone()),
            storage_key: Set(stored.key.clone()),
            content_type: Set(self.content_type.to_owned()),
            duration_s: Set(None),
            sample_rate: Set(None),
            channels: Set(None),
            status: Set(status::QUEUED.to_owned()),
            error_code: Set(None),
            error_message: Set(None),
            language: Set(None),
            model: Set(None),
            job_id: Set(Some(self.job_id)),
            created_by: Set(Some(self.created_by)),
            created_at: Set(Utc::now()),
            transcribed_at: Set(None),
        }
    }
}

/// The JSON the audit log keeps of a recording (no words).
pub fn audit_view(r: &Model) -> Value {
    json!({
        "filename": r.filename,
        "source": r.source,
        "size_bytes": r.size_bytes,
        "sha256": r.sha256,
        "status": r.status,
        "client_id": r.client_id,
    })
}
