//! Parsing store URLs into a backend target, and redacting passwords out of them.

use std::path::PathBuf;
use std::str::FromStr as _;

use crate::StoreError;

/// Where a store lives, decided from its URL.
#[derive(Debug)]
pub(crate) enum Location {
    SqliteMemory,
    SqliteFile(PathBuf),
    Postgres(Box<tokio_postgres::Config>),
}

/// Parses `sqlite:<path>`, `sqlite://<path>`, `sqlite::memory:`, `postgres://...` and
/// `postgresql://...`.
pub(crate) fn parse(url: &str) -> Result<Location, StoreError> {
    let url = url.trim();
    let invalid = |reason: String| StoreError::InvalidUrl {
        url_redacted: redact_url(url),
        reason,
    };
    if url.is_empty() {
        return Err(invalid("the url is empty".to_owned()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return match path {
            ":memory:" => Ok(Location::SqliteMemory),
            "" => Err(invalid("no database file path after `sqlite:`".to_owned())),
            path => Ok(Location::SqliteFile(PathBuf::from(path))),
        };
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            let detail = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            invalid(format!("{e}{detail}"))
        })?;
        return Ok(Location::Postgres(Box::new(config)));
    }
    let reason = match url.split_once(':') {
        Some((scheme, _)) if !scheme.is_empty() && !scheme.contains('/') => {
            format!("unsupported scheme `{scheme}`; wardmesh stores data in sqlite or postgres")
        }
        _ => "the url has no scheme".to_owned(),
    };
    Err(invalid(reason))
}

/// Replaces the password in `scheme://user:password@host/...` and any `password=` query or
/// key/value parameter with `***`. Errs on the side of hiding too much: everything between
/// the first `:` after the scheme and the last `@` is hidden.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match (scheme, rest.rfind('@')) {
        (Some(_), Some(at)) => {
            let (userinfo, host_and_more) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host_and_more}"),
                None => rest.to_owned(),
            }
        }
        _ => rest.to_owned(),
    };
    let rest = redact_password_params(&rest);
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

/// Hides the value of every `password=` parameter (query string or key/value form).
fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(KEY) {
        let start = pos + found;
        let at_boundary = start == 0
            || matches!(
                s.as_bytes().get(start - 1),
                Some(b'?' | b'&' | b' ' | b'\t' | b';')
            );
        let value_start = start + KEY.len();
        out.push_str(&s[pos..value_start]);
        if !at_boundary {
            pos = value_start;
            continue;
        }
        let value_len = s[value_start..]
            .find(['&', ' ', '\t', ';', '#'])
            .unwrap_or(s.len() - value_start);
        out.push_str("***");
        pos = value_start + value_len;
    }
    out.push_str(&s[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_password() {
        assert_eq!(
            redact_url("postgres://alice:s3cret@db.example:5432/wardmesh"),
            "postgres://alice:***@db.example:5432/wardmesh"
        );
        // An unencoded '@' or '/' inside the password must not leak a part of it.
        assert_eq!(
            redact_url("postgresql://alice:p@ss/w0rd@db/wm"),
            "postgresql://alice:***@db/wm"
        );
    }

    #[test]
    fn redacts_password_parameters() {
        assert_eq!(
            redact_url("postgres://db/wm?user=alice&password=s3cret&sslmode=disable"),
            "postgres://db/wm?user=alice&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db PASSWORD=s3cret user=alice"),
            "host=db PASSWORD=*** user=alice"
        );
        // Only a whole `password` key counts.
        assert_eq!(
            redact_url("postgres://db/wm?old_password=x"),
            "postgres://db/wm?old_password=x"
        );
    }

    #[test]
    fn leaves_urls_without_password_alone() {
        for url in [
            "postgres://postgres@127.0.0.1:55432/postgres",
            "sqlite:/var/lib/wardmesh/store.db",
            "mysql://x",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn parses_sqlite_forms() {
        assert!(matches!(
            parse("sqlite::memory:"),
            Ok(Location::SqliteMemory)
        ));
        assert!(matches!(
            parse("sqlite://:memory:"),
            Ok(Location::SqliteMemory)
        ));
        match parse("sqlite:/tmp/x/store.db") {
            Ok(Location::SqliteFile(p)) => assert_eq!(p, PathBuf::from("/tmp/x/store.db")),
            other => panic!("unexpected {other:?}"),
        }
        match parse("sqlite://data/store.db") {
            Ok(Location::SqliteFile(p)) => assert_eq!(p, PathBuf::from("data/store.db")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_postgres_forms() {
        for url in [
            "postgres://postgres@127.0.0.1:55432/postgres",
            "postgresql://u:p@localhost/wm?application_name=cp",
        ] {
            assert!(matches!(parse(url), Ok(Location::Postgres(_))), "{url}");
        }
    }

    #[test]
    fn rejects_other_urls_clearly() {
        let cases = [
            ("mysql://x", "unsupported scheme `mysql`"),
            ("", "the url is empty"),
            ("   ", "the url is empty"),
            ("sqlite:", "no database file path"),
            ("/var/lib/store.db", "the url has no scheme"),
        ];
        for (url, expected) in cases {
            let err = parse(url).expect_err(url);
            let msg = err.to_string();
            assert!(
                matches!(err, StoreError::InvalidUrl { .. }),
                "{url}: {err:?}"
            );
            assert!(msg.contains(expected), "{url}: {msg}");
            assert!(msg.contains("sqlite:<path>"), "{url}: {msg}");
        }
    }
}
