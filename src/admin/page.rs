//! The HTML status page at `/`: one row per tenant, in the spirit of a mail client's
//! "Outgoing Mail" settings. Plain HTML with inline CSS; no JavaScript. Everything that comes
//! from the config or from upstream is escaped.

use std::fmt::Write;
use std::time::Duration;

use super::status::{StatusReport, TenantReport, short_age};

/// Days left under which the secret expiry shows red.
pub const SECRET_RED_DAYS: i64 = 14;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// Percent-encodes one URL path segment (tenant names are plain already; this is defence).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `2027-06-30T00:00:00Z` as `2027-06-30 00:00 UTC`.
fn when(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z').and_then(|s| s.split_once('T')) {
        Some((date, time)) => format!("{date} {} UTC", time.get(..5).unwrap_or(time)),
        None => rfc3339.to_string(),
    }
}

fn flow_label(flow: &str) -> &'static str {
    match flow {
        "client_credentials" => "App-only (client credentials)",
        "authorization_code" => "Delegated (sign-in)",
        "device_code" => "Delegated (device code)",
        _ => "?",
    }
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1f2328}\
header{background:#fff;border-bottom:1px solid #d0d7de;padding:16px 24px}\
h1{font-size:20px;margin:0 0 4px}\
.sub{color:#59636e;font-size:13px;margin:0}\
main{padding:24px}\
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px;font-size:14px}\
th,td{text-align:left;padding:10px 12px;border-bottom:1px solid #eaeef2;vertical-align:top}\
th{background:#f6f8fa;font-weight:600;font-size:12px;text-transform:uppercase;color:#59636e}\
.ok{color:#1a7f37;font-weight:600}\
.bad{color:#cf222e;font-weight:600}\
.warn{color:#9a6700;font-weight:600}\
.why{color:#59636e;font-size:12px;margin-top:4px;max-width:32em;overflow-wrap:anywhere}\
.muted{color:#8c959f}\
tr.alert td{background:#fff8c5;color:#6f4a00;font-size:13px}\
button{background:#0969da;color:#fff;border:0;border-radius:6px;padding:6px 14px;font-size:13px;cursor:pointer}\
button:hover{background:#0550ae}\
footer{padding:0 24px 24px;font-size:12px;color:#59636e}\
footer a{color:#0969da}";

/// Renders the page.
pub fn render(report: &StatusReport) -> String {
    let mut h = String::with_capacity(4096 + 1024 * report.tenants.len());
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"60\">");
    h.push_str("<title>authrelay \u{2014} Outgoing Mail</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<header><h1>Outgoing Mail</h1><p class=\"sub\">");
    let _ = write!(
        h,
        "authrelay {} &middot; up {} &middot; {} queued",
        escape(&report.version),
        short_age(Duration::from_secs(report.uptime_seconds)),
        report.queue.messages
    );
    if report.queue.messages > 0 {
        let _ = write!(
            h,
            " (oldest {})",
            short_age(Duration::from_secs(report.queue.oldest_age_seconds))
        );
    }
    h.push_str("</p></header>\n<main><table><thead><tr>");
    for col in [
        "Tenant",
        "Mailbox",
        "Flow",
        "Status",
        "Token expires",
        "Client secret expires",
        "Queue",
        "Last delivery",
        "",
    ] {
        let _ = write!(h, "<th>{col}</th>");
    }
    h.push_str("</tr></thead><tbody>\n");
    if report.tenants.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"muted\">No tenants configured.</td></tr>\n");
    }
    for t in &report.tenants {
        row(&mut h, t);
    }
    h.push_str("</tbody></table></main>\n<footer>Machine-readable: <a href=\"/status\">/status</a> &middot; <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/readyz\">/readyz</a>. This page refreshes every minute.</footer>\n</body></html>\n");
    h
}

fn row(h: &mut String, t: &TenantReport) {
    let dash = "<span class=\"muted\">&mdash;</span>";
    h.push_str("<tr>");
    let _ = write!(h, "<td><strong>{}</strong></td>", escape(&t.name));
    let _ = write!(h, "<td>{}</td>", escape(&t.mailbox));
    let _ = write!(h, "<td>{}", flow_label(&t.flow));
    if t.transport != "smtp" {
        let _ = write!(h, "<div class=\"why\">via {}</div>", escape(&t.transport));
    }
    h.push_str("</td>");

    if t.is_verified() {
        h.push_str("<td><span class=\"ok\">&#10003; Verified</span>");
    } else {
        h.push_str("<td><span class=\"bad\">&#10007; Not Verified</span>");
        if let Some(reason) = &t.reason {
            let _ = write!(h, "<div class=\"why\">{}</div>", escape(reason));
        }
    }
    h.push_str("</td>");

    match &t.token_expires_at {
        Some(at) => {
            let _ = write!(h, "<td>{}", escape(&when(at)));
        }
        None => {
            let _ = write!(h, "<td>{dash}");
        }
    }
    if let Some(err) = &t.token_error {
        if t.is_verified() {
            // Not Verified rows already show it as the reason.
            let _ = write!(h, "<div class=\"why\">{}</div>", escape(err));
        }
    }
    h.push_str("</td>");

    match (&t.client_secret_expires_at, t.secret_days_left) {
        (Some(at), Some(days)) => {
            let _ = write!(h, "<td>{}<div>", escape(&when(at)));
            if days < 0 {
                h.push_str("<span class=\"bad\">EXPIRED</span>");
            } else if days < SECRET_RED_DAYS {
                let _ = write!(
                    h,
                    "<span class=\"bad\">{} left</span>",
                    crate::watch::in_days(days)
                );
            } else {
                let _ = write!(
                    h,
                    "<span class=\"muted\">{} left</span>",
                    crate::watch::in_days(days)
                );
            }
            h.push_str("</div></td>");
        }
        _ => {
            let _ = write!(h, "<td>{dash}</td>");
        }
    }

    let _ = write!(h, "<td>{}", t.queue_depth);
    if let Some(until) = &t.paused_until {
        let _ = write!(
            h,
            "<div class=\"why\"><span class=\"warn\">paused</span> until {}",
            escape(&when(until))
        );
        if let Some(why) = &t.paused_reason {
            let _ = write!(h, ": {}", escape(why));
        }
        h.push_str("</div>");
    }
    h.push_str("</td>");

    match &t.last_delivery {
        Some(at) => {
            let _ = write!(h, "<td>{}</td>", escape(&when(at)));
        }
        None => {
            let _ = write!(h, "<td>{dash}</td>");
        }
    }

    if t.delegated {
        let _ = write!(
            h,
            "<td><form method=\"get\" action=\"/oauth/{}/authorize\"><button type=\"submit\">Authorize</button></form></td>",
            escape(&path_segment(&t.name))
        );
    } else {
        h.push_str("<td></td>");
    }
    h.push_str("</tr>\n");

    if let Some(alert) = &t.alert {
        let _ = writeln!(
            h,
            "<tr class=\"alert\"><td colspan=\"9\">&#9888; {}: {}</td></tr>",
            escape(&t.name),
            escape(alert)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::QueueReport;

    fn tenant(name: &str) -> TenantReport {
        TenantReport {
            name: name.into(),
            mailbox: "relay@contoso.com".into(),
            flow: "authorization_code".into(),
            transport: "smtp".into(),
            verified: "Verified".into(),
            reason: None,
            token_expires_at: Some("2026-05-01T10:00:00Z".into()),
            token_error: None,
            token_error_kind: None,
            client_secret_expires_at: Some("2027-06-30T00:00:00Z".into()),
            secret_days_left: Some(200),
            queue_depth: 0,
            last_delivery: None,
            paused_until: None,
            paused_reason: None,
            alert: None,
            delegated: true,
        }
    }

    fn report(tenants: Vec<TenantReport>) -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            started_at: "2026-05-01T09:00:00Z".into(),
            uptime_seconds: 3600,
            queue: QueueReport {
                messages: 0,
                oldest_age_seconds: 0,
                per_tenant: Default::default(),
            },
            tenants,
        }
    }

    #[test]
    fn hostile_values_are_escaped() {
        let evil = "<script>alert('x')</script>\"&";
        let mut t = tenant("x\"><img src=x onerror=alert(1)>");
        t.mailbox = format!("a{evil}@b.c");
        t.verified = "Not Verified".into();
        t.reason = Some(format!("535 5.7.3 {evil}"));
        t.token_error = Some(evil.into());
        t.alert = Some(evil.into());
        t.paused_until = Some("2026-05-01T11:00:00Z".into());
        t.paused_reason = Some(evil.into());
        t.transport = evil.into();
        let html = render(&report(vec![t]));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("alert('x')"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
        // The form action cannot be broken out of either.
        assert!(
            html.contains(
                "action=\"/oauth/x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/authorize\""
            ),
            "{html}"
        );
    }

    #[test]
    fn rows_show_status_expiry_and_authorize_button() {
        let ok = tenant("contoso");
        let mut soon = tenant("fabrikam");
        soon.flow = "client_credentials".into();
        soon.delegated = false;
        soon.secret_days_left = Some(5);
        soon.verified = "Not Verified".into();
        soon.reason = Some("secret_expired: AADSTS7000222".into());
        let mut gone = tenant("tailspin");
        gone.secret_days_left = Some(-3);
        gone.queue_depth = 4;
        let html = render(&report(vec![ok, soon, gone]));
        assert!(html.contains("&#10003; Verified"));
        assert!(html.contains("&#10007; Not Verified"));
        assert!(html.contains("secret_expired: AADSTS7000222"));
        assert!(html.contains("<span class=\"muted\">200 days left</span>"));
        assert!(html.contains("<span class=\"bad\">5 days left</span>"));
        assert!(html.contains("<span class=\"bad\">EXPIRED</span>"));
        assert!(html.contains("2027-06-30 00:00 UTC"));
        assert!(html.contains("<form method=\"get\" action=\"/oauth/contoso/authorize\">"));
        assert!(html.contains("<form method=\"get\" action=\"/oauth/tailspin/authorize\">"));
        assert!(!html.contains("/oauth/fabrikam/authorize"));
        assert!(!html.contains("<script"));
    }
}
