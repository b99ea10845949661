//! Turning errors into one short, actionable stderr message.

use banger_client::ClientError;

use crate::style;

/// The text for an API error: a short label for its code (none for plain
/// operation failures, whose message says it all), the message, and the op
/// id dimmed so it can be found in the daemon log.
pub fn describe_api(e: &banger_api::ApiError) -> String {
    let mut s = match e.code.label() {
        Some(label) => format!("{label}: {}", e.message),
        None => e.message.clone(),
    };
    if !e.op_id.is_empty() {
        s.push(' ');
        s.push_str(&style::dim(&format!("({})", e.op_id)));
    }
    s
}

pub fn print(e: &anyhow::Error) {
    let msg = match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api(api)) => describe_api(api),
        _ => format!("{e:#}"),
    };
    eprintln!("{} {msg}", style::red("banger:", true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::{ApiError, ErrorCode};

    #[test]
    fn labels_and_op_ids() {
        let e = ApiError::not_found("vm \"x\" not found").with_op_id("op-12345678");
        assert_eq!(
            describe_api(&e),
            "not found: vm \"x\" not found (op-12345678)"
        );
        let e = ApiError::new(ErrorCode::OperationFailed, "boot failed");
        assert_eq!(describe_api(&e), "boot failed");
        let e = ApiError::bad_request("--vcpu must be between 1 and 64, got 0");
        assert!(describe_api(&e).starts_with("invalid request: --vcpu"));
    }
}
