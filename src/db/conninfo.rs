//! The connection-string parameters tokio-postgres does not take (`sslmode=verify-ca`,
//! `sslmode=verify-full`, `sslrootcert`), taken out before the rest goes to
//! `tokio_postgres::Config`. The rest is left byte for byte, so tokio-postgres still reads
//! everything else and reports its own syntax errors.

use std::borrow::Cow;

/// A connection string split into its TLS parameters and everything else.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Split {
    /// The connection string without `sslmode` and `sslrootcert`.
    pub rest: String,
    /// The last `sslmode` given (the last one wins, as in libpq), decoded.
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

impl Split {
    /// Keep `value` if `key` is one of ours; tells whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }
}

/// Where tokio-postgres would read a connection string otherwise than it was meant: silently
/// dropping what follows (the `sslmode` among it), or taking part of a password for a host.
/// The messages quote none of it: a password may be there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnInfoError {
    #[error("'@' in the path or query must be written %40 (and '?' in a user name or password %3F): as written, the query would be read as the user name and its sslmode lost")]
    QueryInCredentials,
    #[error("a parameter has no name before the '=' at byte {0}; write key=value pairs, and quote a value with spaces: key='a value'")]
    NoName(usize),
    #[error("a host name holds '@'; write '@' in the user name or password as %40")]
    AtInHost,
}

/// Split a `postgres://` URL or a `key=value` connection string.
pub(crate) fn split(s: &str) -> Result<Split, ConnInfoError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| s.starts_with(*prefix))
    {
        Some(prefix) => split_url(s, prefix.len()),
        None => split_key_values(s),
    }
}

fn decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// As tokio-postgres reads a URL: the credentials end at the first `@`, the query starts at
/// the next `?`, and its `key=value` pairs are separated by `&`.
///
/// An `@` in the query (`application_name=a@b`) would make everything before it the user
/// name, the query included: refused, as a `?` before the first `@`.
fn split_url(s: &str, prefix: usize) -> Result<Split, ConnInfoError> {
    let authority = match s[prefix..].find('@') {
        Some(at) if s[prefix..prefix + at].contains('?') => {
            return Err(ConnInfoError::QueryInCredentials)
        }
        Some(at) => prefix + at + 1,
        None => prefix,
    };
    let Some(query) = s[authority..].find('?').map(|q| authority + q) else {
        return Ok(Split {
            rest: s.to_string(),
            ..Split::default()
        });
    };
    let mut out = Split::default();
    let mut kept = Vec::new();
    for pair in s[query + 1..].split('&') {
        let ours = pair
            .split_once('=')
            .is_some_and(|(key, value)| out.take(&decode(key), decode(value).into_owned()));
        if !ours {
            kept.push(pair);
        }
    }
    out.rest = if kept.is_empty() {
        s[..query].to_string()
    } else {
        format!("{}?{}", &s[..query], kept.join("&"))
    };
    Ok(out)
}

/// `key = value` pairs separated by whitespace; a value may be quoted in `'...'`, and `\`
/// escapes the next character (libpq's rules, as tokio-postgres implements them).
fn split_key_values(s: &str) -> Result<Split, ConnInfoError> {
    let mut out = Split::default();
    let mut lexer = Lexer { s, pos: 0 };
    let mut copied = 0;
    loop {
        match lexer.param() {
            Param::Pair(start, key, value, end) => {
                if out.take(key, value) {
                    out.rest.push_str(&s[copied..start]);
                    copied = end;
                }
            }
            // tokio-postgres takes an empty name for the end of the string and ignores the
            // rest, `sslmode` included; libpq calls it an error, and so do we.
            Param::NoName(at) => return Err(ConnInfoError::NoName(at)),
            // A syntax error stops the scan here: the rest goes on unchanged, for
            // tokio-postgres to report.
            Param::Stop => break,
        }
    }
    out.rest.push_str(&s[copied..]);
    Ok(out)
}

/// What [`Lexer::param`] found next.
enum Param<'a> {
    /// A `key = value`: where it starts, its key, its value unquoted and unescaped, and
    /// where it ends.
    Pair(usize, &'a str, String, usize),
    /// An `=` with no name before it, at this byte.
    NoName(usize),
    /// The end, or a syntax error.
    Stop,
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// The next `key = value`.
    fn param(&mut self) -> Param<'a> {
        match self.pair() {
            Some(pair) => pair,
            None => Param::Stop,
        }
    }

    /// [`Lexer::param`], with `None` for the end or a syntax error.
    fn pair(&mut self) -> Option<Param<'a>> {
        self.skip_whitespace();
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '=') {
            self.bump();
        }
        let key = &self.s[start..self.pos];
        if key.is_empty() {
            // Past the whitespace, only an `=` ends a name before it starts.
            return (self.peek() == Some('=')).then_some(Param::NoName(start));
        }
        self.skip_whitespace();
        if self.bump()? != '=' {
            return None;
        }
        self.skip_whitespace();
        let mut value = String::new();
        if self.peek() == Some('\'') {
            self.bump();
            loop {
                match self.bump()? {
                    '\'' => break,
                    '\\' => value.push(self.bump()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = self.peek().filter(|c| !c.is_whitespace()) {
                self.bump();
                if c != '\\' {
                    value.push(c);
                } else if let Some(escaped) = self.bump() {
                    value.push(escaped);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        Some(Param::Pair(start, key, value, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, Option<String>, Option<String>) {
        let split = split(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (split.rest, split.sslmode, split.sslrootcert)
    }

    #[test]
    fn url_parameters_of_ours_are_taken_out_and_the_others_kept_verbatim() {
        let (rest, mode, root) = parts(
            "postgres://u:p%3F@db.example.com:5432/app?sslmode=verify-full&options=-c%20a%3Db&sslrootcert=%2Fetc%2Fca%20x.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p%3F@db.example.com:5432/app?options=-c%20a%3Db"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca x.pem"));
    }

    #[test]
    fn a_url_with_only_our_parameters_loses_its_query() {
        let (rest, mode, _) = parts("postgresql://h/db?sslmode=require");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn an_encoded_question_mark_in_the_password_does_not_start_the_query() {
        let (rest, mode, _) = parts("postgres://u:a%3Fsslmode=disable@h/db?sslmode=require");
        assert_eq!(rest, "postgres://u:a%3Fsslmode=disable@h/db");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn an_at_sign_in_the_query_is_refused_rather_than_losing_the_sslmode() {
        // tokio-postgres ends the user name at the first `@`: the host, path and query
        // before it would be the user name, and sslmode silently the default.
        for s in [
            "postgres://db.example/app?sslmode=verify-full&application_name=a@b",
            "postgres://h/db?user=u&password=hunt@er2&sslmode=verify-full",
            "postgresql://h/db?sslrootcert=/ca.pem&user=me@corp",
            "postgres://u:a?sslmode=disable@h/db?sslmode=require",
        ] {
            let err = split(s).unwrap_err();
            assert_eq!(err, ConnInfoError::QueryInCredentials, "{s}");
            let text = err.to_string();
            assert!(text.contains("%40"), "{text}");
            assert!(
                !text.contains("hunt") && !text.contains("verify-full"),
                "{text}"
            );
        }
        // Written with %40, the same URL keeps its sslmode.
        let (_, mode, _) = parts("postgres://h/db?application_name=a%40b&sslmode=verify-full");
        assert_eq!(mode.as_deref(), Some("verify-full"));
    }

    #[test]
    fn a_stray_equals_sign_is_refused_rather_than_ending_the_string() {
        // tokio-postgres would stop at the `=` and ignore the sslmode after it.
        for (s, at) in [
            ("host=h = sslmode=verify-full", 7),
            ("host=localhost user=nobody_x = sslmode=verify-full", 29),
            ("=x", 0),
        ] {
            assert_eq!(split(s), Err(ConnInfoError::NoName(at)), "{s}");
        }
    }

    #[test]
    fn the_last_value_wins_as_in_libpq() {
        let (_, mode, _) = parts("postgres://h/db?sslmode=disable&sslmode=verify-ca");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        let (_, mode, _) = parts("host=h sslmode=disable sslmode=verify-ca");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
    }

    #[test]
    fn key_value_strings_lose_our_pairs_with_their_quoting() {
        let (rest, mode, root) = parts(
            "host=h sslrootcert = '/tmp/my ca\\'s.pem' user=u sslmode=verify-full password='a b'",
        );
        assert_eq!(rest, "host=h  user=u  password='a b'");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/my ca's.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"a b"[..]));
    }

    #[test]
    fn strings_without_our_parameters_are_unchanged() {
        for s in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://h/db?application_name=x&connect_timeout=3",
            "host=h dbname=d",
            "",
        ] {
            assert_eq!(parts(s), (s.to_string(), None, None), "{s}");
        }
    }

    #[test]
    fn a_malformed_key_value_string_is_left_for_tokio_postgres_to_report() {
        let (rest, mode, _) = parts("sslmode=require host");
        assert_eq!(rest, " host");
        assert_eq!(mode.as_deref(), Some("require"));
        assert!(rest.parse::<tokio_postgres::Config>().is_err());
        // A name without `=` is not a stray `=`: tokio-postgres names the character.
        let (rest, _, _) = parts("a b=c");
        assert!(rest.parse::<tokio_postgres::Config>().is_err());
    }
}
