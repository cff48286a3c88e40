//! The web console: a browser app (plain ES modules, no build step) served by vbin itself at
//! `/console/`, embedded in the binary so it works offline and needs no other server. It uses
//! the public API only (the same JWT or admin token, the same endpoints, the WebSocket for live
//! updates), so it is also the API's reference client.
//!
//! Every response carries a Content-Security-Policy that allows this origin only: nothing is
//! fetched from elsewhere at run time.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

/// Where the console is served.
pub const BASE: &str = "/console/";

/// `/console` (redirects), `/console/` (the app) and `/console/{file}` (its files).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent(BASE) }))
        .route(
            "/console/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>, h: HeaderMap| async move { serve(&path, &h) }),
        )
}

/// The policy: scripts, styles, fetches and media from this origin only (the WebSocket too);
/// recordings play from `blob:` URLs made of what the API returned.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    // The files change only with the binary: revalidate by their hash.
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut headers = HeaderMap::new();
    let static_header = |v: &'static str| HeaderValue::from_static(v);
    headers.insert(header::CACHE_CONTROL, static_header("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, static_header(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, static_header("nosniff"));
    headers.insert(header::REFERRER_POLICY, static_header("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, static_header("DENY"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let mime = file.metadata.mimetype();
    let mime = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    (headers, file.data.into_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_app_and_its_modules_are_served_with_their_types_and_a_strict_policy() {
        let r = get("/console/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        let js = get("/console/js/app.js", None).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript"));
        // Revalidation by hash.
        let etag = js.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(
            get("/console/js/app.js", Some(&etag)).await.status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get("/console/nope.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/console", None).await.status(),
            StatusCode::PERMANENT_REDIRECT
        );
    }
}
