//! File storage: a local directory by default, or S3-compatible object storage, through
//! `object_store`. Files are keyed by UUID, never by a user's file name (no path traversal).
//! Uploads are streamed: the SHA-256 is computed and the size limit enforced on the way, so a
//! file is never held whole in memory.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayloadMut};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Where files live.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The folder of a `file://` store (bulk readers such as backups read it directly).
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Its key in the store.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Over the size limit (the partial upload was removed).
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's stream broke.
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Each part of a multipart upload but the last: S3's minimum, and one size for all of them
/// (some S3-compatible stores require equal parts).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts sent at once: memory stays under `(PARTS_IN_FLIGHT + 1) × PART_SIZE` per upload.
const PARTS_IN_FLIGHT: usize = 4;

fn store_error(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound("file"),
        other => Error::Unavailable(format!("storage: {other}")),
    }
}

/// One finished part's outcome (a part's task that panicked or was cancelled is a failure too).
fn part_result(
    joined: std::result::Result<object_store::Result<()>, tokio::task::JoinError>,
) -> std::result::Result<(), UploadError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(store_error(e).into()),
        Err(e) => Err(Error::Unavailable(format!("storage: an upload part failed: {e}")).into()),
    }
}

impl Storage {
    /// Opens the store named by a `file://` or `s3://bucket/prefix` URL.
    pub fn open(url: &str) -> Result<Self> {
        let config = |message: String| Error::Config {
            key: "storage_url".into(),
            message,
        };
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir)
                .map_err(|e| config(format!("cannot create {dir}: {e}")))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| config(e.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::default(),
                local_root: Some(std::path::PathBuf::from(dir)),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            #[cfg(feature = "s3")]
            {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(config("s3:// needs a bucket name".into()));
                }
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| config(e.to_string()))?;
                return Ok(Self {
                    store: Arc::new(store),
                    prefix: Path::from(prefix),
                    local_root: None,
                });
            }
            #[cfg(not(feature = "s3"))]
            {
                let _ = rest;
                return Err(config(
                    "this build has no S3 support (cargo feature `s3`)".into(),
                ));
            }
        }
        Err(config("must start with file:// or s3://".into()))
    }

    fn path(&self, key: &str) -> Path {
        // `Path::from` splits on `/`, so `folder/uuid` stays two segments (child() would
        // escape the slash into one).
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Streams `body` into a new object under `<folder>/<uuid>`, hashing and counting on the
    /// way; more than `limit` bytes aborts the upload and removes what was written.
    pub async fn put_stream<S, E>(
        &self,
        folder: &str,
        body: S,
        limit: u64,
    ) -> std::result::Result<StoredFile, UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = format!("{folder}/{}", Uuid::now_v7());
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        self.write_multipart(&self.path(&key), body, |chunk| {
            size += chunk.len() as u64;
            if size > limit {
                return Err(UploadError::TooLarge { limit });
            }
            hasher.update(chunk);
            Ok(())
        })
        .await?;
        Ok(StoredFile {
            key,
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Streams `body` into the object at `path` in parts of [`PART_SIZE`], [`PARTS_IN_FLIGHT`] at
    /// once; `inspect` sees each chunk first and can stop the upload. Any failure (the body's,
    /// `inspect`'s, the store's on any part or at completion) aborts the upload, so that no part
    /// of the object is left behind. (object_store's `WriteMultipart` does not abort when a
    /// part's failure surfaces only in its `finish`.)
    async fn write_multipart<S, E>(
        &self,
        path: &Path,
        body: S,
        mut inspect: impl FnMut(&Bytes) -> std::result::Result<(), UploadError>,
    ) -> std::result::Result<(), UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut upload = self.store.put_multipart(path).await.map_err(store_error)?;
        let mut in_flight = tokio::task::JoinSet::new();
        let written = async {
            let mut buffer = PutPayloadMut::new();
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                let mut chunk = chunk.map_err(|e| UploadError::Interrupted(e.to_string()))?;
                inspect(&chunk)?;
                while !chunk.is_empty() {
                    let take = chunk.len().min(PART_SIZE - buffer.content_length());
                    buffer.push(chunk.split_to(take));
                    if buffer.content_length() == PART_SIZE {
                        let part = std::mem::take(&mut buffer).freeze();
                        in_flight.spawn(upload.put_part(part));
                        if in_flight.len() >= PARTS_IN_FLIGHT
                            && let Some(joined) = in_flight.join_next().await
                        {
                            part_result(joined)?;
                        }
                    }
                }
            }
            if !buffer.is_empty() {
                in_flight.spawn(upload.put_part(buffer.freeze()));
            }
            while let Some(joined) = in_flight.join_next().await {
                part_result(joined)?;
            }
            upload.complete().await.map_err(store_error)?;
            Ok(())
        }
        .await;
        if written.is_err() {
            in_flight.shutdown().await;
            let _ = upload.abort().await;
        }
        written
    }

    /// Stores bytes already in memory (small generated files).
    pub async fn put_bytes(&self, folder: &str, bytes: Bytes) -> Result<StoredFile> {
        let key = format!("{folder}/{}", Uuid::now_v7());
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.store
            .put(&self.path(&key), bytes.into())
            .await
            .map_err(store_error)?;
        Ok(StoredFile { key, size, sha256 })
    }

    /// The object's bytes as a stream.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static>
    {
        let result = self.store.get(&self.path(key)).await.map_err(store_error)?;
        Ok(result
            .into_stream()
            .map(|r| r.map_err(std::io::Error::other)))
    }

    /// Stores a stream under the given key (a restore puts files back where they were).
    pub async fn put_stream_at<S, E>(&self, key: &str, body: S) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.write_multipart(&self.path(key), body, |_| Ok(()))
            .await
            .map_err(|e| match e {
                UploadError::Store(e) => e,
                other => Error::Unavailable(format!("storage: {other}")),
            })
    }

    /// Every object's key (relative to the store's prefix) and size, sorted by key.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            let location = meta.location.as_ref();
            let key = match prefix {
                Some(p) => location
                    .strip_prefix(p.as_ref())
                    .map(|rest| rest.trim_start_matches('/'))
                    .unwrap_or(location),
                None => location,
            };
            objects.push((key.to_owned(), meta.size));
        }
        objects.sort();
        Ok(objects)
    }

    /// The file that holds `key`, for a local store (None for S3). Keys are our own
    /// (`folder/uuid`), never a user's file name.
    pub fn local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        let root = self.local_root.as_ref()?;
        (!key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".."))
        .then(|| root.join(key))
    }

    /// Removes an object (missing is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_in_hashes_and_enforces_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
        let chunks = vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let stored = storage
            .put_stream("t", futures::stream::iter(chunks), 100)
            .await
            .unwrap();
        assert_eq!(stored.size, 11);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(b"hello world")));
        let mut back = Vec::new();
        let mut stream = std::pin::pin!(storage.get_stream(&stored.key).await.unwrap());
        while let Some(chunk) = stream.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(back, b"hello world");
        let big = vec![
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64])),
            Ok(Bytes::from(vec![0u8; 64])),
        ];
        assert!(matches!(
            storage
                .put_stream("t", futures::stream::iter(big), 100)
                .await,
            Err(UploadError::TooLarge { limit: 100 })
        ));
        storage.delete(&stored.key).await.unwrap();
        assert!(storage.get_stream(&stored.key).await.is_err());
        assert!(Storage::open("ftp://x").is_err());
    }

    /// A store in memory whose multipart uploads fail at one step, and that remembers aborts.
    #[derive(Debug)]
    struct FailingStore {
        inner: object_store::memory::InMemory,
        /// The part (counted from 0) that fails; `None`: the completion fails.
        failing_part: Option<usize>,
        aborted: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::fmt::Display for FailingStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FailingStore")
        }
    }

    #[derive(Debug)]
    struct FailingUpload {
        inner: Box<dyn MultipartUpload>,
        parts: usize,
        failing_part: Option<usize>,
        aborted: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn refused() -> object_store::Error {
        object_store::Error::Generic {
            store: "FailingStore",
            source: "the disk is full".into(),
        }
    }

    #[async_trait::async_trait]
    impl MultipartUpload for FailingUpload {
        fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
            let part = self.parts;
            self.parts += 1;
            if Some(part) == self.failing_part {
                return Box::pin(async { Err(refused()) });
            }
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            if self.failing_part.is_none() {
                return Err(refused());
            }
            self.inner.complete().await
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Ok(Box::new(FailingUpload {
                inner: self.inner.put_multipart_opts(location, opts).await?,
                parts: 0,
                failing_part: self.failing_part,
                aborted: self.aborted.clone(),
            }))
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// 12 MiB in chunks of 1 MiB: three parts (5, 5 and 2 MiB).
    fn twelve_mebibytes() -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
        futures::stream::iter((0..12u8).map(|i| Ok(Bytes::from(vec![i; 1 << 20]))))
    }

    #[tokio::test]
    async fn a_store_failing_mid_upload_aborts_it_and_leaves_nothing() {
        // The first part fails while later ones are sent; the last (short) part fails; the
        // completion fails. Each time the upload is aborted once, the caller gets the store's
        // error, and no object is left.
        for failing_part in [Some(0), Some(2), None] {
            let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let storage = Storage {
                store: Arc::new(FailingStore {
                    inner: object_store::memory::InMemory::new(),
                    failing_part,
                    aborted: aborted.clone(),
                }),
                prefix: Path::default(),
                local_root: None,
            };
            let outcome = storage.put_stream("t", twelve_mebibytes(), 1 << 30).await;
            assert!(
                matches!(&outcome, Err(UploadError::Store(Error::Unavailable(m))) if m.contains("the disk is full")),
                "part {failing_part:?}: {outcome:?}"
            );
            assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
            assert!(storage.list().await.unwrap().is_empty());
            let restored = storage
                .put_stream_at("t/restored", twelve_mebibytes())
                .await;
            assert!(
                matches!(restored, Err(Error::Unavailable(_))),
                "{restored:?}"
            );
            assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), 2);
            assert!(storage.list().await.unwrap().is_empty());
        }
        // The client's stream breaks after two parts' worth: aborted, nothing left.
        let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let storage = Storage {
            store: Arc::new(FailingStore {
                inner: object_store::memory::InMemory::new(),
                failing_part: Some(usize::MAX),
                aborted: aborted.clone(),
            }),
            prefix: Path::default(),
            local_root: None,
        };
        let broken = twelve_mebibytes()
            .take(11)
            .chain(futures::stream::iter([Err(std::io::Error::other("reset"))]));
        let outcome = storage.put_stream("t", broken, 1 << 30).await;
        assert!(
            matches!(&outcome, Err(UploadError::Interrupted(m)) if m.contains("reset")),
            "{outcome:?}"
        );
        assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(storage.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_large_upload_goes_in_parts_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
        let stored = storage
            .put_stream("t", twelve_mebibytes(), 1 << 30)
            .await
            .unwrap();
        assert_eq!(stored.size, 12 << 20);
        let mut expected = Sha256::new();
        for i in 0..12u8 {
            expected.update(vec![i; 1 << 20]);
        }
        assert_eq!(stored.sha256, hex::encode(expected.finalize()));
        let mut back = Vec::new();
        let mut stream = std::pin::pin!(storage.get_stream(&stored.key).await.unwrap());
        while let Some(chunk) = stream.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(back.len(), 12 << 20);
        assert!(
            back.chunks(1 << 20)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| *b as usize == i))
        );
        // An empty body makes an empty object.
        let empty = storage
            .put_stream(
                "t",
                futures::stream::empty::<std::result::Result<Bytes, std::io::Error>>(),
                10,
            )
            .await
            .unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(storage.list().await.unwrap().len(), 2);
    }
}
