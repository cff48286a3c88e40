//! vbin's object storage, through the `object_store` crate: recordings are objects
//! `recordings/<customer>/<recording>.wav` in a local directory (`VBIN_DATA_DIR`), or in an
//! S3-compatible bucket when one is configured ([`Store::s3`]).
//!
//! Writers stream: [`Store::writer`] uploads in parts as audio accumulates (a multipart
//! upload; on a local directory, a temporary file renamed into place when finished), so a
//! long recording is never held in memory, and an upload that is not finished leaves no
//! object behind.

pub mod wav;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::client::{ClientOptions, HttpClient, HttpConnector};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use std::sync::Arc;
use uuid::Uuid;

/// Parts of a streamed upload (5 MiB, the smallest part S3-compatible stores accept).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object not found")]
    NotFound,
    /// The store failed.
    #[error("object store")]
    Store(#[source] object_store::Error),
    /// The local directory could not be made.
    #[error("creating the data directory {0}")]
    Dir(String, #[source] std::io::Error),
    /// The S3 settings are not usable.
    #[error("S3 bucket {bucket}: {source}")]
    S3Config {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...).
///
/// Unset credentials and region come from the usual `AWS_*` environment (access keys,
/// session token, web identity, container credentials) as the AWS SDKs read it.
#[derive(Clone, Default)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// The endpoint of an S3-compatible store (`https://minio.internal:9000`); AWS if unset.
    /// `http://` is allowed only when given here.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` if unset and not in the environment).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (never shown by `Debug`).
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Hands object_store the platform's own HTTP client, so the bucket is reached with the same
/// TLS roots (the system's plus `VBIN_TLS_EXTRA_CA_FILE`) as every other outgoing request.
#[derive(Debug)]
struct PlatformClient(reqwest::Client);

impl HttpConnector for PlatformClient {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound,
            e => StorageError::Store(e),
        }
    }
}

/// The object store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner)
    }
}

/// An upload under way.
pub struct Writer {
    upload: WriteMultipart,
    written: u64,
}

impl Writer {
    /// Appends bytes (uploaded a part at a time).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        // At most two parts in flight: backpressure instead of unbounded buffering.
        self.upload.wait_for_capacity(2).await?;
        self.upload.write(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the object; returns its size.
    pub async fn finish(self) -> Result<u64, StorageError> {
        self.upload.finish().await?;
        Ok(self.written)
    }

    /// Gives up: nothing is stored.
    pub async fn abort(self) -> Result<(), StorageError> {
        Ok(self.upload.abort().await?)
    }
}

impl Store {
    /// A store in the local directory `dir` (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Dir(dir.display().to_string(), e))?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(fs),
        })
    }

    /// A store in the S3-compatible bucket of `cfg`, reached through `http` (a client with
    /// the platform's TLS settings and timeouts). Nothing is requested until first use.
    pub fn s3(cfg: &S3Config, http: reqwest::Client) -> Result<Self, StorageError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_http_connector(PlatformClient(http));
        if let Some(endpoint) = &cfg.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &cfg.region {
            b = b.with_region(region);
        }
        if let Some(key) = &cfg.access_key_id {
            b = b.with_access_key_id(key);
        }
        if let Some(secret) = &cfg.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        let s3 = b.build().map_err(|source| StorageError::S3Config {
            bucket: cfg.bucket.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(s3),
        })
    }

    /// Any `object_store` implementation (an S3-compatible bucket, memory in tests).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// The key of a recording's file.
    pub fn recording_key(customer: Uuid, recording: Uuid) -> String {
        format!("recordings/{customer}/{recording}.wav")
    }

    /// Starts a streamed upload to `key`.
    pub async fn writer(&self, key: &str) -> Result<Writer, StorageError> {
        // Not found here means the bucket (or directory) is missing, not the object: kept as
        // the store's error so that the cause reads in the recording's error.
        let upload = self
            .inner
            .put_multipart(&Path::from(key))
            .await
            .map_err(StorageError::Store)?;
        Ok(Writer {
            upload: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
            written: 0,
        })
    }

    /// The object's size and its bytes as a stream.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        let got = self.inner.get(&Path::from(key)).await?;
        let size = got.meta.size;
        Ok((
            size,
            got.into_stream()
                .map(|r| r.map_err(StorageError::from))
                .boxed(),
        ))
    }

    /// The first `n` bytes of the object (or all of it if shorter).
    pub async fn head_bytes(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        let path = Path::from(key);
        let size = self.inner.head(&path).await?.size;
        Ok(self.inner.get_range(&path, 0..n.min(size)).await?)
    }

    /// Deletes the object (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_in_and_out_and_deletes() {
        let dir = std::env::temp_dir().join(format!("vbin-storage-{}", Uuid::now_v7()));
        let store = Store::local(&dir).unwrap();
        let key = Store::recording_key(Uuid::now_v7(), Uuid::now_v7());
        let mut w = store.writer(&key).await.unwrap();
        let chunk: Vec<u8> = (0..=255u8).cycle().take(1_000_003).collect();
        for _ in 0..7 {
            w.write(&chunk).await.unwrap();
        }
        // Nothing is visible before the upload finishes.
        assert!(matches!(
            store.read(&key).await,
            Err(StorageError::NotFound)
        ));
        assert_eq!(w.finish().await.unwrap(), 7_000_021);
        let (size, mut s) = store.read(&key).await.unwrap();
        assert_eq!(size, 7_000_021);
        let mut all = Vec::new();
        while let Some(b) = s.next().await {
            all.extend_from_slice(&b.unwrap());
        }
        assert_eq!(&all[..1_000_003], &chunk[..]);
        assert_eq!(&store.head_bytes(&key, 4).await.unwrap()[..], &chunk[..4]);
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.read(&key).await,
            Err(StorageError::NotFound)
        ));
        // An aborted upload leaves nothing.
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"partial").await.unwrap();
        w.abort().await.unwrap();
        assert!(matches!(
            store.read(&key).await,
            Err(StorageError::NotFound)
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
