//! The dashboard's and login page's static files, compiled in: the console needs no internet
//! resource and no files next to the binary.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub(super) const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
pub(super) const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
pub(super) const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");
pub(super) const LOGIN_HTML: &str = include_str!("../../assets/login.html");
pub(super) const LOGIN_JS: &str = include_str!("../../assets/login.js");

fn with_type(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) fn html(body: &'static str) -> Response {
    with_type("text/html; charset=utf-8", body)
}

pub(super) fn script(body: &'static str) -> Response {
    with_type("text/javascript; charset=utf-8", body)
}

pub(super) fn style(body: &'static str) -> Response {
    with_type("text/css; charset=utf-8", body)
}
