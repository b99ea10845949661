//! A fake Firecracker API server for tests.
//!
//! It exists only because Firecracker cannot run on banger's development and
//! CI machines. It is not a model of Firecracker's behaviour; it is a
//! recorder held to the real contract: a real hyper HTTP/1.1 server on a
//! real Unix socket that records every request and checks it against the
//! official API spec of one release (unknown operations and invalid bodies
//! get a 400 with a `fault_message`, as Firecracker answers). It serves
//! `GET /` and `GET /version`, and can be told to refuse one request so
//! error decoding can be tested.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::spec::Spec;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    /// Why the request breaks the spec, if it does.
    pub problem: Option<String>,
}

struct State {
    spec: Spec,
    refuse: Mutex<Option<(String, String, String)>>,
    log: Mutex<Vec<Recorded>>,
    started: Mutex<bool>,
}

pub(crate) struct FakeFirecracker {
    pub socket: PathBuf,
    state: Arc<State>,
    _dir: tempfile::TempDir,
}

impl FakeFirecracker {
    /// Binds `api.sock` in a fresh temp dir and serves it until the test's
    /// runtime shuts down.
    pub fn start(spec: Spec) -> FakeFirecracker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        FakeFirecracker::start_at(spec, socket, dir)
    }

    pub fn start_at(spec: Spec, socket: PathBuf, dir: tempfile::TempDir) -> FakeFirecracker {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let state = Arc::new(State {
            spec,
            refuse: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            started: Mutex::new(false),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeFirecracker {
            socket,
            state,
            _dir: dir,
        }
    }

    /// Answer `method path` with a 400 carrying `fault`.
    pub fn refuse(&self, method: &str, path: &str, fault: &str) {
        *self.state.refuse.lock().unwrap() = Some((method.into(), path.into(), fault.into()));
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// `(method, path)` of every request except the `GET`s.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.recorded()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| (r.method, r.path))
            .collect()
    }

    /// Every spec violation seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.recorded()
            .into_iter()
            .filter_map(|r| r.problem)
            .collect()
    }
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    // Firecracker's docs and curl send origin-form targets; hold the client
    // to that.
    let absolute = req.uri().authority().is_some();
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return fault(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    let body = if bytes.is_empty() {
        Ok(None)
    } else {
        serde_json::from_slice::<Value>(&bytes)
            .map(Some)
            .map_err(|e| format!("{method} {path}: body is not JSON: {e}"))
    };
    let problem = match &body {
        Err(e) => Some(e.clone()),
        Ok(_) if absolute => Some(format!("{method} {path}: absolute-form request target")),
        Ok(b) => st.spec.check(&method, &path, b.as_ref()).err(),
    };
    let body = body.unwrap_or(None);
    st.log.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        body: body.clone(),
        problem: problem.clone(),
    });
    if let Some(p) = problem {
        return fault(StatusCode::BAD_REQUEST, &p);
    }
    let refused = st.refuse.lock().unwrap().clone();
    if let Some((m, p, msg)) = refused {
        if m == method && p == path {
            return fault(StatusCode::BAD_REQUEST, &msg);
        }
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => {
            let state = if *st.started.lock().unwrap() {
                "Running"
            } else {
                "Not started"
            };
            ok_json(json!({
                "id": "anonymous-instance",
                "state": state,
                "vmm_version": st.spec.version,
                "app_name": "Firecracker",
            }))
        }
        ("GET", "/version") => ok_json(json!({ "firecracker_version": st.spec.version })),
        ("PUT", "/actions") => {
            if body
                .as_ref()
                .is_some_and(|b| b["action_type"] == "InstanceStart")
            {
                *st.started.lock().unwrap() = true;
            }
            no_content()
        }
        _ => no_content(),
    }
}

fn no_content() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn ok_json(v: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn fault(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "fault_message": msg }).to_string(),
        )))
        .unwrap()
}
