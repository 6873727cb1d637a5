//! The HTTPS routes: enrolment, the node endpoints (mutual TLS), the operators' API,
//! `/metrics` and the operators' web pages. The accept loop is [`crate::server::listener`].

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::server::{api, enroll, node, web, State};

/// Every HTTPS route; every refusal is audited ([`crate::server::audit_refusals`]), and no
/// body is read past `--max-body` (413).
pub fn router(st: Arc<State>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/renew", post(enroll::renew))
        .route("/v1/config", get(node::config))
        .route("/v1/extensions/{name}", get(node::extension))
        .route("/v1/events", post(node::events))
        .route("/v1/logs", post(node::logs))
        .route("/v1/action", post(node::action))
        .route("/v1/machines", get(api::list))
        .route("/v1/machines/{mac}", get(api::show).put(api::declare))
        .route("/v1/machines/{mac}/logs/{boot}", get(api::boot_log))
        .route("/v1/machines/{mac}/accept", post(api::accept))
        .route("/v1/machines/{mac}/{verb}", post(api::act))
        .route("/v1/server", get(api::server))
        .route("/metrics", get(api::metrics))
        .merge(web::routes())
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(st.cfg.limits.max_body))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            crate::server::audit_refusals,
        ))
        .with_state(st)
}

/// A body that says up front it is over `--max-body` is refused before a byte of it is
/// read, and before hyper sends `100 Continue`: the client that asked first never sends
/// it, and one that did not gets the 413 without the server reading what it cannot use.
/// (A chunked body is counted as it comes, by [`DefaultBodyLimit`].)
async fn refuse_declared_oversize(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > st.cfg.limits.max_body as u64 => {
            use axum::response::IntoResponse;
            (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {n} bytes, over --max-body ({} bytes)\n",
                    st.cfg.limits.max_body
                ),
            )
                .into_response()
        }
        _ => next.run(req).await,
    }
}
