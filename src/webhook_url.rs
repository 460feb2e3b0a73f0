//! Validation of the webhook URLs that end users type (docs/architecture.md, section 7).
//!
//! Sequin checks only the shape of an endpoint URL (Sequin:
//! lib/sequin/consumers/http_endpoint.ex): scheme `http`/`https`, a host matching
//! `^[a-zA-Z0-9.-]+$`, a port in 1..=65535. It never asks where the host points, so without
//! the checks here any user could aim Sequin at the operator's internal network (loopback,
//! RFC 1918, cloud metadata at 169.254.169.254, ...).
//!
//! * [`parse`] checks the syntax and IP literals, without DNS.
//! * [`validate`] also resolves a host name and refuses it when any address is non-public. A
//!   lookup that fails is reported apart ([`UrlError::is_resolution_failure`]): DNS may answer
//!   on a later attempt, so the worker retries it instead of failing the request.
//! * [`normalize`] renders a URL the way Sequin returns it, to compare a stored URL with Sequin's.
//!
//! The URL is parsed with the WHATWG parser of the `url` crate, so decimal (`2130706433`),
//! octal (`0177.0.0.1`), hex (`0x7f.1`), short (`127.1`), percent-encoded and full-width
//! spellings of an IPv4 address all become the IPv4 host they denote before any check runs.
//! The accepted URL is the parser's serialization, which is what must be sent to Sequin: the
//! raw text could be read differently by Sequin's own parser.
//!
//! What this cannot prevent: a name that resolves to a public address now and to a private one
//! later (DNS rebinding), or split-horizon DNS where Sequin resolves a name differently.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

/// The longest accepted URL, in characters (the `subscription_requests` CHECK uses the same).
pub const MAX_URL_CHARS: usize = 2048;

/// How long [`validate`] waits for the resolver before giving up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a URL may point at, and how its host is looked up.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// `USERHOOKS_ALLOW_PRIVATE_URLS`: accept loopback, private, link-local, ... hosts and skip DNS.
    pub allow_private: bool,
    /// Accept `https` only.
    pub require_https: bool,
    /// Resolves host names for [`validate`]: the system resolver unless replaced (tests).
    pub resolver: Resolver,
}

/// A URL that passed validation, in the normalized form Sequin returns (`URI.to_string`: default
/// port dropped, lowercase scheme and host). Send exactly this string to Sequin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host name or dotted IPv4 address (only `[A-Za-z0-9.-]`).
    pub fn host(&self) -> &str {
        // The string is a serialization without user-info, so the authority is `host[:port]`.
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let end = rest.find([':', '/', '?', '#']).unwrap_or(rest.len());
        rest.get(..end).unwrap_or("")
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WebhookUrl {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a webhook URL was refused. The messages are meant for `last_error`, read by a DBA.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("webhook_url is empty")]
    Empty,
    #[error("webhook_url is longer than {MAX_URL_CHARS} characters")]
    TooLong,
    #[error(
        "webhook_url is longer than {MAX_URL_CHARS} characters once normalized \
         ({0} characters after percent-encoding)"
    )]
    TooLongNormalized(usize),
    #[error("webhook_url is not a valid URL: {0}")]
    Invalid(String),
    #[error("webhook_url must use http or https, not {0}")]
    UnsupportedScheme(String),
    #[error("webhook_url must use https, not http")]
    HttpsRequired,
    #[error("webhook_url must not contain a user name or password")]
    UserInfo,
    #[error(
        "webhook_url must not contain a fragment (the part after '#'); \
         it is never sent with a webhook request"
    )]
    Fragment,
    #[error("webhook_url has no host")]
    MissingHost,
    #[error(
        "webhook_url host must not be an IPv6 literal (Sequin accepts only [A-Za-z0-9.-] hosts)"
    )]
    Ipv6Literal,
    #[error(
        "webhook_url host {0:?} is not a valid host name for Sequin \
         (only letters, digits, '.' and '-' are accepted; no '_')"
    )]
    InvalidHost(String),
    #[error("webhook_url port must be between 1 and 65535")]
    InvalidPort,
    #[error(
        "webhook_url host {host} is {reason}; set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    )]
    NonPublicHost { host: String, reason: &'static str },
    #[error(
        "webhook_url host {host} is a localhost name (always the local machine); \
         set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    )]
    LocalhostName { host: String },
    #[error(
        "webhook_url host {host} resolves to {ip}, {reason}; \
         set USERHOOKS_ALLOW_PRIVATE_URLS=true to allow it"
    )]
    ResolvesToNonPublic {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
    /// DNS did not answer, or answered with an error that may go away (a timeout, a server
    /// failure, the network down).
    #[error("webhook_url host {host} could not be resolved: {reason}")]
    Unresolvable { host: String, reason: String },
    /// DNS answered that the name does not exist (or has no address).
    #[error("webhook_url host \"{host}\" does not exist (DNS: {reason}); check the URL")]
    NoSuchHost { host: String, reason: String },
}

impl UrlError {
    /// True when the refusal came from a DNS lookup, whose answer may change on a later attempt
    /// (a server recovers, a new record propagates); every other refusal is about the URL
    /// itself and will not change on retry.
    pub fn is_resolution_failure(&self) -> bool {
        matches!(
            self,
            UrlError::Unresolvable { .. } | UrlError::NoSuchHost { .. }
        )
    }

    /// True when DNS answered that the host does not exist: once retries run out, the URL is
    /// what must change.
    pub fn host_does_not_exist(&self) -> bool {
        matches!(self, UrlError::NoSuchHost { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Address classification

const UNSPECIFIED: &str = "an unspecified address";
const THIS_NETWORK: &str = "an unspecified address (0.0.0.0/8)";
const LOOPBACK: &str = "a loopback address";
const PRIVATE: &str = "a private address (RFC 1918)";
const LINK_LOCAL_V4: &str = "a link-local address (cloud metadata lives at 169.254.169.254)";
const CGNAT: &str = "a carrier-grade NAT address (100.64.0.0/10)";
const IETF_V4: &str = "an IETF protocol assignment address (192.0.0.0/24)";
const DOC_V4: &str = "a documentation address (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)";
const RELAY_6TO4: &str = "a 6to4 relay anycast address (192.88.99.0/24)";
const BENCHMARK_V4: &str = "a benchmarking address (198.18.0.0/15)";
const MULTICAST: &str = "a multicast address";
const RESERVED_V4: &str = "a reserved address (240.0.0.0/4)";
const BROADCAST: &str = "the broadcast address";

const IPV4_COMPATIBLE: &str = "a deprecated IPv4-compatible IPv6 address (::/96)";
const LOCAL_NAT64: &str = "a local-use NAT64 address (64:ff9b:1::/48)";
const DISCARD_V6: &str = "a discard-only address (100::/64)";
const IETF_V6: &str = "an IETF protocol assignment address (2001::/23, includes Teredo)";
const DOC_V6: &str = "a documentation address (2001:db8::/32, 3fff::/20)";
const SRV6: &str = "a segment routing address (5f00::/16)";
const ULA: &str = "a unique local address (fc00::/7)";
const LINK_LOCAL_V6: &str = "a link-local address (fe80::/10)";
const SITE_LOCAL: &str = "a deprecated site-local address (fec0::/10)";
const RESERVED_V6: &str = "a reserved IPv6 address (outside global unicast 2000::/3)";

/// Non-public IPv4 ranges, most specific first (`255.255.255.255` lies inside 240/4).
const V4_RANGES: &[([u8; 4], u8, &str)] = &[
    ([255, 255, 255, 255], 32, BROADCAST),
    ([0, 0, 0, 0], 8, THIS_NETWORK),
    ([10, 0, 0, 0], 8, PRIVATE),
    ([100, 64, 0, 0], 10, CGNAT),
    ([127, 0, 0, 0], 8, LOOPBACK),
    ([169, 254, 0, 0], 16, LINK_LOCAL_V4),
    ([172, 16, 0, 0], 12, PRIVATE),
    ([192, 0, 0, 0], 24, IETF_V4),
    ([192, 0, 2, 0], 24, DOC_V4),
    ([192, 88, 99, 0], 24, RELAY_6TO4),
    ([192, 168, 0, 0], 16, PRIVATE),
    ([198, 18, 0, 0], 15, BENCHMARK_V4),
    ([198, 51, 100, 0], 24, DOC_V4),
    ([203, 0, 113, 0], 24, DOC_V4),
    ([224, 0, 0, 0], 4, MULTICAST),
    ([240, 0, 0, 0], 4, RESERVED_V4),
];

/// Non-public IPv6 ranges that do not embed an IPv4 address (those are handled first).
const V6_RANGES: &[(u128, u8, &str)] = &[
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48, LOCAL_NAT64),
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, DISCARD_V6),
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23, IETF_V6),
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, DOC_V6),
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20, DOC_V6),
    (0x5f00_0000_0000_0000_0000_0000_0000_0000, 16, SRV6),
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, ULA),
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, LINK_LOCAL_V6),
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, SITE_LOCAL),
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, MULTICAST),
];

fn in_v4_prefix(addr: u32, base: u32, len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    addr & mask == base & mask
}

fn in_v6_prefix(addr: u128, base: u128, len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    addr & mask == base & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let addr = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(base, len, _)| in_v4_prefix(addr, u32::from_be_bytes(*base), *len))
        .map(|&(_, _, reason)| reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let addr = u128::from(ip);
    // The low 32 bits, for the forms that carry an IPv4 address there.
    let low_v4 = Ipv4Addr::from((addr & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if ip.is_loopback() {
        return Some(LOOPBACK);
    }
    // IPv4-mapped ::ffff:a.b.c.d and NAT64 64:ff9b::a.b.c.d reach the embedded IPv4 address.
    if in_v6_prefix(addr, 0xffff_0000_0000, 96)
        || in_v6_prefix(addr, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96)
    {
        return v4_reason(low_v4);
    }
    // IPv4-compatible ::a.b.c.d: deprecated, never public.
    if in_v6_prefix(addr, 0, 96) {
        return Some(v4_reason(low_v4).unwrap_or(IPV4_COMPATIBLE));
    }
    // 6to4 2002:AABB:CCDD::/48 tunnels to the IPv4 address AA.BB.CC.DD.
    if in_v6_prefix(addr, 0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        return v4_reason(Ipv4Addr::from(((addr >> 80) & 0xffff_ffff) as u32));
    }
    if let Some(&(_, _, reason)) = V6_RANGES
        .iter()
        .find(|(base, len, _)| in_v6_prefix(addr, *base, *len))
    {
        return Some(reason);
    }
    if !in_v6_prefix(addr, 0x2000_0000_0000_0000_0000_0000_0000_0000, 3) {
        return Some(RESERVED_V6);
    }
    None
}

/// Classify one address: `None` when it is public, otherwise a short reason such as
/// `"a loopback address"` or `"a private address (RFC 1918)"`, written to follow "is" in a sentence.
///
/// IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002::/16`) IPv6 addresses are judged by the IPv4 address they carry.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A URL that passed [`parse`], with what [`validate`] needs to resolve it.
struct Parsed {
    url: WebhookUrl,
    port: u16,
    ip_literal: bool,
}

fn is_localhost_name(domain: &str) -> bool {
    let name = domain.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .len()
            .checked_sub(".localhost".len())
            .and_then(|start| name.get(start..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
}

/// Sequin's host rule `^[a-zA-Z0-9.-]+$`, plus at least one letter or digit (`.` is no host).
fn is_sequin_host(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && host.bytes().any(|b| b.is_ascii_alphanumeric())
}

fn map_parse_error(err: url::ParseError) -> UrlError {
    match err {
        url::ParseError::EmptyHost => UrlError::MissingHost,
        url::ParseError::InvalidPort => UrlError::InvalidPort,
        other => UrlError::Invalid(other.to_string()),
    }
}

fn parse_inner(raw: &str, policy: &UrlPolicy) -> Result<Parsed, UrlError> {
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(UrlError::TooLong);
    }
    // The WHATWG parser strips leading and trailing C0 controls and spaces; so do we here.
    if raw.trim_matches(|c: char| c <= ' ').is_empty() {
        return Err(UrlError::Empty);
    }
    let url = Url::parse(raw).map_err(map_parse_error)?;

    match url.scheme() {
        "https" => {}
        "http" if policy.require_https => return Err(UrlError::HttpsRequired),
        "http" => {}
        other => return Err(UrlError::UnsupportedScheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }

    let ip_literal = match url.host() {
        None => return Err(UrlError::MissingHost),
        Some(Host::Ipv6(_)) => return Err(UrlError::Ipv6Literal),
        Some(Host::Ipv4(ip)) => {
            if !policy.allow_private {
                if let Some(reason) = v4_reason(ip) {
                    return Err(UrlError::NonPublicHost {
                        host: ip.to_string(),
                        reason,
                    });
                }
            }
            true
        }
        Some(Host::Domain(domain)) => {
            if !is_sequin_host(domain) {
                return Err(UrlError::InvalidHost(domain.to_owned()));
            }
            if !policy.allow_private && is_localhost_name(domain) {
                return Err(UrlError::LocalhostName {
                    host: domain.to_owned(),
                });
            }
            false
        }
    };

    let port = match url.port_or_known_default() {
        Some(0) | None => return Err(UrlError::InvalidPort),
        Some(port) => port,
    };

    let serialized: String = url.into();
    let chars = serialized.chars().count();
    if chars > MAX_URL_CHARS {
        return Err(UrlError::TooLongNormalized(chars));
    }
    Ok(Parsed {
        url: WebhookUrl(serialized),
        port,
        ip_literal,
    })
}

/// Syntax and literal-IP checks only, no DNS.
///
/// Accepts `http`/`https` (only `https` with `require_https`), a host Sequin accepts
/// (`^[a-zA-Z0-9.-]+$` after IDNA, so no IPv6 literal and no `_`), no user-info, no fragment, a
/// port in 1..=65535 and at most [`MAX_URL_CHARS`] characters. Unless `allow_private`, refuses
/// non-public IPv4 literals (see [`non_public_reason`]) and `localhost` / `*.localhost`.
pub fn parse(raw: &str, policy: &UrlPolicy) -> Result<WebhookUrl, UrlError> {
    parse_inner(raw, policy).map(|parsed| parsed.url)
}

/// Normalize any http(s) URL the way Sequin renders it, so that a stored URL can be compared with
/// Sequin's `url` field: lowercase scheme and host, IDNA, default port dropped, user-info dropped
/// (Sequin drops it silently), percent-encoding as the WHATWG parser writes it, and `/` as the
/// path of a URL without one. Apply it to both sides before comparing. `None` when `raw` is not
/// an absolute http(s) URL.
pub fn normalize(raw: &str) -> Option<String> {
    let mut url = Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_username("").ok()?;
    url.set_password(None).ok()?;
    Some(url.into())
}

// ---------------------------------------------------------------------------------------------
// Resolution

/// Resolves a host name to its addresses. [`SystemResolver`] in production, a fake in tests.
pub trait Resolve {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = std::io::Result<Vec<IpAddr>>> + Send;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]).
///
/// A name that does not exist is an error whose text comes from `gai_strerror` (the standard
/// library keeps no error code); [`lookup_error`] reads it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = std::io::Result<Vec<IpAddr>>> + Send {
        let host = host.to_owned();
        async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        }
    }
}

/// The future a [`DynResolve`] returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// [`Resolve`] in a form that can sit behind `dyn` (any `Resolve + Send + Sync` is one).
pub trait DynResolve: Send + Sync {
    fn resolve_boxed<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

impl<R: Resolve + Send + Sync> DynResolve for R {
    fn resolve_boxed<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(self.resolve(host, port))
    }
}

/// The resolver a [`UrlPolicy`] uses, and how long it may take to answer.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<dyn DynResolve>,
    timeout: Duration,
}

impl Resolver {
    /// `resolver`, given [`RESOLVE_TIMEOUT`] to answer.
    pub fn new(resolver: impl Resolve + Send + Sync + 'static) -> Self {
        Resolver {
            inner: Arc::new(resolver),
            timeout: RESOLVE_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(SystemResolver)
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolve for Resolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = std::io::Result<Vec<IpAddr>>> + Send {
        let (inner, host) = (self.inner.clone(), host.to_owned());
        async move { inner.resolve_boxed(&host, port).await }
    }
}

/// The `gai_strerror` texts (glibc, musl, macOS, Windows) of "this name does not exist" and
/// "this name has no address": answers from DNS, not failures to reach it. Every other error
/// (`EAI_AGAIN` "Temporary failure in name resolution", `EAI_FAIL`, an I/O error) may pass.
const NO_SUCH_HOST_TEXTS: &[&str] = &[
    "name or service not known",
    "no address associated with hostname",
    "name does not resolve",
    "name has no usable address",
    "nodename nor servname provided, or not known",
    "no such host is known",
];

/// The standard library's prefix of every `getaddrinfo` error, noise in a `last_error`.
const LOOKUP_PREFIX: &str = "failed to lookup address information: ";

/// Classify a failed lookup of `host`: an answer that the name does not exist (an
/// [`std::io::ErrorKind::NotFound`] error, or one of the system resolver's texts for it), or a
/// failure that may be temporary.
pub fn lookup_error(host: &str, err: &std::io::Error) -> UrlError {
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    let reason = text.strip_prefix(LOOKUP_PREFIX).unwrap_or(&text).to_owned();
    if err.kind() == std::io::ErrorKind::NotFound
        || NO_SUCH_HOST_TEXTS.iter().any(|known| lower.contains(known))
    {
        UrlError::NoSuchHost {
            host: host.to_owned(),
            reason,
        }
    } else {
        UrlError::Unresolvable {
            host: host.to_owned(),
            reason: format!("DNS error ({reason}), which may be temporary"),
        }
    }
}

/// [`parse`], then resolve the host with the policy's resolver (unless it is an IP literal or
/// `allow_private`) and refuse it if ANY resolved address is non-public. A lookup that fails,
/// or gets no answer within the resolver's timeout, is a [`UrlError::is_resolution_failure`].
pub async fn validate(raw: &str, policy: &UrlPolicy) -> Result<WebhookUrl, UrlError> {
    validate_with(raw, policy, &policy.resolver).await
}

/// Same as [`validate`] with another resolver, given the policy's resolver's timeout.
pub async fn validate_with<R: Resolve>(
    raw: &str,
    policy: &UrlPolicy,
    resolver: &R,
) -> Result<WebhookUrl, UrlError> {
    let parsed = parse_inner(raw, policy)?;
    if parsed.ip_literal || policy.allow_private {
        return Ok(parsed.url);
    }
    let host = parsed.url.host();
    let timeout = policy.resolver.timeout();
    let addrs = match tokio::time::timeout(timeout, resolver.resolve(host, parsed.port)).await {
        Err(_) => {
            return Err(UrlError::Unresolvable {
                host: host.to_owned(),
                reason: format!("DNS timeout (no answer within {} ms)", timeout.as_millis()),
            })
        }
        Ok(Err(err)) => return Err(lookup_error(host, &err)),
        Ok(Ok(addrs)) => addrs,
    };
    if addrs.is_empty() {
        return Err(UrlError::NoSuchHost {
            host: host.to_owned(),
            reason: "no addresses".to_owned(),
        });
    }
    if let Some((ip, reason)) = addrs
        .iter()
        .find_map(|&ip| non_public_reason(ip).map(|reason| (ip, reason)))
    {
        return Err(UrlError::ResolvesToNonPublic {
            host: host.to_owned(),
            ip,
            reason,
        });
    }
    Ok(parsed.url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn prefix_masks_cover_zero_and_full_lengths() {
        assert!(in_v4_prefix(0xdead_beef, 0, 0));
        assert!(in_v4_prefix(0xdead_beef, 0xdead_beef, 32));
        assert!(!in_v4_prefix(0xdead_beee, 0xdead_beef, 32));
        assert!(in_v6_prefix(u128::MAX, 0, 0));
        assert!(in_v6_prefix(7, 7, 128));
        assert!(!in_v6_prefix(6, 7, 128));
    }

    #[test]
    fn every_ipv4_range_is_refused_from_first_to_last_address() {
        for &(base, len, reason) in V4_RANGES {
            let first = u32::from_be_bytes(base);
            let last = first | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            assert_eq!(v4_reason(Ipv4Addr::from(first)), Some(reason), "{first:#x}");
            let expected_last = if last == u32::MAX { BROADCAST } else { reason };
            assert_eq!(v4_reason(Ipv4Addr::from(last)), Some(expected_last));
        }
    }

    #[test]
    fn every_ipv6_range_is_refused_from_first_to_last_address() {
        for &(base, len, reason) in V6_RANGES {
            let last = base | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            assert_eq!(v6_reason(Ipv6Addr::from(base)), Some(reason), "{base:#x}");
            // The ranges do not overlap (2001:db8::/32 lies outside 2001::/23), so both ends match.
            assert_eq!(v6_reason(Ipv6Addr::from(last)), Some(reason), "{last:#x}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_address() {
        assert_eq!(non_public_reason(v6("::ffff:127.0.0.1")), Some(LOOPBACK));
        assert_eq!(non_public_reason(v6("::ffff:10.1.2.3")), Some(PRIVATE));
        assert_eq!(non_public_reason(v6("::ffff:8.8.8.8")), None);
        assert_eq!(
            non_public_reason(v6("64:ff9b::169.254.169.254")),
            Some(LINK_LOCAL_V4)
        );
        assert_eq!(non_public_reason(v6("64:ff9b::8.8.8.8")), None);
        assert_eq!(non_public_reason(v6("::192.168.1.1")), Some(PRIVATE));
        assert_eq!(non_public_reason(v6("::8.8.8.8")), Some(IPV4_COMPATIBLE));
        assert_eq!(non_public_reason(v6("2002:7f00:1::")), Some(LOOPBACK));
        assert_eq!(
            non_public_reason(v6("2002:a9fe:a9fe::1")),
            Some(LINK_LOCAL_V4)
        );
        assert_eq!(non_public_reason(v6("2002:808:808::1")), None);
    }

    #[test]
    fn plain_ipv6_special_addresses_are_classified() {
        assert_eq!(non_public_reason(v6("::")), Some(UNSPECIFIED));
        assert_eq!(non_public_reason(v6("::1")), Some(LOOPBACK));
        assert_eq!(non_public_reason(v6("4000::1")), Some(RESERVED_V6));
        assert_eq!(non_public_reason(v6("2606:4700::1111")), None);
        assert_eq!(non_public_reason(v6("2a00:1450:4001::200e")), None);
        assert_eq!(non_public_reason(v6("2001:200::1")), None);
    }

    #[test]
    fn public_ipv4_addresses_next_to_ranges_are_public() {
        for s in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
        ] {
            assert_eq!(non_public_reason(v4(s)), None, "{s}");
        }
    }

    #[test]
    fn localhost_names_are_recognised_with_any_case_and_trailing_dots() {
        for name in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "a.localhost",
            "a.b.localhost..",
        ] {
            assert!(is_localhost_name(name), "{name}");
        }
        for name in [
            "localhost.com",
            "mylocalhost",
            "localhostx",
            "xlocalhost.",
            "",
        ] {
            assert!(!is_localhost_name(name), "{name}");
        }
    }

    #[test]
    fn host_is_read_back_from_the_normalized_string() {
        let policy = UrlPolicy::default();
        let url = parse("https://Hooks.Example.com:8443/a?b=c", &policy).unwrap();
        assert_eq!(url.host(), "hooks.example.com");
        let url = parse("http://8.8.8.8?x", &policy).unwrap();
        assert_eq!(url.host(), "8.8.8.8");
        assert_eq!(url.as_str(), "http://8.8.8.8/?x");
    }

    struct NeverAnswers;

    impl Resolve for NeverAnswers {
        fn resolve(
            &self,
            _host: &str,
            _port: u16,
        ) -> impl Future<Output = std::io::Result<Vec<IpAddr>>> + Send {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_resolver_that_never_answers_times_out_as_unresolvable() {
        let policy = UrlPolicy {
            resolver: Resolver::new(NeverAnswers).with_timeout(Duration::from_millis(20)),
            ..UrlPolicy::default()
        };
        let err = validate("https://slow.example/", &policy)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            UrlError::Unresolvable {
                host: "slow.example".into(),
                reason: "DNS timeout (no answer within 20 ms)".into()
            }
        );
        assert!(err.is_resolution_failure());
        assert!(!err.host_does_not_exist());
    }

    #[test]
    fn lookup_errors_that_say_the_name_does_not_exist_are_told_apart() {
        let gai = |text: &str| std::io::Error::other(format!("{LOOKUP_PREFIX}{text}"));
        for text in [
            "Name or service not known",
            "No address associated with hostname",
            "Name does not resolve",
            "nodename nor servname provided, or not known",
        ] {
            let err = lookup_error("x.example", &gai(text));
            assert_eq!(
                err.to_string(),
                format!(
                    "webhook_url host \"x.example\" does not exist (DNS: {text}); check the URL"
                )
            );
            assert!(err.host_does_not_exist());
        }
        for text in [
            "Temporary failure in name resolution",
            "Non-recoverable failure in name resolution",
            "Try again",
        ] {
            let err = lookup_error("x.example", &gai(text));
            assert_eq!(
                err.to_string(),
                format!(
                    "webhook_url host x.example could not be resolved: DNS error ({text}), which may be temporary"
                )
            );
            assert!(err.is_resolution_failure() && !err.host_does_not_exist());
        }
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!lookup_error("x.example", &io).host_does_not_exist());
        let not_found = std::io::Error::new(std::io::ErrorKind::NotFound, "no such host");
        assert!(lookup_error("x.example", &not_found).host_does_not_exist());
    }
}
