use serde::{Deserialize, Serialize};

/// Machine-readable error classes. The CLI turns each into a short label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input was rejected before anything happened.
    BadRequest,
    /// The named VM, image or operation does not exist.
    NotFound,
    /// Something with that name already exists.
    AlreadyExists,
    /// The target is in the wrong state for the request (e.g. not running).
    Conflict,
    /// The caller is not root or the owner.
    Unauthorized,
    /// The request was valid but a step failed; the message says which.
    OperationFailed,
    /// A bug or an unexpected host condition.
    Internal,
}

impl ErrorCode {
    /// Short human label, or `None` when the message should stand alone.
    pub fn label(self) -> Option<&'static str> {
        match self {
            ErrorCode::BadRequest => Some("invalid request"),
            ErrorCode::NotFound => Some("not found"),
            ErrorCode::AlreadyExists => Some("already exists"),
            ErrorCode::Conflict => Some("conflict"),
            ErrorCode::Unauthorized => Some("unauthorized"),
            ErrorCode::OperationFailed => None,
            ErrorCode::Internal => Some("internal error"),
        }
    }

    /// The HTTP status the daemon answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::OperationFailed | ErrorCode::Internal => 500,
        }
    }
}

/// The error body of every failed API call: `{code, message, op_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op_id: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            op_id: String::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationFailed, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_op_id(mut self, op_id: impl Into<String>) -> Self {
        self.op_id = op_id.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_round_trips_with_op_id() {
        let e = ApiError::not_found("vm box not found").with_op_id("op-1234");
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"code":"not_found","message":"vm box not found","op_id":"op-1234"}"#
        );
        let back: ApiError = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn operation_failed_has_no_label_and_maps_to_500() {
        assert_eq!(ErrorCode::OperationFailed.label(), None);
        assert_eq!(ErrorCode::OperationFailed.http_status(), 500);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::Conflict.label(), Some("conflict"));
    }
}
