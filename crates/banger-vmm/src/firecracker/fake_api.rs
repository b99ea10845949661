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
//!
//! It also holds requests to the order the spec and Firecracker's
//! snapshot documentation impose (see [`ordering`]): "Pre-boot only" and
//! "Post-boot only" operations as each operation's summary in the spec says,
//! `PUT /snapshot/load` only on a fresh process, `PATCH /vm` only on a
//! booted (or loaded) microVM, `PUT /snapshot/create` only while paused. A
//! request out of order is a spec violation like an invalid body.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::spec::{BootPhase, Spec};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    /// Why the request breaks the spec, if it does.
    pub problem: Option<String>,
}

/// Where the microVM is, as far as the API's ordering rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmPhase {
    /// A fresh process: nothing configured, or only the logger and metrics.
    Fresh,
    /// Some other resource was configured: too late to load a snapshot.
    Configured,
    /// Started, or loaded and resumed.
    Running,
    /// Paused, or loaded and not resumed yet.
    Paused,
}

impl VmPhase {
    fn booted(self) -> bool {
        matches!(self, VmPhase::Running | VmPhase::Paused)
    }

    /// The `state` of `GET /`.
    fn instance_state(self) -> &'static str {
        match self {
            VmPhase::Fresh | VmPhase::Configured => "Not started",
            VmPhase::Running => "Running",
            VmPhase::Paused => "Paused",
        }
    }
}

struct State {
    spec: Spec,
    refuse: Mutex<Option<(String, String, String)>>,
    log: Mutex<Vec<Recorded>>,
    phase: Mutex<VmPhase>,
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
            phase: Mutex::new(VmPhase::Fresh),
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

    /// Where the fake's microVM is now.
    pub fn phase(&self) -> VmPhase {
        *self.state.phase.lock().unwrap()
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
    // Held to the end, so requests are checked and applied one at a time, as
    // Firecracker's single API thread does (nothing below awaits).
    let mut current = st.phase.lock().unwrap();
    let phase = *current;
    let problem = match &body {
        Err(e) => Some(e.clone()),
        Ok(_) if absolute => Some(format!("{method} {path}: absolute-form request target")),
        Ok(b) => st
            .spec
            .check(&method, &path, b.as_ref())
            .and_then(|()| ordering(&st.spec, phase, &method, &path, b.as_ref()))
            .err(),
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
    if method != "GET" {
        *current = transition(phase, &method, &path, body.as_ref());
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => ok_json(json!({
            "id": "anonymous-instance",
            "state": phase.instance_state(),
            "vmm_version": st.spec.version,
            "app_name": "Firecracker",
        })),
        ("GET", "/version") => ok_json(json!({ "firecracker_version": st.spec.version })),
        _ => no_content(),
    }
}

/// Whether `method path` may be sent in `phase`; the reason if not.
///
/// - The spec's summaries: "Pre-boot only." operations are refused once the
///   microVM is booted or loaded, "Post-boot only." ones before (see
///   [`Spec::boot_phase`]).
/// - `PUT /snapshot/load`, the spec's description: "Only accepted on a fresh
///   Firecracker process (before configuring any resource other than the
///   Logger and Metrics)."
/// - `PUT /snapshot/create`, the spec's description: "The microVM should be
///   in the `Paused` state."
/// - `PATCH /vm`: the spec's summary says nothing, but Firecracker's
///   snapshot documentation does ("`Pause`, `Resume` and `CreateSnapshot`
///   can be called only after booting the microVM, while `LoadSnapshot` is
///   allowed only before boot"), and the microVM it pauses must exist.
/// - `InstanceStart`: a microVM boots once; a loaded one is already built.
pub(crate) fn ordering(
    spec: &Spec,
    phase: VmPhase,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "{method} {path} (spec {}) in state {phase:?}: {why}",
            spec.version
        ))
    };
    match spec.boot_phase(method, path) {
        Some(BootPhase::PreBoot) if phase.booted() => {
            return refuse("the spec says pre-boot only");
        }
        Some(BootPhase::PostBoot) if !phase.booted() => {
            return refuse("the spec says post-boot only");
        }
        _ => {}
    }
    match (method, path) {
        ("PUT", "/snapshot/load") if phase != VmPhase::Fresh => refuse(
            "only accepted on a fresh Firecracker process (before configuring any resource \
             other than the Logger and Metrics)",
        ),
        ("PUT", "/snapshot/create") if phase != VmPhase::Paused => {
            refuse("the microVM should be in the Paused state")
        }
        ("PATCH", "/vm") if !phase.booted() => {
            refuse("pause and resume only after the microVM is booted or loaded")
        }
        ("PUT", "/actions")
            if phase.booted() && body.is_some_and(|b| b["action_type"] == "InstanceStart") =>
        {
            refuse("the microVM is already started")
        }
        _ => Ok(()),
    }
}

/// The phase after an accepted (non-`GET`) request.
fn transition(phase: VmPhase, method: &str, path: &str, body: Option<&Value>) -> VmPhase {
    let field = |name: &str| body.map_or(&Value::Null, |b| &b[name]);
    match (method, path) {
        ("PUT", "/snapshot/load") => {
            if field("resume_vm") == &Value::Bool(true) {
                VmPhase::Running
            } else {
                // "The loaded microVM is now in the `Paused` state."
                VmPhase::Paused
            }
        }
        ("PATCH", "/vm") => match field("state").as_str() {
            Some("Paused") => VmPhase::Paused,
            _ => VmPhase::Running,
        },
        ("PUT", "/actions") if field("action_type") == "InstanceStart" => VmPhase::Running,
        // Logger and metrics leave a process fresh; anything else configured
        // before boot means a snapshot can no longer be loaded.
        ("PUT", "/logger" | "/metrics" | "/actions") => phase,
        _ if phase == VmPhase::Fresh => VmPhase::Configured,
        _ => phase,
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
