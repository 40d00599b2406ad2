//! One typed error for everything the store can answer. It is built from the
//! `object_store::Error` variant, the HTTP status the store answered (seen by
//! [`super::http`], which object_store 0.12 does not expose) and the operation that failed —
//! never from rendered message text. Whether waiting can fix it ([`StoreError::class`]) and
//! what the operator must do ([`StoreError::hint`]) derive from the variant.

/// Whether waiting can fix an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, throttling, server down, low disk: retry on schedule.
    Recoverable,
    /// Credentials refused, missing bucket, broken chain, invalid replica, vanished disk.
    Fatal,
}

/// Which store operation failed (a 404 means "container missing" on a write or a listing,
/// "object missing" on a read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Head,
    Put,
    List,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Head => "head",
            Op::Put => "put",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

/// The store's own error, shown inside ours and deliberately not exposed as the `source`:
/// object_store's errors already embed their causes' text, so a chain printed with `{:#}`
/// would repeat it once per level (four times for a GCS refusal).
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the store answered, by cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// 401/403: the credentials are wrong or lack the permission.
    #[error("the store refused the credentials: {} {path} in {url}: {cause}", .op.verb())]
    AuthRefused {
        op: Op,
        path: String,
        url: String,
        cause: Source,
    },
    /// The bucket or container of the target does not exist.
    #[error("the bucket or container of {url} does not exist: {} {path}: {cause}", .op.verb())]
    BucketMissing {
        op: Op,
        path: String,
        url: String,
        cause: Source,
    },
    /// The object is not in the store.
    #[error("{path} is not in {url}")]
    NotFound { path: String, url: String },
    /// A conditional write found an object there already.
    #[error("{path} exists already in {url}")]
    PreconditionFailed { path: String, url: String },
    /// The object is there but its bytes are not what they must be (digest, hash, zstd).
    #[error("{what} {path} is damaged ({why}); the store is corrupt")]
    Damaged {
        what: String,
        path: String,
        why: String,
    },
    /// The key given does not fit the group (missing, wrong, or given to a plain group):
    /// found before anything was written or restored.
    #[error("group {group} in {url}: {why}")]
    Encryption {
        group: String,
        url: String,
        why: String,
    },
    /// Network, throttling, a server error, a local I/O error: waiting may fix it.
    #[error("cannot {} {path} in {url}: {cause}", .op.verb())]
    Transient {
        op: Op,
        path: String,
        url: String,
        cause: Source,
    },
}

impl StoreError {
    /// Builds the typed error of a failed `op` on `path`.
    pub fn from_store(op: Op, path: &str, url: &str, e: object_store::Error) -> StoreError {
        let (path, url) = (path.to_string(), url.to_string());
        if let Some(r) = super::http::refusal_in(&e) {
            return match r.kind() {
                super::http::RefusalKind::Auth => StoreError::AuthRefused {
                    op,
                    path,
                    url,
                    cause: e.into(),
                },
                super::http::RefusalKind::ContainerMissing => StoreError::BucketMissing {
                    op,
                    path,
                    url,
                    cause: e.into(),
                },
            };
        }
        match e {
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => StoreError::AuthRefused {
                op,
                path,
                url,
                cause: e.into(),
            },
            // A write or a listing never misses an object: the container is missing.
            object_store::Error::NotFound { .. } if matches!(op, Op::Put | Op::List) => {
                StoreError::BucketMissing {
                    op,
                    path,
                    url,
                    cause: e.into(),
                }
            }
            object_store::Error::NotFound { .. } => StoreError::NotFound { path, url },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => {
                StoreError::PreconditionFailed { path, url }
            }
            _ => StoreError::Transient {
                op,
                path,
                url,
                cause: e.into(),
            },
        }
    }

    /// A local I/O error on the way to or from the store (a scratch file): transient.
    pub fn local(op: Op, path: &str, url: &str, e: impl Into<Source>) -> StoreError {
        StoreError::Transient {
            op,
            path: path.to_string(),
            url: url.to_string(),
            cause: e.into(),
        }
    }

    /// Whether waiting can fix it.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::AuthRefused { .. }
            | StoreError::BucketMissing { .. }
            | StoreError::Damaged { .. }
            | StoreError::Encryption { .. } => ErrorClass::Fatal,
            // A missing object or a lost race is decided by the caller (a lost chunk stops
            // the cycle through its own check); left alone it is worth another try.
            StoreError::NotFound { .. }
            | StoreError::PreconditionFailed { .. }
            | StoreError::Transient { .. } => ErrorClass::Recoverable,
        }
    }

    /// What the operator must do, when it can be told.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StoreError::AuthRefused { .. } => Some("the store refused the credentials: fix the AWS_*/AZURE_*/GOOGLE_* settings of the shipper, then run `hrl-shipper sync` or restart the service"),
            StoreError::BucketMissing { .. } => Some("the bucket or container of the target does not exist: create it, or fix the target URL"),
            StoreError::Encryption { .. } => Some("give the group's own key file with --key FILE (encryption_key in the config), or none for a plain group"),
            _ => None,
        }
    }

    /// The object is missing or damaged (as opposed to the store being unreachable).
    pub fn is_lost_or_damaged(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. } | StoreError::Damaged { .. }
        )
    }
}

/// The first [`StoreError`] in an error's chain.
pub fn store_error_in(err: &anyhow::Error) -> Option<&StoreError> {
    err.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed() -> Source {
        "x".into()
    }

    #[test]
    fn variants_and_operation_decide_the_class() {
        let url = "s3://b/p";
        let e = |op, err| StoreError::from_store(op, "k", url, err);
        let nf = || object_store::Error::NotFound {
            path: "k".into(),
            source: boxed(),
        };
        assert!(matches!(e(Op::Get, nf()), StoreError::NotFound { .. }));
        assert!(matches!(
            e(Op::List, nf()),
            StoreError::BucketMissing { .. }
        ));
        assert!(matches!(e(Op::Put, nf()), StoreError::BucketMissing { .. }));
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: boxed(),
        };
        let auth = e(Op::Get, denied);
        assert_eq!(auth.class(), ErrorClass::Fatal);
        assert!(auth.hint().is_some_and(|h| h.contains("credentials")));
        let generic = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        let t = e(Op::List, generic);
        assert_eq!(t.class(), ErrorClass::Recoverable);
        assert!(t.hint().is_none());
        let exists = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: boxed(),
        };
        assert!(matches!(
            e(Op::Put, exists),
            StoreError::PreconditionFailed { .. }
        ));
    }

    #[test]
    fn a_printed_chain_names_the_store_answer_once() {
        let generic = object_store::Error::Generic {
            store: "GCS",
            source: "400 Bad Request: invalid uploadType".into(),
        };
        let e = anyhow::Error::new(StoreError::from_store(Op::Put, "k", "gs://b/p", generic))
            .context("commit point 3");
        let shown = format!("{e:#}");
        assert_eq!(shown.matches("invalid uploadType").count(), 1, "{shown}");
        assert!(
            shown.starts_with("commit point 3: cannot put k in gs://b/p"),
            "{shown}"
        );
    }
}
