//! Store targets: turns a target URL (`file:///path` or a plain path, `s3://bucket/prefix`,
//! `az://container/prefix`, `gs://bucket/prefix`) into an object store and a key prefix.
//! Credentials, endpoints and allow-http come from the usual `AWS_*`, `AZURE_*` and
//! `GOOGLE_*` environment variables (as the object_store builders read them).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

/// The default target: a local directory store.
pub const DEFAULT_TARGET: &str = "/var/lib/hrl/store";

/// An opened target: the store and the prefix under which groups live.
#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
    /// The URL as the user gave it (for messages).
    pub url: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish()
    }
}

/// Few quick retries inside one request; the shipper's own back-off handles outages.
fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        backoff: Default::default(),
    }
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
}

/// Opens the target named by `url`.
pub fn open(url: &str) -> Result<Target> {
    let url = url.trim();
    if url.is_empty() {
        bail!("empty target URL; use a path, file:///path, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix");
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("path".to_string(), url),
    };
    let (bucket, key_prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    let store: Arc<dyn ObjectStore> = match scheme.as_str() {
        "path" | "file" => {
            let dir = if scheme == "file" { format!("/{}", rest.trim_start_matches('/')) } else { rest.to_string() };
            crate::private::create_dir(std::path::Path::new(&dir)).with_context(|| format!("cannot create the local store directory {dir}"))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .with_context(|| format!("cannot open the local store directory {dir}"))?;
            let prefix = StorePath::default();
            let store = Arc::new(super::bandwidth::Throttled::new(Arc::new(fs.with_automatic_cleanup(true)), &prefix));
            return Ok(Target { store, prefix, url: url.to_string() });
        }
        "s3" | "s3a" => {
            if bucket.is_empty() {
                bail!("target {url}: no bucket; use s3://BUCKET/PREFIX");
            }
            let endpoint_http = std::env::var("AWS_ENDPOINT")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .map(|e| e.starts_with("http://"))
                .unwrap_or(false);
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config())
                .with_client_options(client_options(endpoint_http))
                .with_http_connector(super::http::TypedConnector);
            if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
                if std::env::var("AWS_ENDPOINT").is_err() {
                    b = b.with_endpoint(ep);
                }
            }
            if endpoint_http {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().with_context(|| format!("cannot configure S3 target {url} (check the AWS_* variables)"))?)
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            if bucket.is_empty() {
                bail!("target {url}: no container; use az://CONTAINER/PREFIX");
            }
            let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry_config())
                .with_client_options(client_options(false))
                .with_http_connector(super::http::TypedConnector);
            Arc::new(b.build().with_context(|| format!("cannot configure Azure target {url} (check the AZURE_* variables)"))?)
        }
        "gs" | "gcs" => {
            if bucket.is_empty() {
                bail!("target {url}: no bucket; use gs://BUCKET/PREFIX");
            }
            // An emulator on http:// (its URL is the service account key's gcs_base_url)
            // needs GOOGLE_ALLOW_HTTP=true, as AWS_ALLOW_HTTP does for S3.
            let http = std::env::var("GOOGLE_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config())
                .with_client_options(client_options(http))
                .with_http_connector(super::http::TypedConnector);
            Arc::new(b.build().with_context(|| format!("cannot configure GCS target {url} (check the GOOGLE_* variables)"))?)
        }
        other => bail!(
            "unknown target URL scheme {other:?} in {url}; use a path, file:///path, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix"
        ),
    };
    let prefix = StorePath::from(key_prefix);
    Ok(Target {
        store: Arc::new(super::bandwidth::Throttled::new(store, &prefix)),
        prefix,
        url: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = open("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("unknown target URL scheme \"ftp\""), "{err}");
        assert!(open("s3://").is_err());
    }

    #[test]
    fn plain_path_and_file_url_open_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let t = open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(t.prefix, StorePath::default());
        let url = format!("file://{}", dir.path().join("sub").display());
        open(&url).unwrap();
        assert!(dir.path().join("sub").is_dir());
    }
}
