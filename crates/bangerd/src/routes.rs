//! Route table: thin handlers over the vm, image and doctor services.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use banger_api::{
    ApiError, BuildImageRequest, CreateVmRequest, DaemonStatus, ExecRequest, KillRequest,
    PruneResult, VmState,
};

use crate::daemon::Shared;
use crate::server::{ndjson_body, Fail, OpId};
use crate::{doctor, health, images, kernels, logs, ports, ssh, stats, vm, vmset, workspace};

type Res<T> = Result<Json<T>, Fail>;

pub fn router(d: Shared, shutdown: std::sync::Arc<tokio::sync::Notify>) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/vms", get(list_vms).post(create_vm))
        .route("/vms/prune", post(prune_vms))
        .route("/vms/{name}", get(show_vm).delete(delete_vm).patch(set_vm))
        .route("/vms/{name}/start", post(start_vm))
        .route("/vms/{name}/stop", post(stop_vm))
        .route("/vms/{name}/restart", post(restart_vm))
        .route("/vms/{name}/kill", post(kill_vm))
        .route("/vms/{name}/exec", post(exec_vm))
        .route("/vms/{name}/workspace", post(prepare_workspace))
        .route("/vms/{name}/workspace/export", post(export_workspace))
        .route("/vms/{name}/ssh", get(ssh_info))
        .route("/vms/{name}/ports", get(vm_ports))
        .route("/vms/{name}/stats", get(vm_stats))
        .route("/vms/{name}/logs", get(vm_logs))
        .route("/vms/{name}/ping", post(ping_vm))
        .route("/vms/{name}/health", get(vm_health))
        .route("/ssh-config", get(ssh_config))
        .route("/operations", get(list_ops))
        .route("/operations/{id}", get(get_op))
        .route("/images", get(list_images))
        .route("/images/build", post(build_image))
        .route("/images/pull", post(pull_image))
        .route("/images/import", post(import_image))
        .route("/images/register", post(register_image))
        .route("/images/cache/prune", post(prune_image_cache))
        .route("/images/{name}", get(show_image).delete(delete_image))
        .route("/images/{name}/promote", post(promote_image))
        .route("/images/{name}/warm", post(warm_image))
        .route("/warm", get(list_warm))
        .route("/warm/{id}", axum::routing::delete(delete_warm))
        .route("/kernels", get(list_kernels))
        .route("/kernels/catalog", get(kernel_catalog))
        .route("/kernels/pull", post(pull_kernel))
        .route("/kernels/import", post(import_kernel))
        .route("/kernels/{name}", get(show_kernel).delete(delete_kernel))
        .route("/doctor", get(run_doctor))
        .route(
            "/shutdown",
            post(move || {
                let s = shutdown.clone();
                async move {
                    s.notify_one();
                    Json(serde_json::json!({"stopping": true}))
                }
            }),
        )
        .fallback(|| async { Fail(ApiError::not_found("no such API route")) })
        .with_state(d);
    Router::new()
        .nest(banger_api::API_PREFIX, api)
        .layer(axum::middleware::from_fn(crate::server::op_id_layer))
}

async fn status(State(d): State<Shared>) -> Res<DaemonStatus> {
    let vms = d
        .store
        .list_vms()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(DaemonStatus {
        version: crate::version_line("bangerd"),
        pid: std::process::id(),
        state_dir: d.cfg.layout.state_dir.display().to_string(),
        socket: d.cfg.layout.daemon_socket().display().to_string(),
        helper_socket: d.cfg.layout.helper_socket().display().to_string(),
        vms_running: vms
            .iter()
            .filter(|v| v.state == VmState::Running.as_str())
            .count(),
        dns: match d.dns.primary() {
            crate::dns::Listener::Listening(a) => Some(a.to_string()),
            _ => None,
        },
    }))
}

async fn list_vms(State(d): State<Shared>) -> Res<Vec<banger_api::VmInfo>> {
    let vms = d
        .store
        .list_vms()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(vms.iter().map(|r| vm::info(&d, r)).collect()))
}

async fn create_vm(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Json(req): Json<CreateVmRequest>,
) -> Result<Response, Fail> {
    let info = vm::create(d, op.0, req).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(info)).into_response())
}

async fn show_vm(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmInfo> {
    let rec = vm::find(&d, &name)?;
    Ok(Json(vm::info(&d, &rec)))
}

async fn set_vm(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<banger_api::SetVmRequest>,
) -> Res<banger_api::SetVmResult> {
    Ok(Json(vmset::set(d, name, req).await?))
}

async fn vm_stats(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmStats> {
    Ok(Json(stats::get(&d, &name).await?))
}

async fn start_vm(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmInfo> {
    Ok(Json(vm::start(d, name).await?))
}

async fn stop_vm(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmInfo> {
    Ok(Json(vm::stop(d, name).await?))
}

async fn restart_vm(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmInfo> {
    Ok(Json(vm::restart(d, name).await?))
}

async fn kill_vm(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<KillRequest>,
) -> Res<banger_api::VmInfo> {
    Ok(Json(vm::kill(d, name, req.signal).await?))
}

async fn delete_vm(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmInfo> {
    Ok(Json(vm::delete(d, name).await?))
}

async fn prune_vms(State(d): State<Shared>) -> Res<PruneResult> {
    Ok(Json(PruneResult {
        deleted: vm::prune(d).await?,
    }))
}

async fn exec_vm(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ExecRequest>,
) -> Result<Response, Fail> {
    let rx = vm::exec(d, name, req).await?;
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(ndjson_body(rx))
        .expect("static response parts"))
}

async fn vm_logs(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<banger_api::LogsQuery>,
) -> Result<Response, Fail> {
    let rx = logs::stream(d, name, q).await?;
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(ndjson_body(rx))
        .expect("static response parts"))
}

async fn ping_vm(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<banger_api::PingRequest>,
) -> Res<banger_api::PingResult> {
    Ok(Json(health::ping(d, name, req).await?))
}

async fn vm_health(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<banger_api::HealthQuery>,
) -> Res<banger_api::VmHealth> {
    Ok(Json(health::health(d, name, q).await?))
}

async fn prepare_workspace(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<banger_api::PrepareWorkspaceRequest>,
) -> Res<banger_api::PrepareWorkspaceResult> {
    Ok(Json(workspace::prepare(d, name, req).await?))
}

async fn export_workspace(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<banger_api::ExportWorkspaceRequest>,
) -> Res<banger_api::ExportWorkspaceResult> {
    Ok(Json(workspace::export(d, name, req).await?))
}

async fn ssh_info(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::SshInfo> {
    let rec = vm::find(&d, &name)?;
    if !vm::is_running(&d, &rec) {
        return Err(Fail(ApiError::conflict(format!(
            "vm {name:?} is not running; start it with `banger vm start {name}`"
        ))));
    }
    Ok(Json(ssh::info(&d, &rec)?))
}

async fn vm_ports(State(d): State<Shared>, Path(name): Path<String>) -> Res<banger_api::VmPorts> {
    Ok(Json(ports::list(&d, &name).await?))
}

async fn ssh_config(State(d): State<Shared>) -> Res<banger_api::SshConfigInfo> {
    // Make sure the file exists before anyone includes it.
    ssh::refresh_config(&d);
    Ok(Json(banger_api::SshConfigInfo {
        include_path: ssh::include_path(&d).display().to_string(),
    }))
}

async fn list_ops(State(d): State<Shared>) -> Res<Vec<banger_api::OperationInfo>> {
    Ok(Json(d.ops.list()))
}

async fn get_op(State(d): State<Shared>, Path(id): Path<String>) -> Res<banger_api::OperationInfo> {
    d.ops
        .get(&id)
        .map(Json)
        .ok_or_else(|| Fail(ApiError::not_found(format!("operation {id:?} not found"))))
}

async fn list_images(State(d): State<Shared>) -> Res<Vec<banger_api::ImageInfo>> {
    Ok(Json(images::list(&d)?))
}

async fn build_image(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Json(req): Json<BuildImageRequest>,
) -> Result<Response, Fail> {
    let name = req
        .name
        .unwrap_or_else(|| banger_image::DEFAULT_IMAGE.to_string());
    let info = images::build(d, op.0, name, req.force).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(info)).into_response())
}

fn accepted(info: banger_api::OperationInfo) -> Response {
    (axum::http::StatusCode::ACCEPTED, Json(info)).into_response()
}

async fn pull_image(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Json(req): Json<banger_api::PullImageRequest>,
) -> Result<Response, Fail> {
    Ok(accepted(images::pull(d, op.0, req).await?))
}

async fn import_image(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Json(req): Json<banger_api::ImportImageRequest>,
) -> Result<Response, Fail> {
    Ok(accepted(images::import(d, op.0, req).await?))
}

async fn register_image(
    State(d): State<Shared>,
    Json(req): Json<banger_api::RegisterImageRequest>,
) -> Res<banger_api::ImageInfo> {
    Ok(Json(images::register(&d, req).await?))
}

async fn prune_image_cache(
    State(d): State<Shared>,
    Json(req): Json<banger_api::CachePruneRequest>,
) -> Res<banger_api::CachePruneResult> {
    Ok(Json(images::prune_cache(&d, req.dry_run).await?))
}

async fn show_image(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Res<banger_api::ImageInfo> {
    Ok(Json(images::show(&d, &name)?))
}

async fn delete_image(State(d): State<Shared>, Path(name): Path<String>) -> Res<serde_json::Value> {
    images::delete(&d, &name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

async fn warm_image(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Path(name): Path<String>,
    Json(req): Json<banger_api::WarmImageRequest>,
) -> Result<Response, Fail> {
    Ok(accepted(
        crate::warm::start_build(d, op.0, name, req).await?,
    ))
}

async fn list_warm(State(d): State<Shared>) -> Res<Vec<banger_api::WarmSnapshotInfo>> {
    Ok(Json(crate::warm::list(&d)))
}

async fn delete_warm(State(d): State<Shared>, Path(id): Path<String>) -> Res<serde_json::Value> {
    let _g = d.warm_lock.lock().await;
    crate::warm::remove(&d, &id).map_err(|e| {
        if e.starts_with("no warm snapshot") {
            banger_api::ApiError::not_found(e)
        } else if e.contains("not a warm snapshot id") {
            banger_api::ApiError::bad_request(e)
        } else {
            banger_api::ApiError::conflict(e)
        }
    })?;
    Ok(Json(serde_json::json!({ "deleted": id })))
}

async fn promote_image(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Res<banger_api::ImageInfo> {
    Ok(Json(images::promote(&d, &name).await?))
}

async fn list_kernels(State(d): State<Shared>) -> Res<Vec<banger_api::KernelInfo>> {
    Ok(Json(kernels::list(&d)?))
}

async fn kernel_catalog(State(d): State<Shared>) -> Res<Vec<banger_api::CatalogKernel>> {
    Ok(Json(kernels::catalog(&d).await?))
}

async fn pull_kernel(
    State(d): State<Shared>,
    Extension(op): Extension<OpId>,
    Json(req): Json<banger_api::PullKernelRequest>,
) -> Result<Response, Fail> {
    Ok(accepted(kernels::pull(d, op.0, req.name).await?))
}

async fn import_kernel(
    State(d): State<Shared>,
    Json(req): Json<banger_api::ImportKernelRequest>,
) -> Res<banger_api::KernelInfo> {
    Ok(Json(kernels::import(&d, req).await?))
}

async fn show_kernel(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Res<banger_api::KernelInfo> {
    Ok(Json(kernels::show(&d, &name)?))
}

async fn delete_kernel(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Res<serde_json::Value> {
    kernels::delete(&d, &name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

async fn run_doctor(State(d): State<Shared>) -> Res<banger_api::DoctorReport> {
    Ok(Json(doctor::report(&d).await))
}
