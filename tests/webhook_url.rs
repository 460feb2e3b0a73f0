//! Behaviour of `userhooks::webhook_url`: which user-typed URLs are accepted, which are refused and
//! why, with a fake resolver for DNS names and property tests for the parser.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use proptest::prelude::*;
use userhooks::webhook_url::{
    non_public_reason, normalize, parse, validate, validate_with, Resolve, SystemResolver,
    UrlError, UrlPolicy, WebhookUrl,
};

const LOOPBACK: &str = "a loopback address";
const PRIVATE: &str = "a private address (RFC 1918)";
const LINK_LOCAL: &str = "a link-local address (cloud metadata lives at 169.254.169.254)";
const CGNAT: &str = "a carrier-grade NAT address (100.64.0.0/10)";
const THIS_NETWORK: &str = "an unspecified address (0.0.0.0/8)";
const IETF: &str = "an IETF protocol assignment address (192.0.0.0/24)";
const DOC: &str = "a documentation address (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)";
const RELAY: &str = "a 6to4 relay anycast address (192.88.99.0/24)";
const BENCH: &str = "a benchmarking address (198.18.0.0/15)";
const MULTICAST: &str = "a multicast address";
const RESERVED: &str = "a reserved address (240.0.0.0/4)";
const BROADCAST: &str = "the broadcast address";

fn default_policy() -> UrlPolicy {
    UrlPolicy::default()
}

fn allow_private() -> UrlPolicy {
    UrlPolicy {
        allow_private: true,
        require_https: false,
        ..UrlPolicy::default()
    }
}

fn non_public(host: &str, reason: &'static str) -> UrlError {
    UrlError::NonPublicHost {
        host: host.to_owned(),
        reason,
    }
}

fn localhost(host: &str) -> UrlError {
    UrlError::LocalhostName {
        host: host.to_owned(),
    }
}

/// Raw input and the expected outcome under the default policy: the normalized URL, or the error.
#[rustfmt::skip]
fn table() -> Vec<(&'static str, Result<&'static str, UrlError>)> {
    vec![
        // Accepted, normalized the way Sequin renders URLs.
        ("https://hooks.example.com/sequin", Ok("https://hooks.example.com/sequin")),
        ("HTTPS://Hooks.Example.COM:443/Path?Q=1&r=%41", Ok("https://hooks.example.com/Path?Q=1&r=%41")),
        ("http://hooks.example.com:80", Ok("http://hooks.example.com/")),
        ("https://hooks.example.com", Ok("https://hooks.example.com/")),
        ("https://hooks.example.com:8443/x?y", Ok("https://hooks.example.com:8443/x?y")),
        ("https://hooks.example.com:65535/", Ok("https://hooks.example.com:65535/")),
        ("http://hooks.example.com:443/", Ok("http://hooks.example.com:443/")),
        ("  https://hooks.example.com/a b?c d\n", Ok("https://hooks.example.com/a%20b?c%20d")),
        ("https://bücher.example/wh", Ok("https://xn--bcher-kva.example/wh")),
        ("https://example.com./", Ok("https://example.com./")),
        ("https://my-hooks.example-1.com/", Ok("https://my-hooks.example-1.com/")),
        ("https://8.8.8.8/hook", Ok("https://8.8.8.8/hook")),
        ("http://134744072/", Ok("http://8.8.8.8/")),
        ("http://0x8080808/", Ok("http://8.8.8.8/")),
        ("http://172.32.0.1/", Ok("http://172.32.0.1/")),
        ("http://100.128.0.1/", Ok("http://100.128.0.1/")),
        ("http:hooks.example.com/x", Ok("http://hooks.example.com/x")),
        // A backslash is a path separator for http: the host is evil.example, not 127.0.0.1.
        ("https://evil.example\\@127.0.0.1/", Ok("https://evil.example/@127.0.0.1/")),
        // Not URLs, or not http(s).
        ("", Err(UrlError::Empty)),
        (" \t\n", Err(UrlError::Empty)),
        ("hooks.example.com/x", Err(UrlError::Invalid("relative URL without a base".into()))),
        ("ftp://example.com/", Err(UrlError::UnsupportedScheme("ftp".into()))),
        ("javascript:alert(1)", Err(UrlError::UnsupportedScheme("javascript".into()))),
        ("file:///etc/passwd", Err(UrlError::UnsupportedScheme("file".into()))),
        ("gopher://127.0.0.1:6379/_", Err(UrlError::UnsupportedScheme("gopher".into()))),
        ("localhost:8080/x", Err(UrlError::UnsupportedScheme("localhost".into()))),
        ("http://", Err(UrlError::MissingHost)),
        ("https://:443/", Err(UrlError::MissingHost)),
        // User-info, fragments.
        ("http://user:pw@example.com/", Err(UrlError::UserInfo)),
        ("http://user@example.com/", Err(UrlError::UserInfo)),
        ("http://:pw@example.com/", Err(UrlError::UserInfo)),
        ("http://example.com@127.0.0.1/", Err(UrlError::UserInfo)),
        ("https://example.com/#frag", Err(UrlError::Fragment)),
        ("https://example.com/x?y#", Err(UrlError::Fragment)),
        // Hosts Sequin would refuse.
        ("http://[::1]/", Err(UrlError::Ipv6Literal)),
        ("http://[::ffff:127.0.0.1]:80/", Err(UrlError::Ipv6Literal)),
        ("https://[2606:4700::1111]/", Err(UrlError::Ipv6Literal)),
        ("http://a_b.example.com/", Err(UrlError::InvalidHost("a_b.example.com".into()))),
        ("http://_dmarc.example.com/", Err(UrlError::InvalidHost("_dmarc.example.com".into()))),
        ("http://exa!mple.com/", Err(UrlError::InvalidHost("exa!mple.com".into()))),
        ("http://./", Err(UrlError::InvalidHost(".".into()))),
        ("http://-/", Err(UrlError::InvalidHost("-".into()))),
        ("http://exa mple.com/", Err(UrlError::Invalid("invalid international domain name".into()))),
        ("http://1.2.3.4.5/", Err(UrlError::Invalid("invalid IPv4 address".into()))),
        ("http://256.0.0.1/", Err(UrlError::Invalid("invalid IPv4 address".into()))),
        ("http://0x100000000/", Err(UrlError::Invalid("invalid IPv4 address".into()))),
        // Ports.
        ("http://example.com:0/", Err(UrlError::InvalidPort)),
        ("http://example.com:65536/", Err(UrlError::InvalidPort)),
        ("http://example.com:-1/", Err(UrlError::InvalidPort)),
        ("http://example.com:8o/", Err(UrlError::InvalidPort)),
        // Loopback, in every spelling the WHATWG parser knows.
        ("http://127.0.0.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127.255.255.254:8080/x", Err(non_public("127.255.255.254", LOOPBACK))),
        ("http://2130706433/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://0177.0.0.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://017700000001/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://0x7f.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://0X7F000001/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://0x7f.0x0.0x0.0x1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127.0.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127.000.000.001/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127.0.0.1./", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://%31%32%37.0.0.1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("http://127\u{3002}0\u{3002}0\u{3002}1/", Err(non_public("127.0.0.1", LOOPBACK))),
        ("https://127.0.0.1:443/", Err(non_public("127.0.0.1", LOOPBACK))),
        // localhost names, refused without DNS.
        ("http://localhost/", Err(localhost("localhost"))),
        ("http://LOCALHOST:8080/", Err(localhost("localhost"))),
        ("http://localhost./", Err(localhost("localhost."))),
        ("http://api.localhost/", Err(localhost("api.localhost"))),
        ("http://loc%61lhost/", Err(localhost("localhost"))),
        ("http://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/", Err(localhost("localhost"))),
        // "This network" and unspecified.
        ("http://0/", Err(non_public("0.0.0.0", THIS_NETWORK))),
        ("http://0.0.0.0:8080/", Err(non_public("0.0.0.0", THIS_NETWORK))),
        ("http://0.255.255.255/", Err(non_public("0.255.255.255", THIS_NETWORK))),
        // RFC 1918.
        ("http://10.0.0.5/", Err(non_public("10.0.0.5", PRIVATE))),
        ("http://10.255.255.255/", Err(non_public("10.255.255.255", PRIVATE))),
        ("http://012.1/", Err(non_public("10.0.0.1", PRIVATE))),
        ("http://167772161/", Err(non_public("10.0.0.1", PRIVATE))),
        ("http://172.16.0.1/", Err(non_public("172.16.0.1", PRIVATE))),
        ("http://172.31.255.255/", Err(non_public("172.31.255.255", PRIVATE))),
        ("http://192.168.1.1/", Err(non_public("192.168.1.1", PRIVATE))),
        ("http://0xc0.0xa8.1.1/", Err(non_public("192.168.1.1", PRIVATE))),
        ("http://3232235777/", Err(non_public("192.168.1.1", PRIVATE))),
        // Link-local and cloud metadata.
        ("http://169.254.169.254/latest/meta-data/", Err(non_public("169.254.169.254", LINK_LOCAL))),
        ("http://0xa9fea9fe/", Err(non_public("169.254.169.254", LINK_LOCAL))),
        ("http://2852039166/", Err(non_public("169.254.169.254", LINK_LOCAL))),
        ("http://0251.0376.0251.0376/", Err(non_public("169.254.169.254", LINK_LOCAL))),
        ("http://169.254.0.1/", Err(non_public("169.254.0.1", LINK_LOCAL))),
        // Carrier-grade NAT.
        ("http://100.64.0.1/", Err(non_public("100.64.0.1", CGNAT))),
        ("http://1681915905/", Err(non_public("100.64.0.1", CGNAT))),
        ("http://100.127.255.254/", Err(non_public("100.127.255.254", CGNAT))),
        // Special-purpose blocks.
        ("http://192.0.0.8/", Err(non_public("192.0.0.8", IETF))),
        ("http://192.0.2.1/", Err(non_public("192.0.2.1", DOC))),
        ("http://198.51.100.7/", Err(non_public("198.51.100.7", DOC))),
        ("http://203.0.113.9/", Err(non_public("203.0.113.9", DOC))),
        ("http://192.88.99.1/", Err(non_public("192.88.99.1", RELAY))),
        ("http://198.18.0.1/", Err(non_public("198.18.0.1", BENCH))),
        ("http://198.19.255.255/", Err(non_public("198.19.255.255", BENCH))),
        ("http://224.0.0.1/", Err(non_public("224.0.0.1", MULTICAST))),
        ("http://239.255.255.250/", Err(non_public("239.255.255.250", MULTICAST))),
        ("http://240.0.0.1/", Err(non_public("240.0.0.1", RESERVED))),
        ("http://255.255.255.254/", Err(non_public("255.255.255.254", RESERVED))),
        ("http://255.255.255.255/", Err(non_public("255.255.255.255", BROADCAST))),
        ("http://4294967295/", Err(non_public("255.255.255.255", BROADCAST))),
        ("http://0xffffffff/", Err(non_public("255.255.255.255", BROADCAST))),
    ]
}

#[test]
fn parse_accepts_or_refuses_every_case_in_the_table_with_its_reason() {
    let mut failures = Vec::new();
    for (raw, expected) in table() {
        let got = parse(raw, &default_policy()).map(WebhookUrl::into_string);
        let expected = expected.map(String::from);
        if got != expected {
            failures.push(format!("{raw:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn allow_private_accepts_every_non_public_literal_and_localhost_name() {
    for (raw, expected) in table() {
        let refused_for_privacy = matches!(
            expected,
            Err(UrlError::NonPublicHost { .. } | UrlError::LocalhostName { .. })
        );
        let got = parse(raw, &allow_private());
        if refused_for_privacy {
            assert!(got.is_ok(), "{raw:?}: {got:?}");
        } else {
            // Everything else is decided the same way with or without allow_private.
            assert_eq!(
                got.map(WebhookUrl::into_string),
                expected.map(String::from),
                "{raw:?}"
            );
        }
    }
}

#[test]
fn allow_private_still_refuses_ipv6_literals_and_underscores_that_sequin_rejects() {
    assert_eq!(
        parse("http://[::1]:8080/", &allow_private()),
        Err(UrlError::Ipv6Literal)
    );
    assert_eq!(
        parse("http://my_service:8080/", &allow_private()),
        Err(UrlError::InvalidHost("my_service".into()))
    );
    assert_eq!(
        parse("http://my-service:8080/", &allow_private()).map(WebhookUrl::into_string),
        Ok("http://my-service:8080/".to_owned())
    );
}

#[test]
fn require_https_refuses_http_and_accepts_https() {
    let policy = UrlPolicy {
        allow_private: false,
        require_https: true,
        ..UrlPolicy::default()
    };
    assert_eq!(
        parse("http://hooks.example.com/", &policy),
        Err(UrlError::HttpsRequired)
    );
    assert_eq!(
        parse("HTTP://hooks.example.com/", &policy),
        Err(UrlError::HttpsRequired)
    );
    assert!(parse("https://hooks.example.com/", &policy).is_ok());
    assert_eq!(
        parse("ftp://hooks.example.com/", &policy),
        Err(UrlError::UnsupportedScheme("ftp".into()))
    );
}

#[test]
fn urls_up_to_2048_characters_are_accepted_and_longer_ones_refused() {
    let policy = default_policy();
    let prefix = "https://hooks.example.com/";
    let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(at_limit.len(), 2048);
    assert_eq!(parse(&at_limit, &policy).unwrap().as_str(), at_limit);
    let over = format!("{at_limit}a");
    assert_eq!(parse(&over, &policy), Err(UrlError::TooLong));
    // A huge input is refused before parsing, whatever it contains.
    assert_eq!(
        parse(&"\u{0}".repeat(1 << 20), &policy),
        Err(UrlError::TooLong)
    );
}

#[test]
fn the_length_limit_counts_characters_like_postgres_char_length() {
    let policy = default_policy();
    let prefix = "https://hooks.example.com/?q=";
    let chars = 2048 - prefix.len();
    // 'é' is 2 bytes and 6 characters once percent-encoded: the raw text fits, the URL does not.
    let raw = format!("{prefix}{}", "é".repeat(chars));
    assert_eq!(raw.chars().count(), 2048);
    assert_eq!(
        parse(&raw, &policy),
        Err(UrlError::TooLongNormalized(prefix.len() + 6 * chars))
    );
    let raw = format!("{prefix}{}", "é".repeat(100));
    assert!(parse(&raw, &policy).is_ok());
}

#[test]
fn error_messages_are_sentences_a_dba_understands() {
    let policy = default_policy();
    let message = |raw: &str| parse(raw, &policy).unwrap_err().to_string();
    assert_eq!(
        message("hooks.example.com"),
        "webhook_url is not a valid URL: relative URL without a base"
    );
    assert_eq!(
        message("ftp://example.com/"),
        "webhook_url must use http or https, not ftp"
    );
    assert_eq!(
        message("https://u:p@example.com/"),
        "webhook_url must not contain a user name or password"
    );
    assert_eq!(
        message(&format!("https://example.com/{}", "x".repeat(2048))),
        "webhook_url is longer than 2048 characters"
    );
    assert_eq!(
        message("http://10.0.0.5/"),
        "webhook_url host 10.0.0.5 is a private address (RFC 1918); \
         set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    );
    assert_eq!(
        message("http://[fd00:ec2::254]/"),
        "webhook_url host must not be an IPv6 literal (Sequin accepts only [A-Za-z0-9.-] hosts)"
    );
    assert_eq!(
        message("http://a_b.example/"),
        "webhook_url host \"a_b.example\" is not a valid host name for Sequin \
         (only letters, digits, '.' and '-' are accepted; no '_')"
    );
    assert_eq!(
        message("http://example.com:0/"),
        "webhook_url port must be between 1 and 65535"
    );
    assert_eq!(
        message("http://localhost:4000/"),
        "webhook_url host localhost is a localhost name (always the local machine); \
         set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    );
}

#[test]
fn normalize_renders_urls_like_sequin_so_stored_and_returned_urls_compare_equal() {
    let n = |raw: &str| normalize(raw);
    assert_eq!(
        n("https://hooks.example.com"),
        n("https://hooks.example.com/")
    );
    assert_eq!(
        n("HTTPS://Hooks.Example.com:443/x?A=1").as_deref(),
        Some("https://hooks.example.com/x?A=1")
    );
    assert_eq!(
        n("http://hooks.example.com:80/x").as_deref(),
        Some("http://hooks.example.com/x")
    );
    assert_eq!(
        n("https://hooks.example.com:8443/x").as_deref(),
        Some("https://hooks.example.com:8443/x")
    );
    // Sequin drops user-info silently; the fragment is kept, as Sequin keeps it.
    assert_eq!(
        n("https://u:p@hooks.example.com/x#f").as_deref(),
        Some("https://hooks.example.com/x#f")
    );
    assert_eq!(n("ftp://hooks.example.com/"), None);
    assert_eq!(n("not a url"), None);
    assert_eq!(n(""), None);
    // An accepted URL is already normalized.
    let url = parse("HTTPS://Bücher.example:443/a b", &default_policy()).unwrap();
    assert_eq!(normalize(url.as_str()).as_deref(), Some(url.as_str()));
}

#[test]
fn webhook_url_displays_as_its_normalized_string_and_exposes_its_host() {
    let url = parse("https://Hooks.Example.com:8443/p?q", &default_policy()).unwrap();
    assert_eq!(url.to_string(), "https://hooks.example.com:8443/p?q");
    assert_eq!(url.host(), "hooks.example.com");
    let url = parse("http://0x8080808", &default_policy()).unwrap();
    assert_eq!(url.host(), "8.8.8.8");
}

// ---------------------------------------------------------------------------------------------
// DNS

/// Answers from a fixed table and records every question.
struct FakeResolver {
    answers: HashMap<&'static str, Vec<IpAddr>>,
    calls: Mutex<Vec<(String, u16)>>,
}

impl FakeResolver {
    fn new(answers: &[(&'static str, &[&str])]) -> Self {
        let answers = answers
            .iter()
            .map(|(host, ips)| (*host, ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect();
        FakeResolver {
            answers,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<(String, u16)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Resolve for FakeResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<IpAddr>>> + Send {
        self.calls.lock().unwrap().push((host.to_owned(), port));
        let answer = self
            .answers
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host (fake)"));
        std::future::ready(answer)
    }
}

fn fake_dns() -> FakeResolver {
    FakeResolver::new(&[
        (
            "public.example",
            &["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        ),
        ("internal.example", &["127.0.0.1"]),
        ("db.corp.example", &["10.1.2.3"]),
        ("metadata.example", &["169.254.169.254"]),
        ("mixed.example", &["93.184.215.14", "192.168.0.10"]),
        ("ula.example", &["fd00:ec2::254"]),
        ("mapped.example", &["::ffff:10.0.0.1"]),
        ("nat64.example", &["64:ff9b::7f00:1"]),
        ("v6loop.example", &["::1"]),
        ("linklocal6.example", &["fe80::1"]),
        ("cgnat.example", &["100.100.100.100"]),
        ("empty.example", &[]),
    ])
}

fn resolves_to(host: &str, ip: &str, reason: &'static str) -> UrlError {
    UrlError::ResolvesToNonPublic {
        host: host.to_owned(),
        ip: ip.parse().unwrap(),
        reason,
    }
}

#[tokio::test]
async fn names_resolving_to_public_addresses_are_accepted() {
    let dns = fake_dns();
    let url = validate_with("https://public.example/hook", &default_policy(), &dns)
        .await
        .unwrap();
    assert_eq!(url.as_str(), "https://public.example/hook");
    assert_eq!(dns.calls(), vec![("public.example".to_owned(), 443)]);
}

#[tokio::test]
async fn names_resolving_to_any_non_public_address_are_refused() {
    let dns = fake_dns();
    let cases = [
        ("internal.example", "127.0.0.1", LOOPBACK),
        ("db.corp.example", "10.1.2.3", PRIVATE),
        ("metadata.example", "169.254.169.254", LINK_LOCAL),
        ("mixed.example", "192.168.0.10", PRIVATE),
        (
            "ula.example",
            "fd00:ec2::254",
            "a unique local address (fc00::/7)",
        ),
        ("mapped.example", "::ffff:10.0.0.1", PRIVATE),
        ("nat64.example", "64:ff9b::7f00:1", LOOPBACK),
        ("v6loop.example", "::1", LOOPBACK),
        (
            "linklocal6.example",
            "fe80::1",
            "a link-local address (fe80::/10)",
        ),
        ("cgnat.example", "100.100.100.100", CGNAT),
    ];
    for (host, ip, reason) in cases {
        let got = validate_with(&format!("https://{host}/"), &default_policy(), &dns).await;
        assert_eq!(got, Err(resolves_to(host, ip, reason)), "{host}");
    }
    let message = validate_with("https://internal.example/", &default_policy(), &dns)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "webhook_url host internal.example resolves to 127.0.0.1, a loopback address; \
         set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    );
}

#[tokio::test]
async fn names_that_do_not_exist_are_refused_as_no_such_host() {
    let dns = fake_dns();
    let got = validate_with("https://nowhere.example/", &default_policy(), &dns).await;
    assert_eq!(
        got,
        Err(UrlError::NoSuchHost {
            host: "nowhere.example".into(),
            reason: "no such host (fake)".into()
        })
    );
    let err = validate_with("https://empty.example/", &default_policy(), &dns)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook_url host \"empty.example\" does not exist (DNS: no addresses); check the URL"
    );
    assert!(err.is_resolution_failure() && err.host_does_not_exist());
}

#[tokio::test]
async fn the_resolver_is_asked_for_the_url_port() {
    let dns = fake_dns();
    validate_with("http://public.example/", &default_policy(), &dns)
        .await
        .unwrap();
    validate_with("https://public.example:8443/", &default_policy(), &dns)
        .await
        .unwrap();
    assert_eq!(
        dns.calls(),
        vec![
            ("public.example".to_owned(), 80),
            ("public.example".to_owned(), 8443)
        ]
    );
}

#[tokio::test]
async fn allow_private_accepts_private_names_without_asking_dns() {
    let dns = fake_dns();
    for host in [
        "internal.example",
        "metadata.example",
        "nowhere.example",
        "localhost",
    ] {
        let url = validate_with(&format!("http://{host}:4000/x"), &allow_private(), &dns)
            .await
            .unwrap();
        assert_eq!(url.as_str(), format!("http://{host}:4000/x"));
    }
    assert_eq!(dns.calls(), vec![]);
}

#[tokio::test]
async fn ip_literals_and_localhost_are_decided_without_asking_dns() {
    let dns = fake_dns();
    assert!(validate_with("http://8.8.8.8/", &default_policy(), &dns)
        .await
        .is_ok());
    assert_eq!(
        validate_with("http://0x7f.1/", &default_policy(), &dns).await,
        Err(non_public("127.0.0.1", LOOPBACK))
    );
    assert_eq!(
        validate_with("http://api.localhost./", &default_policy(), &dns).await,
        Err(localhost("api.localhost."))
    );
    assert_eq!(
        validate_with("ftp://public.example/", &default_policy(), &dns).await,
        Err(UrlError::UnsupportedScheme("ftp".into()))
    );
    assert_eq!(dns.calls(), vec![]);
}

#[tokio::test]
async fn the_system_resolver_resolves_localhost_to_loopback_addresses_only() {
    let addrs = SystemResolver.resolve("localhost", 80).await.unwrap();
    assert!(!addrs.is_empty());
    for ip in addrs {
        assert_eq!(non_public_reason(ip), Some(LOOPBACK), "{ip}");
    }
}

#[tokio::test]
async fn validate_with_the_system_resolver_refuses_localhost_and_accepts_public_literals() {
    assert_eq!(
        validate("http://localhost:8080/", &default_policy()).await,
        Err(localhost("localhost"))
    );
    assert!(validate("http://localhost:8080/", &allow_private())
        .await
        .is_ok());
    assert!(validate("https://1.1.1.1/", &default_policy())
        .await
        .is_ok());
    // RFC 6761: names under .invalid never resolve.
    let err = validate("https://userhooks-test.invalid/", &default_policy())
        .await
        .unwrap_err();
    assert!(err.is_resolution_failure(), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Properties

fn is_sequin_host(host: &str) -> bool {
    regex::Regex::new("^[a-zA-Z0-9.-]+$")
        .unwrap()
        .is_match(host)
}

/// Strings that look enough like URLs to reach the interesting parts of the parser.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        4 => Just("http://"),
        4 => Just("https://"),
        1 => Just("HTTP://"),
        1 => Just("http:"),
        1 => Just("ftp://"),
        1 => Just(""),
        1 => Just("http:\\\\"),
    ];
    let userinfo = prop_oneof![6 => Just(""), 1 => Just("u@"), 1 => Just("u:p@"), 1 => Just("@")];
    let host = prop_oneof![
        4 => "[a-z0-9.-]{1,20}",
        1 => "[a-zA-Z0-9._~%!$&'()*+,;=-]{0,20}",
        1 => "[0-9a-fA-FxX.]{0,20}",
        1 => "\\[[0-9a-fA-F:.]{0,20}\\]",
        1 => "\\PC{0,10}",
        1 => Just("localhost".to_owned()),
    ];
    let port = prop_oneof![2 => Just(String::new()), 1 => "(:[0-9]{0,6})"];
    let rest = prop_oneof![
        4 => "(/[a-z0-9%. ]{0,10})?(\\?[a-z0-9=&%. ]{0,10})?",
        1 => "[/?#\\\\@:a-z0-9%. ]{0,20}",
    ];
    (scheme, userinfo, host, port, rest).prop_map(|(s, u, h, p, r)| format!("{s}{u}{h}{p}{r}"))
}

fn policies() -> impl Strategy<Value = UrlPolicy> {
    (any::<bool>(), any::<bool>()).prop_map(|(allow_private, require_https)| UrlPolicy {
        allow_private,
        require_https,
        ..UrlPolicy::default()
    })
}

/// The ways the WHATWG parser lets one write an IPv4 address.
fn spellings(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    let last16 = u32::from(c) << 8 | u32::from(d);
    let last24 = u32::from(b) << 16 | last16;
    vec![
        format!("{a}.{b}.{c}.{d}"),
        format!("{n}"),
        format!("0x{n:x}"),
        format!("0X{n:08X}"),
        format!("0{n:o}"),
        format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("{a}.{b}.{last16}"),
        format!("{a}.{last24}"),
        format!("0x{a:x}.{b}.0{c:o}.{d}"),
        format!("{a}.{b}.{c}.{d}."),
    ]
}

/// Addresses spread over the whole space and concentrated at the edges of the special ranges.
fn interesting_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    let edges: Vec<u32> = [
        [0, 0, 0, 0],
        [10, 0, 0, 0],
        [100, 64, 0, 0],
        [127, 0, 0, 0],
        [169, 254, 0, 0],
        [172, 16, 0, 0],
        [192, 0, 0, 0],
        [192, 0, 2, 0],
        [192, 88, 99, 0],
        [192, 168, 0, 0],
        [198, 18, 0, 0],
        [198, 51, 100, 0],
        [203, 0, 113, 0],
        [224, 0, 0, 0],
        [240, 0, 0, 0],
    ]
    .iter()
    .map(|octets| u32::from_be_bytes(*octets))
    .collect();
    prop_oneof![
        any::<u32>(),
        (prop::sample::select(edges), -70_000i64..70_000)
            .prop_map(|(edge, delta)| { (i64::from(edge) + delta).rem_euclid(1 << 32) as u32 }),
        (0u32..=u32::from(u16::MAX)).prop_map(|low| u32::MAX - low),
    ]
    .prop_map(Ipv4Addr::from)
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_and_normalize_never_panic_on_arbitrary_strings(raw in any::<String>(), policy in policies()) {
        let _ = parse(&raw, &policy);
        let _ = normalize(&raw);
    }

    #[test]
    fn parse_and_normalize_never_panic_on_url_like_strings(raw in url_like(), policy in policies()) {
        let _ = parse(&raw, &policy);
        let _ = normalize(&raw);
    }

    #[test]
    fn accepted_urls_are_http_or_https_with_a_host_sequin_accepts(raw in url_like(), policy in policies()) {
        if let Ok(url) = parse(&raw, &policy) {
            let reparsed = url::Url::parse(url.as_str()).unwrap();
            prop_assert!(matches!(reparsed.scheme(), "http" | "https"), "{url}");
            if policy.require_https {
                prop_assert_eq!(reparsed.scheme(), "https");
            }
            prop_assert!(is_sequin_host(url.host()), "{url}");
            prop_assert_eq!(reparsed.host_str(), Some(url.host()));
            prop_assert_eq!(reparsed.username(), "");
            prop_assert_eq!(reparsed.password(), None);
            prop_assert_eq!(reparsed.fragment(), None);
            prop_assert!(reparsed.port() != Some(0));
            prop_assert!(url.as_str().chars().count() <= 2048);
            // Accepted URLs are fixed points of parse and normalize.
            prop_assert_eq!(parse(url.as_str(), &policy), Ok(url.clone()));
            let normalized = normalize(url.as_str());
            prop_assert_eq!(normalized.as_deref(), Some(url.as_str()));
        }
    }

    #[test]
    fn parse_agrees_with_non_public_reason_for_every_ipv4_spelling(ip in interesting_ipv4()) {
        let dotted = ip.to_string();
        let reason = non_public_reason(IpAddr::V4(ip));
        for spelling in spellings(ip) {
            let raw = format!("http://{spelling}/hook");
            let expected = match reason {
                None => Ok(format!("http://{dotted}/hook")),
                Some(reason) => Err(non_public(&dotted, reason)),
            };
            prop_assert_eq!(
                parse(&raw, &default_policy()).map(WebhookUrl::into_string),
                expected,
                "{}", raw
            );
            prop_assert_eq!(
                parse(&raw, &allow_private()).map(WebhookUrl::into_string),
                Ok(format!("http://{dotted}/hook"))
            );
        }
    }

    #[test]
    fn validate_agrees_with_non_public_reason_for_every_resolved_address(
        v4 in interesting_ipv4(),
        v6 in any::<u128>(),
    ) {
        for ip in [IpAddr::V4(v4), IpAddr::V6(v6.into()), IpAddr::V6(v4.to_ipv6_mapped())] {
            let dns = FakeResolver {
                answers: HashMap::from([("host.example", vec![ip])]),
                calls: Mutex::new(Vec::new()),
            };
            let got = block_on(validate_with("https://host.example/", &default_policy(), &dns));
            let expected = match non_public_reason(ip) {
                None => Ok("https://host.example/".to_owned()),
                Some(reason) => Err(UrlError::ResolvesToNonPublic {
                    host: "host.example".into(),
                    ip,
                    reason,
                }),
            };
            prop_assert_eq!(got.map(WebhookUrl::into_string), expected);
        }
    }
}
