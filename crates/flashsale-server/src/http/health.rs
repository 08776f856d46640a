//! Probes: `/healthz` (the process is up) and `/readyz` (every dependency answers).

use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

/// A probe's answer.
#[derive(Serialize, ToSchema)]
pub struct ProbeBody {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = ProbeBody)))]
pub async fn healthz() -> Json<ProbeBody> {
    Json(ProbeBody { status: "ok" })
}

/// Readiness: 200 when the store and its dependencies answer, else 503 `unavailable`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = ProbeBody),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<ProbeBody>, ApiError> {
    app.store.ready().await?;
    Ok(Json(ProbeBody { status: "ready" }))
}
