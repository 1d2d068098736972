//! Rendering shared by every page: a template into a response, and the page for a message.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Renders a page; a template that fails to render (a bug) is a 500 that says nothing internal.
pub(super) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the client's log").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    active: &'static str,
    title: String,
    message: String,
}

/// A page that says one thing, with `code`.
pub(super) fn message_page(code: StatusCode, title: &str, message: String) -> Response {
    let mut response = render(&MessagePage { active: "", title: title.to_string(), message });
    *response.status_mut() = code;
    response
}
