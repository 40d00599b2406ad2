//! Sees the HTTP status of the store's answers. object_store 0.12 maps some statuses to
//! error variants (404 on a read, 401, 403, 409, 412) but keeps the status of a failed
//! listing to itself (a crate-private type), so a missing bucket and wrong credentials on a
//! listing would be indistinguishable from a network error without reading message text.
//! This connector wraps the usual reqwest one and turns exactly the answers that mean
//! "an operator must act" into a typed [`Refusal`] the error chain carries:
//! 401 and 403 on any request; 404 on a write or a listing (neither can miss an object; the
//! bucket or container is missing). Every other answer passes through untouched, so
//! object_store's own handling (retries, 404 on a read, conditional puts) is unchanged.

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

/// What a refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Auth,
    ContainerMissing,
}

/// An answer of the store that waiting does not fix.
#[derive(Debug, thiserror::Error)]
#[error("the store answered HTTP {status} to {method}")]
pub struct Refusal {
    status: u16,
    method: String,
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self.status {
            401 | 403 => RefusalKind::Auth,
            _ => RefusalKind::ContainerMissing,
        }
    }

    /// The refusal a request/answer pair means, if any.
    fn of(method: &str, query: &str, status: u16) -> Option<Refusal> {
        let listing = query.contains("list-type=") || query.contains("comp=list");
        let write = matches!(method, "PUT" | "POST");
        let refused = match status {
            401 | 403 => true,
            404 => write || listing,
            _ => false,
        };
        refused.then(|| Refusal {
            status,
            method: method.to_string(),
        })
    }
}

/// The [`Refusal`] in an object_store error's source chain, if any.
pub fn refusal_in(e: &object_store::Error) -> Option<&Refusal> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<Refusal>() {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

/// The reqwest connector, with refusals typed.
#[derive(Debug, Default)]
pub struct TypedConnector;

impl HttpConnector for TypedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Typed(inner)))
    }
}

#[derive(Debug)]
struct Typed(HttpClient);

#[async_trait::async_trait]
impl HttpService for Typed {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let method = req.method().as_str().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let res = self.0.execute(req).await?;
        match Refusal::of(&method, &query, res.status().as_u16()) {
            // Unknown: object_store does not retry it, and keeps it as the error's source.
            Some(r) => Err(HttpError::new(HttpErrorKind::Unknown, r)),
            None => Ok(res),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_an_operator_must_fix_are_refusals() {
        let kind = |m, q, s| Refusal::of(m, q, s).map(|r| r.kind());
        assert_eq!(kind("GET", "", 403), Some(RefusalKind::Auth));
        assert_eq!(
            kind("GET", "list-type=2&prefix=a", 401),
            Some(RefusalKind::Auth)
        );
        assert_eq!(
            kind("GET", "list-type=2&prefix=a", 404),
            Some(RefusalKind::ContainerMissing)
        );
        assert_eq!(
            kind("GET", "restype=container&comp=list", 404),
            Some(RefusalKind::ContainerMissing)
        );
        assert_eq!(kind("PUT", "", 404), Some(RefusalKind::ContainerMissing));
        assert_eq!(
            kind("GET", "", 404),
            None,
            "a missing object stays NotFound"
        );
        assert_eq!(kind("HEAD", "", 404), None);
        assert_eq!(kind("PUT", "", 412), None, "conditional puts unchanged");
        assert_eq!(kind("GET", "", 503), None, "retried by object_store");
    }
}
