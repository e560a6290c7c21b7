//! Microsoft Graph `sendMail`: the second road to Exchange Online, for tenants whose SMTP AUTH
//! is switched off (`transport = "graph"`).
//!
//! One HTTPS request a message: `POST {graph_endpoint}/v1.0/users/{mailbox}/sendMail` with the
//! rewritten MIME message, base64, as a `text/plain` body and a Graph bearer token; `202` means
//! accepted for every recipient. Graph reads the recipients from the MIME header, not from an
//! envelope, so envelope recipients that To and Cc don't name are added as a `Bcc` header in
//! what Graph gets (Exchange strips Bcc from what recipients see), and To/Cc addresses that
//! are not envelope recipients, which Graph sends to anyway, are logged.
//!
//! Replies are judged into the same [`Attempt`] the SMTP transport gives, so the queue,
//! pacing, bounces, metrics and alerts serve both transports unchanged.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Client, RequestBuilder, StatusCode, Url, header};

use super::classify::{THROTTLE_PAUSE, Verdict};
use super::{Attempt, Outbound, RcptFate};
use crate::config::Tenant;
use crate::rewrite::header as mime;

/// Graph's limit on one request; for a MIME submission, the base64 of the message.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// The longest pause a `Retry-After` may put on a mailbox.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error body we keep when it is not Graph's JSON.
const MAX_TEXT: usize = 300;
/// How much of a reply body we read.
const MAX_BODY: usize = 64 * 1024;

/// One HTTP client per tenant: it carries the tenant's trust roots (`tls_ca_file`, the same
/// roots SMTP trusts) and timeout, and keeps its connections to Graph open between messages.
#[derive(Default)]
pub(super) struct Clients(Mutex<HashMap<String, Cached>>);

/// A client and the settings it was built with (a reload may change them).
struct Cached {
    ca_file: Option<PathBuf>,
    timeout: Duration,
    client: Client,
}

impl Clients {
    fn get(&self, tenant: &Tenant) -> Result<Client, String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&tenant.name) {
            if c.ca_file == tenant.tls_ca_file && c.timeout == tenant.upstream_timeout {
                return Ok(c.client.clone());
            }
        }
        let mut tls =
            super::tls::client_config(tenant.tls_ca_file.as_deref()).map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(tenant.upstream_timeout)
            .timeout(tenant.upstream_timeout)
            .user_agent(concat!("authrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client for Graph: {e}"))?;
        map.insert(
            tenant.name.clone(),
            Cached {
                ca_file: tenant.tls_ca_file.clone(),
                timeout: tenant.upstream_timeout,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

/// What Graph answered, reduced to what decides and explains an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphReply {
    status: u16,
    /// Graph's `error.code` (`ErrorAccessDenied`), empty when the body had none.
    code: String,
    /// Graph's `error.message`, or the start of a body that was not Graph's JSON.
    message: String,
    retry_after: Option<Duration>,
}

impl GraphReply {
    async fn read(mut resp: reqwest::Response) -> GraphReply {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Graph's error bodies are small; a proxy's page need not be, and only its start is kept.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_BODY {
                break;
            }
        }
        let (code, message) = error_of(&body);
        if !(200..300).contains(&status) {
            // Microsoft support asks for the request id; the attempt line has the rest.
            tracing::debug!(status, code = %code, request_id = ?request_id, "Graph error reply");
        }
        GraphReply {
            status,
            code,
            message,
            retry_after,
        }
    }
}

impl fmt::Display for GraphReply {
    /// `HTTP 403 ErrorAccessDenied: Access is denied. ...`, or `HTTP 202 Accepted`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, " {}: {}", self.code, self.message)?,
            (false, true) => write!(f, " {}", self.code)?,
            (true, false) => write!(f, ": {}", self.message)?,
            (true, true) => {
                let reason = StatusCode::from_u16(self.status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                if let Some(reason) = reason {
                    write!(f, " {reason}")?;
                }
            }
        }
        if let Some(d) = self.retry_after {
            write!(f, " (Retry-After {} s)", d.as_secs())?;
        }
        Ok(())
    }
}

/// Graph's `{"error":{"code":"...","message":"..."}}`, or the body's first words.
fn error_of(body: &[u8]) -> (String, String) {
    let one_line = |s: &str| {
        let words = s.split_whitespace().collect::<Vec<_>>().join(" ");
        match words.char_indices().nth(MAX_TEXT) {
            Some((cut, _)) => format!("{}...", &words[..cut]),
            None => words,
        }
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &v["error"];
        let code = error["code"].as_str().unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default();
        if !code.is_empty() || !message.is_empty() {
            return (one_line(code), one_line(message));
        }
    }
    (String::new(), one_line(&String::from_utf8_lossy(body)))
}

/// `Retry-After` in seconds or as an HTTP date, kept between 1 s and an hour.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at =
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822)
                    .ok()?;
            let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
            Duration::from_secs(secs.max(0) as u64)
        }
    };
    Some(wait.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

/// What a reply means for the message and the mailbox, and the enhanced status for a DSN.
///
/// Like SMTP's table, anything about our configuration (the token, Mail.Send, an application
/// access policy, a mailbox Graph doesn't know) defers and alerts instead of bouncing.
fn judge(r: &GraphReply) -> (Verdict, &'static str) {
    let code = r.code.as_str();
    match r.status {
        200..=299 => (Verdict::Delivered, "2.0.0"),
        429 => (
            Verdict::Throttled(r.retry_after.unwrap_or(THROTTLE_PAUSE)),
            "4.3.2",
        ),
        503 | 504 => match r.retry_after {
            Some(d) => (Verdict::Throttled(d), "4.3.2"),
            None => (Verdict::Transient, "4.3.0"),
        },
        401 => (Verdict::AuthRejected, "4.7.0"),
        403 if code.eq_ignore_ascii_case("ErrorSendAsDenied") => (Verdict::Permanent, "5.7.60"),
        403 | 404 => (Verdict::AuthRejected, "4.7.0"),
        413 => (Verdict::Permanent, "5.3.4"),
        400 if code.starts_with("ErrorMimeContentInvalid") => (Verdict::Permanent, "5.6.0"),
        400 if code == "ErrorInvalidRecipients" => (Verdict::Permanent, "5.1.3"),
        400 if code == "ErrorMessageSizeExceeded" => (Verdict::Permanent, "5.3.4"),
        400..=499 => (Verdict::Permanent, "5.0.0"),
        // Other 5xx, and what Graph never sends us (1xx, 3xx with redirects off): retry.
        _ => (Verdict::Transient, "4.3.0"),
    }
}

/// The message Graph gets: `body` with a `Bcc` header naming every recipient that To and Cc
/// don't, and the To/Cc addresses that are not among `recipients` (Graph sends to them too).
fn for_graph(body: &[u8], recipients: &[String]) -> (Vec<u8>, Vec<String>) {
    let section = mime::scan(body, 0, body.len());
    let listed: Vec<String> = section
        .fields
        .iter()
        .filter(|f| f.is(body, "To") || f.is(body, "Cc"))
        .flat_map(|f| mime::parse_mailboxes(f.value(body)))
        .filter_map(|m| m.address)
        .collect();
    let contains = |list: &[String], a: &str| list.iter().any(|l| l.eq_ignore_ascii_case(a));
    let hidden: Vec<&String> = recipients
        .iter()
        .filter(|r| !contains(&listed, r))
        .collect();
    let mut strangers: Vec<String> = Vec::new();
    for l in &listed {
        if !contains(recipients, l) && !contains(&strangers, l) {
            strangers.push(l.clone());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 40 * hidden.len());
    if !hidden.is_empty() {
        let tokens: Vec<String> = hidden
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let comma = if i + 1 < hidden.len() { "," } else { "" };
                format!("<{}>{comma}", mime::header_token(a))
            })
            .collect();
        mime::push_folded(&mut out, "Bcc", &tokens);
    }
    out.extend_from_slice(body);
    (out, strangers)
}

/// `{graph_endpoint}/v1.0/users/{mailbox}[/{action}]`, the mailbox percent-encoded as a path
/// segment.
fn users_url(endpoint: &str, mailbox: &str, action: Option<&str>) -> Result<Url, String> {
    let bad = |why: String| format!("graph_endpoint {endpoint:?}: {why}");
    let mut url = Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|_| bad("not a base URL".into()))?;
        path.pop_if_empty().extend(["v1.0", "users", mailbox]);
        if let Some(action) = action {
            path.push(action);
        }
    }
    Ok(url)
}

/// Why a request got no Graph reply to judge.
enum CallError {
    /// No token: transient (endpoint down) or an operator must act.
    Token(Verdict, String),
    /// Connecting, TLS, the timeout: we don't know whether Graph got the request.
    Network(String),
}

/// Sends the request `build` makes with a token, and if Graph refuses the token (401), gets a
/// new one and sends it exactly once more, as the SMTP transport does after 535 5.7.3.
async fn call(
    out: &Outbound,
    tenant: &Tenant,
    build: impl Fn(&str) -> RequestBuilder,
) -> Result<GraphReply, CallError> {
    let no_token = |e: crate::oauth::TokenError| {
        let verdict = if e.is_transient() {
            Verdict::Transient
        } else {
            Verdict::AuthRejected
        };
        CallError::Token(verdict, format!("no token: {e}"))
    };
    let mut token = out.tokens.token(tenant).await.map_err(no_token)?;
    let mut refreshed = false;
    loop {
        let resp = build(token.expose())
            .send()
            .await
            .map_err(|e| CallError::Network(network_error(&e, tenant.upstream_timeout)))?;
        let reply = GraphReply::read(resp).await;
        if reply.status == 401 && !refreshed {
            refreshed = true;
            tracing::info!(tenant = %tenant.name, reply = %reply, "Graph refused the token; refreshing it once");
            token = out
                .tokens
                .refresh(tenant, Some(&token))
                .await
                .map_err(no_token)?;
            continue;
        }
        return Ok(reply);
    }
}

/// reqwest's error with its causes ("connection refused" is two levels down).
fn network_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "Graph did not answer within {}",
            humantime::format_duration(timeout)
        );
    }
    let mut text = format!("Graph: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Records what a reply says about the tenant's setup for `/status` and `verify`: a success
/// proves token and permission, a refusal of either needs an operator.
fn record(out: &Outbound, tenant: &Tenant, reply: &GraphReply, verdict: Verdict) {
    match verdict {
        Verdict::Delivered => out.mark_verified(&tenant.name),
        Verdict::AuthRejected => {
            let mailbox = &tenant.mailbox;
            let alert = match reply.status {
                401 => format!("Graph refused the token for {mailbox}: {reply}"),
                404 => format!("Graph does not know the mailbox {mailbox}: {reply}"),
                _ => format!(
                    "Graph denied access to {mailbox}: {reply} (check the Mail.Send permission, its admin consent, and any application access policy)"
                ),
            };
            out.mark_refused(&tenant.name, reply.to_string(), alert);
        }
        _ => {}
    }
}

/// One attempt at one message over Graph: all recipients share its fate.
pub(super) async fn deliver(
    out: &Outbound,
    tenant: &Tenant,
    recipients: &[String],
    body: &[u8],
) -> Attempt {
    let (message, strangers) = for_graph(body, recipients);
    if !strangers.is_empty() {
        tracing::warn!(
            tenant = %tenant.name,
            addresses = %strangers.join(","),
            "To/Cc addresses that are not envelope recipients: Graph sends to them as well"
        );
    }
    let encoded_len = message.len().div_ceil(3) * 4;
    if encoded_len > MAX_REQUEST {
        let text = format!(
            "5.3.4 message too large for the Graph transport ({encoded_len} bytes base64, limit 4 MB); use transport = \"smtp\" or send smaller attachments"
        );
        return Attempt::all(
            recipients,
            RcptFate::Failed,
            Verdict::Permanent,
            &text,
            "5.3.4",
        );
    }
    let encoded = STANDARD.encode(&message);
    drop(message);
    let prepared = users_url(&tenant.graph_endpoint, &tenant.mailbox, Some("sendMail"))
        .and_then(|url| Ok((url, out.graph.get(tenant)?)));
    let (url, client) = match prepared {
        Ok(p) => p,
        Err(why) => {
            return Attempt::all(
                recipients,
                RcptFate::Deferred,
                Verdict::Transient,
                &why,
                "4.4.1",
            );
        }
    };
    let sent = call(out, tenant, |token| {
        client
            .post(url.clone())
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(encoded.clone())
    })
    .await;
    let reply = match sent {
        Ok(reply) => reply,
        Err(CallError::Token(verdict, why)) => {
            return Attempt::all(recipients, RcptFate::Deferred, verdict, &why, "4.4.1");
        }
        Err(CallError::Network(why)) => {
            // Graph may have taken the message before the connection failed: retrying can
            // duplicate it, which at-least-once delivery accepts.
            return Attempt::all(
                recipients,
                RcptFate::Deferred,
                Verdict::Transient,
                &why,
                "4.4.2",
            );
        }
    };
    let (verdict, status) = judge(&reply);
    record(out, tenant, &reply, verdict);
    let fate = match verdict {
        Verdict::Delivered => RcptFate::Delivered,
        Verdict::Permanent => RcptFate::Failed,
        _ => RcptFate::Deferred,
    };
    Attempt::all(recipients, fate, verdict, &reply.to_string(), status)
}

/// `authrelay verify` for a Graph tenant: a token, then a harmless authorized read of the
/// mailbox's user (`GET /v1.0/users/{mailbox}?$select=mail`). That proves the token and that
/// Graph knows the mailbox; only sending proves Mail.Send.
///
/// Reading a user needs `User.Read.All` (app-only) or `User.Read` (delegated), which a
/// least-privilege app with only Mail.Send lacks. Graph then answers 403
/// `Authorization_RequestDenied` after accepting the token: that still counts as verified, and
/// the returned note says what could not be checked.
pub async fn verify(out: &Outbound, tenant: &Tenant) -> Result<Option<String>, String> {
    let mut url = users_url(&tenant.graph_endpoint, &tenant.mailbox, None)?;
    url.query_pairs_mut().append_pair("$select", "mail");
    let client = out.graph.get(tenant)?;
    let reply = call(out, tenant, |token| {
        client.get(url.clone()).bearer_auth(token)
    })
    .await
    .map_err(|e| match e {
        CallError::Token(_, why) | CallError::Network(why) => why,
    })?;
    if reply.status == 200 {
        record(out, tenant, &reply, Verdict::Delivered);
        return Ok(None);
    }
    if reply.status == 403 && reply.code == "Authorization_RequestDenied" {
        return Ok(Some(format!(
            "Graph accepted the token, but the app may not read users ({reply}), so the mailbox {} was not looked up; Mail.Send is proven only by sending",
            tenant.mailbox
        )));
    }
    let (verdict, _) = judge(&reply);
    record(out, tenant, &reply, verdict);
    Err(match reply.status {
        401 => format!("Graph refused the token: {reply}"),
        404 => format!(
            "Graph does not know the mailbox {}: {reply}",
            tenant.mailbox
        ),
        _ => reply.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, code: &str, retry_after: Option<u64>) -> GraphReply {
        GraphReply {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn v(status: u16, code: &str, retry_after: Option<u64>) -> (Verdict, &'static str) {
        judge(&reply(status, code, retry_after))
    }

    #[test]
    fn the_graph_reply_table() {
        assert_eq!(v(202, "", None), (Verdict::Delivered, "2.0.0"));
        assert_eq!(
            v(429, "ApplicationThrottled", Some(7)),
            (Verdict::Throttled(Duration::from_secs(7)), "4.3.2")
        );
        assert_eq!(
            v(429, "", None),
            (Verdict::Throttled(THROTTLE_PAUSE), "4.3.2")
        );
        assert_eq!(
            v(503, "ServiceUnavailable", Some(2)),
            (Verdict::Throttled(Duration::from_secs(2)), "4.3.2")
        );
        assert_eq!(
            v(504, "", Some(3)),
            (Verdict::Throttled(Duration::from_secs(3)), "4.3.2")
        );
        assert_eq!(v(503, "", None), (Verdict::Transient, "4.3.0"));
        assert_eq!(v(500, "", None), (Verdict::Transient, "4.3.0"));
        assert_eq!(v(502, "", None), (Verdict::Transient, "4.3.0"));
        assert_eq!(
            v(401, "InvalidAuthenticationToken", None),
            (Verdict::AuthRejected, "4.7.0")
        );
        assert_eq!(
            v(403, "ErrorAccessDenied", None),
            (Verdict::AuthRejected, "4.7.0")
        );
        assert_eq!(
            v(403, "ErrorSendAsDenied", None),
            (Verdict::Permanent, "5.7.60")
        );
        assert_eq!(
            v(404, "ErrorInvalidUser", None),
            (Verdict::AuthRejected, "4.7.0")
        );
        assert_eq!(
            v(400, "ErrorMimeContentInvalid", None),
            (Verdict::Permanent, "5.6.0")
        );
        assert_eq!(
            v(400, "ErrorMimeContentInvalidBase64String", None),
            (Verdict::Permanent, "5.6.0")
        );
        assert_eq!(
            v(400, "ErrorInvalidRecipients", None),
            (Verdict::Permanent, "5.1.3")
        );
        assert_eq!(
            v(413, "ErrorRequestEntityTooLarge", None),
            (Verdict::Permanent, "5.3.4")
        );
        assert_eq!(v(400, "Whatever", None), (Verdict::Permanent, "5.0.0"));
        assert_eq!(v(302, "", None), (Verdict::Transient, "4.3.0"));
    }

    #[test]
    fn error_bodies_and_the_summary_line() {
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again.","innerError":{"request-id":"x"}}}"#;
        let (code, message) = error_of(body);
        let r = GraphReply {
            status: 403,
            code,
            message,
            retry_after: None,
        };
        assert_eq!(
            r.to_string(),
            "HTTP 403 ErrorAccessDenied: Access is denied. Check credentials and try again."
        );
        assert_eq!(reply(202, "", None).to_string(), "HTTP 202 Accepted");
        assert_eq!(
            reply(429, "ApplicationThrottled", Some(5)).to_string(),
            "HTTP 429 ApplicationThrottled (Retry-After 5 s)"
        );
        let (code, message) = error_of(b"<html>\r\n  Bad   gateway </html>");
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("", "<html> Bad gateway </html>")
        );
        let (_, long) = error_of("x ".repeat(1000).as_bytes());
        assert!(long.len() < MAX_TEXT + 4 && long.ends_with("..."), "{long}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::from_secs(1)),
            "a date in the past means now (at least a second)"
        );
        let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(120);
        let soon = soon
            .format(&time::format_description::well_known::Rfc2822)
            .expect("format");
        let got = parse_retry_after(&soon).expect("parses");
        assert!(got > Duration::from_secs(100) && got <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn graph_view(msg: &str, rcpts: &[&str]) -> (String, Vec<String>) {
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        let (out, strangers) = for_graph(msg.as_bytes(), &rcpts);
        (String::from_utf8(out).expect("utf8"), strangers)
    }

    #[test]
    fn envelope_only_recipients_become_bcc() {
        let msg = "From: a@x.test\r\nTo: \"Ops, Team\" <ops@example.org>\r\nCc: BOSS@example.org\r\nSubject: s\r\n\r\nTo: not-a-header@example.org\r\n";
        let (out, strangers) = graph_view(
            msg,
            &["ops@example.org", "boss@example.org", "audit@example.org"],
        );
        assert!(
            out.starts_with("Bcc: <audit@example.org>\r\nFrom: a@x.test\r\n"),
            "{out}"
        );
        assert!(out.ends_with(msg));
        assert!(strangers.is_empty(), "{strangers:?}");

        let (out, _) = graph_view(msg, &["ops@example.org", "boss@example.org"]);
        assert_eq!(out, msg, "nothing to add: the message is untouched");
    }

    #[test]
    fn header_recipients_outside_the_envelope_are_reported() {
        let msg = "To: ops@example.org, other@example.org\r\nCc: undisclosed-recipients:;\r\n\r\nbody\r\n";
        let (out, strangers) = graph_view(msg, &["ops@example.org"]);
        assert_eq!(out, msg);
        assert_eq!(strangers, vec!["other@example.org"]);
    }

    #[test]
    fn many_hidden_recipients_fold_into_one_bcc_field() {
        let rcpts: Vec<String> = (0..20).map(|i| format!("user{i}@example.org")).collect();
        let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let (out, _) = graph_view("Subject: none\r\n\r\nx\r\n", &refs);
        let head = out.split("\r\nSubject:").next().expect("head");
        assert!(head.lines().all(|l| l.len() <= 78), "{head}");
        assert_eq!(head.matches("Bcc:").count(), 1);
        for r in &rcpts {
            assert!(head.contains(&format!("<{r}>")), "{r}: {head}");
        }
        assert_eq!(head.matches(',').count(), 19);
    }

    #[test]
    fn the_send_mail_url() {
        let u = |e: &str, m: &str, a| users_url(e, m, a).expect("url").to_string();
        assert_eq!(
            u(
                "https://graph.microsoft.com",
                "relay@contoso.com",
                Some("sendMail")
            ),
            "https://graph.microsoft.com/v1.0/users/relay@contoso.com/sendMail"
        );
        assert_eq!(
            u("https://proxy.test/graph/", "relay@contoso.com", None),
            "https://proxy.test/graph/v1.0/users/relay@contoso.com"
        );
        assert_eq!(
            u("http://127.0.0.1:8080", "a/b?c#d@x", Some("sendMail")),
            "http://127.0.0.1:8080/v1.0/users/a%2Fb%3Fc%23d@x/sendMail"
        );
    }
}
