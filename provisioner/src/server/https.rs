//! The HTTPS routes: enrolment, the node endpoints (mutual TLS), the operators' API and
//! `/metrics`. The accept loop is [`crate::server::listener`].

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::server::{api, enroll, node, State};

/// Every HTTPS route; every refusal is audited ([`crate::server::audit_refusals`]), and no
/// body is read past `--max-body` (413).
pub fn router(st: Arc<State>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/renew", post(enroll::renew))
        .route("/v1/config", get(node::config))
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
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(st.cfg.limits.max_body))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            crate::server::audit_refusals,
        ))
        .with_state(st)
}
