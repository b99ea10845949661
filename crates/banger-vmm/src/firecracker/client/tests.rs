//! Transport failures, against raw Unix socket servers that misbehave in
//! one specific way each. (Well-behaved exchanges are tested against the
//! spec-checking fake in `spec_tests.rs`.)

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

/// Binds a socket whose every connection gets `reply` written after the
/// request head has arrived (`None`: never answer).
fn raw_server(reply: Option<&'static str>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    (dir, path)
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.sock");
    let err = FcClient::new(&path).describe_instance().await.unwrap_err();
    assert!(matches!(err, FcError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("nope.sock"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (_dir, path) = raw_server(None);
    let client = FcClient::new(&path).with_timeout(Duration::from_millis(200));
    let err = client.instance_start().await.unwrap_err();
    assert!(
        matches!(&err, FcError::Timeout { path, timeout, .. }
            if path == "/actions" && *timeout == Duration::from_millis(200)),
        "{err}"
    );
    // Snapshot calls have their own, separate limit.
    let client = client
        .with_timeout(Duration::from_secs(60))
        .with_snapshot_timeout(Duration::from_millis(100));
    let err = client
        .create_snapshot(&SnapshotCreateParams {
            snapshot_type: crate::firecracker::models::SnapshotType::Full,
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FcError::Timeout { timeout, .. } if *timeout == Duration::from_millis(100)),
        "{err}"
    );
}

#[tokio::test]
async fn an_undecodable_answer_is_a_bad_response() {
    let (_dir, path) = raw_server(Some(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!",
    ));
    let err = FcClient::new(&path).version().await.unwrap_err();
    assert!(matches!(err, FcError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("not json!"), "{err}");

    let (_dir, path) = raw_server(Some("garbage\r\n\r\n"));
    let err = FcClient::new(&path).describe_instance().await.unwrap_err();
    assert!(matches!(err, FcError::BadResponse { .. }), "{err}");
}

#[tokio::test]
async fn an_error_body_decodes_to_the_fault_message() {
    let body = r#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#;
    let reply: &'static str = Box::leak(
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (_dir, path) = raw_server(Some(reply));
    let err = FcClient::new(&path)
        .put_entropy(&EntropyDevice {})
        .await
        .unwrap_err();
    assert_eq!(
        err.fault_message(),
        Some("The requested operation is not supported after starting the microVM.")
    );
    assert!(
        err.to_string()
            .starts_with("firecracker refused PUT /entropy (http 400 Bad Request)"),
        "{err}"
    );

    // An error without Firecracker's body keeps whatever text came back.
    let (_dir, path) = raw_server(Some(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n",
    ));
    let err = FcClient::new(&path).instance_start().await.unwrap_err();
    assert_eq!(err.fault_message(), Some("oops"));
}
