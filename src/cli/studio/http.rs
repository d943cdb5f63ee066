//! The studio's HTTP half (axum): the page's files (built into the binary), the live stream
//! (server-sent events), and the three things a page asks of a device: label the frame it
//! shows, upload a photo, run a command. Every request, the live stream included, passes the
//! access check first; bodies are read only up to the device's own sample limit; labels are
//! checked with the device's rule before anything is published.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::relay::{fresh_id, Relay, RelayError};
use crate::learn::cache::content_hash;
use crate::learn::identity::{Label, LabelError};
use crate::mqtt::topics::validate_level;

/// The device limit assumed until a device reports its `learning.max_sample_bytes` (its default).
pub const DEFAULT_MAX_SAMPLE_BYTES: u64 = 4 << 20;
/// JSON bodies (a label and a frame id, a command's argument) are small.
const MAX_JSON_BYTES: usize = 16 * 1024;
/// The header every POST must carry: a cross-site form or `fetch` without CORS cannot set it,
/// so another web page open in the operator's browser cannot drive the studio.
pub const CSRF_HEADER: &str = "x-glimpse-studio";
/// The cookie that carries the access token after the first accepted request.
const COOKIE: &str = "glimpse_studio_token";
/// Commands a page may run; anything else is refused here, before the device sees it.
const COMMANDS: [&str; 4] = ["retrain", "rollback", "forget", "labels"];

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// What every handler shares.
#[derive(Clone)]
pub struct Studio {
    pub relay: Relay,
    /// `None`: no token needed (loopback without `--token-file`).
    pub token: Option<String>,
}

/// A refusal, with the status it maps to and a one-line reason the page shows as is.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong access token")]
    Unauthorized,
    #[error("POST requests must carry the {CSRF_HEADER} header (sent by the studio's page)")]
    MissingCsrfHeader,
    #[error("device id: {0}")]
    BadDevice(String),
    #[error("{0}")]
    BadLabel(#[from] LabelError),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(
        "the body is over the limit of {limit} bytes (the device's learning.max_sample_bytes)"
    )]
    TooLarge { limit: u64 },
    #[error("unknown command {0:?}: the studio runs retrain, rollback, forget and labels")]
    UnknownCommand(String),
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MissingCsrfHeader => StatusCode::FORBIDDEN,
            ApiError::BadDevice(_)
            | ApiError::BadLabel(_)
            | ApiError::Malformed(_)
            | ApiError::UnknownCommand(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Relay(RelayError::Unavailable(_)) => StatusCode::CONFLICT,
            ApiError::Relay(RelayError::Broker(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Relay(RelayError::NoAck { .. }) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The router with every route and the access check in front of all of them.
pub fn router(studio: Studio) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { page(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/events", get(events))
        .route("/api/devices/{device}/frame", post(label_frame))
        .route("/api/devices/{device}/photo", post(upload_photo))
        .route("/api/devices/{device}/command/{name}", post(command))
        .layer(axum::middleware::from_fn_with_state(studio.clone(), guard))
        .with_state(studio)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Token check (query `token=` or `Authorization: Bearer`), the CSRF header on POSTs, and
/// headers that keep the page from running anything it did not ship (a label that slipped
/// through as markup would still not execute).
async fn guard(State(studio): State<Studio>, request: Request, next: Next) -> Response {
    let mut set_cookie = None;
    if let Some(token) = &studio.token {
        if !presented_tokens(&request).any(|t| same_secret(t.as_bytes(), token.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
        // The page's own files and requests then carry it without `?token=` in every URL;
        // SameSite=Strict keeps other sites' requests from carrying it.
        set_cookie = HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        ))
        .ok();
    }
    if request.method() == Method::POST && !request.headers().contains_key(CSRF_HEADER) {
        return ApiError::MissingCsrfHeader.into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = set_cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The tokens a request carries: `?token=` (the printed link), the cookie the studio sets
/// once a token was accepted, and `Authorization: Bearer` (scripts).
fn presented_tokens(request: &Request) -> impl Iterator<Item = String> + '_ {
    let from_query = Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(q)| q.token);
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_string);
    from_query.into_iter().chain(from_header).chain(from_cookie)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The live stream: every device now, then each change, as server-sent events.
async fn events(
    State(studio): State<Studio>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (snapshot, receiver) = studio.relay.subscribe();
    let live = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(message) => return Some((message, receiver)),
                // A slow page skips to the newest events; the next device event is complete.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let all = stream::iter(snapshot)
        .chain(live)
        .map(|m| Ok(Event::default().event(m.event).data(m.data)));
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn checked_device(device: &str) -> Result<(), ApiError> {
    validate_level("device id", device).map_err(|e| ApiError::BadDevice(e.to_string()))
}

/// Reads at most `limit` bytes of `body`; a declared `Content-Length` over it is refused before
/// a byte is read.
async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, cap)
        .await
        .map_err(|_| ApiError::TooLarge { limit })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameRequest {
    label: String,
    frame_id: u64,
}

/// `POST /api/devices/{d}/frame` `{"label", "frame_id"}`: labels a frame the device published
/// (no image travels); answers with the device's ack.
async fn label_frame(
    State(studio): State<Studio>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    checked_device(&device)?;
    let bytes = read_body(&headers, body, MAX_JSON_BYTES as u64).await?;
    let request: FrameRequest = parse_json(&bytes)?;
    let label = Label::new(request.label)?;
    let id = fresh_id();
    let payload = json!({ "id": id, "label": label.as_str(), "frame_id": request.frame_id });
    let topic = studio.relay.topics(&device)?.sample_json();
    let ack = studio
        .relay
        .request(
            &device,
            topic,
            payload.to_string().into_bytes(),
            &id,
            Some(label.as_str()),
        )
        .await?;
    Ok(Json(serde_json::to_value(ack).unwrap_or_default()))
}

#[derive(Deserialize)]
struct PhotoQuery {
    label: String,
}

/// `POST /api/devices/{d}/photo?label=L` with the image bytes as the body: one sample on
/// `sample/{label}`, answered with the device's ack (matched by the bytes' sha256 and label).
async fn upload_photo(
    State(studio): State<Studio>,
    Path(device): Path<String>,
    query: Result<Query<PhotoQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    checked_device(&device)?;
    let Query(query) = query.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let label = Label::new(query.label)?;
    let limit = studio
        .relay
        .device(&device)
        .and_then(|d| d.max_sample_bytes)
        .unwrap_or(DEFAULT_MAX_SAMPLE_BYTES);
    let bytes = read_body(&headers, body, limit).await?;
    if bytes.is_empty() {
        return Err(ApiError::Malformed("the body (the photo) is empty".into()));
    }
    let id = content_hash(&bytes);
    let topic = studio.relay.topics(&device)?.sample_image(&label);
    let ack = studio
        .relay
        .request(&device, topic, bytes.to_vec(), &id, Some(label.as_str()))
        .await?;
    Ok(Json(serde_json::to_value(ack).unwrap_or_default()))
}

/// `POST /api/devices/{d}/command/{name}` with the command's JSON argument (or nothing).
async fn command(
    State(studio): State<Studio>,
    Path((device, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    checked_device(&device)?;
    if !COMMANDS.contains(&name.as_str()) {
        return Err(ApiError::UnknownCommand(name));
    }
    let bytes = read_body(&headers, body, MAX_JSON_BYTES as u64).await?;
    let args: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(&bytes)?
    };
    if !args.is_object() {
        return Err(ApiError::Malformed(
            "the argument must be a JSON object".into(),
        ));
    }
    if name == "forget" {
        let label = args.get("label").and_then(Value::as_str).unwrap_or("");
        Label::new(label)?;
    }
    let ack = studio.relay.command(&device, &name, args).await?;
    Ok(Json(serde_json::to_value(ack).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn refusals_map_to_clear_statuses() {
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::TooLarge { limit: 10 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let bad = ApiError::from(Label::new("a/b").unwrap_err());
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.to_string().contains("not allowed"), "{bad}");
    }
}
