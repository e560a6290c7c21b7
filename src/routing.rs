//! Picks the tenant a message goes out through.
//!
//! The order is fixed so operators can predict it: a tenant bound to the listener, then the
//! tenant of the SMTP AUTH user, then the tenant whose own mailbox (or `send_as` address) is
//! the envelope sender, then the first tenant whose `senders` pattern matches it, then the
//! default tenant (the one without `senders`). No match means the
//! message is refused at MAIL FROM, because we would have no mailbox to send it as.

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Router {
    /// (address, tenant) for every tenant's mailbox and send_as addresses.
    owners: Vec<(String, String)>,
    routes: Vec<(String, Vec<String>)>,
    default: Option<String>,
}

/// What the session knows when it asks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints<'a> {
    pub listener_tenant: Option<&'a str>,
    pub user_tenant: Option<&'a str>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            owners: config
                .tenants
                .iter()
                .flat_map(|t| {
                    std::iter::once(&t.mailbox)
                        .chain(t.send_as.iter())
                        .map(|a| (a.to_ascii_lowercase(), t.name.clone()))
                })
                .collect(),
            routes: config
                .tenants
                .iter()
                .filter(|t| !t.senders.is_empty())
                .map(|t| {
                    (
                        t.name.clone(),
                        t.senders.iter().map(|p| p.to_ascii_lowercase()).collect(),
                    )
                })
                .collect(),
            default: config
                .tenants
                .iter()
                .find(|t| t.senders.is_empty())
                .map(|t| t.name.clone()),
        }
    }

    /// The tenant for this envelope sender (empty for the null sender), if any.
    pub fn route<'a>(&'a self, sender: &str, hints: Hints<'a>) -> Option<&'a str> {
        if let Some(t) = hints.listener_tenant.or(hints.user_tenant) {
            return Some(t);
        }
        let sender = sender.to_ascii_lowercase();
        if let Some((_, t)) = self.owners.iter().find(|(a, _)| *a == sender) {
            return Some(t);
        }
        if !sender.is_empty() {
            for (tenant, patterns) in &self.routes {
                if patterns.iter().any(|p| glob(p, &sender)) {
                    return Some(tenant);
                }
            }
        }
        self.default.as_deref()
    }
}

/// Whether an address matches a `senders` pattern (`*` matches any run of characters),
/// ignoring ASCII case.
pub fn matches_pattern(pattern: &str, address: &str) -> bool {
    glob(&pattern.to_ascii_lowercase(), &address.to_ascii_lowercase())
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tenants: &str) -> Config {
        Config::from_toml(tenants).expect("valid config")
    }

    const TWO: &str = r#"
[[tenant]]
name = "contoso"
tenant_id = "t1"
client_id = "c"
client_secret = "s"
mailbox = "relay@contoso.com"
senders = ["*@contoso.com", "*@app01.internal"]

[[tenant]]
name = "fallback"
tenant_id = "t2"
client_id = "c"
client_secret = "s"
mailbox = "relay@fabrikam.com"
"#;

    #[test]
    fn glob_matches() {
        assert!(glob("*@contoso.com", "a@contoso.com"));
        assert!(glob("*@contoso.com", "@contoso.com"));
        assert!(!glob("*@contoso.com", "a@contoso.com.evil"));
        assert!(glob("*@*.internal", "cron@app01.internal"));
        assert!(glob("exact@x.y", "exact@x.y"));
        assert!(!glob("exact@x.y", "exact@x.yz"));
        assert!(glob("*", ""));
    }

    #[test]
    fn routes_by_sender_then_default() {
        let c = config(TWO);
        let r = Router::new(&c);
        let h = Hints::default();
        assert_eq!(r.route("Alice@Contoso.com", h), Some("contoso"));
        assert_eq!(r.route("cron@app01.internal", h), Some("contoso"));
        assert_eq!(r.route("x@elsewhere.org", h), Some("fallback"));
        assert_eq!(r.route("", h), Some("fallback"));
        // A tenant's own mailbox routes to it even without a matching pattern.
        assert_eq!(r.route("Relay@Fabrikam.com", h), Some("fallback"));
    }

    #[test]
    fn no_default_means_no_route() {
        let only = TWO
            .split("[[tenant]]\nname = \"fallback\"")
            .next()
            .expect("split");
        let r = Router::new(&config(only));
        assert_eq!(r.route("x@elsewhere.org", Hints::default()), None);
        assert_eq!(r.route("a@contoso.com", Hints::default()), Some("contoso"));
    }

    #[test]
    fn listener_and_user_bindings_win() {
        let c = config(TWO);
        let r = Router::new(&c);
        let h = Hints {
            listener_tenant: Some("fallback"),
            user_tenant: Some("contoso"),
        };
        assert_eq!(r.route("a@contoso.com", h), Some("fallback"));
        let h = Hints {
            listener_tenant: None,
            user_tenant: Some("fallback"),
        };
        assert_eq!(r.route("a@contoso.com", h), Some("fallback"));
    }
}
