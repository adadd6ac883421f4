//! File storage: a local directory by default, or S3-compatible object storage, through
//! `object_store`. Files are keyed by UUID, never by a user's file name (no path traversal).
//! Uploads are streamed: the SHA-256 is computed and the size limit enforced on the way, so a
//! file is never held whole in memory.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
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

fn store_error(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound("file"),
        other => Error::Unavailable(format!("storage: {other}")),
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
        let path = self.path(&key);
        let upload = self.store.put_multipart(&path).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(UploadError::Interrupted(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                let _ = writer.abort().await;
                let _ = self.store.delete(&path).await;
                return Err(UploadError::TooLarge { limit });
            }
            hasher.update(&chunk);
            writer.write(&chunk);
            if let Err(e) = writer.wait_for_capacity(4).await {
                // Storage failed mid-upload: leave no part of the file behind.
                let _ = writer.abort().await;
                return Err(store_error(e).into());
            }
        }
        writer.finish().await.map_err(store_error)?;
        Ok(StoredFile {
            key,
            size,
            sha256: hex::encode(hasher.finalize()),
        })
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
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(store_error)?;
        let mut writer = WriteMultipart::new(upload);
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    writer.write(&chunk);
                    if let Err(e) = writer.wait_for_capacity(4).await {
                        let _ = writer.abort().await;
                        return Err(store_error(e));
                    }
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::Unavailable(format!("storage: {e}")));
                }
            }
        }
        writer.finish().await.map_err(store_error)?;
        Ok(())
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
}
