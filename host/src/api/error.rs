//! The API's one error shape and its status codes.

use serde::Serialize;

/// An error answer: `{"error": {"code": "...", "message": "..."}}` with a
/// status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    /// 401: no or an unknown bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a bearer token is required: send `Authorization: Bearer <token>`",
        )
    }
    /// 401: a token was sent, and no tenant (nor the admin) has it.
    pub fn unknown_token() -> Self {
        Self::new(401, "unauthorized", "the bearer token is not known to this server")
    }
    /// 403: a quota would be exceeded.
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(403, "quota_exceeded", message)
    }
    /// 404: nothing of this tenant by that name.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", format!("{} not found", what.into()))
    }
    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(405, "method_not_allowed", format!("{path} does not accept {method}"))
    }
    /// 409: the request conflicts with the resource's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    /// 403: something in the file area the server does not touch (a link,
    /// a special file).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }
    /// 408: the body did not arrive in time.
    pub fn body_timeout(limit_ms: u64) -> Self {
        Self::new(
            408,
            "request_timeout",
            format!("the request body did not arrive within {limit_ms} ms (`body_read_timeout_ms`)"),
        )
    }
    /// 413 with a message (a limit other than the upload limit).
    pub fn too_large_because(message: impl Into<String>) -> Self {
        Self::new(413, "payload_too_large", message)
    }
    /// 429: the tenant has too much in flight; retry later.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "too_many_requests", message)
    }
    /// 503: the server as a whole is at a limit; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_busy", message)
    }
    /// 503 from a standby JobManager: ask the leader at `leader`.
    pub fn standby(leader: &str) -> Self {
        Self::new(503, "standby", format!("this JobManager is a standby; the leader is {leader}"))
    }
    /// 507: a disk quota would be exceeded.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(507, "disk_quota_exceeded", message)
    }
    /// 413: the body is over the tenant's upload limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("the request body is larger than the upload limit of {limit} bytes"),
        )
    }
    /// 422: well-formed but unusable (an invalid job, an unknown digest).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }
    /// 500: a fault of the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_default()
    }
}
