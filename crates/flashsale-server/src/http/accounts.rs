//! `--identity accounts` (SPEC section 10): `POST /api/accounts` (sign up), `POST
//! /api/sessions` (log in), `DELETE /api/sessions/current` (log out). Served only in that
//! mode; the mode's parts (store, sessions, hashing, limits) are in `identity/`.
//!
//! A log-in answers 401 `invalid_credentials` alike for an unknown email and a wrong password,
//! after the same work: the rate limits, one account read, one argon2id verification (against
//! a dummy hash when there is no account).

use crate::http::error::{ApiError, Challenge};
use crate::http::extract::{json_body, parse_object};
use crate::http::identity::accounts::{check_password, normalise_email};
use crate::http::identity::sessions::buyer_of;
use crate::http::identity::{Accounts, Identity, bearer_token};
use crate::http::{AppState, routes};
use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use flashsale_store::accounts::SignUp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;

/// `routes` with the account routes added.
pub fn routes(routes: Router<AppState>) -> Router<AppState> {
    routes
        .route(routes::ACCOUNTS, post(create_account))
        .route(routes::SESSIONS, post(create_session))
        .route(routes::CURRENT_SESSION, delete(delete_session))
}

/// The body of a sign-up or log-in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

/// 201 to a sign-up.
#[derive(Serialize)]
struct AccountBody<'a> {
    /// The buyer id of the account's orders.
    user_id: &'a str,
    email: &'a str,
}

/// 201 to a log-in.
#[derive(Serialize)]
struct SessionBody<'a> {
    token: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    user_id: &'a str,
    email: &'a str,
}

fn accounts_of(app: &AppState) -> Result<&Arc<Accounts>, ApiError> {
    match &app.identity {
        Identity::Accounts(accounts) => Ok(accounts),
        // The routes are not mounted in the other modes; answer as if they did not exist.
        Identity::Guest | Identity::Jwt(_) => Err(ApiError::NotFound),
    }
}

/// `POST /api/accounts`: 201 `{"user_id","email"}`, 409 `email_taken`, 400 for a bad email
/// or a password outside 8..=1024 bytes.
pub async fn create_account(State(app): State<AppState>, request: Request) -> Response {
    sign_up(&app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn sign_up(app: &AppState, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts_of(app)?;
    let client = app.limiter.client_of(&request);
    accounts.limits.check_signup(client)?;
    let body = json_body(request, app.body_timeout).await?;
    let credentials: Credentials = parse_object(&body)?;
    let email = normalise_email(&credentials.email)?;
    check_password(&credentials.password)?;
    // Cheap refusal first; the unique index decides a race (below).
    if accounts.store.account_by_email(&email).await?.is_some() {
        return Err(ApiError::EmailTaken);
    }
    let hash = accounts.passwords.hash(credentials.password).await?;
    match accounts
        .store
        .create_account(&email, &hash, app.store.now())
        .await?
    {
        SignUp::Created(account) => {
            let buyer = buyer_of(account.id);
            tracing::info!(user_id = %buyer, "account created");
            let body = AccountBody {
                user_id: buyer.as_str(),
                email: &account.email,
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        SignUp::EmailTaken => Err(ApiError::EmailTaken),
    }
}

/// `POST /api/sessions`: 201 `{"token","expires_at","user_id","email"}`; 401
/// `invalid_credentials` for an unknown email or a wrong password alike.
pub async fn create_session(State(app): State<AppState>, request: Request) -> Response {
    log_in(&app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn log_in(app: &AppState, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts_of(app)?;
    let client = app.limiter.client_of(&request);
    let body = json_body(request, app.body_timeout).await?;
    let credentials: Credentials = parse_object(&body)?;
    // A malformed email or password cannot name an account: the same answer as a wrong one
    // (after the limits, so nobody probes for free), without the hash.
    let email = normalise_email(&credentials.email).ok();
    accounts
        .limits
        .check_login(email.as_deref().unwrap_or(""), client)?;
    let (Some(email), Ok(())) = (email, check_password(&credentials.password)) else {
        return Err(ApiError::InvalidCredentials);
    };
    let account = accounts.store.account_by_email(&email).await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let verified = accounts
        .passwords
        .verify(credentials.password, stored)
        .await?;
    let Some(account) = account.filter(|_| verified) else {
        return Err(ApiError::InvalidCredentials);
    };
    let (token, expires_at) = accounts
        .sessions
        .issue(account.id, app.store.now())
        .map_err(|e| ApiError::Internal(format!("cannot make a session id: {e}")))?;
    let buyer = buyer_of(account.id);
    let body = SessionBody {
        token: &token,
        expires_at,
        user_id: buyer.as_str(),
        email: &account.email,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /api/sessions/current`: 204; the bearer token is refused on every instance from
/// then on (on this one at once, on the others within the revocation poll).
pub async fn delete_session(State(app): State<AppState>, headers: HeaderMap) -> Response {
    log_out(&app, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn log_out(app: &AppState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let accounts = accounts_of(app)?;
    let token = bearer_token(headers).ok_or(ApiError::Unauthenticated(Challenge::Missing))?;
    let session = accounts
        .sessions
        .verify(token, app.store.now())
        .map_err(|_| ApiError::Unauthenticated(Challenge::InvalidToken))?;
    accounts
        .sessions
        .revoke(accounts.store.as_ref(), &session)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
