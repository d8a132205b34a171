//! Errors as the Engine API gives them: an HTTP status and `{"message": "…"}`. The
//! docker CLI prints the message after "Error response from daemon: " and classifies
//! the error by the status (404 not found, 409 conflict, 501 not implemented, …).

use shoal_proto::{ErrorKind, ErrorReply};

/// A refusal of an API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// For people: what is wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: no such object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 501: Docker has it, shoal does not (and says what to use instead).
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(501, message)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({ "message": self.message }).to_string()
    }
}

impl From<ErrorReply> for ApiError {
    fn from(e: ErrorReply) -> Self {
        let status = match e.kind {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Ambiguous | ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthorized | ErrorKind::InvalidToken | ErrorKind::NodeRemoved => 403,
            ErrorKind::VersionMismatch | ErrorKind::Internal => 500,
        };
        Self::new(status, e.message.to_string())
    }
}

impl From<super::spec::SpecError> for ApiError {
    fn from(e: super::spec::SpecError) -> Self {
        Self::bad_request(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_refusals_keep_their_message_and_get_docker_statuses() {
        let e: ApiError = ErrorReply::new(ErrorKind::Conflict, "service x changed since it was read").into();
        assert_eq!(e.status, 409);
        assert_eq!(e.body(), r#"{"message":"service x changed since it was read"}"#);
        assert_eq!(ApiError::from(ErrorReply::new(ErrorKind::NotFound, "no such service")).status, 404);
    }
}
