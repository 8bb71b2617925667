//! API errors as the real server writes them: a `Status` object with code, reason and message.

use serde_json::{Value, json};

use super::store::Key;

/// A failed request, rendered as a `v1.Status` body with the same HTTP status code.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// HTTP status code, also the Status's `code`.
    pub code: u16,
    /// The Status's `reason` (`NotFound`, `Conflict`, ..), which clients branch on.
    pub reason: &'static str,
    /// Human-readable message, worded like the real server's.
    pub message: String,
    /// Name and kind of the object concerned, if any.
    details: Option<(String, String)>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: None,
        }
    }

    /// An error for an injected fault: the reason the real server uses for that code.
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected fault: {code} {reason}"))
    }

    pub fn not_found(key: &Key) -> Self {
        Self::about(
            404,
            "NotFound",
            key,
            format!("{} \"{}\" not found", key.resource, key.name),
        )
    }

    pub fn already_exists(key: &Key) -> Self {
        Self::about(
            409,
            "AlreadyExists",
            key,
            format!("{} \"{}\" already exists", key.resource, key.name),
        )
    }

    pub fn conflict(key: &Key) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            key.resource, key.name
        );
        Self::about(409, "Conflict", key, message)
    }

    pub fn gone(rv: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {rv}"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message.into())
    }

    pub fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn about(code: u16, reason: &'static str, key: &Key, message: String) -> Self {
        Self {
            details: Some((key.name.clone(), key.resource.clone())),
            ..Self::new(code, reason, message)
        }
    }

    /// The `v1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            status["details"] = json!({ "name": name, "kind": kind });
        }
        status
    }
}
