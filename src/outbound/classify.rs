//! What an upstream reply means for the message and for the mailbox.
//!
//! Exchange Online's replies carry more than "4xx retry, 5xx bounce": some 5xx are about our
//! configuration (the token, SMTP AUTH switched off) and must never bounce a user's mail, and
//! some are about the mailbox as a whole (throttling, the daily quota) and must pause it
//! rather than be hammered message by message. Pure, so every row of the table is a test.

use std::fmt;
use std::time::Duration;

/// One SMTP reply, kept as text for logs, DSNs and `queue show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code like "5.7.60", empty if none.
    pub status: String,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &str, text: &str) -> Reply {
        Reply {
            code,
            status: status.to_string(),
            text: text.to_string(),
        }
    }

    pub fn from_proto(r: &smtp_proto::Response<String>) -> Reply {
        let status = if r.esc[0] == 0 {
            String::new()
        } else {
            format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
        };
        // Multi-line replies arrive joined with newlines; one line reads better in logs.
        let text = r.message.split_whitespace().collect::<Vec<_>>().join(" ");
        Reply {
            code: r.code,
            status,
            text,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn esc(&self) -> Option<(u16, u16, u16)> {
        let mut it = self.status.split('.').map(|p| p.parse::<u16>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Retry this message later with the normal back-off.
    Transient,
    /// Give up on these recipients and bounce.
    Permanent,
    /// The token was refused (535 5.7.3): refresh it and retry once, then defer and alert.
    AuthRejected,
    /// SMTP AUTH is disabled for the tenant or mailbox (535 5.7.139): defer, alert loudly.
    AuthDisabled,
    /// Too many connections or messages: pause the whole mailbox this long.
    Throttled(Duration),
    /// Microsoft has blocked the mailbox from sending for a while (5.2.251–255).
    SenderBlocked(Duration),
    /// The 10,000 recipients a day are used up (SubmissionQuotaExceeded).
    QuotaExceeded(Duration),
}

impl Verdict {
    /// Label for the `delivery_failures_total{kind}` metric.
    pub fn metric_kind(self) -> &'static str {
        match self {
            Verdict::Delivered => "none",
            Verdict::Permanent => "permanent",
            Verdict::AuthRejected | Verdict::AuthDisabled => "auth",
            _ => "transient",
        }
    }

    /// Whether the message itself can never be delivered as it is.
    pub fn is_permanent(self) -> bool {
        matches!(self, Verdict::Permanent)
    }

    /// The pause this verdict puts on the whole mailbox, if any.
    pub fn mailbox_pause(self) -> Option<Duration> {
        match self {
            Verdict::Throttled(d) | Verdict::SenderBlocked(d) | Verdict::QuotaExceeded(d) => {
                Some(d)
            }
            _ => None,
        }
    }
}

pub const THROTTLE_PAUSE: Duration = Duration::from_secs(60);
pub const BLOCKED_PAUSE: Duration = Duration::from_secs(3600);
pub const QUOTA_PAUSE: Duration = Duration::from_secs(24 * 3600);

pub fn classify(reply: &Reply) -> Verdict {
    if reply.is_positive() {
        return Verdict::Delivered;
    }
    let text = reply.text.to_ascii_lowercase();
    let esc = reply.esc();
    if text.contains("sendasdenied") {
        return Verdict::Permanent;
    }
    if text.contains("submissionquotaexceeded")
        || (reply.code == 554 && esc == Some((5, 2, 0)) && text.contains("quota"))
    {
        return Verdict::QuotaExceeded(QUOTA_PAUSE);
    }
    match (reply.code, esc) {
        (535, Some((5, 7, 139))) => return Verdict::AuthDisabled,
        (535 | 534 | 530, _) => return Verdict::AuthRejected,
        (_, Some((5, 2, n))) if (251..=255).contains(&n) => {
            return Verdict::SenderBlocked(BLOCKED_PAUSE);
        }
        (_, Some((4, 3, 2))) => return Verdict::Throttled(THROTTLE_PAUSE),
        _ => {}
    }
    if text.contains("concurrent connections") || text.contains("throttl") {
        return Verdict::Throttled(THROTTLE_PAUSE);
    }
    match reply.code {
        400..=499 => Verdict::Transient,
        500..=599 => Verdict::Permanent,
        // Anything else is not SMTP as we know it; retrying is the safe side.
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(code: u16, status: &str, text: &str) -> Verdict {
        classify(&Reply::new(code, status, text))
    }

    #[test]
    fn the_exchange_online_reply_table() {
        assert_eq!(
            v(250, "2.6.0", "Queued mail for delivery"),
            Verdict::Delivered
        );
        assert_eq!(
            v(535, "5.7.3", "Authentication unsuccessful"),
            Verdict::AuthRejected
        );
        assert_eq!(
            v(
                535,
                "5.7.139",
                "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
            ),
            Verdict::AuthDisabled
        );
        assert_eq!(
            v(
                550,
                "5.7.60",
                "SMTP; Client does not have permissions to send as this sender"
            ),
            Verdict::Permanent
        );
        assert_eq!(
            v(
                554,
                "5.2.252",
                "SendAsDenied; relay@x not allowed to send as a@y"
            ),
            Verdict::Permanent
        );
        assert_eq!(
            v(
                432,
                "4.3.2",
                "STOREDRV.ClientSubmit; sender thread limit exceeded"
            ),
            Verdict::Throttled(THROTTLE_PAUSE)
        );
        assert_eq!(
            v(
                421,
                "4.3.2",
                "The maximum number of concurrent connections has exceeded a limit"
            ),
            Verdict::Throttled(THROTTLE_PAUSE)
        );
        assert_eq!(
            v(550, "5.2.254", "Sender throttled due to ..."),
            Verdict::SenderBlocked(BLOCKED_PAUSE)
        );
        assert_eq!(
            v(
                554,
                "5.2.0",
                "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
            ),
            Verdict::QuotaExceeded(QUOTA_PAUSE)
        );
        assert_eq!(
            v(451, "4.4.0", "Temporary server error"),
            Verdict::Transient
        );
        assert_eq!(
            v(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound"),
            Verdict::Permanent
        );
        assert_eq!(
            v(530, "5.7.57", "Client not authenticated to send mail"),
            Verdict::AuthRejected
        );
    }

    #[test]
    fn metric_kinds() {
        assert_eq!(Verdict::AuthDisabled.metric_kind(), "auth");
        assert_eq!(Verdict::Permanent.metric_kind(), "permanent");
        assert_eq!(
            Verdict::Throttled(THROTTLE_PAUSE).metric_kind(),
            "transient"
        );
        assert_eq!(
            Verdict::QuotaExceeded(QUOTA_PAUSE).mailbox_pause(),
            Some(QUOTA_PAUSE)
        );
    }

    #[test]
    fn reply_display() {
        assert_eq!(Reply::new(550, "5.7.60", "no").to_string(), "550 5.7.60 no");
        assert_eq!(Reply::new(421, "", "bye").to_string(), "421 bye");
    }
}
