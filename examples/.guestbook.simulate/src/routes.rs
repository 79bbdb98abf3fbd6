//! The guestbook's HTTP routes. Each handler answers only after its work is durable (a `201`
//! means the entry is committed, the upload is renamed into place and synced).

use std::path::PathBuf;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth;
use crate::db::{self, Db};
use crate::uploads::{self, Upload};

/// Longest entry text, in characters.
pub const MAX_ENTRY_CHARS: usize = 2000;
/// Largest upload accepted, in bytes.
pub const MAX_UPLOAD_BYTES: usize = 64 * 1024 * 1024;
/// How many entries the HTML page shows.
const PAGE_ENTRIES: u32 = 200;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub uploads_dir: PathBuf,
}

/// The guestbook's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/entries", get(list_entries))
        .route("/entries", post(add_entry))
        .route(
            "/upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/uploads/{name}", get(download))
        .route("/login", post(login))
        .route("/admin/password", post(change_password))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// An error answer: a status and a JSON body `{"error": "..."}` that says what to do.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        // Details go to the instance log; the client learns only that it should retry.
        esay!("guestbook: internal error: {err:#}");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; try again, and see the guestbook log if it persists".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// A request body given either as JSON or as an HTML form, chosen by its content type.
pub struct JsonOrForm<T>(pub T);

impl<T, S> FromRequest<S> for JsonOrForm<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            let Json(value) = Json::<T>::from_request(req, state).await.map_err(|rej| {
                ApiError::bad_request(format!("bad JSON body: {}", rej.body_text()))
            })?;
            Ok(JsonOrForm(value))
        } else {
            let Form(value) = Form::<T>::from_request(req, state).await.map_err(|rej| {
                ApiError::bad_request(format!(
                    "bad form body: {} (send application/x-www-form-urlencoded or JSON)",
                    rej.body_text()
                ))
            })?;
            Ok(JsonOrForm(value))
        }
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn index(State(app): State<AppState>) -> Result<Html<String>, ApiError> {
    let entries = app
        .db
        .run(|conn| db::list_entries(conn, Some(PAGE_ENTRIES)))
        .await?;
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Guestbook</title></head>\n\
         <body><h1>Guestbook</h1>\n\
         <form method=\"post\" action=\"/entries\"><input name=\"text\" maxlength=\"2000\">\
         <button>Sign</button></form>\n<ul>\n",
    );
    for entry in entries.iter().rev() {
        page.push_str(&format!(
            "<li><time>{}</time> {}</li>\n",
            escape_html(&entry.created_at),
            escape_html(&entry.text)
        ));
    }
    page.push_str("</ul></body></html>\n");
    Ok(Html(page))
}

/// `GET /api/entries?after=ID&limit=N`: both optional; without them, every entry.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

async fn list_entries(
    State(app): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Vec<db::Entry>>, ApiError> {
    let Query(page) = page.map_err(|rej| {
        ApiError::bad_request(format!(
            "bad query: {} (use ?after=ID&limit=N with whole numbers)",
            rej.body_text()
        ))
    })?;
    let entries = app
        .db
        .run(move |conn| db::entries_after(conn, page.after, page.limit))
        .await?;
    Ok(Json(entries))
}

#[derive(Deserialize)]
struct NewEntry {
    text: String,
}

/// Longest accepted `Idempotency-Key` header.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

async fn add_entry(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonOrForm(entry): JsonOrForm<NewEntry>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN => {
                Some(key.to_string())
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} \
                     visible ASCII characters"
                )));
            }
        },
    };
    let text = entry.text.trim().to_string();
    if text.is_empty() {
        return Err(ApiError::bad_request("the entry is empty; write some text"));
    }
    if text.chars().count() > MAX_ENTRY_CHARS {
        return Err(ApiError::bad_request(format!(
            "the entry is longer than {MAX_ENTRY_CHARS} characters; shorten it"
        )));
    }
    let id = app
        .db
        .run(move |conn| db::add_entry(conn, &text, key.as_deref()))
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

async fn upload(State(app): State<AppState>, mut form: Multipart) -> Result<Response, ApiError> {
    let bad_multipart = |err: axum::extract::multipart::MultipartError| {
        ApiError(
            err.status(),
            format!("bad multipart body: {}", err.body_text()),
        )
    };
    while let Some(mut field) = form.next_field().await.map_err(bad_multipart)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .ok_or_else(|| ApiError::bad_request("the `file` field has no file name; send one"))?
            .to_string();
        let name = uploads::check_name(&name)
            .map_err(|err| ApiError::bad_request(err.to_string()))?
            .to_string();
        let mut file = Upload::begin(&app.uploads_dir).await?;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(err) = file.write(&chunk).await {
                        file.abandon().await;
                        return Err(err.into());
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    file.abandon().await;
                    return Err(bad_multipart(err));
                }
            }
        }
        file.finish(&name).await?;
        return Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "name": name })),
        )
            .into_response());
    }
    Err(ApiError::bad_request(
        "no `file` field in the form; send multipart/form-data with a field named `file`",
    ))
}

async fn download(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = uploads::check_name(&name).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let path = app.uploads_dir.join(name);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            Ok((StatusCode::OK, headers, bytes).into_response())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no uploaded file is named {name:?}"),
        )),
        Err(err) => Err(anyhow::Error::new(err)
            .context(format!("reading {}", path.display()))
            .into()),
    }
}

#[derive(Deserialize)]
struct Password {
    password: String,
}

async fn login(
    State(app): State<AppState>,
    JsonOrForm(body): JsonOrForm<Password>,
) -> Result<Response, ApiError> {
    if body.password.len() > auth::MAX_PASSWORD_LEN {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "wrong password".into()));
    }
    const NO_ADMIN: &str = "no admin password is set yet; set one with \
                            `guestbook set-admin-password` or GUESTBOOK_ADMIN_PASSWORD";
    const WRONG: &str = "wrong password";
    let token = app
        .db
        .run(move |conn| {
            let Some(hash) = db::admin_password_hash(conn)? else {
                return Ok(Err(NO_ADMIN));
            };
            if !auth::verify_password(&body.password, &hash) {
                return Ok(Err(WRONG));
            }
            let (token, stored) = auth::new_session_token();
            db::add_session(conn, &stored)?;
            Ok(Ok(token))
        })
        .await?
        .map_err(|refusal| ApiError(StatusCode::UNAUTHORIZED, refusal.into()))?;
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::SESSION_COOKIE,
        db::SESSION_LIFETIME.as_secs()
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(anyhow::Error::new)?,
    );
    Ok((headers, Json(serde_json::json!({ "ok": true }))).into_response())
}

/// The session token from the request's cookies, if any.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == auth::SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

async fn change_password(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonOrForm(body): JsonOrForm<Password>,
) -> Result<Response, ApiError> {
    let not_logged_in = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "log in first (POST /login)".into(),
        )
    };
    let token = session_token(&headers).ok_or_else(not_logged_in)?;
    auth::validate_new_password(&body.password)
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    let changed = app
        .db
        .run(move |conn| {
            let stored = auth::session_token_hash(&token);
            if !db::session_is_valid(conn, &stored)? {
                return Ok(false);
            }
            let hash = auth::hash_password(&body.password)?;
            db::replace_admin_password(conn, &hash, Some(&stored))?;
            Ok(true)
        })
        .await?;
    if !changed {
        return Err(not_logged_in());
    }
    Ok(Json(serde_json::json!({ "ok": true })).into_response())
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.db.run(db::check).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database check failed: {err:#}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape_html("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; guestbook_session=abc; b=2"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("abc"));
        assert_eq!(session_token(&HeaderMap::new()), None);
    }
}
