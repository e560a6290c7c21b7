//! Microsoft Graph `sendMail` with a MIME body, the relay's alternative to SMTP AUTH.
//!
//! `POST /v1.0/users/{mailbox}/sendMail` with `Content-Type: text/plain` and the base64 of the
//! MIME message, authorized by a Graph-audience bearer token; `202 Accepted` on success.
//! Error bodies have Graph's `{"error":{"code","message","innerError"}}` shape and the codes
//! Exchange uses for MIME submissions, so the relay's classification can be tested.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::directory::{
    Audience, Delivered, GraphFault, Shared, State as Dir, Via, guid, timestamp,
};
use super::headers;

/// Graph's request size limit for sendMail (the base64 body counts).
pub(crate) const MAX_REQUEST: usize = 4 * 1024 * 1024;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
        .route("/v1.0/users/{mailbox}", get(get_user))
        // axum's default 2 MB limit would answer before we can give Graph's 413.
        .layer(DefaultBodyLimit::max(8 * MAX_REQUEST))
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": timestamp(),
                "request-id": guid(),
                "client-request-id": guid(),
            }
        }
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"\", error=\"invalid_token\""),
        );
    }
    resp
}

fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn access_denied() -> Response {
    graph_error(
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

/// Who a valid Graph bearer token is for: (mailbox, tenant id, client id).
struct Caller {
    mailbox: String,
    tenant_id: String,
    client_id: String,
}

/// Checks `Authorization: Bearer`; on failure, the message of Graph's 401.
fn authorize(s: &Dir, headers: &HeaderMap) -> Result<Caller, &'static str> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("Access token is empty.")?;
    let t = s
        .valid_access_token(token, Audience::Graph)
        .map_err(|why| match why {
            "token expired" => "Lifetime validation failed, the token is expired.",
            "invalid audience" => "Access token validation failure. Invalid audience.",
            _ => "IDX14100: JWT is not well formed, there are no dots (.).",
        })?;
    Ok(Caller {
        mailbox: t.mailbox.clone(),
        tenant_id: t.tenant_id.clone(),
        client_id: t.client_id.clone(),
    })
}

fn unauthorized(message: &str) -> Response {
    graph_error(401, "InvalidAuthenticationToken", message)
}

async fn send_mail(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.with(|s| send_mail_in(s, &mailbox, &headers, &body))
}

fn send_mail_in(s: &mut Dir, mailbox: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    s.graph_requests += 1;
    if body.len() > MAX_REQUEST {
        return graph_error(
            413,
            "ErrorRequestEntityTooLarge",
            "The request exceeds the maximum supported size of 4 MB.",
        );
    }
    let fault = s
        .graph_script
        .pop_front()
        .unwrap_or_else(|| s.graph_fault.clone());
    match fault {
        GraphFault::None => {}
        GraphFault::TooManyRequests { retry_after } => {
            return with_retry_after(
                graph_error(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                ),
                retry_after,
            );
        }
        GraphFault::Unavailable { retry_after } => {
            return with_retry_after(
                graph_error(
                    503,
                    "ServiceUnavailable",
                    "Service is temporarily unavailable. Please try again later.",
                ),
                retry_after,
            );
        }
        GraphFault::Unauthorized => {
            return unauthorized("Access token validation failure.");
        }
        GraphFault::Forbidden => return access_denied(),
        GraphFault::BadRequest { code, message } => return graph_error(400, &code, &message),
    }
    let Caller {
        mailbox: user,
        tenant_id,
        client_id,
    } = match authorize(s, headers) {
        Ok(caller) => caller,
        Err(message) => return unauthorized(message),
    };
    if !user.eq_ignore_ascii_case(mailbox) {
        return access_denied();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("text/plain") {
        return graph_error(
            400,
            "ErrorInvalidRequest",
            "This fake only implements MIME submission: send the base64 MIME message with \
             Content-Type: text/plain.",
        );
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let Ok(mime) = STANDARD.decode(&compact) else {
        return graph_error(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let Some(block) = headers::header_block(&mime) else {
        return graph_error(400, "ErrorMimeContentInvalid", "Invalid MIME content.");
    };
    let rcpt_to = headers::addresses(block, &["To", "Cc", "Bcc"]);
    if rcpt_to.is_empty() {
        return graph_error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains \
             no recipients.",
        );
    }
    let app = s.find_app(&tenant_id, &client_id).cloned();
    if let (Some(app), Some(from)) = (app, headers::from_address(block)) {
        if !app.may_send_as(&from) {
            return graph_error(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right \
                 to send mail on behalf of the specified sending account., Cannot submit message.",
            );
        }
    }
    s.delivered.push(Delivered {
        mail_from: mailbox.to_string(),
        rcpt_to,
        data: mime,
        via: Via::Graph,
        user,
    });
    StatusCode::ACCEPTED.into_response()
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.with(|s| {
        let user = match authorize(s, &headers) {
            Ok(caller) => caller.mailbox,
            Err(message) => return unauthorized(message),
        };
        if !user.eq_ignore_ascii_case(&mailbox) {
            return graph_error(
                404,
                "Request_ResourceNotFound",
                &format!(
                    "Resource '{mailbox}' does not exist or one of its queried reference-property \
                     objects are not present."
                ),
            );
        }
        let display = user.split('@').next().unwrap_or(&user).to_string();
        axum::Json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
            "id": guid(),
            "displayName": display,
            "mail": user,
            "userPrincipalName": user,
        }))
        .into_response()
    })
}
