//! A server address that never shows its credentials.

use std::fmt;

/// A `redis://` or `rediss://` URL as given, with a printable form that hides the user
/// name and password. `Debug` and `Display` print only the redacted form, so the
/// credentials reach no error message, log line or `{:?}` dump of ours.
#[derive(Clone)]
pub(crate) struct ServerUrl {
    full: String,
    redacted: String,
}

impl ServerUrl {
    pub(crate) fn new(url: &str) -> Self {
        ServerUrl {
            full: url.to_string(),
            redacted: redact(url),
        }
    }

    /// The URL with its credentials, for the client library only.
    pub(crate) fn secret(&self) -> &str {
        &self.full
    }

    /// Removes every occurrence of the URL's credentials from `text` (an error message of
    /// the client library, which may quote what it was given).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.full, &self.redacted);
        if let Some((user, password)) = credentials(&self.full) {
            for secret in [password, user] {
                if secret.len() >= 3 {
                    out = out.replace(secret, "***");
                }
            }
        }
        out
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted)
    }
}

/// The `user:password` part of `scheme://user:password@host...`, if any.
fn credentials(url: &str) -> Option<(&str, &str)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    Some(userinfo.split_once(':').unwrap_or(("", userinfo)))
}

/// `scheme://***@host:port/db`: the user-info part replaced as a whole.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return "<unparsable server URL>".to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print() {
        let url = ServerUrl::new("rediss://app-user:s3cr3t-pw@cache.example:6380/2");
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cr3t-pw"), "{shown}");
            assert!(!shown.contains("app-user"), "{shown}");
            assert!(shown.contains("cache.example:6380/2"), "{shown}");
        }
        let scrubbed = url.scrub("failed to connect as app-user with s3cr3t-pw");
        assert_eq!(scrubbed, "failed to connect as *** with ***");
        assert_eq!(
            url.secret(),
            "rediss://app-user:s3cr3t-pw@cache.example:6380/2"
        );
    }

    #[test]
    fn a_password_only_url_and_a_plain_one() {
        let url = ServerUrl::new("redis://:pw-only-123@127.0.0.1:6379");
        assert_eq!(url.to_string(), "redis://***@127.0.0.1:6379");
        assert!(!url.scrub("x pw-only-123 y").contains("pw-only-123"));
        let plain = ServerUrl::new("redis://127.0.0.1:6379/0");
        assert_eq!(plain.to_string(), "redis://127.0.0.1:6379/0");
        assert_eq!(
            ServerUrl::new("nonsense").to_string(),
            "<unparsable server URL>"
        );
    }
}
