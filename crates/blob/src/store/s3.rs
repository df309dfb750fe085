//! S3 store: one object per session, `<prefix><session id>` in one bucket.
//!
//! - Version token: the object's ETag (quotes included, as the server sends it).
//! - Create-only saves send `If-None-Match: *`; updates send `If-Match: <etag>`. HTTP 412,
//!   409, and 404 on an `If-Match` save are [`StoreError::ConditionFailed`]: servers
//!   differ (AWS answers 404 for `If-Match` on a missing key, SeaweedFS 412).
//! - Deletes are `DeleteObject`, unconditional; S3 answers 204 for a missing key too (a
//!   404 counts as done as well), so deleting twice is fine, and they use the SDK's
//!   retries (a repeated delete is harmless).
//! - Saves are sent once, never retried: a retry of a save that did land would come back
//!   412 and look like a lost race. Loads use the SDK's standard retries.
//! - The client is aws-sdk-s3 with a custom endpoint and path-style addressing, over
//!   rustls with ring (plain http works for a loopback endpoint).
//!
//! Whether the condition is honoured atomically is the server's business: SeaweedFS 4.48
//! is (measured); moto and s3s-fs are not under load. That is why the worker also commits
//! each write through its lease epoch (see `docs/BLOBS.md`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use zeroize::Zeroizing;

use super::{BlobStore, SaveCondition, StoreError, StoredBlob, Version};
use crate::session_id::SessionId;

/// Environment variable naming the S3 endpoint (e.g. `http://127.0.0.1:18333`).
pub const ENDPOINT_ENV: &str = "WAFLEET_S3_ENDPOINT";
/// The bucket `scripts/s3.sh` creates, and the default.
pub const DEFAULT_BUCKET: &str = "wafleet-sessions";
/// The default object key prefix.
pub const DEFAULT_PREFIX: &str = "sessions/";

/// Where and how to reach the S3 server.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:18333`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Object key prefix (prepended to the session id).
    pub prefix: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never logged; `Debug` hides it).
    pub secret_access_key: Zeroizing<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Reads the configuration from the environment, or `None` when `WAFLEET_S3_ENDPOINT`
    /// is unset. Variables: `WAFLEET_S3_ENDPOINT`, `WAFLEET_S3_BUCKET` (default
    /// `wafleet-sessions`), `WAFLEET_S3_PREFIX` (default `sessions/`), `WAFLEET_S3_REGION`
    /// (default `us-east-1`), `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (default
    /// `test`/`test`, the credentials `scripts/s3.sh` starts SeaweedFS with).
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`S3Config::from_env`] through `lookup` instead of the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let endpoint = lookup(ENDPOINT_ENV)?;
        let or = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_string());
        Some(Self {
            endpoint,
            bucket: or("WAFLEET_S3_BUCKET", DEFAULT_BUCKET),
            prefix: or("WAFLEET_S3_PREFIX", DEFAULT_PREFIX),
            region: or("WAFLEET_S3_REGION", "us-east-1"),
            access_key_id: or("AWS_ACCESS_KEY_ID", "test"),
            secret_access_key: Zeroizing::new(or("AWS_SECRET_ACCESS_KEY", "test")),
        })
    }
}

/// Session blobs as objects in an S3 bucket.
#[derive(Clone)]
pub struct S3BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// A store talking to `config`'s endpoint. Makes no request.
    pub fn new(config: &S3Config) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let credentials = Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.as_str(),
            None,
            None,
            "wafleet-config",
        );
        let sdk_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(config.endpoint.clone())
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(sdk_config),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        }
    }

    /// The object key of a session's blob.
    pub fn object_key(&self, session: &SessionId) -> String {
        format!("{}{}", self.prefix, session)
    }

    /// The underlying SDK client (for tests and tools; bypasses the conditions).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn s3_error<E, R>(
    operation: &'static str,
    key: &str,
    status: Option<u16>,
    err: &SdkError<E, R>,
) -> StoreError
where
    E: std::error::Error + 'static,
    R: fmt::Debug,
    SdkError<E, R>: std::error::Error + 'static,
{
    StoreError::S3 {
        operation,
        key: key.to_string(),
        status,
        message: DisplayErrorContext(err).to_string(),
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn load(&self, session: &SessionId) -> Result<Option<StoredBlob>, StoreError> {
        let key = self.object_key(session);
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let missing = err
                    .as_service_error()
                    .map(|e| e.is_no_such_key())
                    .unwrap_or(false);
                if missing || status == Some(404) {
                    return Ok(None);
                }
                return Err(s3_error("GetObject", &key, status, &err));
            }
        };
        let etag = output
            .e_tag()
            .map(str::to_string)
            .ok_or_else(|| StoreError::S3 {
                operation: "GetObject",
                key: key.clone(),
                status: None,
                message: "response has no ETag".to_string(),
            })?;
        let body = output.body.collect().await.map_err(|e| StoreError::S3 {
            operation: "GetObject",
            key: key.clone(),
            status: None,
            message: format!("reading the body: {e}"),
        })?;
        Ok(Some(StoredBlob {
            bytes: body.into_bytes().to_vec(),
            version: Version::new(etag),
        }))
    }

    async fn save(
        &self,
        session: &SessionId,
        bytes: Vec<u8>,
        condition: &SaveCondition,
    ) -> Result<Version, StoreError> {
        let key = self.object_key(session);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes));
        let request = match condition {
            SaveCondition::CreateOnly => request.if_none_match("*"),
            SaveCondition::IfVersion(version) => request.if_match(version.as_str()),
        };
        let result = request
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await;
        match result {
            Ok(output) => output
                .e_tag()
                .map(Version::new)
                .ok_or_else(|| StoreError::S3 {
                    operation: "PutObject",
                    key,
                    status: None,
                    message: "response has no ETag".to_string(),
                }),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let condition_failed = match status {
                    Some(412) | Some(409) => true,
                    Some(404) => matches!(condition, SaveCondition::IfVersion(_)),
                    _ => false,
                };
                if condition_failed {
                    tracing::debug!(%session, ?condition, ?status, "S3 blob save refused");
                    return Err(StoreError::ConditionFailed {
                        session: session.clone(),
                    });
                }
                Err(s3_error("PutObject", &key, status, &err))
            }
        }
    }

    async fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        let key = self.object_key(session);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                if status == Some(404) {
                    return Ok(());
                }
                Err(s3_error("DeleteObject", &key, status, &err))
            }
        }
    }
}
